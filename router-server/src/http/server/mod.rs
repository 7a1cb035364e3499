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
//! * **Deadlines after the head**: a request's body must have arrived whole within
//!   `body_timeout_ms` of its head, or the request is answered 408 `request_timeout`
//!   and the connection closed (`body_timeout`); a connection answering a request that
//!   reads and writes nothing for `stall_timeout_ms` is dropped (`stalled`). Bodies
//!   are bounded by the routes (64 KiB; `/dns-query` 65,535 bytes: [`super::routes`]).
//! * **A connection cap below the open-file limit**, busy connections included. When
//!   it is reached, the table closes, to make room, the first of:
//!   1. the connection silent (no byte yet) the longest (`shed_silent`);
//!   2. the keep-alive connection idle the longest (`shed_idle`; nginx reuses idle
//!      keep-alive connections the same way);
//!   3. the connection busy the longest, if it has been busy beyond the request
//!      deadline, `max(request_timeout_ms, body_timeout_ms)` (`shed_overdue`): a
//!      request that old is a client holding the slot, not one being served.
//!
//!   Only when every connection is busy within the deadline is the new one refused
//!   (`refused_full`).
//! * **A cap per client network** (`max_connections_per_network`): a network is the
//!   TCP peer's /24 or /56 ([`crate::identity::connection_network`]); a connection beyond
//!   its network's share is closed at accept (`per_network_cap`) and no other network
//!   notices. The peer is the TCP peer, before any `X-Forwarded-For`: behind a load
//!   balancer, list the balancers in `connection_cap_exempt` (or set the cap to 0).
//! * **One shutdown tree**: every connection task is tracked. On shutdown the listeners
//!   stop; for `shutdown_keepalive_ms` requests arriving on open keep-alive connections
//!   are still answered, with `Connection: close`; then idle connections close, busy
//!   ones finish their request, and anything left at the grace deadline is cut.
//!
//! Each closing is logged (table events at most once a second) and counted
//! (`router_connections_closed_by_server{reason}`), so neither a flood of silent
//! sockets nor a crowd of slow requests can stop service without a trace.

use gateway_api::ErrorCode;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use axum::response::IntoResponse;
use futures::future::Either;
use hyper::body::{Body as _, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use ipnet::IpNet;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{info, warn};

use super::error::ApiError;
use super::raw_errors::ErrorBodies;
use super::routes::App;
use crate::config::HttpConfig;
use crate::identity::connection_network;
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
    /// Milliseconds since the table's epoch of the last byte read or written.
    progress_ms: AtomicU64,
    /// The client network it counts against (`None`: not counted).
    network: Option<IpAddr>,
    /// Fired to close the connection (shed, or shutdown).
    close: CancellationToken,
    /// Told when the connection turns busy, so its timer watches for a stall.
    busy: Notify,
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

/// Why the table refused a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// Every connection is busy within the request deadline.
    Full,
    /// The client's network holds its share already.
    NetworkCap,
}

/// How the table shares its room: the caps and who is exempt.
struct TableRules {
    /// Connections open at once.
    cap: usize,
    /// Connections open at once per client network; 0: no cap.
    per_network: usize,
    /// Peers not counted per network (load balancers).
    exempt: Vec<IpNet>,
    /// A connection busy longer than this may be shed for room.
    overdue_ms: u64,
}

/// The open connections and how many each client network holds.
#[derive(Default)]
struct Open {
    slots: HashMap<u64, Arc<Slot>>,
    networks: HashMap<IpAddr, usize>,
}

impl Open {
    /// Forgets `id`, if it is still here, and its network's share.
    fn remove(&mut self, id: u64) -> Option<Arc<Slot>> {
        let slot = self.slots.remove(&id)?;
        if let Some(net) = slot.network {
            if let Some(n) = self.networks.get_mut(&net) {
                *n -= 1;
                if *n == 0 {
                    self.networks.remove(&net);
                }
            }
        }
        Some(slot)
    }
}

/// Every open connection, for the caps and for shutdown.
struct ConnTable {
    epoch: Instant,
    rules: TableRules,
    open: Mutex<Open>,
    next_id: AtomicU64,
    /// When "connection cap reached" was last logged (ms since epoch), to log it at
    /// most once a second under a flood.
    last_full_log_ms: AtomicU64,
    /// The same for "per-network connection cap reached".
    last_network_log_ms: AtomicU64,
}

/// The connection to close for room, and why: the longest-silent, else the
/// longest-idle, else the longest-busy if it is busy beyond `overdue_ms`.
fn pick_victim(
    slots: &HashMap<u64, Arc<Slot>>,
    now_ms: u64,
    overdue_ms: u64,
) -> Option<(u64, &'static str)> {
    slots
        .iter()
        .filter(|(_, s)| {
            s.phase() != Phase::Busy
                || now_ms.saturating_sub(s.since_ms.load(Ordering::Relaxed)) > overdue_ms
        })
        .min_by_key(|(_, s)| (s.phase(), s.since_ms.load(Ordering::Relaxed)))
        .map(|(id, s)| {
            let reason = match s.phase() {
                Phase::Silent => "shed_silent",
                Phase::Idle => "shed_idle",
                Phase::Busy => "shed_overdue",
            };
            (*id, reason)
        })
}

impl ConnTable {
    fn new(epoch: Instant, rules: TableRules) -> ConnTable {
        ConnTable {
            epoch,
            rules,
            open: Mutex::new(Open::default()),
            next_id: AtomicU64::new(0),
            last_full_log_ms: AtomicU64::new(NEVER_LOGGED),
            last_network_log_ms: AtomicU64::new(NEVER_LOGGED),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn set_phase(&self, slot: &Slot, phase: Phase) {
        slot.phase.store(phase as u8, Ordering::Relaxed);
        slot.since_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// The network `peer` counts against, if it is counted at all.
    fn network_of(&self, peer: IpAddr) -> Option<IpAddr> {
        let peer = peer.to_canonical();
        (self.rules.per_network > 0 && !self.rules.exempt.iter().any(|n| n.contains(&peer)))
            .then(|| connection_network(peer))
    }

    /// Registers a new connection from `peer`, first making room if the cap is
    /// reached (the module docs give the order); refused when its network holds its
    /// share or nothing may be shed. Every refusal and shedding is counted.
    fn admit(&self, peer: IpAddr, metrics: &Metrics) -> Result<(u64, Arc<Slot>), Refused> {
        self.admit_at(self.now_ms(), peer, metrics)
    }

    fn admit_at(
        &self,
        now: u64,
        peer: IpAddr,
        metrics: &Metrics,
    ) -> Result<(u64, Arc<Slot>), Refused> {
        let count = |reason| {
            metrics
                .connections_closed
                .get_or_create(&ConnLabels { reason })
                .inc();
        };
        let mut open = self.open.lock().expect("connection table lock");
        let network = self.network_of(peer);
        if let Some(net) = network {
            let held = open.networks.get(&net).copied().unwrap_or(0);
            if held >= self.rules.per_network {
                count("per_network_cap");
                if self.may_log(&self.last_network_log_ms, now) {
                    warn!(
                        network = %net,
                        held,
                        cap = self.rules.per_network,
                        "per-network connection cap reached (http.max_connections_per_network)"
                    );
                }
                return Err(Refused::NetworkCap);
            }
        }
        if open.slots.len() >= self.rules.cap {
            let victim = pick_victim(&open.slots, now, self.rules.overdue_ms);
            let reason = victim.map_or("refused_full", |(_, r)| r);
            if self.may_log(&self.last_full_log_ms, now) {
                warn!(
                    open = open.slots.len(),
                    cap = self.rules.cap,
                    action = reason,
                    "connection cap reached (http.max_connections / open-file limit)"
                );
            }
            count(reason);
            let (id, _) = victim.ok_or(Refused::Full)?;
            let slot = open.remove(id).expect("the victim is in the table");
            *slot.shed_reason.lock().expect("shed reason lock") = Some(reason);
            slot.close.cancel();
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            phase: AtomicU8::new(Phase::Silent as u8),
            in_flight: AtomicU64::new(0),
            served: AtomicU64::new(0),
            since_ms: AtomicU64::new(now),
            progress_ms: AtomicU64::new(now),
            network,
            close: CancellationToken::new(),
            busy: Notify::new(),
            shed_reason: Mutex::new(None),
        });
        open.slots.insert(id, slot.clone());
        if let Some(net) = network {
            *open.networks.entry(net).or_default() += 1;
        }
        metrics.connections_open.set(open.slots.len() as i64);
        Ok((id, slot))
    }

    /// True at most once a second per `last` (and the first time).
    fn may_log(&self, last: &AtomicU64, now: u64) -> bool {
        let seen = last.load(Ordering::Relaxed);
        (seen == NEVER_LOGGED || now.saturating_sub(seen) >= 1000)
            && last
                .compare_exchange(seen, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    fn remove(&self, id: u64, metrics: &Metrics) {
        let mut open = self.open.lock().expect("connection table lock");
        open.remove(id);
        metrics.connections_open.set(open.slots.len() as i64);
    }

    fn len(&self) -> usize {
        self.open.lock().expect("connection table lock").slots.len()
    }

    /// Closes every connection that is not answering a request now.
    fn close_all(&self) {
        for slot in self
            .open
            .lock()
            .expect("connection table lock")
            .slots
            .values()
        {
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
    body: Duration,
    stall: Duration,
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
            body: Duration::from_millis(h.body_timeout_ms),
            // A handler may wait on etcd for its own deadline without a byte moving.
            stall: Duration::from_millis(h.stall_timeout_ms.max(h.request_timeout_ms)),
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
    let table = Arc::new(ConnTable::new(
        Instant::now(),
        TableRules {
            cap,
            per_network: http.max_connections_per_network,
            exempt: http.connection_cap_exempt.clone(),
            overdue_ms: http.request_timeout_ms.max(http.body_timeout_ms),
        },
    ));
    let limits = EdgeLimits::new(http);
    let body_timeouts = state
        .metrics
        .connections_closed
        .get_or_create(&ConnLabels {
            reason: "body_timeout",
        })
        .clone();
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
            body_timeouts: body_timeouts.clone(),
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
    /// `router_connections_closed_by_server{reason="body_timeout"}`, resolved once.
    body_timeouts: Counter,
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
            body_timeouts: self.body_timeouts.clone(),
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
        let Ok((id, slot)) = ctx.table.admit(peer.ip(), &ctx.state.metrics) else {
            // Closed at once: no byte read, nothing written.
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
        body_timeout: ctx.limits.body,
        body_timeouts: ctx.body_timeouts.clone(),
    };
    let io = Progress {
        inner: io,
        slot: slot.clone(),
        epoch: ctx.table.epoch,
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
                if *slot.shed_reason.lock().expect("shed reason lock") == Some("shed_overdue") {
                    // Its request is the problem: nothing in it is worth finishing.
                    return;
                }
                conn.as_mut().graceful_shutdown();
                closing = Some(Instant::now());
                timer.as_mut().reset(Instant::now() + CLOSE_LINGER);
            }
            _ = ctx.cut.cancelled() => return,
            _ = slot.busy.notified(), if closing.is_none() => {
                timer.as_mut().reset(Instant::now() + ctx.limits.stall);
            }
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
                if slot.phase() == Phase::Busy {
                    // Busy: closed once no byte has moved for the stall limit. Its
                    // request is stuck, so the connection is dropped, not drained.
                    let last = slot
                        .progress_ms
                        .load(Ordering::Relaxed)
                        .max(slot.since_ms.load(Ordering::Relaxed));
                    let stalled_at =
                        ctx.table.epoch + Duration::from_millis(last) + ctx.limits.stall;
                    if now >= stalled_at {
                        ctx.count_close("stalled");
                        return;
                    }
                    timer.as_mut().reset(stalled_at);
                } else if slot.phase() != Phase::Idle {
                    // Silent cannot last past the first byte; look again later.
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
/// `ConnectInfo`, keeps the connection's phase, puts the body deadline on each
/// request, refuses an HTTP/1.1 request without `Host`, and marks answers
/// `Connection: close` once the server is shutting down.
#[derive(Clone)]
struct ConnService {
    app: App,
    draining: Arc<AtomicBool>,
    peer: SocketAddr,
    slot: Arc<Slot>,
    table: Arc<ConnTable>,
    body_timeout: Duration,
    body_timeouts: Counter,
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

/// A request body that had not arrived whole by its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0} ms of its head")]
pub struct BodyTimeout(u64);

/// A request body with a deadline: past it, reading fails with [`BodyTimeout`] and
/// `expired` is set, so the answer becomes 408 whatever the handler made of the error.
struct TimedBody {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
    expired: Arc<AtomicBool>,
    /// The whole body has arrived: the deadline no longer matters.
    done: bool,
}

impl hyper::body::Body for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if !self.done && self.deadline.as_mut().poll(cx).is_ready() {
            self.expired.store(true, Ordering::Relaxed);
            let ms = self.limit.as_millis() as u64;
            return Poll::Ready(Some(Err(BodyTimeout(ms).into())));
        }
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if frame.is_none() {
            self.done = true;
        }
        Poll::Ready(frame.map(|f| f.map_err(axum::BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The connection's bytes, noting when the last one moved (for the stall limit).
struct Progress<I> {
    inner: I,
    slot: Arc<Slot>,
    epoch: Instant,
}

impl<I> Progress<I> {
    fn moved(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.slot.progress_ms.store(now, Ordering::Relaxed);
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Progress<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.moved();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Progress<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// 408 `request_timeout`: the body did not arrive in time.
fn body_timeout_answer(limit: Duration) -> Response<Body> {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        ErrorCode::RequestTimeout,
        format!(
            "the request body did not arrive within {} ms",
            limit.as_millis()
        ),
    )
    .into_response()
}

impl ConnService {
    fn call(
        &self,
        req: Request<Incoming>,
    ) -> impl std::future::Future<Output = Result<Response<Body>, Infallible>> + Send + 'static
    {
        if self.slot.in_flight.fetch_add(1, Ordering::Relaxed) == 0 {
            self.table.set_phase(&self.slot, Phase::Busy);
            self.slot.busy.notify_one();
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
        let expired = Arc::new(AtomicBool::new(false));
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
                    let mut req = if req.body().is_end_stream() {
                        req.map(Body::new)
                    } else {
                        let limit = self.body_timeout;
                        let expired = expired.clone();
                        req.map(|inner| {
                            Body::new(TimedBody {
                                inner,
                                deadline: Box::pin(tokio::time::sleep(limit)),
                                limit,
                                expired,
                                done: false,
                            })
                        })
                    };
                    req.extensions_mut().insert(ConnectInfo(self.peer));
                    Either::Right(self.app.router.clone().oneshot(req))
                }
            }
        };
        let (slot, limit, timeouts) = (
            self.slot.clone(),
            self.body_timeout,
            self.body_timeouts.clone(),
        );
        async move {
            let mut resp = match answer {
                Either::Left(ready) => ready.await,
                Either::Right(routed) => routed.await.unwrap_or_else(|e| match e {}),
            };
            if expired.load(Ordering::Relaxed) {
                // Whatever the handler answered to the failed read, the client hears
                // why, and the connection goes: the rest of its body is not wanted.
                resp = body_timeout_answer(limit);
                if http1 {
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                timeouts.inc();
                slot.close.cancel();
            } else if http1 && draining.load(Ordering::Relaxed) {
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

    fn table(cap: usize, per_network: usize, exempt: &[&str]) -> ConnTable {
        ConnTable::new(
            Instant::now(),
            TableRules {
                cap,
                per_network,
                exempt: exempt.iter().map(|n| n.parse().unwrap()).collect(),
                overdue_ms: 5000,
            },
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn closed(m: &Metrics, reason: &'static str) -> u64 {
        m.connections_closed
            .get_or_create(&ConnLabels { reason })
            .get()
    }

    #[test]
    fn a_full_table_sheds_silent_then_idle_then_overdue_busy() {
        let m = Metrics::default();
        let t = table(3, 0, &[]);
        let a = ip("203.0.113.1");
        let set = |s: &Slot, phase, since| {
            s.phase.store(phase as u8, Ordering::Relaxed);
            s.since_ms.store(since, Ordering::Relaxed);
        };
        let (_, busy) = t.admit_at(0, a, &m).unwrap();
        set(&busy, Phase::Busy, 100);
        let (_, idle) = t.admit_at(0, a, &m).unwrap();
        set(&idle, Phase::Idle, 50);
        let (_, silent) = t.admit_at(200, a, &m).unwrap();
        let (_, fourth) = t.admit_at(300, a, &m).expect("room made");
        assert!(silent.close.is_cancelled(), "the silent one goes first");
        assert!(!idle.close.is_cancelled() && !busy.close.is_cancelled());
        set(&fourth, Phase::Busy, 300);
        let (_, fifth) = t.admit_at(400, a, &m).expect("room made");
        assert!(idle.close.is_cancelled(), "then the idle one");
        set(&fifth, Phase::Busy, 400);
        // All busy, none beyond the 5 s request deadline: the newcomer is refused.
        assert_eq!(t.admit_at(5000, a, &m).err(), Some(Refused::Full));
        assert!(!busy.close.is_cancelled());
        // Past it, the one busy the longest makes room, and only that one.
        t.admit_at(5200, a, &m).expect("room made");
        assert!(busy.close.is_cancelled(), "busy since 100: overdue at 5200");
        assert!(!fourth.close.is_cancelled() && !fifth.close.is_cancelled());
        assert_eq!(
            *busy.shed_reason.lock().unwrap(),
            Some("shed_overdue"),
            "its task drops it at once"
        );
        assert_eq!(t.len(), 3);
        let text = m.render();
        for reason in ["shed_silent", "shed_idle", "shed_overdue", "refused_full"] {
            assert!(
                text.contains(&format!(
                    "router_connections_closed_by_server_total{{reason=\"{reason}\"}} 1"
                )),
                "{reason}: {text}"
            );
        }
    }

    #[test]
    fn a_network_at_its_share_is_refused_and_no_other_notices() {
        let m = Metrics::default();
        let t = table(100, 2, &["192.0.2.0/28"]);
        let (first, _) = t.admit(ip("198.51.100.1"), &m).unwrap();
        t.admit(ip("198.51.100.200"), &m).unwrap();
        // The same /24, from another address: refused; counted.
        assert_eq!(
            t.admit(ip("198.51.100.7"), &m).err(),
            Some(Refused::NetworkCap)
        );
        assert_eq!(closed(&m, "per_network_cap"), 1);
        // Another /24, and IPv6 by /56, are untouched.
        t.admit(ip("198.51.101.1"), &m).unwrap();
        t.admit(ip("2001:db8:0:1::1"), &m).unwrap();
        t.admit(ip("2001:db8:0:2::1"), &m).unwrap();
        assert_eq!(
            t.admit(ip("2001:db8:0:ff::9"), &m).err(),
            Some(Refused::NetworkCap),
            "one /56"
        );
        assert_eq!(
            t.admit(ip("::ffff:198.51.100.9"), &m).err(),
            Some(Refused::NetworkCap),
            "IPv4-mapped counts as IPv4"
        );
        // A closed connection gives its network's share back.
        t.remove(first, &m);
        t.admit(ip("198.51.100.9"), &m)
            .expect("a share is free again");
        // Exempt peers (a load balancer) are not counted; loopback is not exempt.
        for _ in 0..5 {
            t.admit(ip("192.0.2.3"), &m).expect("exempt");
        }
        t.admit(ip("127.0.0.1"), &m).unwrap();
        t.admit(ip("127.0.0.2"), &m).unwrap();
        assert!(t.admit(ip("127.0.0.3"), &m).is_err(), "loopback is counted");
        // Off: no share at all.
        let off = table(100, 0, &[]);
        for _ in 0..10 {
            off.admit(ip("198.51.100.1"), &m).unwrap();
        }
    }

    #[test]
    fn a_shed_connection_gives_its_networks_share_back_once() {
        let m = Metrics::default();
        let t = table(2, 2, &[]);
        let (a_id, a) = t.admit_at(0, ip("198.51.100.1"), &m).unwrap();
        t.admit_at(10, ip("198.51.100.2"), &m).unwrap();
        // Full: the oldest silent one (network A's) makes room for network B.
        t.admit_at(20, ip("203.0.113.1"), &m).unwrap();
        assert!(a.close.is_cancelled());
        // Its task ends later and removes it again: nothing changes twice.
        t.remove(a_id, &m);
        let open = t.open.lock().unwrap();
        assert_eq!(open.slots.len(), 2);
        assert_eq!(open.networks[&ip("198.51.100.0")], 1);
        assert_eq!(open.networks[&ip("203.0.113.0")], 1);
    }
}

#[cfg(test)]
mod serve_tests {
    use super::*;
    use crate::config::FileConfig;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_request_that_moves_no_byte_is_dropped_at_the_stall_limit() {
        let cfg = FileConfig::parse("[http]\nrequest_timeout_ms = 100\nstall_timeout_ms = 400\n")
            .unwrap();
        let state = Arc::new(AppState::new(cfg.clone()));
        let app = App {
            router: axum::Router::new().route("/stuck", get(std::future::pending::<&'static str>)),
            hot: None,
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn({
            let (state, shutdown) = (state.clone(), shutdown.clone());
            async move {
                let endpoints = vec![Endpoint {
                    listener,
                    tls: None,
                    app,
                    label: "",
                }];
                serve_endpoints(endpoints, &cfg.http, state, shutdown).await
            }
        });
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let start = std::time::Instant::now();
        s.write_all(b"GET /stuck HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("dropped, not left hanging")
            .unwrap_or(0);
        assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf[..n]));
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(350), "dropped after {took:?}");
        let text = state.metrics.render();
        assert!(
            text.contains("router_connections_closed_by_server_total{reason=\"stalled\"} 1"),
            "{text}"
        );
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn an_http2_body_past_its_deadline_is_answered_408_and_the_connection_closed() {
        let cfg = FileConfig::parse("[http]\nbody_timeout_ms = 300\n").unwrap();
        let state = Arc::new(AppState::new(cfg.clone()));
        let app = App {
            router: axum::Router::new().route(
                "/echo",
                axum::routing::post(|body: Bytes| async move { body.len().to_string() }),
            ),
            hot: None,
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn({
            let (state, shutdown) = (state.clone(), shutdown.clone());
            async move {
                let endpoints = vec![Endpoint {
                    listener,
                    tls: None,
                    app,
                    label: "",
                }];
                serve_endpoints(endpoints, &cfg.http, state, shutdown).await
            }
        });
        // h2c with prior knowledge; two streams, each sending part of its body.
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
        let conn = tokio::spawn(conn);
        let start = std::time::Instant::now();
        let mut pending = Vec::new();
        for _ in 0..2 {
            let req = Request::post("http://x/echo").body(()).unwrap();
            let (resp, mut send) = client.send_request(req, false).unwrap();
            send.send_data(Bytes::from_static(b"partial"), false)
                .unwrap();
            pending.push((resp, send));
        }
        for (resp, _send) in pending {
            let resp = tokio::time::timeout(Duration::from_secs(5), resp)
                .await
                .expect("answered at the deadline")
                .unwrap();
            assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
            let mut body = resp.into_body();
            let mut text = Vec::new();
            while let Some(chunk) = body.data().await {
                text.extend_from_slice(&chunk.unwrap());
            }
            let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
            assert_eq!(v["error"]["code"], "request_timeout", "{v}");
        }
        assert!(start.elapsed() >= Duration::from_millis(250));
        // The connection goes too (GOAWAY, then close).
        tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .expect("the connection is closed")
            .unwrap()
            .ok();
        let text = state.metrics.render();
        assert!(
            text.contains("router_connections_closed_by_server_total{reason=\"body_timeout\"} 2"),
            "{text}"
        );
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }
}
