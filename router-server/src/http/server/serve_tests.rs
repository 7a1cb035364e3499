//! Tests that serve real connections: the stall limit, the HTTP/1 head limit, the
//! HTTP/2 body deadline and the cut at the end of the shutdown's grace period.

use super::*;
use crate::config::FileConfig;
use axum::body::Bytes;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a test server gives back: its address, metrics, shutdown token and task.
type TestServer = (
    std::net::SocketAddr,
    Arc<crate::metrics::Metrics>,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
);

/// A server on loopback with `/ok` and `/stuck` (never answers), configured by `toml`.
fn stall_server(toml: &str) -> TestServer {
    serve_app(
        toml,
        axum::Router::new()
            .route("/ok", get(|| async { "ok" }))
            .route("/stuck", get(std::future::pending::<&'static str>)),
    )
}

/// A server on loopback serving `router`, configured by `toml`.
fn serve_app(toml: &str, router: axum::Router) -> TestServer {
    let cfg = FileConfig::parse(toml).unwrap();
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let app = App {
        router,
        hot: Vec::new(),
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn({
        let (metrics, shutdown) = (metrics.clone(), shutdown.clone());
        async move {
            let endpoints = vec![Endpoint {
                listener,
                tls: None,
                app,
                label: "",
                proxy: None,
            }];
            serve_endpoints(endpoints, &cfg.http, &metrics.connections, shutdown).await
        }
    });
    (addr, metrics, shutdown, server)
}

/// The server counted `n` connections closed for `reason`.
fn assert_closed(metrics: &crate::metrics::Metrics, reason: &str, n: u64) {
    let text = metrics.render();
    let line = format!("router_connections_closed_by_server_total{{reason=\"{reason}\"}} {n}\n");
    assert!(text.contains(&line), "no {line:?} in {text}");
}

/// Waits for the server to drop `s`: the next read ends the stream, with no answer,
/// within 5 s.
async fn assert_dropped(s: &mut tokio::net::TcpStream) {
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("dropped, not left hanging")
        .unwrap_or(0);
    assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf[..n]));
}

/// Sends `GET /stuck` on `s` and waits for the server to drop the connection; how long
/// that took.
async fn stuck_until_dropped(s: &mut tokio::net::TcpStream) -> Duration {
    let start = std::time::Instant::now();
    s.write_all(b"GET /stuck HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_dropped(s).await;
    start.elapsed()
}

#[tokio::test]
async fn a_request_that_moves_no_byte_is_dropped_at_the_stall_limit() {
    let (addr, metrics, shutdown, server) =
        stall_server("[http]\nrequest_timeout_ms = 100\nstall_timeout_ms = 400\n");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let took = stuck_until_dropped(&mut s).await;
    assert!(took >= Duration::from_millis(350), "dropped after {took:?}");
    assert_closed(&metrics, "stalled", 1);
    shutdown.cancel();
    server.await.unwrap().unwrap();
}

/// A kept-alive connection whose timer waits for its idle deadline, a minute away:
/// the request that then gets stuck wakes the timer and is dropped at the stall limit.
/// (HTTP/2 here; HTTP/1 is the same but for its head limit, tested below.)
#[tokio::test]
async fn a_stuck_request_on_an_idle_connection_is_dropped_at_the_stall_limit() {
    let (addr, metrics, shutdown, server) = stall_server(
        "[http]\nrequest_timeout_ms = 100\nidle_timeout_secs = 60\nstall_timeout_ms = 400\n",
    );
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let (resp, _) = client
        .send_request(Request::get("http://x/ok").body(()).unwrap(), true)
        .unwrap();
    assert_eq!(resp.await.unwrap().status(), StatusCode::OK);
    // Past the head deadline: the timer now waits for the idle one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = std::time::Instant::now();
    let (resp, _) = client
        .send_request(Request::get("http://x/stuck").body(()).unwrap(), true)
        .unwrap();
    let dropped = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = resp.await;
        let _ = conn.await;
    })
    .await;
    let took = start.elapsed();
    assert!(dropped.is_ok(), "left hanging");
    assert!(took >= Duration::from_millis(350), "dropped after {took:?}");
    assert_closed(&metrics, "stalled", 1);
    shutdown.cancel();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_http2_body_past_its_deadline_is_answered_408_and_the_connection_closed() {
    let (addr, metrics, shutdown, server) = serve_app(
        "[http]\nbody_timeout_ms = 300\n",
        axum::Router::new().route(
            "/echo",
            axum::routing::post(|body: Bytes| async move { body.len().to_string() }),
        ),
    );
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
    assert_closed(&metrics, "body_timeout", 2);
    shutdown.cancel();
    server.await.unwrap().unwrap();
}

/// Sends `GET /ok` on `s` and reads its answer whole.
async fn get_ok(s: &mut tokio::net::TcpStream) {
    s.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !got.ends_with(b"\r\n\r\nok") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("answered")
            .unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"), "{got:?}");
}

/// HTTP/1 heads after the first are timed by the connection: an idle keep-alive
/// connection lives to its idle deadline, however short the head limit, but a head
/// that has begun must be whole within the head limit of its first byte, or the
/// connection is dropped, however steadily its bytes trickle in.
#[tokio::test]
async fn a_kept_alive_head_that_trickles_is_dropped_at_the_head_limit() {
    let (addr, metrics, shutdown, server) =
        stall_server("[http]\nrequest_timeout_ms = 300\nidle_timeout_secs = 60\n");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    get_ok(&mut s).await;
    // Idle for twice the head limit: still open, and the timer has seen it used.
    tokio::time::sleep(Duration::from_millis(600)).await;
    get_ok(&mut s).await;
    get_ok(&mut s).await;
    let start = std::time::Instant::now();
    s.write_all(b"GET /ok HTTP/1.1\r\n").await.unwrap();
    let (mut rd, mut wr) = s.split();
    let mut drip = tokio::time::interval(Duration::from_millis(50));
    let mut buf = [0u8; 64];
    let dropped = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            tokio::select! {
                r = rd.read(&mut buf) => {
                    assert!(!matches!(r, Ok(n) if n > 0), "answered a partial head");
                    return;
                }
                _ = drip.tick() => {
                    if wr.write_all(b"x-drip: 1\r\n").await.is_err() {
                        return;
                    }
                }
            }
        }
    })
    .await;
    let took = start.elapsed();
    assert!(dropped.is_ok(), "a trickling head was left open for 5 s");
    assert!(took >= Duration::from_millis(290), "dropped after {took:?}");
    assert_closed(&metrics, "head_timeout", 1);
    shutdown.cancel();
    server.await.unwrap().unwrap();
}

/// A head pipelined behind an answered request and left half-sent, with nothing
/// after it, holds the connection no longer than an idle one: the idle deadline
/// closes it.
#[tokio::test]
async fn a_half_sent_pipelined_head_is_closed_at_the_idle_deadline() {
    let (addr, metrics, shutdown, server) =
        stall_server("[http]\nrequest_timeout_ms = 300\nidle_timeout_secs = 1\n");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    get_ok(&mut s).await;
    s.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\nGET /ok HTTP/1.1\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(n @ 1..) = s.read(&mut buf).await {
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a half-sent head held the connection for 5 s"
    );
    assert!(got.starts_with(b"HTTP/1.1 200"), "{got:?}");
    assert!(
        got.ends_with(b"\r\n\r\nok"),
        "answered the half-sent head: {got:?}"
    );
    assert_closed(&metrics, "idle_timeout", 1);
    shutdown.cancel();
    server.await.unwrap().unwrap();
}

/// On shutdown, a request still being answered when the grace period ends is cut:
/// the connection is dropped and the server returns (it was asked to close first,
/// and the cut reaches a connection that is closing).
#[tokio::test]
async fn a_request_still_running_at_the_end_of_the_grace_period_is_cut() {
    let entered = Arc::new(tokio::sync::Notify::new());
    let (addr, _metrics, shutdown, server) = serve_app(
        "[http]\nstall_timeout_ms = 60000\nshutdown_grace_secs = 1\nshutdown_keepalive_ms = 0\n",
        axum::Router::new().route(
            "/hang",
            get({
                let entered = entered.clone();
                move || async move {
                    entered.notify_one();
                    std::future::pending::<&'static str>().await
                }
            }),
        ),
    );
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    entered.notified().await;
    let start = std::time::Instant::now();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server returns once the grace period is over")
        .unwrap()
        .unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "not before the grace period"
    );
    assert_dropped(&mut s).await;
}
