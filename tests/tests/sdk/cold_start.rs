//! Starting without a reachable router or provider: the cache file (within budget,
//! corrupt, old, another protocol) and the saved HTTPDNS answers.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use harness::{free_port, wait_until, HttpDnsServer};
use httpdns_client::{Client, DnsSource, Error, Source};

use super::{blackhole, config, fill_cache_file, fleet, provider};

#[tokio::test(flavor = "multi_thread")]
async fn dead_or_blackholed_router_falls_back_to_the_cache_file_within_budget() {
    let f = fleet(&[("gw-a", 5, true), ("gw-b", 9, true)]);
    let dns = HttpDnsServer::start();
    dns.answer("localhost", &["127.0.0.1"], &[], 60);
    fill_cache_file(&f, &dns).await;

    let (_hole, hole) = blackhole();
    for (what, port) in [("refusing", free_port()), ("blackholed", hole.port())] {
        let mut c = config(&f, vec![provider(&[dns.addr()])]);
        c.router_port = port;
        let budget = c.router_budget;
        let client = Client::new(c).unwrap();
        let start = Instant::now();
        let conn = client.connect().await.unwrap();
        let took = start.elapsed();
        assert_eq!(conn.source, Source::CacheFile, "{what}");
        assert_eq!(conn.gateway.id, "gw-a", "{what}");
        assert!(
            took <= budget + Duration::from_millis(500),
            "{what}: {took:?} (budget {budget:?})"
        );
        println!("{what} router: connected from the cache file in {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_cache_file_is_ignored_then_rewritten() {
    let f = fleet(&[("gw-a", 5, true)]);
    let dns = HttpDnsServer::start();
    dns.answer("localhost", &["127.0.0.1"], &[], 60);
    let path = f.dir.path().join("gateways.json");
    std::fs::write(&path, b"{\"version\":1,\"answer\":{ broken").unwrap();
    // Router down and the file corrupt: a clear error, not a crash.
    let mut c = config(&f, vec![provider(&[dns.addr()])]);
    c.router_port = free_port();
    let err = Client::new(c).unwrap().gateways().await.unwrap_err();
    assert!(
        matches!(err, Error::NoCandidates { .. }) && err.to_string().contains("corrupt"),
        "{err}"
    );
    assert!(err.is_retryable());
    // Router back: the next good answer rewrites the file.
    let client = Client::new(config(&f, vec![provider(&[dns.addr()])])).unwrap();
    client.gateways().await.unwrap();
    wait_until(Duration::from_secs(5), "cache rewritten", || {
        std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v["answer"]["gateways"][0]["id"] == "gw-a")
    });
}

/// A cold start with the router and every HTTPDNS address blackholed and a good cache
/// file: the whole call, resolution included, ends within 1.5 s.
#[tokio::test(flavor = "multi_thread")]
async fn a_cold_start_with_everything_blackholed_uses_the_cache_file_within_1_5_s() {
    let f = fleet(&[("gw-a", 5, true)]);
    let dns = HttpDnsServer::start();
    dns.answer("localhost", &["127.0.0.1"], &[], 60);
    fill_cache_file(&f, &dns).await;
    let (_h1, p1) = blackhole();
    let (_h2, p2) = blackhole();
    let (_h3, router_hole) = blackhole();
    let mut c = config(&f, vec![provider(&[p1, p2])]);
    c.router_port = router_hole.port();
    c.dns.local_fallback = true; // "localhost" resolves locally: to the blackholed port
    let start = Instant::now();
    let g = Client::new(c).unwrap().gateways().await.unwrap();
    let took = start.elapsed();
    assert_eq!(g.source, Source::CacheFile);
    assert!(took <= Duration::from_millis(1500), "{took:?}");
}

/// True when something connected to the blackhole `l` (the kernel queued it).
fn knocked(l: &TcpListener) -> bool {
    l.set_nonblocking(true).unwrap();
    l.accept().is_ok()
}

/// HTTPDNS answers kept on disk: a cold start with every HTTPDNS address blackholed and
/// a fresh saved answer reaches the router with no HTTPDNS request. The same start
/// without the saved answer waits for HTTPDNS, then uses its bootstrap IPs.
#[tokio::test(flavor = "multi_thread")]
async fn a_cold_start_with_a_saved_httpdns_answer_asks_no_provider() {
    let f = fleet(&[("gw-a", 5, true)]);
    let dns = HttpDnsServer::start();
    dns.answer("localhost", &["127.0.0.1"], &[], 600);
    let answers = f.dir.path().join("httpdns.json");
    let mut c = config(&f, vec![provider(&[dns.addr()])]);
    c.dns.answers_file = Some(answers.clone());
    let first = Client::new(c).unwrap().gateways().await.unwrap();
    assert_eq!(
        first.source,
        Source::Router {
            addr: f.https,
            dns: DnsSource::HttpDns
        }
    );
    wait_until(Duration::from_secs(10), "answers file", || answers.exists());

    let start_with = |saved: bool| {
        let (h1, p1) = blackhole();
        let (h2, p2) = blackhole();
        let mut c = config(&f, vec![provider(&[p1, p2])]);
        c.dns.local_fallback = false;
        c.dns
            .bootstrap
            .insert("localhost".into(), vec!["127.0.0.1".parse().unwrap()]);
        c.dns.answers_file = Some(if saved {
            answers.clone()
        } else {
            f.dir.path().join("none.json")
        });
        c.prefetch_router = false;
        // The router's answer or nothing: no cache file to fall back on, and time
        // enough for a loaded machine's handshake.
        c.cache_file = None;
        c.router_attempt_timeout = Duration::from_secs(10);
        c.router_budget = Duration::from_secs(20);
        c.deadline = Duration::from_secs(30);
        (Client::new(c).unwrap(), [h1, h2])
    };
    let (client, holes) = start_with(true);
    let t = Instant::now();
    let g = client.gateways().await.unwrap();
    let with_saved = t.elapsed();
    assert_eq!(
        g.source,
        Source::Router {
            addr: f.https,
            dns: DnsSource::HttpDns
        },
        "the saved HTTPDNS answer found the router"
    );
    assert!(
        !holes.iter().any(knocked),
        "no HTTPDNS request with a fresh saved answer"
    );

    let (client, holes) = start_with(false);
    let t = Instant::now();
    let g = client.gateways().await.unwrap();
    let without = t.elapsed();
    assert_eq!(
        g.source,
        Source::Router {
            addr: f.https,
            dns: DnsSource::Bootstrap
        }
    );
    assert!(
        holes.iter().all(knocked),
        "both HTTPDNS addresses were tried"
    );
    println!(
        "cold start to the router's answer: saved HTTPDNS answer {with_saved:?}, none {without:?}"
    );
}

/// The cache file is for when no router can be reached, and only while it is young
/// enough and for the protocol asked.
#[tokio::test(flavor = "multi_thread")]
async fn an_old_cache_file_or_one_for_another_protocol_is_not_used() {
    let f = fleet(&[("gw-a", 5, true)]);
    let dns = HttpDnsServer::start();
    dns.answer("localhost", &["127.0.0.1"], &[], 60);
    let path = fill_cache_file(&f, &dns).await;
    let unreachable = |max_age: Duration, proto: httpdns_client::Proto| {
        let mut c = config(&f, vec![provider(&[dns.addr()])]);
        c.router_port = free_port();
        c.cache_max_age = max_age;
        c.proto = proto;
        c
    };
    let week = Duration::from_secs(7 * 86400);
    let g = Client::new(unreachable(week, httpdns_client::Proto::Tcp))
        .unwrap()
        .gateways()
        .await
        .unwrap();
    assert_eq!(g.source, Source::CacheFile, "young enough, same protocol");
    wait_until(Duration::from_secs(5), "the file ages", || {
        std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|e| e > Duration::from_millis(50)))
    });
    for (c, why) in [
        (
            unreachable(Duration::from_millis(10), httpdns_client::Proto::Tcp),
            "old",
        ),
        (
            unreachable(week, httpdns_client::Proto::Ws),
            "another protocol",
        ),
    ] {
        let e = Client::new(c).unwrap().gateways().await.unwrap_err();
        assert!(matches!(e, Error::NoCandidates { .. }), "{e}");
        assert!(e.to_string().contains(why), "{why}: {e}");
    }
}
