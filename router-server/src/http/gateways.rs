//! `GET /gateways`: the shared [`Api`] (the handles the HTTP edge reads and the route's
//! metric series) and the ready-future service that answers from the current snapshot.

use gateway_api::ErrorCode;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::connect_info::MockConnectInfo;
use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::params::parse_params;
use crate::answer::render_answer;
use crate::config::LiveConfig;
use crate::identity::client_ip;
use crate::metrics::Metrics;
use crate::metrics::{RequestLabels, RouteLabels};
use crate::schedule::{select_weighted, Query, Rules};
use crate::state::{AppState, FleetStatus, Reading, Serving};

/// Everything the router serves.
#[derive(Clone)]
///
/// One `Arc`: handlers clone it per request, and a single refcount is cheaper to share
/// between cores than two.
pub struct Api(Arc<ApiInner>);

/// What [`Api`] shares: the handles the HTTP edge reads. It serves `/metrics` and the
/// fleet page besides the answers, so it reads all four.
pub struct ApiInner {
    /// The configuration in force.
    pub config: LiveConfig,
    /// What answers read (`/gateways`; DoH and HTTPDNS through their [`crate::dns::Dns`]).
    pub serving: Arc<Serving>,
    /// The fleet's status (`/readyz`, `/ops`, `/metrics`' snapshot age).
    pub status: Arc<FleetStatus>,
    /// Every subsystem's metrics: `/metrics` renders them, `/ops` reads a few; requests
    /// count into `http`, answers with no gateway into `edge`.
    pub metrics: Arc<Metrics>,
    /// `/gateways`' own series, resolved once.
    pub(crate) hot_metrics: HotMetrics,
    /// `/dns-query`'s, resolved once too: DoH GETs are the other hot route.
    pub(crate) doh_metrics: HotMetrics,
}

/// The series the busiest route updates on every request, taken from their families
/// once, so a request does no map lookup under a lock.
pub(crate) struct HotMetrics {
    pub(crate) ok: prometheus_client::metrics::counter::Counter,
    pub(crate) latency: crate::metrics::AtomicHistogram,
}

impl std::ops::Deref for Api {
    type Target = ApiInner;
    fn deref(&self) -> &ApiInner {
        &self.0
    }
}

impl Api {
    /// Builds the API over the router's handles; spawn [`Api::housekeeping`] alongside.
    pub fn new(state: &AppState) -> Api {
        let m = &state.metrics;
        let hot = |route: &'static str| HotMetrics {
            ok: m
                .http
                .requests
                .get_or_create(&RequestLabels { route, status: 200 })
                .clone(),
            latency: m.http.latency.get_or_create(&RouteLabels { route }).clone(),
        };
        Api(Arc::new(ApiInner {
            hot_metrics: hot("/gateways"),
            doh_metrics: hot("/dns-query"),
            config: state.config.clone(),
            serving: state.serving.clone(),
            status: state.status.clone(),
            metrics: state.metrics.clone(),
        }))
    }

    /// Forgets idle client networks of the limiters now and then, bounding their memory.
    pub async fn housekeeping(self, cancel: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            }
            self.serving.guard.retain_recent();
        }
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
            Some(peer) => answer(&self.0, peer, req.uri(), req.headers()),
            None => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
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

thread_local! {
    /// Where this thread writes answers, then copies them out at their exact size.
    static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The answer to `GET /gateways` from `peer`, for the server's hot route and for the
/// axum route alike.
pub fn answer(api: &Api, peer: SocketAddr, uri: &Uri, headers: &HeaderMap) -> Response {
    gateways(api, peer, uri, headers).unwrap_or_else(IntoResponse::into_response)
}

fn gateways(
    api: &Api,
    peer: SocketAddr,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let body = api
        .serving
        .read(&api.config, |r| body(api, r, peer, uri, headers))?;
    let mut resp = Response::new(Body::from(body));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// The answer's bytes, from what `r` read.
fn body(
    api: &Api,
    r: &Reading<'_>,
    peer: SocketAddr,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Bytes, ApiError> {
    let cfg = r.config;
    // Headers and query are read in place: this is the hot path.
    // IPv4 clients of a dual-stack listener arrive as IPv4-mapped IPv6 addresses.
    let peer_ip = peer.ip().to_canonical();
    let ip = client_ip(peer_ip, headers, &cfg.trusted_proxies);
    super::forwarded::note(cfg, &api.metrics.edge, peer_ip, headers);
    let guard = &api.serving.guard;
    let pass = guard.check(ip).map_err(ApiError::refused)?;
    let params = parse_params(uri.query())?;
    let region = params.region.as_deref().or_else(|| r.regions.lookup(ip));
    let isp = params.isp.as_deref().or_else(|| r.regions.isp(ip));
    let steer = r
        .policies
        .steer(region, isp)
        .demoting(r.demotions.for_network(region, isp));
    let fallbacks = region
        .and_then(|r| cfg.regions.fallbacks.get(r))
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let query = Query {
        proto: params.proto,
        count: params.count,
        region,
        isp,
        family: params.family,
        steer,
    };
    let Some(snap) = r.snapshot else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::NotReady,
            "the registry has not been loaded yet",
        )
        .retry_after(1));
    };
    let rules = Rules {
        herd: api.serving.herd_view(),
        max_load: cfg.max_load,
        fallbacks,
    };
    let chosen = select_weighted(snap, &query, rules, api.serving.herd_weight(ip, pass, 1));
    if chosen.is_empty() {
        api.metrics.edge.no_gateways.inc();
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::NoGateways,
            "no eligible gateway for this request",
        )
        .retry_after(5));
    }
    let tail = &api.serving.answer_tail;
    // Each candidate's entry looked up once (an index into the persistent vector
    // of nodes is a walk down its tree).
    let nodes: smallvec::SmallVec<[_; 3]> =
        chosen.iter().map(|c| (&snap.nodes[c.index], c)).collect();
    let entries = nodes
        .iter()
        .map(|(e, c)| (e.json.entry(params.proto, c.ip), c.load));
    // An answer naming a node protect holds, or one of a registry out of reach, is
    // stale however fresh the rest is; so is every answer while this router's view
    // is further behind etcd than `max_lag_ms`.
    let stale = snap.stale
        || api
            .serving
            .lagging
            .load(std::sync::atomic::Ordering::Relaxed)
        || nodes.iter().any(|(e, _)| e.held);
    Ok(BUF.with_borrow_mut(|buf| {
        buf.clear();
        render_answer(buf, entries, region, tail, snap.revision, stale);
        Bytes::copy_from_slice(buf)
    }))
}
