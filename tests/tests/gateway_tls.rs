//! `Client::connect_tls` against real TLS gateways on loopback, found through the real
//! router: the gateway's IP is dialled, its `domain` is sent (SNI) and its certificate
//! is checked against that name; bad certificates, stalled handshakes, gateways
//! without a domain, and domains outside the ones the app pins.

use std::net::SocketAddr;
use std::time::Duration;

use harness::gateway::{GatewayServer, Serve};
use harness::{Etcd, RouterProc, TestCa, P};
use httpdns_client::{Client, Config, Error, FailureKind, Ipv6Mode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Fleet {
    _etcd: Etcd,
    router: RouterProc,
    ca: TestCa,
}

/// Registers `nodes` (id, connections, address, domain) and starts a router.
fn fleet(ca: TestCa, nodes: &[(&str, u64, SocketAddr, Option<&str>)]) -> Fleet {
    let etcd = Etcd::start();
    for (id, conns, addr, domain) in nodes {
        let domain = domain
            .map(|d| format!(r#","domain":"{d}""#))
            .unwrap_or_default();
        etcd.put(
            &format!("{P}/nodes/{id}"),
            &format!(
                r#"{{"id":"{id}","ip":"127.0.0.1","ports":{{"tcp":{}}},"region":"r","capacity":1000,"connections":{conns}{domain}}}"#,
                addr.port()
            ),
        );
    }
    let router = RouterProc::start(&etcd, "", &[]);
    Fleet {
        _etcd: etcd,
        router,
        ca,
    }
}

fn client(f: &Fleet, alpn: &[&[u8]]) -> Client {
    Client::new(config(f, alpn)).unwrap()
}

fn config(f: &Fleet, alpn: &[&[u8]]) -> Config {
    let mut c = Config::new("router.test");
    c.router_https = false;
    c.router_port = f.router.addr.port();
    c.dns
        .bootstrap
        .insert("router.test".into(), vec![f.router.addr.ip()]);
    c.dns.local_fallback = false;
    c.dns.ipv6 = Ipv6Mode::Never;
    c.add_roots_pem(f.ca.pem().as_bytes()).unwrap();
    c.tls_alpn = alpn.iter().map(|p| p.to_vec()).collect();
    // Generous: the verdicts below are about which gateway, not how fast.
    c.router_attempt_timeout = Duration::from_secs(10);
    c.router_budget = Duration::from_secs(20);
    c.deadline = Duration::from_secs(30);
    c.connect_delay = Duration::from_millis(300);
    c.connect_timeout = Duration::from_secs(60);
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_is_reached_by_ip_with_its_name_as_sni_and_certificate_name() {
    let ca = TestCa::new("gateway CA");
    let gw = GatewayServer::start(
        &ca,
        Serve::Tls {
            names: vec!["gw-a.test".into()],
            alpn: vec![b"x-im/1".to_vec()],
        },
    );
    let f = fleet(ca, &[("gw-a", 10, gw.addr, Some("gw-a.test"))]);
    let c = client(&f, &[b"x-im/2", b"x-im/1"]);
    let mut conn = c.connect_tls().await.unwrap();
    assert_eq!(conn.gateway.id, "gw-a");
    assert_eq!(
        conn.stream.get_ref().0.peer_addr().unwrap(),
        gw.addr,
        "dialled by IP"
    );
    assert_eq!(conn.alpn(), Some(&b"x-im/1"[..]), "ALPN offered and agreed");
    conn.stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    conn.stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    // The gateway echoes only after its side of the handshake, SNI recorded.
    assert_eq!(
        gw.sni().as_slice(),
        [Some("gw-a.test".to_string())],
        "the gateway's domain is sent as SNI"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_for_another_name_fails_with_its_tls_cause() {
    let ca = TestCa::new("gateway CA");
    let gw = GatewayServer::start(&ca, Serve::tls(&["other.test"]));
    let f = fleet(ca, &[("gw-a", 10, gw.addr, Some("gw-a.test"))]);
    let e = client(&f, &[]).connect_tls().await.unwrap_err();
    let Error::Connect { attempts } = &e else {
        panic!("{e}")
    };
    assert_eq!(attempts.len(), 1, "{e}");
    assert!(
        matches!(&attempts[0].kind, FailureKind::Tls(m) if m.contains("not valid for name")),
        "{e}"
    );
    // The cause chain reaches the rustls error itself.
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    let mut found = false;
    while let Some(c) = cause {
        found |= c.downcast_ref::<rustls::Error>().is_some();
        cause = c.source();
    }
    assert!(found, "no rustls::Error in the source chain of {e}");

    // A certificate from a CA the client does not trust fails the same way.
    let stranger = TestCa::new("someone else's CA");
    let gw = GatewayServer::start(&stranger, Serve::tls(&["gw-a.test"]));
    let g = fleet(
        TestCa::new("trusted CA"),
        &[("gw-a", 10, gw.addr, Some("gw-a.test"))],
    );
    let e = client(&g, &[]).connect_tls().await.unwrap_err();
    assert!(
        matches!(e.failures().first().map(|f| &f.kind), Some(FailureKind::Tls(m)) if m.to_lowercase().contains("unknown")),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_handshake_on_the_first_candidate_is_raced_past() {
    let ca = TestCa::new("gateway CA");
    let stall = GatewayServer::start(&ca, Serve::Stall);
    let good = GatewayServer::start(&ca, Serve::tls(&["gw-b.test"]));
    let f = fleet(
        ca,
        &[
            ("gw-a", 10, stall.addr, Some("gw-a.test")),
            ("gw-b", 500, good.addr, Some("gw-b.test")),
        ],
    );
    let c = client(&f, &[]);
    assert_eq!(
        c.gateways().await.unwrap().gateways[0].id,
        "gw-a",
        "least loaded first"
    );
    // The attempt timeout is 60 s: only the race can answer within 30.
    let conn = tokio::time::timeout(Duration::from_secs(30), c.connect_tls())
        .await
        .expect("the stalled handshake held the connection")
        .unwrap();
    assert_eq!(conn.gateway.id, "gw-b");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_without_a_domain_is_refused_for_tls_and_the_next_is_used() {
    let ca = TestCa::new("gateway CA");
    let bare = GatewayServer::start(&ca, Serve::tls(&["127.0.0.1"]));
    let named = GatewayServer::start(&ca, Serve::tls(&["gw-b.test"]));
    let f = fleet(
        ca,
        &[
            ("gw-a", 10, bare.addr, None),
            ("gw-b", 500, named.addr, Some("gw-b.test")),
        ],
    );
    let c = client(&f, &[]);
    let conn = c.connect_tls().await.unwrap();
    assert_eq!(conn.gateway.id, "gw-b");
    assert!(bare.sni().is_empty(), "never dialled for TLS");

    let g = fleet(TestCa::new("gateway CA"), &[("gw-a", 10, bare.addr, None)]);
    let e = client(&g, &[]).connect_tls().await.unwrap_err();
    assert!(
        matches!(e.failures().first().map(|f| &f.kind), Some(FailureKind::Unavailable(m)) if m.contains("no domain")),
        "{e}"
    );
    // Plain TCP to the same gateway is fine.
    assert_eq!(client(&g, &[]).connect().await.unwrap().gateway.id, "gw-a");
}

/// With `gateway_domain_suffixes`, a gateway whose domain lies outside them is passed
/// over for TLS, never dialled, and the next candidate is used: a router cannot steer
/// the name the client checks to one of its choosing, even one a public CA would
/// certify. A look-alike (`a.evilgw.test` for `.gw.test`) is not on a label boundary.
#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_domain_outside_the_pinned_suffixes_is_passed_over() {
    let ca = TestCa::new("gateway CA");
    let evil = GatewayServer::start(&ca, Serve::tls(&["a.evilgw.test"]));
    let good = GatewayServer::start(&ca, Serve::tls(&["b.gw.test"]));
    let bare = GatewayServer::start(&ca, Serve::tls(&["127.0.0.1"]));
    let f = fleet(
        ca,
        &[
            ("gw-a", 10, evil.addr, Some("a.evilgw.test")),
            ("gw-b", 500, good.addr, Some("b.gw.test")),
        ],
    );
    let pinned = |f: &Fleet| {
        let mut c = config(f, &[]);
        // Case and a trailing dot do not matter.
        c.gateway_domain_suffixes = vec![".GW.test.".into()];
        Client::new(c).unwrap()
    };
    let c = pinned(&f);
    assert_eq!(
        c.gateways().await.unwrap().gateways[0].id,
        "gw-a",
        "least loaded first"
    );
    let conn = c.connect_tls().await.unwrap();
    assert_eq!(conn.gateway.id, "gw-b");
    // Unpinned, the same answer leads to the look-alike (its certificate is valid
    // for its own name): the pin is what kept the client off it.
    let mut unpinned = client(&f, &[]).connect_tls().await.unwrap();
    assert_eq!(unpinned.gateway.id, "gw-a");
    // The gateway echoes only after its side of the handshake, SNI recorded: one
    // handshake, the unpinned client's; the pinned client never dialled it.
    unpinned.stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    unpinned.stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(evil.sni().as_slice(), [Some("a.evilgw.test".to_string())]);
    // Plain TCP does not name the gateway: no pin applies.
    assert_eq!(pinned(&f).connect().await.unwrap().gateway.id, "gw-a");

    // Nothing allowed: each candidate is refused with its reason, the domainless one
    // as without pinning.
    let g = fleet(
        TestCa::new("gateway CA"),
        &[
            ("gw-a", 10, evil.addr, Some("a.evilgw.test")),
            ("gw-c", 20, bare.addr, None),
        ],
    );
    let e = pinned(&g).connect_tls().await.unwrap_err();
    let Error::Connect { attempts } = &e else {
        panic!("{e}")
    };
    assert_eq!(attempts.len(), 2, "{e}");
    assert!(
        attempts.iter().any(|a| a.target.contains("gw-a")
            && matches!(&a.kind, FailureKind::DomainNotAllowed(m) if m.contains("a.evilgw.test"))),
        "{e}"
    );
    assert!(
        attempts.iter().any(|a| a.target.contains("gw-c")
            && matches!(&a.kind, FailureKind::Unavailable(m) if m.contains("no domain"))),
        "{e}"
    );
    assert!(bare.sni().is_empty());

    // A suffix that is no domain is a configuration error.
    let mut c = config(&g, &[]);
    c.gateway_domain_suffixes = vec!["gw..test".into()];
    assert!(matches!(Client::new(c), Err(Error::Config(m)) if m.contains("gw..test")));
}
