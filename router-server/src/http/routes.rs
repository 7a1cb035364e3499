//! The application: routes, the edge middleware (URI limit, body limit, metrics),
//! health, readiness, metrics and CORS.
//!
//! Request bodies: every route takes at most [`MAX_BODY_BYTES`] (the admin API's JSON
//! is small), `/dns-query` at most [`super::dns::MAX_DNS_MESSAGE`]. A declared
//! `Content-Length` above the limit is answered 413 `payload_too_large` before any
//! byte of the body is read; a chunked body is cut where it crosses the limit
//! ([`super::body_limit`]). How
//! long a body may take to arrive is the server's business ([`super::server`]).

use gateway_api::ErrorCode;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, get_service};
use axum::Router;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::warn;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::Uri;

use super::body_limit::limit_body;
use super::error::ApiError;
use super::gateways::{answer, Api, Gateways};
use crate::metrics::{RequestLabels, RouteLabels};

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(api): State<Api>) -> Result<&'static str, ApiError> {
    if api
        .status
        .going_away
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::NotReady,
            "going away: this router is shutting down; send new connections elsewhere",
        ));
    }
    match api.serving.snapshot.load().as_ref() {
        Some(_) => Ok("ready\n"),
        None => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::NotReady,
            "the registry has not been loaded yet",
        )),
    }
}

/// `GET /metrics`: OpenMetrics for scrapers that ask for it (Prometheus does), the
/// Prometheus text format otherwise.
async fn metrics(State(api): State<Api>, headers: HeaderMap) -> Response {
    let m = &api.metrics;
    if let Some(t) = *api.status.last_sync.lock().expect("last_sync lock") {
        m.fleet.snapshot_age.set(t.elapsed().as_secs_f64());
    }
    use registry::metrics_text::{wants_openmetrics, OPENMETRICS, PROMETHEUS};
    let accept = headers.get_all(header::ACCEPT);
    if wants_openmetrics(accept.iter().filter_map(|v| v.to_str().ok())) {
        ([(header::CONTENT_TYPE, OPENMETRICS)], m.render()).into_response()
    } else {
        ([(header::CONTENT_TYPE, PROMETHEUS)], m.render_prometheus()).into_response()
    }
}

/// The largest request body any route takes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such route")
}

/// Every route the server has, as static labels for metrics.
const ROUTES: [&str; 17] = [
    "/gateways",
    "/outcomes",
    "/healthz",
    "/readyz",
    "/metrics",
    "/admin/nodes",
    "/admin/nodes/{id}/drain",
    "/admin/nodes/{id}/migrate",
    "/admin/nodes/{id}/serve",
    "/admin/rebalance",
    "/admin/explain",
    "/dns-query",
    "/resolve",
    "/d",
    "/sign_d",
    "/{account}/d",
    "/{account}/sign_d",
];

/// The static label of a matched route (`unmatched` for the fallback).
pub(crate) fn route_label(path: Option<&MatchedPath>) -> &'static str {
    path.and_then(|p| ROUTES.iter().find(|r| **r == p.as_str()).copied())
        .unwrap_or("unmatched")
}

/// The edge of every request: refuses over-long URIs before any work, then counts and
/// times the request by route and status. One layer, so the hot path pays for one.
async fn edge(State(api): State<Api>, req: Request, next: Next) -> Response {
    let max = api.config.load().http.max_uri_bytes;
    let len = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().len())
        .unwrap_or(0);
    let route = route_label(req.extensions().get::<MatchedPath>());
    let start = Instant::now();
    let mut resp = match uri_too_long(len, max) {
        Some(e) => e.into_response(),
        None => next.run(req).await,
    };
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE && !is_json(&resp) {
        // The body limit's own answer (plain text): the contract's shape instead.
        resp = ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            format!("the request body is over this route's limit ({route})"),
        )
        .into_response();
    }
    record(&api, route, resp.status(), start.elapsed());
    resp
}

fn is_json(resp: &Response) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"))
}

/// 414 `uri_too_long` when a request URI of `len` bytes is over `max`.
fn uri_too_long(len: usize, max: usize) -> Option<ApiError> {
    (len > max).then(|| {
        warn!(len, max, "request URI too long");
        ApiError::new(
            StatusCode::URI_TOO_LONG,
            ErrorCode::UriTooLong,
            format!("request URI is {len} bytes; the limit is {max}"),
        )
    })
}

/// Counts one request and its time to answer (the edge middleware and the hot route
/// alike).
fn record(api: &Api, route: &'static str, status: StatusCode, took: Duration) {
    let secs = took.as_secs_f64();
    let m = &api.metrics;
    let hot = match route {
        "/gateways" => Some(&api.hot_metrics),
        "/dns-query" => Some(&api.doh_metrics),
        _ => None,
    };
    if let Some(hot) = hot {
        // The hot routes' series, resolved once: no map lookup per request.
        hot.latency.observe(secs);
        if status == StatusCode::OK {
            hot.ok.inc();
            return;
        }
    } else {
        m.http
            .latency
            .get_or_create(&RouteLabels { route })
            .observe(secs);
    }
    m.http
        .requests
        .get_or_create(&RequestLabels {
            route,
            status: status.as_u16(),
        })
        .inc();
}

/// What the server answers by itself, without the framework's router: `GET` on one
/// path, the busiest ones (`/gateways`, and `/dns-query` when the router serves a
/// zone). It does what the router's stack does for that route — URI limit, the answer,
/// metrics — and nothing else, so a request costs what the answer costs. Only used
/// when the stack adds nothing else to that route (no CORS); every other request, and
/// `HEAD`, goes through the router.
#[derive(Clone)]
pub struct HotRoute {
    /// The path answered.
    pub path: &'static str,
    api: Api,
    answer: Arc<HotAnswer>,
}

/// The answer of a [`HotRoute`]: from the peer, the URI and the headers.
pub type HotAnswer = dyn Fn(&Api, SocketAddr, &Uri, &HeaderMap) -> Response + Send + Sync;

impl HotRoute {
    /// Answers one request that arrived at `start`; returns the answer and when it was
    /// ready (the server reads the clock once at each end of a request, not once per
    /// layer).
    pub fn call(
        &self,
        start: Instant,
        peer: SocketAddr,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> (Response, Instant) {
        let len = uri.path_and_query().map(|p| p.as_str().len()).unwrap_or(0);
        let resp = match uri_too_long(len, self.api.config.load().http.max_uri_bytes) {
            Some(e) => e.into_response(),
            None => (self.answer)(&self.api, peer, uri, headers),
        };
        let end = Instant::now();
        record(&self.api, self.path, resp.status(), end - start);
        (resp, end)
    }
}

/// The application as the server runs it: the router, and the routes it answers
/// directly when it can.
#[derive(Clone)]
pub struct App {
    /// Every route.
    pub router: Router,
    /// `GET /gateways` and `GET /dns-query`, answered without the router when nothing
    /// else applies to them.
    pub hot: Vec<HotRoute>,
}

impl App {
    /// The hot route answering `GET path`, if any.
    pub fn hot_for(&self, path: &str) -> Option<&HotRoute> {
        self.hot.iter().find(|h| h.path == path)
    }
}

/// The router's application: [`router`], with `GET /gateways` (and `GET /dns-query`)
/// as hot routes.
pub fn app(api: Api, admin: Option<Router>) -> App {
    clients_app(api, Some(Operator { admin }))
}

/// A listener answering clients, with the operator's routes when `operator` is given:
/// the hot routes and the router, sharing one DNS answerer.
fn clients_app(api: Api, operator: Option<Operator>) -> App {
    let dns = dns_of(&api);
    App {
        hot: hot_gateways(&api, Arc::new(answer))
            .into_iter()
            .chain(hot_doh(&api, dns.clone()))
            .collect(),
        router: surface(
            api.clone(),
            Some(get_service(Gateways::new(api))),
            operator,
            dns,
        ),
    }
}

/// [`app`] with another `/gateways` answer, through exactly the same paths: the HTTP
/// benchmark's same-stack baseline serves a fixed body this way.
pub fn app_with(
    api: Api,
    admin: Option<Router>,
    gateways: axum::routing::MethodRouter<Api>,
    hot: Arc<HotAnswer>,
) -> App {
    App {
        hot: hot_gateways(&api, hot).into_iter().collect(),
        router: router_with(api, admin, gateways),
    }
}

/// `GET /dns-query` served ahead of the router, when the router serves a zone and no
/// CORS headers are configured.
fn hot_doh(api: &Api, dns: Option<Arc<crate::dns::Dns>>) -> Option<HotRoute> {
    let dns = dns?;
    hot(
        api,
        "/dns-query",
        Arc::new(move |_: &Api, peer, uri: &Uri, headers: &HeaderMap| {
            super::dns::doh_get_answer(&dns, peer, headers, uri.query())
                .unwrap_or_else(IntoResponse::into_response)
        }),
    )
}

/// `path` served ahead of the router by `answer`, unless CORS is configured (its
/// headers come from the router's layers).
fn hot(api: &Api, path: &'static str, answer: Arc<HotAnswer>) -> Option<HotRoute> {
    api.config
        .load()
        .http
        .cors_origins
        .is_empty()
        .then(|| HotRoute {
            path,
            api: api.clone(),
            answer,
        })
}

/// The DNS and HTTPDNS answerer of `api`, when the router serves a zone or a router
/// domain.
fn dns_of(api: &Api) -> Option<Arc<crate::dns::Dns>> {
    let cfg = api.config.load();
    (cfg.dns.enabled() || !cfg.httpdns.router_domain.is_empty()).then(|| {
        Arc::new(crate::dns::Dns::new(
            api.config.clone(),
            api.serving.clone(),
            &api.metrics,
        ))
    })
}

/// `/gateways` served ahead of the router by `answer`, unless CORS is configured.
fn hot_gateways(api: &Api, answer: Arc<HotAnswer>) -> Option<HotRoute> {
    hot(api, "/gateways", answer)
}

/// Answers 503 `timeout` (in the contract's error shape) when a request overruns.
/// Only routes that wait on the registry need it; `/gateways` never waits.
pub(crate) async fn deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Timeout,
            format!("request took longer than {} ms", limit.as_millis()),
        )
        .into_response(),
    }
}

/// The whole application: routes plus protection layers. `admin` is merged in when an
/// admin token is configured.
pub fn router(api: Api, admin: Option<Router>) -> Router {
    router_with(api.clone(), admin, get_service(Gateways::new(api)))
}

/// [`router`] with another `/gateways` handler and everything else identical: the
/// HTTP benchmark's baseline serves a fixed body through exactly this stack.
pub fn router_with(
    api: Api,
    admin: Option<Router>,
    gateways: axum::routing::MethodRouter<Api>,
) -> Router {
    let dns = dns_of(&api);
    surface(api, Some(gateways), Some(Operator { admin }), dns)
}

/// The operator's routes of a listener: `/metrics`, `/ops`, `/ops/*.json` and the admin
/// API when `admin` is given.
struct Operator {
    admin: Option<Router>,
}

/// The application of a router with an admin listener (`--admin-listen`): the public
/// one answers clients (`/gateways`, DNS over HTTPS, `/d`, ...), and `/healthz`,
/// `/readyz`; the operator's routes there are 404 `not_found`, like any unknown path.
pub fn public_app(api: Api) -> App {
    clients_app(api, None)
}

/// The application of the admin listener: `/healthz`, `/readyz`, `/metrics`, `/ops`,
/// `/ops/*.json` and, with a token, the admin API; nothing that answers clients.
pub fn operator_app(api: Api, admin: Option<Router>) -> App {
    App {
        router: surface(api, None, Some(Operator { admin }), None),
        hot: Vec::new(),
    }
}

/// One listener's routes: the client-facing ones when `gateways` is given (with DNS
/// over HTTPS and HTTPDNS through `dns`, when the router serves them), the operator's
/// when `operator` is; health and readiness always; the edge middleware and the
/// contract's 404 for the rest.
fn surface(
    api: Api,
    gateways: Option<axum::routing::MethodRouter<Api>>,
    operator: Option<Operator>,
    dns: Option<Arc<crate::dns::Dns>>,
) -> Router {
    let cfg = api.config.load();
    let mut app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(api.clone());
    let public = gateways.is_some();
    if let Some(gateways) = gateways {
        app = app.merge(
            Router::new()
                .route("/gateways", gateways)
                .with_state(api.clone()),
        );
        app = app.merge(super::outcomes::routes(api.clone()));
        if let Some(dns) = dns {
            app = app.merge(super::dns::routes(dns));
        }
    }
    if let Some(Operator { admin }) = operator {
        app = app.merge(
            Router::new()
                .route("/metrics", get(metrics))
                .with_state(api.clone()),
        );
        app = app.merge(super::fleet::routes(admin.is_some()).with_state(api.clone()));
        if let Some(admin) = admin {
            app = app.merge(admin);
        }
    }
    let mut app = limit_body(app.fallback(not_found), MAX_BODY_BYTES)
        // After routing, so the matched route is known for the metrics labels.
        .route_layer(middleware::from_fn_with_state(api.clone(), edge));
    if public && !cfg.http.cors_origins.is_empty() {
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
