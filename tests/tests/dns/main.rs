//! The router's DNS, asked by real DNS clients: dig and kdig (Debian's bind9-dnsutils
//! and knot-dnsutils), unbound as the recursive resolver in front of it, curl with
//! DNS over HTTPS, and the SDK's Alibaba provider against `/d`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{free_port, get_json, http_get, tool, wait_until, Etcd, Proc, RouterProc, TestCa, P};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

const ZONE: &str = "gw.example.test";

/// Writes a node record: `conns` of 1,000, IPv4 `ip`, IPv6 `2001:db8::{last octet}`.
fn put_node(etcd: &Etcd, id: &str, ip: &str, region: &str, conns: u64, port: u16, extra: &str) {
    let last = ip.rsplit('.').next().unwrap();
    etcd.put(
        &format!("{P}/nodes/{id}"),
        &format!(
            r#"{{"id":"{id}","ip":"{ip}","ipv6":"2001:db8::{last}","ports":{{"tcp":{port}}},"region":"{region}","capacity":1000,"connections":{conns}{extra}}}"#
        ),
    );
}

/// Marks the least loaded us node, `us-2`, draining, as its agent would.
fn drain_us_2(etcd: &Etcd) {
    put_node(
        etcd,
        "us-2",
        "198.51.100.2",
        "us",
        150,
        9000,
        r#","state":"draining""#,
    );
}

/// A router serving the zone over UDP/TCP and HTTPS (and plain HTTP), with its CA.
struct Zone {
    etcd: Etcd,
    router: RouterProc,
    dns: SocketAddr,
    https: SocketAddr,
    ca: TestCa,
    dir: tempfile::TempDir,
}

const REGIONS: &str = r#"
[regions.cidrs]
"10.1.0.0/16" = "eu"
"10.2.0.0/16" = "us"
"127.0.0.0/8" = "local"
"#;

/// Two eu nodes, three us nodes (the busiest over half full), no two equally loaded
/// (ties go by each router's own random order), and the config's `dns`
/// keys besides the listener and zone.
fn zone_with(dns: &str, extra_config: &str, flags: &[&str]) -> Zone {
    let etcd = Etcd::start();
    put_node(&etcd, "eu-1", "192.0.2.1", "eu", 100, 9000, "");
    put_node(&etcd, "eu-2", "192.0.2.2", "eu", 300, 9000, "");
    put_node(&etcd, "us-1", "198.51.100.1", "us", 200, 9000, "");
    put_node(&etcd, "us-2", "198.51.100.2", "us", 150, 9000, "");
    put_node(&etcd, "us-3", "198.51.100.3", "us", 700, 9000, "");
    zone_on(etcd, dns, extra_config, flags)
}

fn zone_on(etcd: Etcd, dns: &str, extra_config: &str, flags: &[&str]) -> Zone {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("dns test CA");
    let (cert, key) = ca.write_leaf(dir.path(), &["localhost", "127.0.0.1", "router.test"]);
    let config = format!(
        "{REGIONS}\n[dns]\nlisten = \"127.0.0.1:0\"\nzone = \"{ZONE}\"\n{dns}\n{extra_config}"
    );
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let mut args = vec![
        "--http-listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert,
        "--tls-key",
        key,
    ];
    args.extend_from_slice(flags);
    let (router, https) = RouterProc::start_tls_args(&etcd, &config, &args);
    let dns = router
        .proc
        .wait_for_addr("answering DNS", Duration::from_secs(20));
    let nodes = etcd.keys(&format!("{P}/nodes/")).len();
    wait_until(Duration::from_secs(10), "every node in the router", || {
        get_json(router.addr, "/gateways?count=10").is_some_and(|(c, b)| {
            c == 200 && b["gateways"].as_array().is_some_and(|g| g.len() == nodes)
        })
    });
    Zone {
        etcd,
        router,
        dns,
        https,
        ca,
        dir,
    }
}

/// `dig @router NAME TYPE` with `opts`; returns stdout, failing on a dig error.
fn dig(at: SocketAddr, name: &str, qtype: &str, opts: &[&str]) -> String {
    let port = at.port().to_string();
    let server = format!("@{}", at.ip());
    let mut args = vec![
        server.as_str(),
        "-p",
        &port,
        name,
        qtype,
        "+tries=1",
        "+time=5",
    ];
    args.extend_from_slice(opts);
    let out = Command::new(tool("dig", "bind9-dnsutils"))
        .args(&args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "dig {args:?} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The status of a full dig answer (`NOERROR`, `NXDOMAIN`, ...).
fn status(dig_out: &str) -> String {
    dig_out
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("no status in {dig_out}"))
        .to_string()
}

/// The flags of a full dig answer (`qr aa rd`).
fn flags(dig_out: &str) -> String {
    dig_out
        .split(";; flags: ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .unwrap_or_else(|| panic!("no flags in {dig_out}"))
        .to_string()
}

/// The addresses of `+short` output, in order.
fn short(out: &str) -> Vec<String> {
    out.lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn dig_gets_load_aware_answers_over_udp_and_tcp() {
    let z = zone_with("count = 2\nrrl_per_sec = 0", "", &[]);
    // The resolver's region (127.0.0.0/8 is `local`, which has no nodes): any region,
    // least loaded first.
    let by_resolver = short(&dig(z.dns, ZONE, "A", &["+short"]));
    assert_eq!(by_resolver, ["192.0.2.1", "198.51.100.2"]);
    // EDNS Client Subnet picks the client's region.
    for (subnet, want) in [
        ("10.2.3.0/24", ["198.51.100.2", "198.51.100.1"]),
        ("10.1.3.0/24", ["192.0.2.1", "192.0.2.2"]),
    ] {
        let out = dig(z.dns, ZONE, "A", &[&format!("+subnet={subnet}")]);
        assert_eq!(status(&out), "NOERROR");
        assert!(flags(&out).contains("aa"), "{out}");
        assert!(!flags(&out).contains("ra"), "no recursion: {out}");
        assert!(
            out.contains(&format!("CLIENT-SUBNET: {subnet}/24")),
            "the scope is echoed: {out}"
        );
        let got: Vec<String> = out
            .lines()
            .filter(|l| l.starts_with(ZONE) && l.contains("\tA\t"))
            .map(|l| l.rsplit('\t').next().unwrap().to_string())
            .collect();
        assert_eq!(got, want, "{subnet}: {out}");
        let ttls: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with(ZONE))
            .filter_map(|l| l.split_whitespace().nth(1))
            .collect();
        assert_eq!(ttls, ["10", "10"], "TTL 10: {out}");
    }
    // Names: a region, a protocol in a region, over TCP too, and AAAA.
    assert_eq!(
        short(&dig(z.dns, &format!("us.{ZONE}"), "A", &["+short", "+tcp"])),
        ["198.51.100.2", "198.51.100.1"]
    );
    assert_eq!(
        short(&dig(z.dns, &format!("tcp.eu.{ZONE}"), "AAAA", &["+short"])),
        ["2001:db8::1", "2001:db8::2"]
    );
    assert_eq!(
        short(&dig(
            z.dns,
            &format!("eu.{ZONE}"),
            "AAAA",
            &["+short", "+tcp"]
        )),
        ["2001:db8::1", "2001:db8::2"]
    );
    // The zone's own records.
    let soa = short(&dig(z.dns, ZONE, "SOA", &["+short"]));
    assert!(
        soa[0].starts_with(&format!("ns.{ZONE}. hostmaster.{ZONE}. ")),
        "{soa:?}"
    );
    assert_eq!(
        short(&dig(z.dns, ZONE, "NS", &["+short", "+tcp"])),
        [format!("ns.{ZONE}.")]
    );
    // Unknown names, with the SOA for negative caching; other zones are refused.
    for name in [
        format!("mars.{ZONE}"),
        format!("x.tcp.eu.{ZONE}"),
        format!("udp.eu.{ZONE}"),
    ] {
        let out = dig(z.dns, &name, "A", &[]);
        assert_eq!(status(&out), "NXDOMAIN", "{out}");
        assert!(out.contains("AUTHORITY: 1"), "{out}");
    }
    for name in ["example.com", "www.debian.org", &format!("x{ZONE}")] {
        let out = dig(z.dns, name, "A", &["+tcp"]);
        assert_eq!(status(&out), "REFUSED", "{out}");
        assert!(out.contains("ANSWER: 0"), "{out}");
    }
    // A drained node leaves the answers at once.
    drain_us_2(&z.etcd);
    wait_until(
        Duration::from_secs(10),
        "the drained node leaves DNS",
        || {
            short(&dig(z.dns, &format!("us.{ZONE}"), "A", &["+short"]))
                == ["198.51.100.1", "198.51.100.3"]
        },
    );
    let m = http_get(z.router.addr, "/metrics").unwrap().1;
    for sample in [
        r#"router_dns_queries_total{transport="udp",qtype="A",rcode="NOERROR"}"#,
        r#"router_dns_queries_total{transport="tcp",qtype="A",rcode="REFUSED"}"#,
        r#"router_dns_queries_total{transport="udp",qtype="SOA",rcode="NOERROR"}"#,
        r#"router_dns_queries_total{transport="udp",qtype="A",rcode="NXDOMAIN"}"#,
    ] {
        assert!(m.contains(sample), "{sample} missing:\n{m}");
    }
}

#[test]
fn a_large_answer_is_truncated_over_udp_and_whole_over_tcp() {
    let etcd = Etcd::start();
    for i in 1..=40 {
        put_node(
            &etcd,
            &format!("big-{i:02}"),
            &format!("192.0.2.{i}"),
            "big",
            100,
            9000,
            "",
        );
    }
    let config = format!(
        "[dns]\nlisten = \"127.0.0.1:0\"\nzone = \"{ZONE}\"\ncount = 40\nrrl_per_sec = 0\n"
    );
    let router = RouterProc::start(&etcd, &config, &[]);
    let dns = router
        .proc
        .wait_for_addr("answering DNS", Duration::from_secs(20));
    wait_until(Duration::from_secs(10), "40 nodes", || {
        get_json(router.addr, "/gateways?count=10").is_some_and(|(c, _)| c == 200)
            && etcd.keys(&format!("{P}/nodes/")).len() == 40
    });
    let name = format!("big.{ZONE}");
    // Without EDNS the limit is 512 bytes: 40 AAAA records (28 bytes each) do not fit.
    let udp = dig(dns, &name, "AAAA", &["+noedns", "+ignore"]);
    assert!(flags(&udp).contains("tc"), "{udp}");
    assert!(udp.contains("ANSWER: 0"), "{udp}");
    let tcp = dig(dns, &name, "AAAA", &["+noedns", "+tcp"]);
    assert!(!flags(&tcp).contains("tc"), "{tcp}");
    assert!(tcp.contains("ANSWER: 40"), "{tcp}");
    // dig's default: retry over TCP on TC, and get everything.
    let retried = dig(dns, &name, "AAAA", &["+noedns", "+short"]);
    assert_eq!(short(&retried).len(), 40);
}

/// The DoH URL of the router's HTTPS listener.
fn doh_url(z: &Zone) -> String {
    format!("https://127.0.0.1:{}/dns-query", z.https.port())
}

#[test]
fn kdig_over_dns_over_https_post_and_get() {
    let z = zone_with("count = 2", "", &[]);
    let ca = z.dir.path().join("ca.pem");
    std::fs::write(&ca, z.ca.pem()).unwrap();
    let kdig = tool("kdig", "knot-dnsutils");
    for get in [false, true] {
        let mut args = vec![
            format!("@127.0.0.1"),
            "-p".into(),
            z.https.port().to_string(),
            "+https=/dns-query".into(),
            format!("+tls-ca={}", ca.display()),
            "+tls-hostname=localhost".into(),
            "+subnet=10.1.0.0/16".into(),
            format!("eu.{ZONE}"),
            "A".into(),
        ];
        if get {
            args.push("+https-get".into());
        }
        let out = Command::new(&kdig).args(&args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "kdig {args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("status: NOERROR"), "{text}");
        let method = if get { "HTTP/2-GET" } else { "HTTP/2-POST" };
        assert!(text.contains(method), "over DoH: {text}");
        assert!(
            text.contains("192.0.2.1") && text.contains("192.0.2.2"),
            "{text}"
        );
        let first = text.find("192.0.2.1").unwrap();
        assert!(
            first < text.find("192.0.2.2").unwrap(),
            "least loaded first: {text}"
        );
    }
    // The JSON form.
    let (code, body) = get_json(z.router.addr, &format!("/resolve?name=us.{ZONE}&type=A")).unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["Status"], 0);
    let data: Vec<&str> = body["Answer"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["data"].as_str().unwrap())
        .collect();
    assert_eq!(data, ["198.51.100.2", "198.51.100.1"]);
    assert_eq!(body["Answer"][0]["TTL"], 10);
    let (code, body) = get_json(
        z.router.addr,
        &format!("/resolve?name=nope.{ZONE}&type=AAAA"),
    )
    .unwrap();
    assert_eq!((code, body["Status"].as_u64()), (200, Some(3)), "{body}");
    assert_eq!(body["Authority"][0]["type"], 6);
    let (code, body) = get_json(z.router.addr, "/resolve?name=example.com").unwrap();
    assert_eq!((code, body["Status"].as_u64()), (200, Some(5)), "{body}");
    for bad in [
        "/resolve",
        "/resolve?name=a..b",
        "/resolve?name=x&type=BOGUS",
        "/dns-query?dns=***",
        "/dns-query",
    ] {
        let (code, body) = get_json(z.router.addr, bad).unwrap();
        assert_eq!(code, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_parameter", "{bad}: {body}");
    }
}

/// A plain HTTP server standing for a gateway: answers every request with its name.
fn http_gateway(name: &'static str) -> (std::thread::JoinHandle<()>, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let body = format!("gateway {name}\n");
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (t, port)
}

#[test]
fn curl_resolves_the_zone_through_the_routers_doh_and_reaches_a_gateway() {
    let (_gw, port) = http_gateway("local-1");
    let etcd = Etcd::start();
    put_node(&etcd, "local-1", "127.0.0.1", "local", 10, port, "");
    put_node(&etcd, "far-1", "192.0.2.1", "eu", 0, port, "");
    let z = zone_on(etcd, "count = 1", "", &[]);
    let ca = z.dir.path().join("ca.pem");
    std::fs::write(&ca, z.ca.pem()).unwrap();
    let out = Command::new(tool("curl", "curl"))
        .args([
            "-sS",
            "--max-time",
            "20",
            "--cacert",
            ca.to_str().unwrap(),
            "--doh-url",
            &doh_url(&z),
            &format!("http://{ZONE}:{port}/"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl: {text}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        z.router.proc.output()
    );
    assert_eq!(
        text, "gateway local-1\n",
        "the client's region (127.0.0.0/8) won over a lighter node"
    );
    let m = http_get(z.router.addr, "/metrics").unwrap().1;
    assert!(
        m.contains(r#"router_dns_queries_total{transport="https",qtype="A",rcode="NOERROR"}"#),
        "{m}"
    );
}

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

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

/// Sends `packet` and waits up to 5 s for the reply to id `id`.
fn exchange(sock: &UdpSocket, to: SocketAddr, packet: &[u8], id: u16) -> Option<Message> {
    sock.send_to(packet, to).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            continue;
        };
        if let Ok(m) = Message::from_vec(&buf[..n]) {
            if m.id() == id && m.message_type() == MessageType::Response {
                return Some(m);
            }
        }
    }
    None
}

#[test]
fn malformed_packets_never_stop_the_answers() {
    use rand::{Rng, SeedableRng};
    let z = zone_with("count = 2\nrrl_per_sec = 0", "", &[]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let tcp_dig = || short(&dig(z.dns, &format!("eu.{ZONE}"), "A", &["+short", "+tcp"]));
    let mut rng = rand::rngs::StdRng::seed_from_u64(18);
    let good = query(7, &format!("eu.{ZONE}."));
    for i in 0..1000u32 {
        let packet: Vec<u8> = if i % 2 == 0 {
            let len = rng.random_range(0..600);
            (0..len).map(|_| rng.random()).collect()
        } else {
            // A real query cut short, with a byte flipped.
            let mut p = good.clone();
            let at = rng.random_range(0..p.len());
            p[at] ^= 1 << rng.random_range(0..8);
            p.truncate(rng.random_range(0..p.len()));
            p
        };
        sock.send_to(&packet, z.dns).unwrap();
        if i % 100 == 99 {
            let id = 1000 + i as u16;
            let m = exchange(&sock, z.dns, &query(id, &format!("eu.{ZONE}.")), id)
                .unwrap_or_else(|| panic!("no answer after {i} bad packets"));
            assert_eq!(m.response_code(), ResponseCode::NoError);
            assert_eq!(m.answers().len(), 2);
        }
    }
    assert_eq!(tcp_dig(), ["192.0.2.1", "192.0.2.2"]);
    // Garbage over TCP closes that connection only.
    let mut s = std::net::TcpStream::connect(z.dns).unwrap();
    s.write_all(&[0, 5, 1, 2, 3, 4, 5, 0xff, 0xff]).unwrap();
    assert_eq!(tcp_dig(), ["192.0.2.1", "192.0.2.2"]);
    let m = http_get(z.router.addr, "/metrics").unwrap().1;
    assert!(
        m.contains(
            r#"router_dns_queries_total{transport="udp",qtype="malformed",rcode="FORMERR"}"#
        ),
        "{m}"
    );
    assert!(z
        .router
        .proc
        .output()
        .lines()
        .all(|l| !l.contains("panicked")));
}

#[test]
fn the_response_rate_limit_holds_a_flood_from_one_network() {
    let z = zone_with("rrl_per_sec = 1\nrrl_burst = 5\nrrl_slip = 2", "", &[]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let start = Instant::now();
    for id in 0..200u16 {
        sock.send_to(&query(id, &format!("{ZONE}.")), z.dns)
            .unwrap();
    }
    // Collect what comes back until a quiet 100 ms.
    let (mut full, mut truncated) = (0u64, 0u64);
    let mut buf = [0u8; 4096];
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        let m = Message::from_vec(&buf[..n]).unwrap();
        if m.truncated() {
            assert!(m.answers().is_empty());
            truncated += 1;
        } else {
            full += 1;
        }
    }
    let secs = start.elapsed().as_secs() + 1;
    // 5 at once, then one a second; half of the rest slip (truncated), half are dropped.
    assert!(full <= 5 + secs, "{full} full answers in {secs} s");
    assert!(
        truncated > 0 && truncated < 200 - full,
        "{truncated} truncated"
    );
    // TCP is not limited: a real client still gets its answer.
    assert_eq!(
        short(&dig(z.dns, &format!("eu.{ZONE}"), "A", &["+short", "+tcp"])).len(),
        3
    );
    let m = http_get(z.router.addr, "/metrics").unwrap().1;
    assert!(m.contains(r#"router_dns_rrl_total{action="drop"}"#), "{m}");
    assert!(m.contains(r#"router_dns_rrl_total{action="slip"}"#), "{m}");
}

/// The value of `router_dns_tcp_closed_by_server_total{reason}` now.
fn dns_tcp_closed(z: &Zone, reason: &str) -> f64 {
    let m = http_get(z.router.addr, "/metrics").unwrap().1;
    harness::sample(
        &m,
        &format!("router_dns_tcp_closed_by_server_total{{reason=\"{reason}\"}}"),
    )
}

#[test]
fn one_network_cannot_hold_every_dns_tcp_connection() {
    let z = zone_with(
        "tcp_max_per_network = 4\ntcp_max_connections = 6\ntcp_idle_ms = 60000",
        "",
        &[],
    );
    let local = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    // 127.0.0.0/24 opens ten and holds them: four are kept, six closed at accept.
    let held: Vec<std::net::TcpStream> = (0..10)
        .map(|_| std::net::TcpStream::connect(z.dns).unwrap())
        .collect();
    wait_until(Duration::from_secs(5), "six refused by network", || {
        dns_tcp_closed(&z, "per_network_cap") >= 6.0
    });
    // 127.0.2.0/24 takes four: at the cap of six, the longest idle make room.
    let other: Vec<std::net::TcpStream> = (0..4)
        .map(|_| harness::connect_from(local("127.0.2.1"), z.dns, None).unwrap())
        .collect();
    wait_until(Duration::from_secs(5), "two idle ones shed", || {
        dns_tcp_closed(&z, "shed_idle") >= 2.0
    });
    // A client of a third network is still answered over TCP.
    for _ in 0..3 {
        let out = dig(
            z.dns,
            &format!("eu.{ZONE}"),
            "A",
            &["+short", "+tcp", "-b", "127.0.1.2"],
        );
        assert_eq!(short(&out).len(), 3, "{out}");
    }
    assert_eq!(dns_tcp_closed(&z, "refused_full"), 0.0);
    drop((held, other));
}

#[test]
fn a_dns_tcp_client_that_never_reads_is_closed() {
    const WRITE_TIMEOUT: Duration = Duration::from_millis(1000);
    let z = zone_with(
        &format!("tcp_write_timeout_ms = {}", WRITE_TIMEOUT.as_millis()),
        "",
        &[],
    );
    // A small receive window, so the router's answers back up soon.
    let mut s = harness::connect_from("127.0.0.1".parse().unwrap(), z.dns, Some(4096)).unwrap();
    let q = query(9, &format!("eu.{ZONE}."));
    let mut frame = (q.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(&q);
    // Whole frames back to back; a partial write resumes where it stopped.
    let frames = frame.repeat(64);
    let mut at = 0;
    s.set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let start = Instant::now();
    let closed_after = loop {
        if start.elapsed() > WRITE_TIMEOUT + Duration::from_secs(20) {
            break None;
        }
        match s.write(&frames[at..]) {
            Ok(n) => at = (at + n) % frames.len(),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break Some(start.elapsed()),
        }
    };
    let took = closed_after.expect("a client that never reads is closed");
    assert!(took >= WRITE_TIMEOUT, "closed after {took:?}");
    assert_eq!(dns_tcp_closed(&z, "write_timeout"), 1.0);
    // Others are answered as before (the SOA: the flood's answers have filled every
    // gateway in the herd accounting, so A records would say nothing).
    let soa = dig(z.dns, ZONE, "SOA", &["+short", "+tcp"]);
    assert_eq!(short(&soa).len(), 1, "{soa}");
}
