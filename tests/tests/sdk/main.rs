//! httpdns-client against the real router-server (HTTPS, real etcd) and a local HTTPDNS
//! server, on loopback. This file holds the fleet and the client settings the concerns
//! share; each module is one concern.

mod cold_start;
mod connect;
mod dependencies;
mod resolve;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use harness::{free_port, wait_until, Etcd, HttpDnsServer, RouterProc, TestCa, P};
use httpdns_client::{Client, Config, Ipv6Mode, Provider};

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

/// Waits until the router answers `/gateways` with `status`.
fn wait_router_status(f: &Fleet, status: u16) {
    wait_until(Duration::from_secs(10), "router status", || {
        harness::http_get(f.http, "/gateways").is_some_and(|(s, _)| s == status)
    });
}
