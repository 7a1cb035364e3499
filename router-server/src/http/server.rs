//! The accept loop and the life of each client connection.
//!
//! What a public endpoint facing a million mobile clients needs, and a framework's
//! default server does not give:
//!
//! * **Deadlines before the first request**: a connection must send its first byte
//!   within `first_byte_timeout_ms`, finish TLS within `tls_handshake_timeout_ms` and its
//!   first request head within `request_timeout_ms`; after that, a keep-alive connection
//!   idle for `idle_timeout_secs` is closed. The same holds for HTTP/1 and HTTP/2
//!   (HTTP/2 also gets explicit stream and header-list limits).
//! * **A connection cap below the open-file limit**: when it is reached, the oldest
//!   connection that has not spoken yet is closed to make room, then the oldest idle
//!   keep-alive connection (nginx reuses idle keep-alive connections the same way);
//!   only when every connection is busy is the new one refused. Each is logged and
//!   counted (`router_connections_closed_by_server{reason}`), so a flood of silent
//!   sockets can no longer stop service without a trace.
//! * **One shutdown tree**: every connection task is tracked. On shutdown the listeners
//!   stop; for `shutdown_keepalive_ms` requests arriving on open keep-alive connections
//!   are still answered, with `Connection: close`; then idle connections close, busy
//!   ones finish their request, and anything left at the grace deadline is cut.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Method, Request, Response, Version};
use axum::response::IntoResponse;
use futures::future::Either;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{info, warn};

use super::error::ApiError;
use super::raw_errors::ErrorBodies;
use super::routes::App;
use crate::config::HttpConfig;
use crate::metrics::{ConnLabels, Metrics};
use crate::state::AppState;
use crate::tls::LiveTlsConfig;

/// File descriptors kept back from the connection cap: etcd channels, log files,
/// certificate reloads, the listeners themselves.
const FD_RESERVE: u64 = 64;

/// `ConnTable::last_full_log_ms` before the cap was ever reached.
const NEVER_LOGGED: u64 = u64::MAX;

/// How long a connection asked to close may linger with nothing in flight.
const CLOSE_LINGER: Duration = Duration::from_millis(500);

/// Raises the soft open-file limit to the hard one and returns the soft limit now in
/// force (`None` where it cannot be read).
pub fn raise_nofile_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => Some(n),
        Err(e) => {
            warn!(error = %e, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
    }
}

/// The connection cap: the configured one, or the open-file limit less a reserve,
/// whichever is lower.
pub fn connection_cap(configured: usize, nofile: Option<u64>) -> usize {
    let by_files = nofile
        .map(|n| n.saturating_sub(FD_RESERVE).max(1))
        .unwrap_or(u64::MAX)
        .min(usize::MAX as u64) as usize;
    match configured {
        0 => by_files.min(1_000_000),
        n if n > by_files => {
            warn!(
                configured = n,
                cap = by_files,
                "http.max_connections is above the open-file limit; capping it"
            );
            by_files
        }
        n => n,
    }
}

/// Where a connection is in its life; the order is the order in which the cap sheds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
enum Phase {
    /// Accepted, no byte yet.
    Silent = 0,
    /// Between requests (or before the first complete head).
    Idle = 1,
    /// A request is being answered.
    Busy = 2,
}

/// One open connection, as the table sees it.
struct Slot {
    phase: AtomicU8,
    /// Requests being answered on it (HTTP/2 multiplexes several).
    in_flight: AtomicU64,
    /// Requests answered so far.
    served: AtomicU64,
    /// Milliseconds since the table's epoch of the last change of phase.
    since_ms: AtomicU64,
    /// Fired to close the connection (shed, or shutdown).
    close: CancellationToken,
    /// Why it was closed by the table, for the metric.
    shed_reason: Mutex<Option<&'static str>>,
}

impl Slot {
    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Silent,
            1 => Phase::Idle,
            _ => Phase::Busy,
        }
    }
}

/// Every open connection, for the cap and for shutdown.
struct ConnTable {
    epoch: Instant,
    cap: usize,
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    next_id: AtomicU64,
    /// When "connection cap reached" was last logged (ms since epoch), to log it at
    /// most once a second under a flood.
    last_full_log_ms: AtomicU64,
}

impl ConnTable {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn set_phase(&self, slot: &Slot, phase: Phase) {
        slot.phase.store(phase as u8, Ordering::Relaxed);
        slot.since_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Registers a new connection, first making room if the cap is reached. `None`
    /// when every connection is busy: the caller refuses the new one.
    fn admit(&self, metrics: &Metrics) -> Option<(u64, Arc<Slot>)> {
        let mut slots = self.slots.lock().expect("connection table lock");
        if slots.len() >= self.cap {
            // The longest-silent connection, else the longest-idle one.
            let victim = slots
                .iter()
                .filter(|(_, s)| s.phase() != Phase::Busy)
                .min_by_key(|(_, s)| (s.phase(), s.since_ms.load(Ordering::Relaxed)))
                .map(|(id, s)| (*id, s.clone()));
            let reason = match &victim {
                Some((_, s)) if s.phase() == Phase::Silent => "shed_silent",
                Some(_) => "shed_idle",
                None => "refused_full",
            };
            self.log_full(slots.len(), reason);
            metrics
                .connections_closed
                .get_or_create(&ConnLabels { reason })
                .inc();
            let (id, slot) = victim?;
            *slot.shed_reason.lock().expect("shed reason lock") = Some(reason);
            slot.close.cancel();
            slots.remove(&id);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            phase: AtomicU8::new(Phase::Silent as u8),
            in_flight: AtomicU64::new(0),
            served: AtomicU64::new(0),
            since_ms: AtomicU64::new(self.now_ms()),
            close: CancellationToken::new(),
            shed_reason: Mutex::new(None),
        });
        slots.insert(id, slot.clone());
        metrics.connections_open.set(slots.len() as i64);
        Some((id, slot))
    }

    fn log_full(&self, open: usize, action: &'static str) {
        let now = self.now_ms();
        let last = self.last_full_log_ms.load(Ordering::Relaxed);
        // `NEVER_LOGGED`: the first time is logged even within the first second.
        if (last == NEVER_LOGGED || now.saturating_sub(last) >= 1000)
            && self
                .last_full_log_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(
                open,
                cap = self.cap,
                action,
                "connection cap reached (http.max_connections / open-file limit)"
            );
        }
    }

    fn remove(&self, id: u64, metrics: &Metrics) {
        let mut slots = self.slots.lock().expect("connection table lock");
        slots.remove(&id);
        metrics.connections_open.set(slots.len() as i64);
    }

    fn len(&self) -> usize {
        self.slots.lock().expect("connection table lock").len()
    }

    /// Closes every connection that is not answering a request now.
    fn close_all(&self) {
        for slot in self.slots.lock().expect("connection table lock").values() {
            slot.close.cancel();
        }
    }
}

/// The limits of one server, from `[http]`.
#[derive(Debug, Clone)]
pub struct EdgeLimits {
    first_byte: Duration,
    tls_handshake: Duration,
    head: Duration,
    idle: Duration,
    keepalive_window: Duration,
    grace: Duration,
}

impl EdgeLimits {
    /// From the `[http]` table.
    pub fn new(h: &HttpConfig) -> EdgeLimits {
        EdgeLimits {
            first_byte: Duration::from_millis(h.first_byte_timeout_ms),
            tls_handshake: Duration::from_millis(h.tls_handshake_timeout_ms),
            head: Duration::from_millis(h.request_timeout_ms),
            idle: Duration::from_secs(h.idle_timeout_secs),
            keepalive_window: Duration::from_millis(h.shutdown_keepalive_ms),
            grace: Duration::from_secs(h.shutdown_grace_secs),
        }
    }
}

/// The HTTP/1 and HTTP/2 protocol settings: head size and timeout for HTTP/1; streams,
/// header-list size, reset-flood and keep-alive limits for HTTP/2.
fn protocol_builder(h: &HttpConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .max_buf_size(h.max_header_bytes.max(8192))
        .header_read_timeout(Duration::from_millis(h.request_timeout_ms));
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(h.h2_max_concurrent_streams)
        .max_header_list_size(h.max_header_bytes as u32)
        .max_pending_accept_reset_streams(Some(50))
        .max_local_error_reset_streams(Some(256))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    b
}

/// A listener, how to speak on it and what it serves.
pub struct Endpoint {
    /// The bound socket.
    pub listener: std::net::TcpListener,
    /// TLS configuration, for HTTPS.
    pub tls: Option<LiveTlsConfig>,
    /// The routes answered here.
    pub app: App,
    /// Names the listener in the log line `serving {label}HTTP(S)` (`""`, `"admin "`).
    pub label: &'static str,
}

/// Serves each endpoint's app on it until `shutdown`, then closes down as the module
/// says. Returns when every connection task has ended (or been cut at the grace
/// deadline).
pub async fn serve_endpoints(
    endpoints: Vec<Endpoint>,
    http: &HttpConfig,
    state: Arc<AppState>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let cap = connection_cap(http.max_connections, raise_nofile_limit());
    state.metrics.connections_max.set(cap as i64);
    let table = Arc::new(ConnTable {
        epoch: Instant::now(),
        cap,
        slots: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(0),
        last_full_log_ms: AtomicU64::new(NEVER_LOGGED),
    });
    let limits = EdgeLimits::new(http);
    let draining = Arc::new(AtomicBool::new(false));
    let builder = Arc::new(protocol_builder(http));
    // Cut: the grace is over; whatever still runs is dropped.
    let cut = CancellationToken::new();
    let conns = TaskTracker::new();
    let mut listeners = Vec::new();
    for ep in endpoints {
        ep.listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(ep.listener)?;
        let addr = listener.local_addr()?;
        let scheme = if ep.tls.is_some() { "HTTPS" } else { "HTTP" };
        info!(%addr, cap, "serving {}{scheme}", ep.label);
        let ctx = Ctx {
            app: ep.app,
            draining: draining.clone(),
            table: table.clone(),
            limits: limits.clone(),
            builder: builder.clone(),
            state: state.clone(),
            shutdown: shutdown.clone(),
            cut: cut.clone(),
            tls: ep.tls,
        };
        listeners.push(tokio::spawn(accept_loop(listener, ctx, conns.clone())));
    }
    shutdown.cancelled().await;
    draining.store(true, Ordering::Relaxed);
    for l in listeners {
        // The loops end with `shutdown`; their sockets close as they return.
        let _ = l.await;
    }
    let open = table.len();
    info!(
        open,
        grace_secs = limits.grace.as_secs(),
        "shutting down: listeners closed, answering requests on open connections"
    );
    // Requests on open keep-alive connections are still answered, with
    // `Connection: close`, for a short window (or until every connection is gone).
    let window_end = Instant::now() + limits.keepalive_window;
    while table.len() > 0 && Instant::now() < window_end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    table.close_all();
    conns.close();
    if tokio::time::timeout(limits.grace, conns.wait())
        .await
        .is_err()
    {
        warn!(
            open = table.len(),
            "grace period over; cutting the connections still open"
        );
        cut.cancel();
        conns.wait().await;
    }
    Ok(())
}

/// What every connection task of a server shares.
struct Ctx {
    app: App,
    /// Set when shutdown begins: answers then say `Connection: close`.
    draining: Arc<AtomicBool>,
    table: Arc<ConnTable>,
    limits: EdgeLimits,
    builder: Arc<auto::Builder<TokioExecutor>>,
    state: Arc<AppState>,
    shutdown: CancellationToken,
    cut: CancellationToken,
    tls: Option<LiveTlsConfig>,
}

impl Clone for Ctx {
    fn clone(&self) -> Self {
        Ctx {
            app: self.app.clone(),
            draining: self.draining.clone(),
            table: self.table.clone(),
            limits: self.limits.clone(),
            builder: self.builder.clone(),
            state: self.state.clone(),
            shutdown: self.shutdown.clone(),
            cut: self.cut.clone(),
            tls: self.tls.clone(),
        }
    }
}

impl Ctx {
    fn count_close(&self, reason: &'static str) {
        self.state
            .metrics
            .connections_closed
            .get_or_create(&ConnLabels { reason })
            .inc();
    }
}

async fn accept_loop(listener: TcpListener, ctx: Ctx, conns: TaskTracker) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and the like: back off a moment rather than spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some((id, slot)) = ctx.table.admit(&ctx.state.metrics) else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        conns.spawn(async move {
            connection(stream, peer, &slot, &ctx).await;
            if let Some(reason) = *slot.shed_reason.lock().expect("shed reason lock") {
                tracing::debug!(%peer, reason, "connection shed");
            }
            ctx.table.remove(id, &ctx.state.metrics);
        });
    }
}

/// One connection: first byte, TLS, then HTTP until it closes, idles out, is shed or
/// the server shuts down.
async fn connection(stream: TcpStream, peer: SocketAddr, slot: &Arc<Slot>, ctx: &Ctx) {
    let mut probe = [0u8; 1];
    tokio::select! {
        r = tokio::time::timeout(ctx.limits.first_byte, stream.peek(&mut probe)) => match r {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return,
            Err(_) => return ctx.count_close("first_byte_timeout"),
        },
        _ = slot.close.cancelled() => return,
        _ = ctx.shutdown.cancelled() => return,
    }
    ctx.table.set_phase(slot, Phase::Idle);
    match &ctx.tls {
        None => http(stream, peer, slot, ctx).await,
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.load_full());
            let handshake = tokio::time::timeout(ctx.limits.tls_handshake, acceptor.accept(stream));
            let stream = tokio::select! {
                r = handshake => match r {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return ctx.count_close("tls_handshake_timeout"),
                },
                _ = slot.close.cancelled() => return,
                _ = ctx.cut.cancelled() => return,
            };
            http(stream, peer, slot, ctx).await
        }
    }
}

async fn http<I>(io: I, peer: SocketAddr, slot: &Arc<Slot>, ctx: &Ctx)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = ConnService {
        app: ctx.app.clone(),
        draining: ctx.draining.clone(),
        peer,
        slot: slot.clone(),
        table: ctx.table.clone(),
    };
    let conn = ctx.builder.serve_connection(
        TokioIo::new(ErrorBodies::new(io)),
        hyper::service::service_fn(move |r| svc.call(r)),
    );
    tokio::pin!(conn);
    let opened = Instant::now();
    // One timer per connection, set to its next deadline (not a periodic tick: a
    // hundred thousand idle connections must not wake the runtime every second).
    let timer = tokio::time::sleep(ctx.limits.head);
    tokio::pin!(timer);
    // Set once the connection is asked to close: `graceful_shutdown` lets a request in
    // flight finish (HTTP/2 sends GOAWAY); a connection with nothing in flight that
    // still has not closed a moment later (a peer that ignores GOAWAY) is dropped.
    let mut closing: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = slot.close.cancelled(), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some(Instant::now());
                timer.as_mut().reset(Instant::now() + CLOSE_LINGER);
            }
            _ = ctx.cut.cancelled() => return,
            _ = timer.as_mut() => {
                let now = Instant::now();
                if closing.is_some() {
                    if slot.in_flight.load(Ordering::Relaxed) == 0 {
                        return;
                    }
                    timer.as_mut().reset(now + CLOSE_LINGER);
                    continue;
                }
                // Before its first request a connection has the head deadline (this
                // also bounds HTTP/2, whose heads hyper does not time); after, the idle one.
                let (limit, since, reason) = if slot.served.load(Ordering::Relaxed) == 0 {
                    (ctx.limits.head, opened, "head_timeout")
                } else {
                    let since = ctx.table.epoch
                        + Duration::from_millis(slot.since_ms.load(Ordering::Relaxed));
                    (ctx.limits.idle, since, "idle_timeout")
                };
                if slot.phase() != Phase::Idle {
                    // Busy: look again once a full idle period could have passed.
                    timer.as_mut().reset(now + ctx.limits.idle);
                } else if now >= since + limit {
                    ctx.count_close(reason);
                    conn.as_mut().graceful_shutdown();
                    closing = Some(now);
                    timer.as_mut().reset(now + CLOSE_LINGER);
                } else {
                    timer.as_mut().reset(since + limit);
                }
            }
        }
    }
}

/// The application as one connection sees it: records the peer address for
/// `ConnectInfo`, keeps the connection's phase, refuses an HTTP/1.1 request without
/// `Host`, and marks answers `Connection: close` once the server is shutting down.
#[derive(Clone)]
struct ConnService {
    app: App,
    draining: Arc<AtomicBool>,
    peer: SocketAddr,
    slot: Arc<Slot>,
    table: Arc<ConnTable>,
}

/// Keeps a request counted as in flight until its answer is produced.
struct InFlight {
    slot: Arc<Slot>,
    table: Arc<ConnTable>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.slot.served.fetch_add(1, Ordering::Relaxed);
        if self.slot.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.table.set_phase(&self.slot, Phase::Idle);
        }
    }
}

impl ConnService {
    fn call(
        &self,
        req: Request<Incoming>,
    ) -> impl std::future::Future<Output = Result<Response<Body>, Infallible>> + Send + 'static
    {
        if self.slot.in_flight.fetch_add(1, Ordering::Relaxed) == 0 {
            self.slot.phase.store(Phase::Busy as u8, Ordering::Relaxed);
        }
        let guard = InFlight {
            slot: self.slot.clone(),
            table: self.table.clone(),
        };
        let http1 = req.version() <= Version::HTTP_11;
        let no_host = req.version() == Version::HTTP_11
            && req.uri().authority().is_none()
            && !req.headers().contains_key(header::HOST);
        let draining = self.draining.clone();
        let answer = if no_host {
            Either::Left(std::future::ready(
                ApiError::invalid("an HTTP/1.1 request needs a Host header").into_response(),
            ))
        } else {
            match &self.app.hot {
                Some(hot) if req.method() == Method::GET && req.uri().path() == hot.path => {
                    Either::Left(std::future::ready(hot.call(
                        self.peer,
                        req.uri(),
                        req.headers(),
                    )))
                }
                _ => {
                    let mut req = req.map(Body::new);
                    req.extensions_mut().insert(ConnectInfo(self.peer));
                    Either::Right(self.app.router.clone().oneshot(req))
                }
            }
        };
        async move {
            let mut resp = match answer {
                Either::Left(ready) => ready.await,
                Either::Right(routed) => routed.await.unwrap_or_else(|e| match e {}),
            };
            if http1 && draining.load(Ordering::Relaxed) {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            drop(guard);
            Ok(resp)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_stays_below_the_open_file_limit() {
        assert_eq!(connection_cap(0, Some(256)), 192);
        assert_eq!(connection_cap(100, Some(256)), 100);
        assert_eq!(connection_cap(10_000, Some(256)), 192);
        assert_eq!(connection_cap(0, Some(10)), 1);
        assert_eq!(connection_cap(0, None), 1_000_000);
        assert_eq!(connection_cap(5, None), 5);
    }

    fn table(cap: usize) -> ConnTable {
        ConnTable {
            epoch: Instant::now(),
            cap,
            slots: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            last_full_log_ms: AtomicU64::new(NEVER_LOGGED),
        }
    }

    #[test]
    fn a_full_table_sheds_silent_then_idle_and_never_busy() {
        let m = Metrics::default();
        let t = table(3);
        let (_, busy) = t.admit(&m).unwrap();
        t.set_phase(&busy, Phase::Busy);
        let (_, idle) = t.admit(&m).unwrap();
        t.set_phase(&idle, Phase::Idle);
        let (_, silent) = t.admit(&m).unwrap();
        let (_, fourth) = t.admit(&m).expect("room made");
        assert!(silent.close.is_cancelled(), "the silent one goes first");
        assert!(!idle.close.is_cancelled() && !busy.close.is_cancelled());
        t.set_phase(&fourth, Phase::Busy);
        t.admit(&m).expect("room made");
        assert!(idle.close.is_cancelled(), "then the idle one");
        t.set_phase(&busy, Phase::Busy);
        let slots: Vec<_> = t.slots.lock().unwrap().values().cloned().collect();
        for s in &slots {
            t.set_phase(s, Phase::Busy);
        }
        assert!(t.admit(&m).is_none(), "all busy: refused");
        assert!(!busy.close.is_cancelled());
        let text = m.render();
        for reason in ["shed_silent", "shed_idle", "refused_full"] {
            assert!(
                text.contains(&format!(
                    "router_connections_closed_by_server_total{{reason=\"{reason}\"}} 1"
                )),
                "{reason}: {text}"
            );
        }
    }
}
