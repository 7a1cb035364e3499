//! The HTTP API: `GET /gateways`, health, readiness, metrics, and the layers that
//! protect them (rate limit, timeouts, URI and header limits, CORS).

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, MatchedPath, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use registry::record::IpFamily;
use registry::Proto;
use serde::Serialize;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::warn;

use crate::config::{BackoffConfig, FileConfig};
use crate::metrics::{RequestLabels, RouteLabels};
use crate::schedule::{select, Query, Rules};
use crate::state::AppState;

/// An error answer: `{"error": {"code", "message"}}` with a status and maybe Retry-After.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    /// 400 `invalid_parameter`.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_parameter",
            message: message.into(),
            retry_after: None,
        }
    }

    /// Any status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs.max(1));
        self
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
            },
        });
        let mut resp = (self.status, body).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// A parsed `GET /gateways` query.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewaysParams {
    /// `proto`, default tcp.
    pub proto: Proto,
    /// `count`, default 3.
    pub count: usize,
    /// `region`, overriding the CIDR lookup.
    pub region: Option<String>,
    /// `ip_version`.
    pub family: Option<IpFamily>,
}

/// Parses the query string strictly: each known parameter at most once and in range;
/// unknown parameters are ignored (cache busters, tracking tags).
pub fn parse_params(raw: Option<&str>) -> Result<GatewaysParams, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| ApiError::invalid(format!("query string: {e}")))?;
    let mut p = GatewaysParams {
        proto: Proto::Tcp,
        count: 3,
        region: None,
        family: None,
    };
    let mut seen: Vec<&str> = Vec::new();
    for (k, v) in &pairs {
        let key = match k.as_str() {
            "proto" | "count" | "region" | "ip_version" => k.as_str(),
            _ => continue,
        };
        if seen.contains(&key) {
            return Err(ApiError::invalid(format!("{key}: given more than once")));
        }
        seen.push(key);
        match key {
            "proto" => {
                p.proto = v
                    .parse()
                    .map_err(|_| ApiError::invalid(format!("proto: {v:?} is not tcp, ws or wss")))?
            }
            "count" => {
                p.count = match v.parse::<usize>() {
                    Ok(n @ 1..=10) => n,
                    _ => {
                        return Err(ApiError::invalid(format!(
                            "count: {v:?} is not an integer 1-10"
                        )))
                    }
                }
            }
            "region" => {
                let ok = !v.is_empty()
                    && v.len() <= 64
                    && v.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                if !ok {
                    return Err(ApiError::invalid(format!(
                        "region: {v:?} is not 1-64 of A-Z a-z 0-9 - _ ."
                    )));
                }
                p.region = Some(v.clone());
            }
            _ => {
                p.family = Some(match v.as_str() {
                    "4" => IpFamily::V4,
                    "6" => IpFamily::V6,
                    _ => {
                        return Err(ApiError::invalid(format!(
                            "ip_version: {v:?} is not 4 or 6"
                        )))
                    }
                })
            }
        }
    }
    Ok(p)
}

/// The client's address: the TCP peer, or — when the peer is a trusted proxy — the
/// right-most X-Forwarded-For entry that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, cfg: &FileConfig) -> IpAddr {
    if !cfg.is_trusted_proxy(peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if cfg.is_trusted_proxy(ip) => continue,
            Ok(ip) => return ip,
            // A forged or garbled entry: nothing left of it can be believed.
            Err(_) => return peer,
        }
    }
    peer
}

/// The region for `ip` from the CIDR table (longest prefix), else the default.
pub fn region_for(ip: IpAddr, cfg: &FileConfig) -> Option<String> {
    cfg.regions
        .cidrs
        .iter()
        .filter(|(net, _)| net.contains(&ip))
        .max_by_key(|(net, _)| net.prefix_len())
        .map(|(_, r)| r.clone())
        .or_else(|| (!cfg.regions.default.is_empty()).then(|| cfg.regions.default.clone()))
}

#[derive(Serialize)]
struct GatewayOut<'a> {
    id: &'a str,
    ip: IpAddr,
    port: u16,
    proto: Proto,
    region: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    domain: Option<&'a str>,
    load: f64,
}

#[derive(Serialize)]
struct GatewaysOut<'a> {
    gateways: Vec<GatewayOut<'a>>,
    region: Option<&'a str>,
    ttl_secs: u64,
    heartbeat_secs: u64,
    backoff: &'a BackoffConfig,
    revision: i64,
    stale: bool,
}

/// Everything the router serves, with the per-IP limiter.
#[derive(Clone)]
pub struct Api {
    /// Shared state.
    pub state: Arc<AppState>,
    limiter: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
}

impl Api {
    /// Builds the API over `state`; spawn [`Api::housekeeping`] alongside.
    pub fn new(state: Arc<AppState>) -> Api {
        let rl = &state.config.rate_limit;
        let limiter = NonZeroU32::new(rl.per_ip_per_sec).map(|rate| {
            let burst = NonZeroU32::new(rl.burst).unwrap_or(rate);
            Arc::new(RateLimiter::keyed(
                Quota::per_second(rate).allow_burst(burst),
            ))
        });
        Api { state, limiter }
    }

    /// Forgets idle clients of the rate limiter now and then, bounding its memory.
    pub async fn housekeeping(self, cancel: tokio_util::sync::CancellationToken) {
        let Some(limiter) = self.limiter else { return };
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            }
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    fn check_rate(&self, ip: IpAddr) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if let Err(not_until) = limiter.check_key(&ip) {
            use governor::clock::{Clock, DefaultClock};
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            self.state.metrics.rate_limited.inc();
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests from this address",
            )
            .retry_after(wait.as_secs_f64().ceil() as u64));
        }
        Ok(())
    }
}

async fn gateways(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let cfg = &api.state.config;
    let ip = client_ip(peer.ip(), &headers, cfg);
    api.check_rate(ip)?;
    let params = parse_params(raw.as_deref())?;
    let snap = api.state.snapshot.load_full().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the registry has not been loaded yet",
        )
        .retry_after(1)
    })?;
    let region = params.region.clone().or_else(|| region_for(ip, cfg));
    let fallbacks = region
        .as_deref()
        .and_then(|r| cfg.regions.fallbacks.get(r))
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let query = Query {
        proto: params.proto,
        count: params.count,
        region: region.as_deref(),
        family: params.family,
    };
    let chosen = select(
        &snap,
        &query,
        Rules {
            max_load: cfg.max_load,
            fallbacks,
        },
    );
    if chosen.is_empty() {
        api.state.metrics.no_gateways.inc();
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_gateways",
            "no eligible gateway for this request",
        )
        .retry_after(5));
    }
    let out = GatewaysOut {
        gateways: chosen
            .iter()
            .map(|c| {
                let r = &snap.nodes[c.index].record;
                GatewayOut {
                    id: &r.id,
                    ip: c.ip,
                    port: c.port,
                    proto: params.proto,
                    region: &r.region,
                    domain: r.domain.as_deref(),
                    load: (c.load * 10_000.0).round() / 10_000.0,
                }
            })
            .collect(),
        region: region.as_deref(),
        ttl_secs: cfg.ttl_secs,
        heartbeat_secs: cfg.heartbeat_secs,
        backoff: &cfg.backoff,
        revision: snap.revision,
        stale: snap.stale,
    };
    let mut resp = Json(out).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(api): State<Api>) -> Result<&'static str, ApiError> {
    match api.state.snapshot.load().as_ref() {
        Some(_) => Ok("ready\n"),
        None => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the registry has not been loaded yet",
        )),
    }
}

async fn metrics(State(api): State<Api>) -> Response {
    let m = &api.state.metrics;
    if let Some(t) = *api.state.last_sync.lock().expect("last_sync lock") {
        m.snapshot_age.set(t.elapsed().as_secs_f64());
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// Counts and times every request by matched route and status.
async fn observe(State(api): State<Api>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let start = tokio::time::Instant::now();
    let resp = next.run(req).await;
    let m = &api.state.metrics;
    m.latency
        .get_or_create(&RouteLabels {
            route: route.clone(),
        })
        .observe(start.elapsed().as_secs_f64());
    m.requests
        .get_or_create(&RequestLabels {
            route,
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}

/// Answers 503 `timeout` (in the contract's error shape) when a request overruns.
async fn deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!("request took longer than {} ms", limit.as_millis()),
        )
        .into_response(),
    }
}

/// Refuses over-long URIs before any routing work.
async fn limit_uri(State(max): State<usize>, req: Request, next: Next) -> Response {
    let len = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().len())
        .unwrap_or(0);
    if len > max {
        warn!(len, max, "request URI too long");
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("request URI is {len} bytes; the limit is {max}"),
        )
        .into_response();
    }
    next.run(req).await
}

/// The whole application: routes plus protection layers. `admin` is merged in when an
/// admin token is configured.
pub fn router(api: Api, admin: Option<Router>) -> Router {
    let cfg = &api.state.config;
    let mut app = Router::new()
        .route("/gateways", get(gateways))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(api.clone());
    if let Some(admin) = admin {
        app = app.merge(admin);
    }
    let mut app = app
        .fallback(not_found)
        .route_layer(middleware::from_fn_with_state(api.clone(), observe))
        .layer(middleware::from_fn_with_state(
            cfg.request_timeout(),
            deadline,
        ))
        .layer(middleware::from_fn_with_state(
            cfg.http.max_uri_bytes,
            limit_uri,
        ));
    if !cfg.http.cors_origins.is_empty() {
        let origins = if cfg.http.cors_origins.iter().any(|o| o == "*") {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(cfg.http.cors_origins.iter().filter_map(|o| o.parse().ok()))
        };
        app = app.layer(
            CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([Method::GET])
                .max_age(Duration::from_secs(600)),
        );
    }
    app
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params() {
        let p = parse_params(Some("proto=wss&count=10&region=cn-sh&ip_version=6&x=1")).unwrap();
        assert_eq!(
            p,
            GatewaysParams {
                proto: Proto::Wss,
                count: 10,
                region: Some("cn-sh".into()),
                family: Some(IpFamily::V6)
            }
        );
        assert_eq!(parse_params(None).unwrap().count, 3);
        for bad in [
            "proto=udp",
            "count=0",
            "count=11",
            "count=x",
            "count=-1",
            "region=",
            "region=a/b",
            "ip_version=5",
            "proto=tcp&proto=ws",
        ] {
            let e = parse_params(Some(bad)).expect_err(bad);
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
            let key = bad.split('=').next().unwrap();
            assert!(e.message.starts_with(key), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn client_ip_trusts_only_configured_proxies() {
        let cfg = FileConfig {
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
            ..FileConfig::default()
        };
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "1.1.1.1, 2.2.2.2, 10.0.0.5".parse().unwrap(),
        );
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), &h, &cfg),
            "2.2.2.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip("9.9.9.9".parse().unwrap(), &h, &cfg),
            "9.9.9.9".parse::<IpAddr>().unwrap(),
            "untrusted peer"
        );
        h.insert("x-forwarded-for", "1.1.1.1, garbage".parse().unwrap());
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), &h, &cfg),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), &HeaderMap::new(), &cfg),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn region_lookup_takes_the_longest_prefix() {
        let cfg = FileConfig::parse(
            "[regions]\ndefault = \"d\"\ncidrs = { \"10.0.0.0/8\" = \"wide\", \"10.1.0.0/16\" = \"narrow\" }",
        )
        .unwrap();
        assert_eq!(
            region_for("10.1.2.3".parse().unwrap(), &cfg).as_deref(),
            Some("narrow")
        );
        assert_eq!(
            region_for("10.2.2.3".parse().unwrap(), &cfg).as_deref(),
            Some("wide")
        );
        assert_eq!(
            region_for("8.8.8.8".parse().unwrap(), &cfg).as_deref(),
            Some("d")
        );
    }
}
