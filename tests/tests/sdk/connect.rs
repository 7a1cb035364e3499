//! From the router's answer to a connection: candidates in order, dead ones skipped,
//! backoff with the server's parameters, refusals (a full fleet, a rate limit) waited
//! out, every failure naming its cause, trust stores and the fallback domain.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{free_port, wait_until, Etcd, HttpDnsServer, RouterProc, TestCa, P};
use httpdns_client::{Client, Config, DnsSource, Error, Source};

use super::{blackhole, config, fill_cache_file, fleet, provider, trust, wait_router_status};

#[tokio::test(flavor = "multi_thread")]
async fn normal_path_httpdns_router_candidates_connection() {
    let f = fleet(&[
        ("gw-a", 300, true),
        ("gw-b", 100, true),
        ("gw-c", 200, true),
    ]);
    let dns = HttpDnsServer::start();
    dns.answer("localhost", &["127.0.0.1"], &[], 60);
    let client = Client::new(config(&f, vec![provider(&[dns.addr()])])).unwrap();
    let g = client.gateways().await.unwrap();
    assert_eq!(
        g.source,
        Source::Router {
            addr: f.https,
            dns: DnsSource::HttpDns
        }
    );
    let ids: Vec<&str> = g.gateways.iter().map(|g| g.id.as_str()).collect();
    assert_eq!(ids, ["gw-b", "gw-c", "gw-a"]);
    assert_eq!(
        (g.ttl, g.heartbeat),
        (Duration::from_secs(300), Duration::from_secs(240))
    );
    assert_eq!(g.backoff.base_ms, 2000, "the router's backoff settings");
    assert!(!g.stale);
    // Within the TTL the answer is reused: no second HTTPDNS or router request.
    let again = client.gateways().await.unwrap();
    assert!(Arc::ptr_eq(&g, &again));
    assert_eq!(dns.requests().len(), 1);
    assert_eq!(dns.requests()[0], "/100000/d?host=localhost");

    let conn = client.connect().await.unwrap();
    assert_eq!(conn.gateway.id, "gw-b");
    assert_eq!(conn.stream.peer_addr().unwrap(), conn.gateway.addr());
    // The answer was persisted for cold starts without a router.
    let path = f.dir.path().join("gateways.json");
    wait_until(Duration::from_secs(5), "cache file", || {
        std::fs::read(&path).is_ok_and(|b| serde_json::from_slice::<serde_json::Value>(&b).is_ok())
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn first_candidate_dead_means_the_second_is_connected() {
    let f = fleet(&[("gw-dead", 1, false), ("gw-live", 500, true)]);
    let dns = HttpDnsServer::start();
    dns.answer("localhost", &["127.0.0.1"], &[], 60);
    let client = Client::new(config(&f, vec![provider(&[dns.addr()])])).unwrap();
    let g = client.gateways().await.unwrap();
    assert_eq!(
        g.gateways[0].id, "gw-dead",
        "the dead node is the least loaded"
    );
    let conn = client.connect().await.unwrap();
    assert_eq!(conn.gateway.id, "gw-live");
}

#[test]
fn all_candidates_dead_backs_off_with_the_server_parameters() {
    let f = fleet(&[("gw-x", 1, false), ("gw-y", 2, false)]);
    let dns = HttpDnsServer::start();
    dns.answer("localhost", &["127.0.0.1"], &[], 60);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A real answer (backoff: base 2 s, factor 3, max 10 s, jitter 0.1) lands in the cache file.
    rt.block_on(async {
        Client::new(config(&f, vec![provider(&[dns.addr()])]))
            .unwrap()
            .gateways()
            .await
            .unwrap()
    });
    let path = f.dir.path().join("gateways.json");
    wait_until(Duration::from_secs(5), "cache file", || path.exists());

    // Now the router is gone too. Paused time: the backoff sleeps cost no real time.
    let mut c = config(&f, Vec::new());
    c.router_port = free_port();
    c.dns.local_fallback = false;
    c.dns
        .bootstrap
        .insert("localhost".into(), vec!["127.0.0.1".parse().unwrap()]);
    let client = Client::new(c).unwrap();
    let real = Instant::now();
    let (err, paused_elapsed) = rt.block_on(async {
        tokio::time::pause();
        let t0 = tokio::time::Instant::now();
        let err = client.connect_with_retry(5).await.unwrap_err();
        (err, t0.elapsed())
    });
    let Error::GaveUp {
        attempts, delays, ..
    } = err
    else {
        panic!("{err}")
    };
    assert_eq!(attempts, 5);
    assert_eq!(delays.len(), 4);
    for (n, d) in delays.iter().enumerate() {
        let nominal = (2000.0 * 3f64.powi(n as i32)).min(10_000.0) / 1000.0;
        let s = d.as_secs_f64();
        assert!(
            s >= nominal * 0.9 - 1e-9 && s <= nominal * 1.1 + 1e-9,
            "delay {n}: {s} vs {nominal}"
        );
    }
    assert!(paused_elapsed >= delays.iter().sum::<Duration>());
    assert!(
        real.elapsed() < Duration::from_secs(10),
        "no real sleeping: {:?}",
        real.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fallback_domain_through_httpdns_then_local_dns() {
    let gw = TcpListener::bind("127.0.0.1:0").unwrap();
    let dns = HttpDnsServer::start();
    dns.answer("gw.fallback.test", &["127.0.0.1"], &[], 60);
    let mut c = Config::new("router.test");
    c.router_port = free_port();
    c.dns.providers = vec![provider(&[dns.addr()])];
    c.dns
        .bootstrap
        .insert("router.test".into(), vec!["127.0.0.1".parse().unwrap()]);
    c.fallback_domain = Some("gw.fallback.test".into());
    c.fallback_port = gw.local_addr().unwrap().port();
    let conn = Client::new(c.clone()).unwrap().connect().await.unwrap();
    assert_eq!(
        conn.source,
        Source::FallbackDomain {
            dns: DnsSource::HttpDns
        }
    );
    // Provider dead too: local DNS resolves the fallback domain (localhost here).
    c.dns.providers = vec![provider(&[format!("127.0.0.1:{}", free_port())
        .parse()
        .unwrap()])];
    c.fallback_domain = Some("localhost".into());
    let conn = Client::new(c).unwrap().connect().await.unwrap();
    assert_eq!(
        conn.source,
        Source::FallbackDomain {
            dns: DnsSource::LocalDns
        }
    );
}

/// A full fleet is an answer: the client gets the router's refusal with Retry-After,
/// not the cache file's old candidates, and `connect_with_retry` waits it out.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_fleet_is_waited_out_not_replaced_by_old_candidates() {
    let f = fleet(&[("gw-a", 100, true)]);
    let dns = HttpDnsServer::start();
    dns.answer("localhost", &["127.0.0.1"], &[], 60);
    fill_cache_file(&f, &dns).await;
    // Every node at 99 %: above max_load.
    let node = |conns: u64, port: u16| {
        format!(
            r#"{{"id":"gw-a","ip":"127.0.0.1","ports":{{"tcp":{port}}},"region":"r","capacity":1000,"connections":{conns}}}"#
        )
    };
    let port = {
        let g = Client::new(config(&f, vec![provider(&[dns.addr()])]))
            .unwrap()
            .gateways()
            .await
            .unwrap();
        g.gateways[0].port
    };
    f._etcd.put(&format!("{P}/nodes/gw-a"), &node(990, port));
    wait_router_status(&f, 503);

    let client = Client::new(config(&f, vec![provider(&[dns.addr()])])).unwrap();
    let err = client.gateways().await.unwrap_err();
    match &err {
        Error::Refused {
            status,
            code,
            retry_after,
            ..
        } => {
            assert_eq!((*status, code.as_str()), (503, "no_gateways"));
            assert_eq!(*retry_after, Some(Duration::from_secs(5)));
        }
        other => panic!("expected the router's refusal, got {other:?}"),
    }
    assert_eq!(err.retry_after(), Some(Duration::from_secs(5)));

    // The fleet gets room a second later; the retry comes after Retry-After.
    let etcd = &f._etcd;
    let start = Instant::now();
    let retry = client.connect_with_retry(3);
    tokio::pin!(retry);
    let conn = tokio::select! {
        c = &mut retry => panic!("connected before the fleet had room: {c:?}"),
        _ = tokio::time::sleep(Duration::from_secs(1)) => {
            etcd.put(&format!("{P}/nodes/gw-a"), &node(100, port));
            retry.await.unwrap()
        }
    };
    let took = start.elapsed();
    assert_eq!(
        conn.source,
        Source::Router {
            addr: f.https,
            dns: DnsSource::HttpDns
        }
    );
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(8),
        "waited {took:?} for a Retry-After of 5 s (plus up to 20 % jitter)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limited_client_gets_the_refusal_with_retry_after() {
    let etcd = Etcd::start();
    etcd.put(
        &format!("{P}/nodes/gw-a"),
        r#"{"id":"gw-a","ip":"127.0.0.1","ports":{"tcp":7000},"region":"r","capacity":1000,"connections":1}"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("rate CA");
    let (cert, key) = ca.write_leaf(dir.path(), &["localhost"]);
    let (_router, https) = RouterProc::start_tls(
        &etcd,
        "[rate_limit]\nper_ip_per_sec = 1\nburst = 1",
        &cert,
        &key,
    );
    let mut c = Config::new("localhost");
    c.router_port = https.port();
    trust(&mut c, &ca);
    c.dns
        .bootstrap
        .insert("localhost".into(), vec!["127.0.0.1".parse().unwrap()]);
    c.dns.local_fallback = false;
    c.cache_file = Some(dir.path().join("gateways.json"));
    let mut refused = None;
    for _ in 0..5 {
        match Client::new(c.clone()).unwrap().gateways().await {
            Ok(_) => {}
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    match refused.expect("a client over the limit is refused") {
        Error::Refused {
            status: 429,
            code,
            retry_after: Some(after),
            ..
        } => {
            assert_eq!(code, "rate_limited");
            assert!(after >= Duration::from_secs(1), "{after:?}");
        }
        other => panic!("expected a 429 refusal, got {other:?}"),
    }
}

/// Each failure names its cause and keeps it as its source.
#[tokio::test(flavor = "multi_thread")]
async fn errors_name_their_cause() {
    let f = fleet(&[("gw-a", 1, true)]);
    let base = |domain: &str| {
        let mut c = Config::new(domain);
        c.router_port = f.https.port();
        c.dns
            .bootstrap
            .insert(domain.into(), vec!["127.0.0.1".parse().unwrap()]);
        c.dns.local_fallback = false;
        c
    };
    let first = |e: &Error| {
        let f = &e.failures()[0];
        (f.kind.clone(), std::error::Error::source(f).is_some())
    };
    // An unknown CA: not trusted.
    let e = Client::new(base("localhost"))
        .unwrap()
        .gateways()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NoCandidates { .. }), "{e}");
    let (kind, has_source) = first(&e);
    assert!(
        matches!(&kind, httpdns_client::FailureKind::Tls(m) if m.contains("UnknownIssuer") || m.contains("unknown issuer")),
        "{kind:?}"
    );
    assert!(has_source, "the TLS error is kept as the source");
    // The error's own source chain leads down to it: failures, failure, request, ...
    let mut chain = Vec::new();
    let mut next = std::error::Error::source(&e);
    while let Some(cause) = next {
        chain.push(cause.to_string());
        next = cause.source();
    }
    assert!(chain.len() >= 3, "{chain:?}");
    // A name the certificate does not carry.
    let mut c = base("wrong-name.test");
    trust(&mut c, &f.ca);
    let e = Client::new(c).unwrap().gateways().await.unwrap_err();
    let (kind, _) = first(&e);
    assert!(
        matches!(&kind, httpdns_client::FailureKind::Tls(m) if m.contains("not valid for name")),
        "{kind:?}"
    );
    // A refused port.
    let mut c = base("localhost");
    trust(&mut c, &f.ca);
    c.router_port = free_port();
    let e = Client::new(c).unwrap().gateways().await.unwrap_err();
    assert_eq!(first(&e).0, httpdns_client::FailureKind::Refused, "{e}");
    assert!(e.to_string().contains("connection refused"), "{e}");
    // A provider that times out, and one that says why it refuses.
    let (_hole, hole) = blackhole();
    let dns = HttpDnsServer::start();
    dns.answer_status("svc.test", 403, r#"{"code":"InvalidSignature"}"#);
    let mut c = Config::new("svc.test");
    c.dns.providers = vec![provider(&[hole]), provider(&[dns.addr()])];
    c.dns.local_fallback = false;
    c.dns.attempt_timeout = Duration::from_millis(300);
    let e = Client::new(c)
        .unwrap()
        .dns()
        .resolve("svc.test")
        .await
        .unwrap_err();
    let kinds: Vec<_> = e.failures().iter().map(|f| f.kind.clone()).collect();
    assert!(
        kinds.contains(&httpdns_client::FailureKind::TimedOut),
        "{e}"
    );
    assert!(
        kinds.iter().any(|k| matches!(k, httpdns_client::FailureKind::Status { status: 403, body } if body.contains("InvalidSignature"))),
        "{e}"
    );
    assert!(
        e.to_string().contains("timed out") && e.to_string().contains("InvalidSignature"),
        "{e}"
    );
}

/// Enterprise and user-installed CAs: a CA in the platform's store (here the bundle
/// `SSL_CERT_FILE` names, as on a Linux host) is trusted without `extra_roots`.
#[tokio::test(flavor = "multi_thread")]
async fn the_platform_trust_store_is_used() {
    let f = fleet(&[("gw-a", 1, true)]);
    let bundle = f.dir.path().join("system-ca.pem");
    std::fs::write(&bundle, f.ca.pem()).unwrap();
    // Each test runs in its own process (nextest): this changes only this one.
    std::env::set_var("SSL_CERT_FILE", &bundle);
    let mut c = Config::new("localhost");
    c.router_port = f.https.port();
    c.dns
        .bootstrap
        .insert("localhost".into(), vec!["127.0.0.1".parse().unwrap()]);
    c.dns.local_fallback = false;
    assert!(c.extra_roots.is_empty());
    let g = Client::new(c).unwrap().gateways().await.unwrap();
    assert!(matches!(g.source, Source::Router { .. }), "{:?}", g.source);
}
