//! The HTTP API: `GET /gateways`, health, readiness, metrics, and the layers that
//! protect them (rate limit, timeouts, URI and header limits, CORS).

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use axum::body::{Body, Bytes};
use axum::extract::connect_info::MockConnectInfo;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, get_service};
use axum::{Json, Router};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;
use prefix_trie::joint::map::JointPrefixMap;
use registry::record::{is_name_char, IpFamily};
use registry::Proto;
use serde::Serialize;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::warn;

use crate::config::{FileConfig, RegionsConfig};
use crate::metrics::{RequestLabels, RouteLabels};
use crate::schedule::{select, Candidate, Query, Rules, Snapshot};
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
    const DEFAULTS: GatewaysParams = GatewaysParams {
        proto: Proto::Tcp,
        count: 3,
        region: None,
        family: None,
    };
    if raw.is_none_or(str::is_empty) {
        return Ok(DEFAULTS);
    }
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
                let ok = !v.is_empty() && v.len() <= 64 && v.chars().all(is_name_char);
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
        match hop.parse::<IpAddr>().map(|ip| ip.to_canonical()) {
            Ok(ip) if cfg.is_trusted_proxy(ip) => continue,
            Ok(ip) => return ip,
            // A forged or garbled entry: nothing left of it can be believed.
            Err(_) => return peer,
        }
    }
    peer
}

/// The client-region table: `[regions] cidrs` as a prefix trie (longest prefix wins),
/// so a lookup costs the same for a geo-IP table of 100,000 networks as for one.
pub struct RegionTable {
    cidrs: JointPrefixMap<IpNet, String>,
    default: Option<String>,
}

impl RegionTable {
    /// Builds the table from the configuration.
    pub fn new(cfg: &RegionsConfig) -> RegionTable {
        let mut cidrs = JointPrefixMap::new();
        for (net, region) in &cfg.cidrs {
            // Host bits are ignored, as `IpNet::contains` ignores them.
            cidrs.insert(net.trunc(), region.clone());
        }
        RegionTable {
            cidrs,
            default: (!cfg.default.is_empty()).then(|| cfg.default.clone()),
        }
    }

    /// The region for `ip` (IPv4-mapped IPv6 addresses count as IPv4), else the default.
    pub fn lookup(&self, ip: IpAddr) -> Option<&str> {
        let ip = ip.to_canonical();
        self.cidrs
            .get_lpm(&IpNet::from(ip))
            .map(|(_, r)| r.as_str())
            .or(self.default.as_deref())
    }
}

/// Everything the router serves, with the per-IP limiter.
#[derive(Clone)]
///
/// One `Arc`: handlers clone it per request, and a single refcount is cheaper to share
/// between cores than two.
pub struct Api(Arc<ApiInner>);

/// What [`Api`] shares.
pub struct ApiInner {
    /// Shared state.
    pub state: Arc<AppState>,
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Prefix lengths that group clients into one rate-limit budget (IPv4, IPv6).
    limit_prefix: (u8, u8),
    regions: RegionTable,
}

/// The rate-limit key of `ip`: its network of `v4` / `v6` leading bits.
pub fn rate_key(ip: IpAddr, (v4, v6): (u8, u8)) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(a) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(v4.min(32)))
                .unwrap_or(0);
            IpAddr::V4((u32::from(a) & mask).into())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(v6.min(128)))
                .unwrap_or(0);
            IpAddr::V6((u128::from(a) & mask).into())
        }
    }
}

impl std::ops::Deref for Api {
    type Target = ApiInner;
    fn deref(&self) -> &ApiInner {
        &self.0
    }
}

impl Api {
    /// Builds the API over `state`; spawn [`Api::housekeeping`] alongside.
    pub fn new(state: Arc<AppState>) -> Api {
        let rl = &state.config.rate_limit;
        let limiter = NonZeroU32::new(rl.per_ip_per_sec).map(|rate| {
            let burst = NonZeroU32::new(rl.burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        let regions = RegionTable::new(&state.config.regions);
        let limit_prefix = (rl.ipv4_prefix_len, rl.ipv6_prefix_len);
        Api(Arc::new(ApiInner {
            state,
            limiter,
            limit_prefix,
            regions,
        }))
    }

    /// Forgets idle clients of the rate limiter now and then, bounding its memory.
    pub async fn housekeeping(self, cancel: tokio_util::sync::CancellationToken) {
        let Some(limiter) = &self.limiter else { return };
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
        if let Err(not_until) = limiter.check_key(&rate_key(ip, self.limit_prefix)) {
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

/// `GET /gateways` as a plain service. The answer needs no waiting, so it is computed
/// in `call` and returned as a ready future: no extractor futures, no state clone,
/// nothing large moved between the framework's layers.
#[derive(Clone)]
pub struct Gateways(Api);

impl Gateways {
    /// The service answering `GET /gateways` from `api`.
    pub fn new(api: Api) -> Gateways {
        Gateways(api)
    }
}

impl tower::Service<Request> for Gateways {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Response, std::convert::Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let resp = match peer_addr(&req) {
            Some(peer) => gateways(&self.0, peer, &req).unwrap_or_else(IntoResponse::into_response),
            None => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the server does not know the client's address",
            )
            .into_response(),
        };
        std::future::ready(Ok(resp))
    }
}

/// The TCP peer, as the server (or a test's `MockConnectInfo`) recorded it.
fn peer_addr(req: &Request) -> Option<SocketAddr> {
    let ext = req.extensions();
    ext.get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .or_else(|| ext.get::<MockConnectInfo<SocketAddr>>().map(|m| m.0))
}

/// A thread's view of the served snapshot: `arc_swap::Cache` checks one pointer per
/// request and touches no shared refcount unless the snapshot changed.
type SnapshotCache = arc_swap::Cache<Arc<ArcSwapOption<Snapshot>>, Option<Arc<Snapshot>>>;

/// What each worker thread keeps between requests.
#[derive(Default)]
struct PerThread {
    /// Snapshot cache, for the router (`AppState`) it was made for.
    snapshot: Option<SnapshotCache>,
    /// Where answers are written, then copied out at their exact size.
    buf: Vec<u8>,
}

thread_local! {
    static PER_THREAD: std::cell::RefCell<PerThread> = std::cell::RefCell::default();
}

fn gateways(api: &Api, peer: SocketAddr, req: &Request) -> Result<Response, ApiError> {
    let cfg = &api.state.config;
    // Headers and query are read in place: this is the hot path.
    // IPv4 clients of a dual-stack listener arrive as IPv4-mapped IPv6 addresses.
    let ip = client_ip(peer.ip().to_canonical(), req.headers(), cfg);
    api.check_rate(ip)?;
    let params = parse_params(req.uri().query())?;
    let region = params.region.as_deref().or_else(|| api.regions.lookup(ip));
    let fallbacks = region
        .and_then(|r| cfg.regions.fallbacks.get(r))
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let query = Query {
        proto: params.proto,
        count: params.count,
        region,
        family: params.family,
    };
    let body = PER_THREAD.with_borrow_mut(|t| {
        // One process may run several routers (tests do): the cache follows this one.
        let cache = match &mut t.snapshot {
            Some(c) if std::ptr::eq(c.arc_swap(), &*api.state.snapshot) => c,
            slot => slot.insert(SnapshotCache::new(api.state.snapshot.clone())),
        };
        let Some(snap) = cache.load().as_deref() else {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the registry has not been loaded yet",
            )
            .retry_after(1));
        };
        let rules = Rules {
            max_load: cfg.max_load,
            fallbacks,
        };
        let chosen = select(snap, &query, rules);
        if chosen.is_empty() {
            api.state.metrics.no_gateways.inc();
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_gateways",
                "no eligible gateway for this request",
            )
            .retry_after(5));
        }
        t.buf.clear();
        let tail = &api.state.answer_tail;
        render_answer(&mut t.buf, snap, &chosen, params.proto, region, tail);
        Ok(Bytes::copy_from_slice(&t.buf))
    })?;
    let mut resp = Response::new(Body::from(body));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// `,"ttl_secs":…,"heartbeat_secs":…,"backoff":{…}`: the configuration's constant part
/// of every answer, serialized once.
pub fn answer_tail(cfg: &FileConfig) -> String {
    format!(
        ",\"ttl_secs\":{},\"heartbeat_secs\":{},\"backoff\":{}",
        cfg.ttl_secs,
        cfg.heartbeat_secs,
        serde_json::to_string(&cfg.backoff).expect("backoff serializes")
    )
}

/// Appends a `GET /gateways` answer to `out` from pre-serialized pieces (see
/// [`crate::schedule::NodeJson`]); a property test checks it equals what serde writes.
pub fn render_answer(
    out: &mut Vec<u8>,
    snap: &Snapshot,
    chosen: &[Candidate],
    proto: Proto,
    region: Option<&str>,
    tail: &str,
) {
    out.extend_from_slice(b"{\"gateways\":[");
    for (i, c) in chosen.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(snap.nodes[c.index].json.entry(proto, c.ip).as_bytes());
        write_load(out, c.load);
        out.push(b'}');
    }
    out.extend_from_slice(b"],\"region\":");
    match region {
        // Names from the query and the configuration are plain: no escaping needed.
        Some(r) if r.chars().all(is_name_char) => {
            out.push(b'"');
            out.extend_from_slice(r.as_bytes());
            out.push(b'"');
        }
        Some(r) => serde_json::to_writer(&mut *out, r).expect("a string serializes"),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(tail.as_bytes());
    out.extend_from_slice(b",\"revision\":");
    out.extend_from_slice(itoa::Buffer::new().format(snap.revision).as_bytes());
    out.extend_from_slice(if snap.stale {
        b",\"stale\":true}"
    } else {
        b",\"stale\":false}"
    });
}

/// The load as answered: four decimals are plenty for ordering and dashboards.
fn rounded_load(load: f64) -> f64 {
    (load * 10_000.0).round() / 10_000.0
}

/// Writes [`rounded_load`] as serde_json would, without float formatting in the usual
/// range: the rounded value is `n / 10^4` for an integer `n`, whose shortest decimal
/// form is exactly that fraction, so integer formatting gives the same text.
fn write_load(out: &mut Vec<u8>, load: f64) {
    let scaled = (load * 10_000.0).round();
    if !(0.0..1e12).contains(&scaled) {
        serde_json::to_writer(out, &rounded_load(load)).expect("a finite load serializes");
        return;
    }
    let n = scaled as u64;
    out.extend_from_slice(itoa::Buffer::new().format(n / 10_000).as_bytes());
    out.push(b'.');
    let mut frac = n % 10_000;
    if frac == 0 {
        out.push(b'0');
        return;
    }
    let mut digits = 4;
    while frac % 10 == 0 {
        frac /= 10;
        digits -= 1;
    }
    let mut buf = [b'0'; 4];
    for slot in buf[..digits].iter_mut().rev() {
        *slot = b'0' + (frac % 10) as u8;
        frac /= 10;
    }
    out.extend_from_slice(&buf[..digits]);
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

/// `GET /metrics`: OpenMetrics for scrapers that ask for it (Prometheus does), the
/// Prometheus text format otherwise.
async fn metrics(State(api): State<Api>, headers: HeaderMap) -> Response {
    let m = &api.state.metrics;
    if let Some(t) = *api.state.last_sync.lock().expect("last_sync lock") {
        m.snapshot_age.set(t.elapsed().as_secs_f64());
    }
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            m.render(),
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            m.render_prometheus(),
        )
            .into_response()
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// Every route the server has, as static labels for metrics.
const ROUTES: [&str; 9] = [
    "/gateways",
    "/healthz",
    "/readyz",
    "/metrics",
    "/admin/nodes",
    "/admin/nodes/{id}/drain",
    "/admin/nodes/{id}/migrate",
    "/admin/nodes/{id}/serve",
    "/admin/rebalance",
];

/// The static label of a matched route (`unmatched` for the fallback).
pub(crate) fn route_label(path: Option<&MatchedPath>) -> &'static str {
    path.and_then(|p| ROUTES.iter().find(|r| **r == p.as_str()).copied())
        .unwrap_or("unmatched")
}

/// The edge of every request: refuses over-long URIs before any work, then counts and
/// times the request by route and status. One layer, so the hot path pays for one.
async fn edge(State(api): State<Api>, req: Request, next: Next) -> Response {
    let max = api.state.config.http.max_uri_bytes;
    let len = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().len())
        .unwrap_or(0);
    let route = route_label(req.extensions().get::<MatchedPath>());
    let start = tokio::time::Instant::now();
    let resp = if len > max {
        warn!(len, max, "request URI too long");
        ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("request URI is {len} bytes; the limit is {max}"),
        )
        .into_response()
    } else {
        next.run(req).await
    };
    let m = &api.state.metrics;
    m.latency
        .get_or_create(&RouteLabels { route })
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
/// Only routes that wait on the registry need it; `/gateways` never waits.
pub(crate) async fn deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
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
    let cfg = &api.state.config;
    let mut app = Router::new()
        .route("/gateways", gateways)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(api.clone());
    if let Some(admin) = admin {
        app = app.merge(admin);
    }
    let mut app = app
        .fallback(not_found)
        // After routing, so the matched route is known for the metrics labels.
        .route_layer(middleware::from_fn_with_state(api.clone(), edge));
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
    use crate::config::BackoffConfig;
    use proptest::prelude::*;
    use registry::{NodeRecord, NodeState, Ports};

    /// One candidate, as serde would write it: the reference for [`render_answer`].
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

    /// A whole answer, as serde would write it.
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

    proptest! {
        /// The hand-assembled answer is exactly what serde would write.
        #[test]
        fn rendered_answer_equals_serde(
            nodes in proptest::collection::vec(("[a-z0-9._-]{1,12}", "\\PC{0,12}", proptest::option::of("\\PC{0,20}"), 0u64..2000, any::<bool>()), 1..6),
            region in proptest::option::of(prop_oneof!["[a-zA-Z0-9._-]{1,10}", "\\PC{0,10}"]),
            revision in any::<i64>(), stale in any::<bool>(), proto in 0usize..3,
        ) {
            let records: Vec<Arc<NodeRecord>> = nodes.iter().enumerate().map(|(i, (id, region, domain, conns, v6))| Arc::new(NodeRecord {
                id: format!("{id}{i}"),
                ip: if *v6 { "2001:db8::1".parse().unwrap() } else { "192.0.2.1".parse().unwrap() },
                ports: Ports { tcp: Some(1), ws: Some(2), wss: Some(3) },
                region: region.clone(), capacity: 1000, connections: *conns,
                ipv6: (i % 2 == 0).then(|| "2001:db8::2".parse().unwrap()),
                domain: domain.clone(), zone: None, isp: None, state: NodeState::Serving, healthy: true,
                updated_ms: None, applied_command: None, labels: Default::default(),
            })).collect();
            let snap = Snapshot::build(records, None, revision, stale);
            let proto = Proto::ALL[proto];
            // Dual-stack nodes answer in the family asked for; alternate between both.
            let chosen: Vec<Candidate> = snap.nodes.iter().enumerate().map(|(i, e)| Candidate {
                index: i,
                ip: if i % 3 == 0 { e.record.addr_for(Some(registry::record::IpFamily::V6)).unwrap_or(e.record.ip) } else { e.record.ip },
                port: e.record.ports.get(proto).expect("every port is set"), load: e.projected_load(),
            }).collect();
            let cfg = FileConfig::default();
            let mut rendered = Vec::new();
            render_answer(&mut rendered, &snap, &chosen, proto, region.as_deref(), &answer_tail(&cfg));
            let expected = GatewaysOut {
                gateways: chosen.iter().map(|c| {
                    let r = &snap.nodes[c.index].record;
                    GatewayOut { id: &r.id, ip: c.ip, port: c.port, proto, region: &r.region,
                                 domain: r.domain.as_deref(), load: rounded_load(c.load) }
                }).collect(),
                region: region.as_deref(), ttl_secs: cfg.ttl_secs, heartbeat_secs: cfg.heartbeat_secs,
                backoff: &cfg.backoff, revision, stale,
            };
            prop_assert_eq!(String::from_utf8(rendered).unwrap(), serde_json::to_string(&expected).unwrap());
        }
    }

    proptest! {
        /// Loads are written exactly as serde_json writes the rounded value.
        #[test]
        fn load_text_equals_serde(load in prop_oneof![
            0.0f64..2.0,
            (0u64..100_000_000).prop_map(|n| n as f64 / 10_000.0),
            (0u64..20_000).prop_map(|n| n as f64 / 10_000.0 + 0.00005),
            1e7f64..1e13,
        ]) {
            let mut out = Vec::new();
            write_load(&mut out, load);
            prop_assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&rounded_load(load)).unwrap());
        }
    }

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
    fn rate_keys_group_networks() {
        let key = |ip: &str, p| rate_key(ip.parse().unwrap(), p).to_string();
        assert_eq!(key("203.0.113.77", (32, 64)), "203.0.113.77");
        assert_eq!(key("203.0.113.77", (24, 64)), "203.0.113.0");
        assert_eq!(key("203.0.113.77", (0, 64)), "0.0.0.0");
        assert_eq!(key("2001:db8:1:2:aaaa::1", (32, 64)), "2001:db8:1:2::");
        assert_eq!(
            key("2001:db8:1:2:aaaa::1", (32, 128)),
            "2001:db8:1:2:aaaa::1"
        );
        assert_eq!(key("2001:db8:1:2:aaaa::1", (32, 0)), "::");
        assert_eq!(
            key("::ffff:203.0.113.77", (32, 64)),
            "203.0.113.77",
            "IPv4-mapped"
        );
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
            "[regions]\ndefault = \"d\"\ncidrs = { \"10.0.0.0/8\" = \"wide\", \"10.1.0.0/16\" = \"narrow\", \"2001:db8::/32\" = \"v6\" }",
        )
        .unwrap();
        let t = RegionTable::new(&cfg.regions);
        let lookup = |ip: &str| t.lookup(ip.parse().unwrap());
        assert_eq!(lookup("10.1.2.3"), Some("narrow"));
        assert_eq!(lookup("10.2.2.3"), Some("wide"));
        assert_eq!(lookup("8.8.8.8"), Some("d"));
        assert_eq!(lookup("::ffff:10.1.2.3"), Some("narrow"), "IPv4-mapped");
        assert_eq!(lookup("2001:db8::1"), Some("v6"));
        let no_default = RegionTable::new(&RegionsConfig::default());
        assert_eq!(no_default.lookup("10.1.2.3".parse().unwrap()), None);
    }

    proptest! {
        /// The trie answers what a scan of every network (longest prefix) answers.
        #[test]
        fn region_table_equals_a_scan(
            nets in proptest::collection::vec((any::<u32>(), 0u8..=32, 0u8..4), 0..40),
            probes in proptest::collection::vec(any::<u32>(), 1..40),
        ) {
            let mut cfg = RegionsConfig::default();
            for (addr, len, region) in &nets {
                // Nets near each other, so that many nest.
                let addr = std::net::Ipv4Addr::from(addr & 0xff0f_0000);
                let net = IpNet::from(ipnet::Ipv4Net::new(addr, *len).unwrap());
                cfg.cidrs.insert(net, format!("r{region}"));
            }
            let t = RegionTable::new(&cfg);
            for p in probes {
                let ip = IpAddr::from(std::net::Ipv4Addr::from(p & 0xff0f_ffff));
                let scan = cfg.cidrs.iter()
                    .filter(|(net, _)| net.contains(&ip))
                    .max_by_key(|(net, _)| net.prefix_len())
                    .map(|(_, r)| r.as_str());
                prop_assert_eq!(t.lookup(ip), scan, "{}", ip);
            }
        }
    }
}
