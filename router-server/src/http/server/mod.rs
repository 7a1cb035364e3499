//! The accept loop and the life of each client connection.
//!
//! What a public endpoint facing a million mobile clients needs, and a framework's
//! default server does not give:
//!
//! * **Deadlines before the first request**: a connection must send its first byte
//!   within `first_byte_timeout_ms`, finish TLS within `tls_handshake_timeout_ms` and its
//!   first request head within `request_timeout_ms`; after that, a keep-alive connection
//!   idle for `idle_timeout_secs` is closed. The same holds for HTTP/1 and HTTP/2
//!   (HTTP/2 also gets explicit stream and header-list limits). Each later HTTP/1 head
//!   must be whole within `request_timeout_ms` of its first byte; the connection's one
//!   timer keeps that too, without a timer per request.
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
//!
//! Here: the listeners and the shutdown sequence. `accept`: the accept loop and the
//! connection cap; `table`: the open connections, the caps and shedding; `conn`: one
//! connection's life; `service`: each request on it; `deadlines`: the limits and the
//! wrappers that enforce them on bodies and bytes.

mod accept;
mod conn;
mod deadlines;
mod proxy;
mod service;
mod signal;
mod table;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use ipnet::IpNet;
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::routes::App;
use crate::config::HttpConfig;
use crate::metrics::{ConnLabels, ConnMetrics};
use crate::tls::LiveTlsConfig;

pub use accept::{connection_cap, raise_nofile_limit};
pub use deadlines::{BodyTimeout, EdgeLimits};

use accept::accept_loop;
use conn::protocol_builder;
use table::{ConnTable, TableRules};

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
    /// With the PROXY protocol (`[http] proxy_protocol`): the peers that may send its
    /// header (`trusted_proxies`); every connection must begin with one, and a
    /// connection from another peer is closed at accept.
    pub proxy: Option<Arc<[IpNet]>>,
}

/// Serves each endpoint's app on it until `shutdown`, then closes down as the module
/// says. Returns when every connection task has ended (or been cut at the grace
/// deadline). Connections are counted in `metrics`.
pub async fn serve_endpoints(
    endpoints: Vec<Endpoint>,
    http: &HttpConfig,
    metrics: &ConnMetrics,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let cap = connection_cap(http.max_connections, raise_nofile_limit());
    metrics.max.set(cap as i64);
    // One `Arc` for every connection task to share.
    let metrics = Arc::new(metrics.clone());
    let table = Arc::new(ConnTable::new(
        Instant::now(),
        TableRules {
            cap,
            per_network: http.max_connections_per_network,
            // The balancers that send PROXY headers carry many clients each.
            exempt: http
                .connection_cap_exempt
                .iter()
                .chain(
                    endpoints
                        .iter()
                        .filter_map(|e| e.proxy.as_deref())
                        .flatten(),
                )
                .copied()
                .collect(),
            overdue_ms: http.request_timeout_ms.max(http.body_timeout_ms),
        },
    ));
    let limits = EdgeLimits::new(http);
    let body_timeouts = metrics
        .closed
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
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
            cut: cut.clone(),
            tls: ep.tls,
            proxy: ep.proxy,
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
    /// The connections' series.
    metrics: Arc<ConnMetrics>,
    shutdown: CancellationToken,
    cut: CancellationToken,
    tls: Option<LiveTlsConfig>,
    /// The peers that may send a PROXY header, when this listener expects one.
    proxy: Option<Arc<[IpNet]>>,
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
            metrics: self.metrics.clone(),
            shutdown: self.shutdown.clone(),
            cut: self.cut.clone(),
            tls: self.tls.clone(),
            proxy: self.proxy.clone(),
            body_timeouts: self.body_timeouts.clone(),
        }
    }
}

impl Ctx {
    fn count_close(&self, reason: &'static str) {
        self.metrics
            .closed
            .get_or_create(&ConnLabels { reason })
            .inc();
    }
}

#[cfg(test)]
mod serve_tests;
#[cfg(test)]
mod tests;
