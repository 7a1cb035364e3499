//! The client against a hostile router on loopback: extreme `Retry-After`, `ttl_secs`,
//! `heartbeat_secs` and backoff values go through the real HTTP and JSON path and come
//! out clamped, never as a panic.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use httpdns_client::{limits, BackoffParams, Client, Config, Error, Ipv6Mode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A router that gives every request the same answer; counts the requests.
struct Router {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
}

impl Router {
    async fn start(status: &str, headers: &str, body: &str) -> Router {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n{body}",
            body.len()
        );
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let answer = answer.clone();
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if s.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    assert!(head.starts_with(b"GET /gateways?"));
                    counted.fetch_add(1, Ordering::SeqCst);
                    let _ = s.write_all(answer.as_bytes()).await;
                });
            }
        });
        Router { addr, requests }
    }

    fn config(&self) -> Config {
        let mut c = Config::new(self.addr.ip().to_string());
        c.router_https = false;
        c.router_port = self.addr.port();
        c.dns.local_fallback = false;
        c.dns.ipv6 = Ipv6Mode::Never;
        c.router_attempt_timeout = Duration::from_secs(10);
        c.router_budget = Duration::from_secs(10);
        c.deadline = Duration::from_secs(20);
        c
    }
}

const HUGE: &str = "18446744073709551615";

#[test]
fn a_retry_after_of_u64_max_is_an_hour_and_is_waited_out_without_a_panic() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (status, code) in [
        ("429 Too Many Requests", "rate_limited"),
        ("503 Service Unavailable", "no_gateways"),
    ] {
        rt.block_on(async {
            let body = format!(r#"{{"error":{{"code":"{code}","message":"later"}}}}"#);
            let router = Router::start(status, &format!("retry-after: {HUGE}\r\n"), &body).await;
            let client = Client::new(router.config()).unwrap();
            let e = client.gateways().await.unwrap_err();
            let Error::Refused {
                retry_after,
                code: got,
                ..
            } = &e
            else {
                panic!("{e}")
            };
            assert_eq!(got, code);
            assert_eq!(*retry_after, Some(limits::MAX_RETRY_AFTER), "{e}");

            // The retry loop sleeps that hour (paused time: no real waiting), plus
            // its spread of up to a fifth, and asks again.
            tokio::time::pause();
            let e = client.connect_with_retry(2).await.unwrap_err();
            tokio::time::resume();
            let Error::GaveUp { delays, last, .. } = &e else {
                panic!("{e}")
            };
            assert_eq!(delays.len(), 1, "{e}");
            assert!(
                delays[0] >= limits::MAX_RETRY_AFTER
                    && delays[0] <= limits::MAX_RETRY_AFTER.mul_f64(1.2),
                "{delays:?}"
            );
            assert!(matches!(**last, Error::Refused { .. }), "{e}");
            assert_eq!(router.requests.load(Ordering::SeqCst), 3);
        });
    }
}

#[tokio::test]
async fn extreme_times_in_a_gateways_answer_are_clamped() {
    let gateway = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = gateway.local_addr().unwrap().port();
    let candidates: Vec<String> = (0..5)
        .map(|i| {
            format!(
                r#"{{"id":"gw-{i}","ip":"127.0.0.1","port":{port},"proto":"tcp","region":"r","load":0.1}}"#
            )
        })
        .collect();
    let body = format!(
        r#"{{"gateways":[{}],"region":"r","ttl_secs":{HUGE},"heartbeat_secs":{HUGE},"backoff":{{"base_ms":{HUGE},"max_ms":{HUGE},"factor":1e308,"jitter":-1e308}},"revision":1,"stale":false}}"#,
        candidates.join(",")
    );
    let router = Router::start("200 OK", "", &body).await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = router.config();
    c.cache_file = Some(dir.path().join("gateways.json"));
    let client = Client::new(c).unwrap();
    let g = client.gateways().await.unwrap();
    assert_eq!(g.ttl, limits::MAX_TTL);
    assert_eq!(g.heartbeat, limits::MAX_HEARTBEAT);
    assert_eq!(
        g.backoff,
        BackoffParams {
            base_ms: 600_000,
            max_ms: 600_000,
            factor: 10.0,
            jitter: 0.0
        }
    );
    assert_eq!(g.gateways.len(), 3, "no more than the 3 asked for");
    // The answer is reused (its TTL did not overflow the clock), and connecting with
    // it works.
    assert_eq!(client.gateways().await.unwrap().revision, 1);
    assert_eq!(router.requests.load(Ordering::SeqCst), 1);
    let conn = client.connect().await.unwrap();
    assert_eq!(conn.heartbeat, limits::MAX_HEARTBEAT);
}
