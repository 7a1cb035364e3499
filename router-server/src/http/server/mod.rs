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
//!
//! Here: the listeners and the shutdown sequence. `accept`: the accept loop and the
//! connection cap; `table`: the open connections, the caps and shedding; `conn`: one
//! connection's life; `service`: each request on it; `deadlines`: the limits and the
//! wrappers that enforce them on bodies and bytes.

mod accept;
mod conn;
mod deadlines;
mod service;
mod table;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::routes::App;
use crate::config::HttpConfig;
use crate::metrics::ConnLabels;
use crate::state::AppState;
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

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::atomic::Ordering;

    use tokio::time::Instant;

    use super::connection_cap;
    use super::table::{ConnTable, Phase, Refused, Slot, TableRules};
    use crate::metrics::{ConnLabels, Metrics};

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
    use axum::body::Bytes;
    use axum::http::{Request, StatusCode};
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
