//! SDK latency: the cached `gateways()` call (criterion, goal <= 5 us), the time to a
//! connected gateway when the router is blackholed, and a cold start with the router
//! and every HTTPDNS address blackholed, with the default timeouts (medians of runs,
//! goal <= 1.5 s), beside a direct connect to the same gateway as the floor; and a cold
//! start to a live router with every HTTPDNS address blackholed, with a saved HTTPDNS
//! answer beside the same start without one.

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use std::hint::black_box;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use httpdns_client::{Client, Config, Source};

/// A cache file as the client writes it, naming `gateway`.
fn write_cache(path: &Path, gateway: SocketAddr) {
    let file = serde_json::json!({
        "version": 1, "router_domain": "router.bench",
        "saved_ms": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64,
        "answer": {
            "gateways": [{"id": "gw-1", "ip": gateway.ip(), "port": gateway.port(), "proto": "tcp", "region": "r", "load": 0.1}],
            "region": "r", "ttl_secs": 300, "heartbeat_secs": 240,
            "backoff": {"base_ms": 1000, "max_ms": 60000, "factor": 1.6, "jitter": 0.2},
            "revision": 1, "stale": false
        }
    });
    std::fs::write(path, file.to_string()).unwrap();
}

/// Default timeouts; the router's address is a bootstrap IP (no DNS in the timing).
fn config(cache: &Path, router_port: u16) -> Config {
    let mut c = Config::new("router.bench");
    c.router_port = router_port;
    c.dns.local_fallback = false;
    c.dns
        .bootstrap
        .insert("router.bench".into(), vec!["127.0.0.1".parse().unwrap()]);
    c.cache_file = Some(cache.to_path_buf());
    c
}

fn cached(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = TcpListener::bind("127.0.0.1:0").unwrap();
    let cache = dir.path().join("gateways.json");
    write_cache(&cache, gw.local_addr().unwrap());
    let refusing = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = config(&cache, refusing);
    cfg.fallback_ttl = Duration::from_secs(3600);
    let client = Client::new(cfg).unwrap();
    // The first call fills the in-memory answer; the benchmark measures the reuse.
    rt.block_on(client.gateways()).unwrap();
    c.bench_function("gateways() cached", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(client.gateways().await.unwrap()) })
    });
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn blackholed_router_failover() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = TcpListener::bind("127.0.0.1:0").unwrap();
    let gw_addr = gw.local_addr().unwrap();
    let cache = dir.path().join("gateways.json");
    // Accepts TCP (the kernel completes the handshake), never answers the TLS hello.
    let hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let hole_port = hole.local_addr().unwrap().port();
    let runs = 7;
    let mut failover = Vec::new();
    let mut direct = Vec::new();
    for _ in 0..runs {
        write_cache(&cache, gw_addr);
        let client = Client::new(config(&cache, hole_port)).unwrap();
        let start = Instant::now();
        let conn = rt.block_on(client.connect()).unwrap();
        failover.push(start.elapsed());
        assert_eq!(conn.source, Source::CacheFile);
        let start = Instant::now();
        rt.block_on(tokio::net::TcpStream::connect(gw_addr))
            .unwrap();
        direct.push(start.elapsed());
    }
    // Cold start: a new client each run, both HTTPDNS addresses and the router
    // blackholed, local DNS on (the name does not resolve here), a good cache file.
    let p1 = TcpListener::bind("127.0.0.1:0").unwrap();
    let p2 = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cold = Vec::new();
    for _ in 0..runs {
        write_cache(&cache, gw_addr);
        let mut c = config(&cache, hole_port);
        c.dns.local_fallback = true;
        c.dns.providers = vec![httpdns_client::Provider::alibaba(
            "100000",
            vec![p1.local_addr().unwrap(), p2.local_addr().unwrap()],
        )];
        let client = Client::new(c).unwrap();
        let start = Instant::now();
        let g = rt.block_on(client.gateways()).unwrap();
        cold.push(start.elapsed());
        assert_eq!(g.source, Source::CacheFile);
    }
    let defaults = Config::new("x");
    println!(
        "\nconnected with the router blackholed (defaults: attempt {:?}, budget {:?}), median of {runs}: {:?} (goal <= 1.5 s)",
        defaults.router_attempt_timeout,
        defaults.router_budget,
        median(failover)
    );
    println!(
        "cold start, router and both HTTPDNS addresses blackholed, good cache file, median of {runs}: {:?}, max {:?} (goal <= 1.5 s)",
        median(cold.clone()),
        cold.iter().max().unwrap()
    );
    println!(
        "direct TCP connect to the same gateway, median of {runs}: {:?}",
        median(direct)
    );
}

/// A router stand-in on plain HTTP: answers every request with one candidate.
fn stub_router(gateway: SocketAddr) -> SocketAddr {
    use std::io::{Read, Write};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let body = format!(
        r#"{{"gateways":[{{"id":"gw-1","ip":"{}","port":{},"proto":"tcp","region":"r","load":0.1}}],"region":"r","ttl_secs":300,"heartbeat_secs":240,"backoff":{{"base_ms":1000,"max_ms":60000,"factor":1.6,"jitter":0.2}},"revision":1,"stale":false}}"#,
        gateway.ip(),
        gateway.port()
    );
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            let body = body.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if conn.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn saved_httpdns_answers() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = TcpListener::bind("127.0.0.1:0").unwrap();
    let router = stub_router(gw.local_addr().unwrap());
    let answers = dir.path().join("httpdns.json");
    let p1 = TcpListener::bind("127.0.0.1:0").unwrap();
    let p2 = TcpListener::bind("127.0.0.1:0").unwrap();
    let start = |saved: bool| {
        let mut c = Config::new("router.bench");
        c.router_https = false;
        c.router_port = router.port();
        c.dns.local_fallback = false;
        c.dns
            .bootstrap
            .insert("router.bench".into(), vec!["127.0.0.1".parse().unwrap()]);
        c.dns.providers = vec![httpdns_client::Provider::alibaba(
            "100000",
            vec![p1.local_addr().unwrap(), p2.local_addr().unwrap()],
        )];
        c.dns.answers_file = Some(if saved {
            answers.clone()
        } else {
            dir.path().join("none.json")
        });
        c.prefetch_router = false;
        Client::new(c).unwrap()
    };
    // The answer a provider gave earlier, as the SDK saves it.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    std::fs::write(
        &answers,
        format!(
            r#"{{"version":1,"answers":[{{"host":"router.bench","ips":["127.0.0.1"],"saved_ms":{now_ms},"ttl_secs":600}}]}}"#
        ),
    )
    .unwrap();
    let runs = 7;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        for (saved, into) in [(true, &mut with), (false, &mut without)] {
            let client = start(saved);
            let t = Instant::now();
            let g = rt.block_on(client.gateways()).unwrap();
            into.push(t.elapsed());
            assert!(matches!(g.source, Source::Router { .. }));
        }
    }
    let (a, b) = (median(with), median(without));
    println!(
        "cold start to a live router, both HTTPDNS addresses blackholed, median of {runs}: saved HTTPDNS answer {a:?}, none (HTTPDNS timeouts, then bootstrap IPs) {b:?}: {:.0}x faster",
        b.as_secs_f64() / a.as_secs_f64()
    );
}

criterion_group!(benches, cached);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    blackholed_router_failover();
    saved_httpdns_answers();
}
