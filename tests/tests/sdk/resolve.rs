//! Name resolution: HTTPDNS providers (failover, hijacked answers, signatures, HTTPS,
//! IPv6), DNS over HTTPS against a real server, the SDK's DNS cache (stale entries,
//! clamped TTLs, shared lookups) and reqwest resolving through it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{free_port, wait_until, HttpDnsServer, TestCa};
use httpdns_client::{Client, Config, DnsSource, HttpDnsResolver, Ipv6Mode, Provider, Source};

use super::{blackhole, config, fleet, provider, trust};

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
