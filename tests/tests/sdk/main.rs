//! httpdns-client against the real router-server (HTTPS, real etcd) and a local HTTPDNS
//! server, on loopback.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{free_port, wait_until, Etcd, HttpDnsServer, RouterProc, TestCa, P};
use httpdns_client::{
    Client, Config, DnsSource, Error, HttpDnsResolver, Ipv6Mode, Provider, Source,
};

/// etcd, gateways (live ones listen), and a router serving HTTPS and HTTP.
struct Fleet {
    _etcd: Etcd,
    router: RouterProc,
    https: SocketAddr,
    http: SocketAddr,
    ca: TestCa,
    dir: tempfile::TempDir,
    _gateways: Vec<TcpListener>,
}

fn fleet(gateways: &[(&str, u64, bool)]) -> Fleet {
    let etcd = Etcd::start();
    let mut listeners = Vec::new();
    for (id, conns, live) in gateways {
        let port = if *live {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let p = l.local_addr().unwrap().port();
            listeners.push(l);
            p
        } else {
            free_port()
        };
        etcd.put(
            &format!("{P}/nodes/{id}"),
            &format!(r#"{{"id":"{id}","ip":"127.0.0.1","ports":{{"tcp":{port}}},"region":"r","capacity":1000,"connections":{conns}}}"#),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("sdk test CA");
    let (cert, key) = ca.write_leaf(dir.path(), &["localhost", "127.0.0.1"]);
    let (router, https) = RouterProc::start_tls(
        &etcd,
        "[backoff]\nbase_ms = 2000\nmax_ms = 10000\nfactor = 3.0\njitter = 0.1",
        &cert,
        &key,
    );
    let http = router.addr;
    Fleet {
        _etcd: etcd,
        router,
        https,
        http,
        ca,
        dir,
        _gateways: listeners,
    }
}

fn provider(addrs: &[SocketAddr]) -> Provider {
    Provider::alibaba("100000", addrs.to_vec())
}

/// Trusts `ca` besides the platform's store.
fn trust(c: &mut Config, ca: &TestCa) {
    c.add_roots_pem(ca.pem().as_bytes()).unwrap();
}

fn config(f: &Fleet, providers: Vec<Provider>) -> Config {
    let mut c = Config::new("localhost");
    c.router_port = f.https.port();
    trust(&mut c, &f.ca);
    c.dns.providers = providers;
    // The exact requests are checked: IPv6 is asked for only where a test says so.
    c.dns.ipv6 = Ipv6Mode::Never;
    c.cache_file = Some(f.dir.path().join("gateways.json"));
    c
}

/// A first run with the router fills the cache file; returns its path.
async fn fill_cache_file(f: &Fleet, dns: &HttpDnsServer) -> std::path::PathBuf {
    let path = f.dir.path().join("gateways.json");
    // Set-up, not what is tested: generous deadlines, so a loaded machine's slow
    // handshake does not stop it.
    let mut c = config(f, vec![provider(&[dns.addr()])]);
    c.router_attempt_timeout = Duration::from_secs(10);
    c.router_budget = Duration::from_secs(20);
    c.deadline = Duration::from_secs(30);
    Client::new(c).unwrap().gateways().await.unwrap();
    wait_until(Duration::from_secs(5), "cache file", || path.exists());
    path
}

/// A port that accepts TCP (the kernel completes the handshake) but never answers.
fn blackhole() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

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
async fn provider_failover_local_dns_and_hijack_rejection() {
    let f = fleet(&[("gw-a", 1, true)]);
    let live = HttpDnsServer::start();
    live.answer("localhost", &["127.0.0.1"], &[], 60);
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (_hole, silent) = blackhole();

    // Provider IP 1 dead, IP 2 silent (times out), IP 3 answers.
    let mut c = config(&f, vec![provider(&[dead, silent, live.addr()])]);
    c.dns.attempt_timeout = Duration::from_millis(300);
    let client = Client::new(c).unwrap();
    let start = Instant::now();
    let g = client.gateways().await.unwrap();
    assert_eq!(
        g.source,
        Source::Router {
            addr: f.https,
            dns: DnsSource::HttpDns
        }
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(live.requests().len(), 1);

    // All providers dead: local DNS answers for localhost.
    let client = Client::new(config(&f, vec![provider(&[dead])])).unwrap();
    let g = client.gateways().await.unwrap();
    assert!(
        matches!(
            g.source,
            Source::Router {
                dns: DnsSource::LocalDns,
                ..
            }
        ),
        "{:?}",
        g.source
    );

    // Hijack-style answers are rejected and the next source is used.
    let hijack = HttpDnsServer::start();
    for body in [
        r#"{"host":"localhost","ips":["portal.hijack.example"],"ttl":600}"#,
        r#"{"host":"localhost","ips":[],"ipsv6":[],"ttl":600}"#,
        "<html>please log in</html>",
    ] {
        hijack.answer_raw("localhost", body);
        let client = Client::new(config(&f, vec![provider(&[hijack.addr()])])).unwrap();
        let r = client.dns().resolve("localhost").await.unwrap();
        assert_eq!(r.source, DnsSource::LocalDns, "{body}");
        assert!(
            r.ips.iter().all(|ip| ip.is_loopback()),
            "{body}: {:?}",
            r.ips
        );
    }
}

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
async fn expired_entries_are_served_at_once_and_refreshed_in_the_background() {
    let dns = HttpDnsServer::start();
    dns.answer("svc.test", &["192.0.2.1"], &[], 1);
    let mut c = Config::new("router.test");
    c.dns.providers = vec![provider(&[dns.addr()])];
    // This test wants the provider's 1 s TTL as it is.
    c.dns.min_ttl = Duration::ZERO;
    let client = Client::new(c).unwrap();
    let r = client.dns().resolve("svc.test").await.unwrap();
    assert_eq!((r.ips[0].to_string(), r.stale), ("192.0.2.1".into(), false));
    dns.answer("svc.test", &["192.0.2.2"], &[], 60);
    // Until the 1 s TTL runs out, the fresh entry comes from the cache; the first call
    // after it must get the old entry at once, marked stale.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (r, took) = loop {
        let start = Instant::now();
        let r = client.dns().resolve("svc.test").await.unwrap();
        if r.stale {
            break (r, start.elapsed());
        }
        assert!(Instant::now() < deadline, "the entry never expired");
        assert_eq!(
            r.ips[0].to_string(),
            "192.0.2.1",
            "no lookup before the TTL ends"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(r.ips[0].to_string(), "192.0.2.1", "{r:?}");
    assert!(
        took < Duration::from_millis(50),
        "served at once, took {took:?}"
    );
    let mut fresh = None;
    for _ in 0..200 {
        let r = client.dns().resolve("svc.test").await.unwrap();
        if !r.stale {
            fresh = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fresh.expect("refreshed").ips[0].to_string(), "192.0.2.2");
    // A network change drops the cache: the next call asks the provider again.
    let before = dns.requests().len();
    client.network_changed();
    client.dns().resolve("svc.test").await.unwrap();
    assert_eq!(dns.requests().len(), before + 1);
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

#[tokio::test(flavor = "multi_thread")]
async fn signed_requests_carry_the_documented_signature() {
    let dns = HttpDnsServer::start();
    dns.answer("router.test", &["192.0.2.5"], &[], 60);
    let mut c = Config::new("router.test");
    c.dns.providers = vec![provider(&[dns.addr()]).with_secret("s3cr3t")];
    let client = Client::new(c).unwrap();
    let r = client.dns().resolve("router.test").await.unwrap();
    assert_eq!(r.ips[0].to_string(), "192.0.2.5");
    let req = dns.requests().pop().unwrap();
    let (path, query) = req.split_once('?').unwrap();
    assert_eq!(path, "/100000/sign_d");
    let params: std::collections::HashMap<&str, &str> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    assert_eq!(params["host"], "router.test");
    let t: u64 = params["t"].parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(t >= now + 590 && t <= now + 610, "expiry is now + 600 s");
    assert_eq!(
        params["s"],
        httpdns_client::dns::sign("router.test", "s3cr3t", t)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn any_reqwest_client_resolves_through_httpdns() {
    let f = fleet(&[("gw-a", 1, true)]);
    let dns = HttpDnsServer::start();
    // A name only the HTTPDNS provider knows.
    dns.answer("router.internal.test", &["127.0.0.1"], &[], 60);
    let client = Client::new(config(&f, vec![provider(&[dns.addr()])])).unwrap();
    client.prefetch(&["router.internal.test"]).await;
    assert_eq!(
        dns.requests_for("router.internal.test").len(),
        1,
        "pre-resolved"
    );
    let http = reqwest::Client::builder()
        .dns_resolver(Arc::new(HttpDnsResolver::new(client.dns().clone())))
        .no_proxy()
        .build()
        .unwrap();
    let url = format!("http://router.internal.test:{}/healthz", f.http.port());
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        dns.requests_for("router.internal.test").len(),
        1,
        "served from the resolver's cache"
    );
    // Local-DNS fallback for names the provider does not know.
    let resp = http
        .get(format!("http://localhost:{}/healthz", f.http.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(f.router.proc.output().contains("serving HTTPS"));
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

#[test]
fn the_sdk_pulls_in_no_server_dependencies() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "tree",
            "-p",
            "httpdns-client",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .output()
        .expect("cargo tree");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    // Its HTTP is hyper's client connection; reqwest (and with it url, idna and
    // hyper-util's pooled client) comes only with the `reqwest` feature.
    assert!(tree.lines().any(|l| l.starts_with("hyper ")), "{tree}");
    assert!(!tree.lines().any(|l| l.starts_with("reqwest ")), "{tree}");
    for server in [
        "axum ",
        "axum-server",
        "etcd-client",
        "tonic",
        "gateway-registry",
        "router-server",
    ] {
        assert!(
            !tree.lines().any(|l| l.starts_with(server)),
            "{server} in the SDK's tree"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn https_providers_are_verified() {
    let ca = TestCa::new("httpdns CA");
    let (cert, key) = ca.leaf(&["httpdns.test"]);
    let dns = HttpDnsServer::start_tls(&cert, &key);
    dns.answer("router.test", &["192.0.2.8"], &[], 60);
    let tls_provider = provider(&[dns.addr()]).with_https(Some("httpdns.test".into()));
    let mut c = Config::new("router.test");
    c.dns.providers = vec![tls_provider];
    c.dns.local_fallback = false;
    trust(&mut c, &ca);
    let r = Client::new(c.clone())
        .unwrap()
        .dns()
        .resolve("router.test")
        .await
        .unwrap();
    assert_eq!(
        (r.ips[0].to_string(), r.source),
        ("192.0.2.8".into(), DnsSource::HttpDns)
    );
    assert_eq!(dns.requests().len(), 1);
    // A provider whose certificate no trusted CA signed is not believed.
    c.extra_roots.clear();
    trust(&mut c, &TestCa::new("other"));
    let err = Client::new(c)
        .unwrap()
        .dns()
        .resolve("router.test")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("HTTPDNS"), "{err}");
    assert_eq!(
        dns.requests().len(),
        1,
        "the TLS handshake failed before any request"
    );
}

/// Waits until the router answers `/gateways` with `status`.
fn wait_router_status(f: &Fleet, status: u16) {
    wait_until(Duration::from_secs(10), "router status", || {
        harness::http_get(f.http, "/gateways").is_some_and(|(s, _)| s == status)
    });
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

/// An HTTPS provider on an IPv6 address without a TLS name, asked for both families.
#[tokio::test(flavor = "multi_thread")]
async fn an_ipv6_https_provider_is_asked_for_both_families() {
    let ca = TestCa::new("v6 CA");
    let (cert, key) = ca.leaf(&["::1"]);
    let dns = HttpDnsServer::start_tls_on("::1", &cert, &key);
    assert!(dns.addr().is_ipv6());
    dns.answer("router.test", &["192.0.2.1"], &["2001:db8::1"], 60);
    let mut c = Config::new("router.test");
    c.dns.providers = vec![provider(&[dns.addr()]).with_https(None)];
    c.dns.local_fallback = false;
    c.dns.ipv6 = Ipv6Mode::Always;
    trust(&mut c, &ca);
    let r = Client::new(c)
        .unwrap()
        .dns()
        .resolve("router.test")
        .await
        .unwrap();
    assert_eq!(r.source, DnsSource::HttpDns);
    let ips: Vec<String> = r.ips.iter().map(ToString::to_string).collect();
    assert_eq!(ips, ["192.0.2.1", "2001:db8::1"]);
    assert_eq!(dns.requests(), ["/100000/d?host=router.test&query=4,6"]);
    // An IP literal is not resolved, and says so.
    let lit = Client::new(Config::new("router.test"))
        .unwrap()
        .dns()
        .resolve("::1")
        .await
        .unwrap();
    assert_eq!(lit.source, DnsSource::Literal);
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

/// Concurrent calls for one host share one lookup.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_lookups_of_one_host_ask_the_provider_once() {
    let dns = HttpDnsServer::start();
    dns.answer("svc.test", &["192.0.2.1"], &[], 60);
    let mut c = Config::new("router.test");
    c.dns.providers = vec![provider(&[dns.addr()])];
    c.dns.ipv6 = Ipv6Mode::Never;
    let client = Client::new(c).unwrap();
    let calls: Vec<_> = (0..32)
        .map(|_| {
            let dns = client.dns().clone();
            tokio::spawn(async move { dns.resolve("svc.test").await })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().ips[0].to_string(), "192.0.2.1");
    }
    assert_eq!(
        dns.requests_for("svc.test").len(),
        1,
        "{:?}",
        dns.requests()
    );
}

/// A real DNS-over-HTTPS server this project did not write: Debian's `unbound` with an
/// `https-port`, serving a local zone over loopback with a test certificate.
fn unbound(dir: &std::path::Path, ca: &TestCa) -> (harness::Proc, SocketAddr) {
    assert!(
        harness::which("unbound").is_some(),
        "unbound is needed: apt-get install unbound (scripts/deps.sh --test installs it)"
    );
    let (cert, key) = ca.write_leaf(dir, &["doh.test"]);
    let (dns_port, doh_port) = (free_port(), free_port());
    let conf = dir.join("unbound.conf");
    std::fs::write(
        &conf,
        format!(
            r#"server:
  interface: 127.0.0.1@{dns_port}
  interface: 127.0.0.1@{doh_port}
  https-port: {doh_port}
  http-endpoint: "/dns-query"
  tls-service-key: "{key}"
  tls-service-pem: "{cert}"
  username: ""
  chroot: ""
  directory: "{dir}"
  pidfile: "{dir}/unbound.pid"
  use-syslog: no
  logfile: ""
  do-daemonize: no
  do-ip6: no
  verbosity: 1
  module-config: "iterator"
  access-control: 127.0.0.0/8 allow
  local-zone: "router.test." static
  local-data: "router.test. 120 IN A 192.0.2.10"
  local-data: "router.test. 120 IN A 192.0.2.11"
  local-data: "router.test. 120 IN AAAA 2001:db8::10"
remote-control:
  control-enable: no
"#,
            key = key.display(),
            cert = cert.display(),
            dir = dir.display(),
        ),
    )
    .unwrap();
    let conf = conf.to_str().unwrap().to_string();
    let proc = harness::Proc::external("unbound", &["-d", "-c", &conf]);
    let addr: SocketAddr = format!("127.0.0.1:{doh_port}").parse().unwrap();
    wait_until(Duration::from_secs(15), "unbound listening", || {
        std::net::TcpStream::connect(addr).is_ok()
    });
    (proc, addr)
}

#[tokio::test(flavor = "multi_thread")]
async fn dns_over_https_against_unbound_by_get_and_post() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("doh CA");
    let (server, addr) = unbound(dir.path(), &ca);
    for post in [false, true] {
        let mut c = Config::new("router.test");
        c.dns.providers =
            vec![Provider::doh(vec![addr], Some("doh.test".into())).with_doh("/dns-query", post)];
        c.dns.local_fallback = false;
        c.dns.ipv6 = Ipv6Mode::Always;
        trust(&mut c, &ca);
        let r = Client::new(c)
            .unwrap()
            .dns()
            .resolve("router.test")
            .await
            .unwrap_or_else(|e| panic!("post={post}: {e}\n{}", server.output()));
        assert_eq!(r.source, DnsSource::HttpDns);
        // unbound rotates the order of an RRset between answers; IPv4 comes first.
        assert!(r.ips[2].is_ipv6(), "{:?}", r.ips);
        let mut ips: Vec<String> = r.ips.iter().map(ToString::to_string).collect();
        ips.sort();
        assert_eq!(
            ips,
            ["192.0.2.10", "192.0.2.11", "2001:db8::10"],
            "post={post}"
        );
    }
    // A name the zone does not have is a failure naming the DNS answer.
    let mut c = Config::new("other.test");
    c.dns.providers = vec![Provider::doh(vec![addr], Some("doh.test".into()))];
    c.dns.local_fallback = false;
    trust(&mut c, &ca);
    let e = Client::new(c)
        .unwrap()
        .dns()
        .resolve("nothing.router.test")
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("DNS") || e.to_string().contains("no A"),
        "{e}"
    );
}

/// A provider's TTL is clamped: 1 s is kept for `min_ttl` (10 s by default), so a
/// provider cannot make the SDK ask on every call.
#[tokio::test(flavor = "multi_thread")]
async fn provider_ttls_are_clamped() {
    let dns = HttpDnsServer::start();
    dns.answer("svc.test", &["192.0.2.1"], &[], 1);
    let mut c = Config::new("router.test");
    c.dns.providers = vec![provider(&[dns.addr()])];
    c.dns.ipv6 = Ipv6Mode::Never;
    let client = Client::new(c).unwrap();
    client.dns().resolve("svc.test").await.unwrap();
    // Past the provider's 1 s: still fresh, nothing asked again.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let r = client.dns().resolve("svc.test").await.unwrap();
    assert!(!r.stale);
    assert_eq!(
        dns.requests_for("svc.test").len(),
        1,
        "{:?}",
        dns.requests()
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
