//! What stands between clients and the zone: unbound as a recursive resolver in front
//! of the router, and the SDK finding the router through its own HTTPDNS.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{free_port, get_json, tool, wait_until, Etcd, Proc};

use super::{dig, drain_us_2, flags, http_gateway, put_node, short, zone_on, zone_with, ZONE};

/// Debian's unbound as a recursive resolver whose `stub-zone` for the zone is the
/// router; answers cached for the zone's TTL. Returns it and its DNS address.
fn unbound_in_front(dir: &Path, router_dns: SocketAddr) -> (Proc, SocketAddr) {
    tool("unbound", "unbound");
    let port = free_port();
    let conf = dir.join("unbound.conf");
    std::fs::write(
        &conf,
        format!(
            r#"server:
  interface: 127.0.0.1@{port}
  username: ""
  chroot: ""
  directory: "{dir}"
  pidfile: "{dir}/unbound.pid"
  use-syslog: no
  logfile: ""
  do-daemonize: no
  do-ip6: no
  verbosity: 1
  access-control: 127.0.0.0/8 allow
  do-not-query-localhost: no
  module-config: "iterator"
  prefetch: no
  # `test.` is one of unbound's default local zones (RFC 6761): let it through.
  local-zone: "test." nodefault
stub-zone:
  name: "{ZONE}"
  stub-addr: {ip}@{rport}
remote-control:
  control-enable: no
"#,
            dir = dir.display(),
            ip = router_dns.ip(),
            rport = router_dns.port(),
        ),
    )
    .unwrap();
    let proc = Proc::external("unbound", &["-d", "-c", conf.to_str().unwrap()]);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_until(Duration::from_secs(15), "unbound answering", || {
        Command::new(tool("dig", "bind9-dnsutils"))
            .args([
                "@127.0.0.1",
                "-p",
                &port.to_string(),
                "+tries=1",
                "+time=1",
                "localhost",
                "A",
            ])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("status:"))
    });
    (proc, addr)
}

#[test]
fn unbound_in_front_gets_load_aware_answers_and_drops_a_drained_node_within_the_ttl() {
    let z = zone_with("count = 2\nttl = 2", "", &[]);
    let (unbound, resolver) = unbound_in_front(z.dir.path(), z.dns);
    let ask = || {
        let mut got = short(&dig(resolver, &format!("us.{ZONE}"), "A", &["+short"]));
        got.sort();
        got
    };
    // The two least loaded of three; unbound may rotate their order.
    let first = ask();
    assert_eq!(
        first,
        ["198.51.100.1", "198.51.100.2"],
        "{}",
        unbound.output()
    );
    let out = dig(resolver, &format!("us.{ZONE}"), "A", &[]);
    assert!(flags(&out).contains("ra"), "unbound recursed: {out}");
    // Drain the least loaded: it must leave unbound's answers within TTL + 1 s.
    let drained = Instant::now();
    drain_us_2(&z.etcd);
    let took = wait_until(
        Duration::from_secs(30),
        "the drained node leaves unbound's answers",
        || !ask().contains(&"198.51.100.2".to_string()),
    );
    let since = drained.elapsed();
    eprintln!("the drained node left unbound's answers {since:?} after the drain (TTL 2 s)");
    assert!(
        since <= Duration::from_secs(3) + Duration::from_millis(500),
        "left after {since:?} (wait {took:?}); the TTL is 2 s"
    );
    assert_eq!(ask(), ["198.51.100.1", "198.51.100.3"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sdk_finds_the_router_through_its_own_httpdns_and_gets_candidates() {
    let (_gw, port) = http_gateway("gw");
    let etcd = Etcd::start();
    put_node(&etcd, "local-1", "127.0.0.1", "local", 10, port, "");
    let z = zone_on(
        etcd,
        "",
        "[httpdns]\nrouter_domain = \"router.test\"\nsecret = \"s3cret\"\n",
        &["--public-addr", "127.0.0.1"],
    );
    wait_until(
        Duration::from_secs(10),
        "the router publishes its address",
        || {
            get_json(z.router.addr, "/d?host=router.test")
                .is_some_and(|(_, b)| b["ips"][0] == "127.0.0.1")
        },
    );
    let (_, body) = get_json(z.router.addr, &format!("/100000/d?host={ZONE}&query=4,6")).unwrap();
    assert_eq!(body["host"], ZONE);
    assert_eq!(body["ips"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(body["ipsv6"], serde_json::json!(["2001:db8::1"]));
    assert_eq!(
        (body["ttl"].as_u64(), body["origin_ttl"].as_u64()),
        (Some(10), Some(10))
    );
    let soon = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let bad_signature = format!("/sign_d?host=router.test&t={soon}&s=00");
    for (path, code, err) in [
        ("/d", 400, "invalid_parameter"),
        ("/d?host=a..b", 400, "invalid_host"),
        ("/d?host=x&query=5", 400, "invalid_parameter"),
        (
            "/sign_d?host=router.test&t=1&s=00",
            403,
            "signature_expired",
        ),
        (bad_signature.as_str(), 403, "invalid_signature"),
        (
            "/sign_d?host=router.test&t=99999999999&s=00",
            403,
            "signature_too_far_ahead",
        ),
    ] {
        let (c, b) = get_json(z.router.addr, path).unwrap();
        assert_eq!(
            (c, b["error"]["code"].as_str()),
            (code, Some(err)),
            "{path}: {b}"
        );
    }
    for signed in [false, true] {
        let mut provider = httpdns_client::Provider::alibaba("100000", vec![z.router.addr]);
        if signed {
            provider = provider.with_secret("s3cret");
        }
        let mut c = httpdns_client::Config::new("router.test");
        c.router_port = z.https.port();
        c.add_roots_pem(z.ca.pem().as_bytes()).unwrap();
        c.dns.providers = vec![provider];
        c.dns.local_fallback = false;
        c.dns.ipv6 = httpdns_client::Ipv6Mode::Never;
        let client = httpdns_client::Client::new(c).unwrap();
        let g = client
            .gateways()
            .await
            .unwrap_or_else(|e| panic!("signed={signed}: {e}"));
        assert_eq!(
            g.source,
            httpdns_client::Source::Router {
                addr: z.https,
                dns: httpdns_client::DnsSource::HttpDns
            }
        );
        assert_eq!(g.gateways[0].id, "local-1");
        let mut conn = client.connect().await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut conn.stream, b"GET / HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut conn.stream, &mut text)
            .await
            .unwrap();
        assert!(text.ends_with("gateway gw\n"), "{text}");
    }
}
