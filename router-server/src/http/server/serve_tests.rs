//! Tests that serve real connections: the stall limit and the HTTP/2 body deadline.

use super::*;
use crate::config::FileConfig;
use axum::body::Bytes;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn a_request_that_moves_no_byte_is_dropped_at_the_stall_limit() {
    let cfg =
        FileConfig::parse("[http]\nrequest_timeout_ms = 100\nstall_timeout_ms = 400\n").unwrap();
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let app = App {
        router: axum::Router::new().route("/stuck", get(std::future::pending::<&'static str>)),
        hot: None,
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
            }];
            serve_endpoints(endpoints, &cfg.http, &metrics.connections, shutdown).await
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
    let text = metrics.render();
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
    let metrics = Arc::new(crate::metrics::Metrics::default());
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
        let (metrics, shutdown) = (metrics.clone(), shutdown.clone());
        async move {
            let endpoints = vec![Endpoint {
                listener,
                tls: None,
                app,
                label: "",
            }];
            serve_endpoints(endpoints, &cfg.http, &metrics.connections, shutdown).await
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
    let text = metrics.render();
    assert!(
        text.contains("router_connections_closed_by_server_total{reason=\"body_timeout\"} 2"),
        "{text}"
    );
    shutdown.cancel();
    server.await.unwrap().unwrap();
}
