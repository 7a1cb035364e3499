//! `Client::connect_tls` against real TLS gateways on loopback, found through the real
//! router: the gateway's IP is dialled, its `domain` is sent (SNI) and its certificate
//! is checked against that name; bad certificates, stalled handshakes and gateways
//! without a domain.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::{Etcd, RouterProc, TestCa};
use httpdns_client::{Client, Config, Error, FailureKind, Ipv6Mode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const P: &str = "/gateway-router/v1";

/// What a TLS gateway serves.
enum Serve {
    /// A certificate for these names; ALPN protocols it accepts.
    Tls(Vec<&'static str>, Vec<&'static [u8]>),
    /// Accepts TCP and never answers the ClientHello.
    Stall,
}

/// A gateway on loopback; records the SNI names its clients sent.
struct Gateway {
    addr: SocketAddr,
    sni: Arc<Mutex<Vec<Option<String>>>>,
    _task: tokio::task::JoinHandle<()>,
}

async fn gateway(ca: &TestCa, serve: Serve) -> Gateway {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sni = Arc::new(Mutex::new(Vec::new()));
    let config = match &serve {
        Serve::Tls(names, alpn) => {
            let (cert, key) = ca.leaf(names);
            let certs = vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
            let mut c = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Some(Arc::new(c))
        }
        Serve::Stall => None,
    };
    let seen = sni.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let config = config.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Some(config) = config else {
                    // Hold the socket open, say nothing.
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    drop(tcp);
                    return;
                };
                let acceptor =
                    tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
                let Ok(start) = acceptor.await else { return };
                seen.lock()
                    .unwrap()
                    .push(start.client_hello().server_name().map(str::to_string));
                if let Ok(mut tls) = start.into_stream(config).await {
                    // An echo of one line: the client proves the stream works.
                    let mut buf = [0u8; 64];
                    if let Ok(n) = tls.read(&mut buf).await {
                        let _ = tls.write_all(&buf[..n]).await;
                    }
                }
            });
        }
    });
    Gateway {
        addr,
        sni,
        _task: task,
    }
}

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
    Client::new(c).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_is_reached_by_ip_with_its_name_as_sni_and_certificate_name() {
    let ca = TestCa::new("gateway CA");
    let gw = gateway(&ca, Serve::Tls(vec!["gw-a.test"], vec![b"x-im/1"])).await;
    let f = fleet(ca, &[("gw-a", 10, gw.addr, Some("gw-a.test"))]);
    let c = client(&f, &[b"x-im/2", b"x-im/1"]);
    let mut conn = c.connect_tls().await.unwrap();
    assert_eq!(conn.gateway.id, "gw-a");
    assert_eq!(
        conn.stream.get_ref().0.peer_addr().unwrap(),
        gw.addr,
        "dialled by IP"
    );
    assert_eq!(
        gw.sni.lock().unwrap().as_slice(),
        [Some("gw-a.test".to_string())],
        "the gateway's domain is sent as SNI"
    );
    assert_eq!(conn.alpn(), Some(&b"x-im/1"[..]), "ALPN offered and agreed");
    conn.stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    conn.stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_for_another_name_fails_with_its_tls_cause() {
    let ca = TestCa::new("gateway CA");
    let gw = gateway(&ca, Serve::Tls(vec!["other.test"], vec![])).await;
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
    let gw = gateway(&stranger, Serve::Tls(vec!["gw-a.test"], vec![])).await;
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
    let stall = gateway(&ca, Serve::Stall).await;
    let good = gateway(&ca, Serve::Tls(vec!["gw-b.test"], vec![])).await;
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
    let bare = gateway(&ca, Serve::Tls(vec!["127.0.0.1"], vec![])).await;
    let named = gateway(&ca, Serve::Tls(vec!["gw-b.test"], vec![])).await;
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
    assert!(bare.sni.lock().unwrap().is_empty(), "never dialled for TLS");

    let g = fleet(TestCa::new("gateway CA"), &[("gw-a", 10, bare.addr, None)]);
    let e = client(&g, &[]).connect_tls().await.unwrap_err();
    assert!(
        matches!(e.failures().first().map(|f| &f.kind), Some(FailureKind::Unavailable(m)) if m.contains("no domain")),
        "{e}"
    );
    // Plain TCP to the same gateway is fine.
    assert_eq!(client(&g, &[]).connect().await.unwrap().gateway.id, "gw-a");
}
