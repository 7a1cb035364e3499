//! The admin API, mounted only when a token is configured.
//!
//! Every request needs `Authorization: Bearer <token>`, one of the configured
//! [`Tokens`], compared in constant time. A network that fails too often is refused
//! (429) before its tokens are compared ([`throttle`]). Every action is logged with who
//! (client address, the token's name), what (route, node) and result.

mod explain;
pub mod throttle;
pub mod tokens;

pub use throttle::Throttle;
pub use tokens::{TokenError, Tokens};

use gateway_api::ErrorCode;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, MatchedPath, Path, RawQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::{Json, Router};
use registry::audit::Author;
use registry::{CommandAction, Kv, Layout};
use serde::Deserialize;
use serde_json::json;
use tracing::{info, warn, Instrument};

use crate::config::LiveConfig;
use crate::http::ApiError;
use crate::metrics::{AdminMetrics, RequestLabels};
use crate::ops::{self, OpsError};
use crate::state::{AppState, Serving};

/// A registry (data centre) the admin API can address with `?registry=NAME`.
#[derive(Clone)]
pub struct Target {
    /// Its name.
    pub name: Arc<str>,
    /// Its store.
    pub kv: Arc<dyn Kv>,
    /// Its key layout.
    pub layout: Layout,
}

#[derive(Clone)]
struct Admin {
    /// Trusted proxies, the request deadline.
    config: LiveConfig,
    /// The snapshot and herd counts (the node list), the guard (who is trusted).
    serving: Arc<Serving>,
    /// The invalid records (for `GET /admin/explain`).
    status: Arc<crate::state::FleetStatus>,
    metrics: AdminMetrics,
    /// Every registry followed; `local` is the router's own.
    targets: Arc<[Target]>,
    local: usize,
    tokens: Tokens,
    throttle: Arc<Throttle>,
}

impl Admin {
    /// The registry `?registry=NAME` names, if the query names one.
    fn named(&self, raw: Option<&str>) -> Result<Option<usize>, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
            .map_err(|e| ApiError::invalid(format!("query string: {e}")))?;
        let Some((_, name)) = pairs.iter().find(|(k, _)| k == "registry") else {
            return Ok(None);
        };
        match self.targets.iter().position(|t| &*t.name == name.as_str()) {
            Some(i) => Ok(Some(i)),
            None => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::UnknownRegistry,
                format!(
                    "registry {name:?} is not followed by this router (it follows {})",
                    self.targets
                        .iter()
                        .map(|t| &*t.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    /// Where a command for node `id` goes: the registry named, else the one holding
    /// the node (with several registries), else the only one.
    async fn holder(&self, raw: Option<&str>, id: &str) -> Result<usize, ApiError> {
        if let Some(i) = self.named(raw)? {
            return Ok(i);
        }
        if self.targets.len() == 1 {
            return Ok(0);
        }
        let mut found = Vec::new();
        for (i, t) in self.targets.iter().enumerate() {
            if t.kv
                .get(&t.layout.node_key(id))
                .await
                .map_err(OpsError::from)?
                .is_some()
            {
                found.push(i);
            }
        }
        match found.as_slice() {
            [] => Err(OpsError::UnknownNode(id.to_string()).into()),
            [i] => Ok(*i),
            many => Err(ApiError::invalid(format!(
                "node {id} is in registries {}: say which with ?registry=NAME",
                many.iter()
                    .map(|&i| &*self.targets[i].name)
                    .collect::<Vec<_>>()
                    .join(" and ")
            ))),
        }
    }
}

impl From<OpsError> for ApiError {
    fn from(e: OpsError) -> ApiError {
        match e {
            OpsError::BadId(_) | OpsError::BadPercent(_) => ApiError::invalid(e.to_string()),
            OpsError::UnknownNode(_) => {
                ApiError::new(StatusCode::NOT_FOUND, ErrorCode::UnknownNode, e.to_string())
            }
            OpsError::GaveUp(_) => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                ErrorCode::Timeout,
                e.to_string(),
            ),
            OpsError::Registry(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::RegistryUnavailable,
                e.to_string(),
            ),
        }
    }
}

/// The admin routes over `targets` (`local` the router's own registry), wrapped in
/// token authentication (any of `tokens`), the failed-attempt throttle and audit
/// logging. Paths take `?registry=NAME`. Of the router's handles `state`, it keeps the
/// configuration, [`Serving`] and the admin API's metrics.
pub fn router(state: &AppState, targets: Vec<Target>, local: usize, tokens: Tokens) -> Router {
    router_with_throttle(
        state,
        targets,
        local,
        tokens,
        Throttle::new(crate::clock::LimiterClock::default()),
    )
}

/// [`router`] with the throttle given (tests give one on a fake clock).
pub fn router_with_throttle(
    state: &AppState,
    targets: Vec<Target>,
    local: usize,
    tokens: Tokens,
    throttle: Throttle,
) -> Router {
    let admin = Admin {
        config: state.config.clone(),
        serving: state.serving.clone(),
        status: state.status.clone(),
        metrics: state.metrics.admin.clone(),
        targets: targets.into(),
        local,
        tokens,
        throttle: Arc::new(throttle),
    };
    Router::new()
        .route("/admin/nodes", get(nodes))
        .route("/admin/nodes/{id}/drain", post(drain))
        .route("/admin/nodes/{id}/migrate", post(migrate))
        .route("/admin/nodes/{id}/serve", post(serve))
        .route("/admin/rebalance", post(rebalance))
        .route("/admin/explain", get(explain::route))
        .route("/admin/audit", get(audit))
        .route_layer(middleware::from_fn_with_state(admin.clone(), authorize))
        // Admin routes wait on etcd; bound them (the etcd client has its own deadline too).
        .route_layer(middleware::from_fn_with_state(
            admin.config.load().request_timeout(),
            crate::http::routes::deadline,
        ))
        .with_state(admin)
}

/// The credentials of `Authorization: Bearer <token>`. The scheme is case-insensitive
/// (RFC 9110 §11.1); a missing header, another scheme or an empty token is `None`.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim_start();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// 401 `unauthorized`, asking for a bearer token.
fn unauthorized() -> Response {
    let mut r = ApiError::new(
        StatusCode::UNAUTHORIZED,
        ErrorCode::Unauthorized,
        "a valid admin bearer token is required",
    )
    .into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    r
}

/// 429 `rate_limited`: the client's network failed the token too often.
fn throttled(wait: std::time::Duration) -> Response {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::RateLimited,
        "too many failed admin token attempts from this network",
    )
    .retry_after(wait.as_secs_f64().ceil().max(1.0) as u64)
    .into_response()
}

async fn authorize(
    State(admin): State<Admin>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let route = crate::http::routes::route_label(req.extensions().get::<MatchedPath>());
    let path = req.uri().path().to_string();
    let client = crate::identity::client_ip(
        peer.ip(),
        req.headers(),
        &admin.config.load().trusted_proxies,
    );
    let m = &admin.metrics;
    // A trusted network (`[edge] allow`: the operators' own) is not throttled.
    let throttled_here = !admin.serving.guard.allowed(client);
    // A network over its failures is refused before any token it sends is compared.
    let refused = throttled_here
        .then(|| admin.throttle.refused(client))
        .flatten();
    let (resp, name) = if let Some(wait) = refused {
        m.throttled.inc();
        (throttled(wait), None)
    } else {
        match bearer_token(req.headers()).and_then(|t| admin.tokens.find(t.as_bytes())) {
            Some(name) => {
                let span = tracing::info_span!("admin", token = %name);
                let mut req = req;
                // Who acts, for the audit trail: the token's name.
                req.extensions_mut().insert(Caller(Author {
                    by: name.to_string(),
                    via: "admin-api",
                }));
                (next.run(req).instrument(span).await, Some(name))
            }
            None => match throttled_here
                .then(|| admin.throttle.failed(client))
                .flatten()
            {
                Some(wait) => {
                    m.throttled.inc();
                    (throttled(wait), None)
                }
                None => (unauthorized(), None),
            },
        }
    };
    let status = resp.status().as_u16();
    m.actions
        .get_or_create(&RequestLabels { route, status })
        .inc();
    match name {
        Some(name) => info!(client = %peer, token = %name, path = %path, status, "admin action"),
        None if status == 429 => warn!(
            client = %peer, path = %path, status,
            "admin request refused: too many failed token attempts from this network"
        ),
        None => {
            warn!(client = %peer, path = %path, status, "admin request refused: bad or missing token")
        }
    }
    resp
}

/// The newest entries of the audit trail of every registry followed (`?limit=N`,
/// 1-1000, default 50), newest first: the fleet page's audit panel.
async fn audit(State(admin): State<Admin>, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::invalid(format!("query string: {e}")))?;
    let limit = match pairs.iter().find(|(k, _)| k == "limit") {
        None => 50,
        Some((_, v)) => match v.parse::<usize>() {
            Ok(n @ 1..=1000) => n,
            _ => return Err(ApiError::invalid(format!("limit: {v:?} is not 1-1000"))),
        },
    };
    let mut out = Vec::new();
    for t in admin.targets.iter() {
        let (entries, _) = registry::audit::newest(&*t.kv, &t.layout, limit)
            .await
            .map_err(OpsError::from)?;
        out.extend(entries.into_iter().map(|e| (t.name.clone(), e)));
    }
    out.sort_by_key(|(_, e)| std::cmp::Reverse(e.at_ms));
    out.truncate(limit);
    let entries: Vec<_> = out
        .iter()
        .map(|(dc, e)| {
            let mut v = serde_json::to_value(e).expect("an entry serializes");
            v["registry"] = json!(&**dc);
            v
        })
        .collect();
    Ok(Json(json!({ "entries": entries })).into_response())
}

async fn nodes(State(admin): State<Admin>, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let which: Vec<usize> = match admin.named(raw.as_deref())? {
        Some(i) => vec![i],
        None => (0..admin.targets.len()).collect(),
    };
    let mut nodes = Vec::new();
    let mut invalid = Vec::new();
    for i in which {
        let t = &admin.targets[i];
        let (n, bad) = ops::list_nodes(&*t.kv, &t.layout)
            .await
            .map_err(OpsError::from)?;
        nodes.extend(n.into_iter().map(|r| (t.name.clone(), r)));
        invalid.extend(bad.into_iter().map(|(k, r)| (t.name.clone(), k, r)));
    }
    nodes.sort_by(|(da, a), (db, b)| ops::display_order(a, b).then_with(|| da.cmp(db)));
    let snap = admin.serving.snapshot.load_full();
    let now = registry::now_ms();
    let out: Vec<_> = nodes
        .iter()
        .map(|(dc, n)| {
            let herd = admin.serving.herd_view();
            let assigned = snap
                .as_ref()
                .and_then(|s| s.get(&n.id))
                .map(|e| e.pending(&herd));
            json!({
                "registry": &**dc,
                "record": n,
                "load": n.load(),
                "report_age_ms": n.updated_ms.map(|u| now.saturating_sub(u)),
                "assigned_since_report": assigned,
            })
        })
        .collect();
    let invalid: Vec<_> = invalid
        .into_iter()
        .map(|(dc, key, reason)| json!({"registry": &*dc, "key": key, "reason": reason}))
        .collect();
    Ok(Json(json!({"nodes": out, "invalid": invalid})).into_response())
}

/// The author of an admin request: its token's name (set by [`authorize`]).
#[derive(Clone)]
struct Caller(Author);

async fn command(
    admin: &Admin,
    who: &Author,
    raw: Option<&str>,
    id: &str,
    action: CommandAction,
    percent: Option<i64>,
) -> Result<Response, ApiError> {
    let t = &admin.targets[admin.holder(raw, id).await?];
    let cmd = ops::issue(&*t.kv, &t.layout, id, action, percent, who).await?;
    info!(node_id = %id, registry = %t.name, command = %cmd.id, action = action.as_str(), percent = cmd.percent, "command issued");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"node": id, "registry": &*t.name, "command": cmd})),
    )
        .into_response())
}

async fn drain(
    State(admin): State<Admin>,
    Extension(Caller(who)): Extension<Caller>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    command(
        &admin,
        &who,
        raw.as_deref(),
        &id,
        CommandAction::Drain,
        None,
    )
    .await
}

async fn serve(
    State(admin): State<Admin>,
    Extension(Caller(who)): Extension<Caller>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    command(
        &admin,
        &who,
        raw.as_deref(),
        &id,
        CommandAction::Serve,
        None,
    )
    .await
}

#[derive(Deserialize)]
struct MigrateBody {
    percent: serde_json::Value,
}

async fn migrate(
    State(admin): State<Admin>,
    Extension(Caller(who)): Extension<Caller>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let parsed: MigrateBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("body must be {{\"percent\": N}}: {e}")))?;
    let percent = parsed.percent.as_i64().ok_or_else(|| {
        ApiError::invalid(format!("percent: {} is not an integer", parsed.percent))
    })?;
    command(
        &admin,
        &who,
        raw.as_deref(),
        &id,
        CommandAction::Migrate,
        Some(percent),
    )
    .await
}

/// `?dry_run=true|false&tolerance=0.05`, parsed with the contract's error shape.
fn rebalance_params(raw: Option<&str>) -> Result<(bool, f64), ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| ApiError::invalid(format!("query string: {e}")))?;
    let (mut dry_run, mut tolerance) = (false, ops::DEFAULT_TOLERANCE);
    for (k, v) in pairs {
        match k.as_str() {
            "dry_run" => {
                dry_run = match v.as_str() {
                    "false" | "0" => false,
                    "true" | "1" => true,
                    other => {
                        return Err(ApiError::invalid(format!(
                            "dry_run: {other:?} is not true or false"
                        )))
                    }
                }
            }
            "tolerance" => {
                tolerance = match v.parse::<f64>() {
                    Ok(t) if (0.0..=1.0).contains(&t) => t,
                    _ => {
                        return Err(ApiError::invalid(format!(
                            "tolerance: {v:?} is not a number in [0, 1]"
                        )))
                    }
                }
            }
            _ => {}
        }
    }
    Ok((dry_run, tolerance))
}

async fn rebalance(
    State(admin): State<Admin>,
    Extension(Caller(who)): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let (dry_run, tolerance) = rebalance_params(raw.as_deref())?;
    // Pools are per region, and regions per DC: one registry at a time, the router's
    // own unless named.
    let t = &admin.targets[admin.named(raw.as_deref())?.unwrap_or(admin.local)];
    let (plan, issued) = ops::rebalance(&*t.kv, &t.layout, tolerance, dry_run, &who).await?;
    let issued: Vec<_> = issued
        .iter()
        .inspect(|(node, cmd)| info!(node_id = %node, command = %cmd.id, percent = cmd.percent, "rebalance migrate issued"))
        .map(|(node, cmd)| json!({"node": node, "command": cmd}))
        .collect();
    Ok(Json(
        json!({"registry": &*t.name, "dry_run": dry_run, "tolerance": tolerance, "plan": plan.steps,
                   "pending": plan.pending, "issued": issued}),
    )
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    fn auth(value: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = value {
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_required() {
        assert_eq!(bearer_token(&auth(Some("Bearer s3cret"))), Some("s3cret"));
        assert_eq!(bearer_token(&auth(Some("bearer s3cret"))), Some("s3cret"));
        assert_eq!(bearer_token(&auth(Some("BEARER  s3cret"))), Some("s3cret"));
        assert_eq!(bearer_token(&auth(None)), None);
        assert_eq!(bearer_token(&auth(Some("Bearer "))), None);
        assert_eq!(bearer_token(&auth(Some("Bearer"))), None);
        assert_eq!(bearer_token(&auth(Some("Basic s3cret"))), None);
        assert_eq!(bearer_token(&auth(Some("s3cret"))), None);
    }

    #[test]
    fn rebalance_flags_must_say_what_they_mean() {
        assert!(rebalance_params(Some("dry_run=true")).unwrap().0);
        assert_eq!(
            rebalance_params(None).unwrap(),
            (false, ops::DEFAULT_TOLERANCE)
        );
        for bad in [
            "dry_run=",
            "dry_run",
            "dry_run=yes",
            "tolerance=2",
            "tolerance=",
        ] {
            assert!(rebalance_params(Some(bad)).is_err(), "{bad} accepted");
        }
    }
}
