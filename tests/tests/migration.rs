//! Migration end to end: real agents with their hooks, the real router over HTTPS, and
//! the SDK. A client told to move (the gateway's migration signal, sent when the agent
//! applies `ctl drain` or `ctl migrate`) must land on another gateway, also when it
//! reconnects within the TTL of the answer it first connected with.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use harness::{
    router_ctl, wait_until, Etcd, HookServer, HttpDnsServer, Proc, RouterProc, TestCa, P,
};
use httpdns_client::{Client, Config, Error, Ipv6Mode, Provider, Source};

/// A gateway: a listener that accepts (the kernel completes handshakes), its agent
/// reporting `conns` of 1,000, and the hook where its agent sends migration signals.
struct Gw {
    id: String,
    listener: TcpListener,
    hook: HookServer,
    agent: Proc,
}

fn gateway(etcd: &Etcd, id: &str, conns: u64) -> Gw {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hook = HookServer::start();
    let agent = Proc::agent(
        etcd,
        id,
        "r",
        &[
            "--port",
            &format!("tcp={port}"),
            "--load",
            &format!("static:{conns}"),
            "--hook",
            &hook.url(),
        ],
    );
    Gw {
        id: id.to_string(),
        listener,
        hook,
        agent,
    }
}

struct Plane {
    etcd: Etcd,
    router: RouterProc,
    https: SocketAddr,
    ca: TestCa,
    dns: HttpDnsServer,
    dir: tempfile::TempDir,
}

fn plane(etcd: Etcd, nodes: usize) -> Plane {
    wait_until(Duration::from_secs(15), "nodes registered", || {
        etcd.keys(&format!("{P}/nodes/")).len() == nodes
    });
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("migration test CA");
    let (cert, key) = ca.write_leaf(dir.path(), &["localhost", "127.0.0.1"]);
    let (router, https) = RouterProc::start_tls(&etcd, "", &cert, &key);
    wait_until(Duration::from_secs(10), "router serves every node", || {
        harness::gateway_ids(&router.answer("/gateways?count=10")).len() == nodes
    });
    let dns = HttpDnsServer::start();
    dns.answer("localhost", &["127.0.0.1"], &[], 60);
    Plane {
        etcd,
        router,
        https,
        ca,
        dns,
        dir,
    }
}

impl Plane {
    /// An app's client: HTTPDNS to the router, the default 300 s answer TTL, a cache
    /// file of its own (`n`).
    fn client(&self, n: usize) -> Client {
        let mut c = Config::new("localhost");
        c.router_port = self.https.port();
        c.add_roots_pem(self.ca.pem().as_bytes()).unwrap();
        c.dns.providers = vec![Provider::alibaba("100000", vec![self.dns.addr()])];
        c.dns.ipv6 = Ipv6Mode::Never;
        c.cache_file = Some(self.dir.path().join(format!("gateways-{n}.json")));
        // What is tested is which answer is used, not how fast a router answers: a
        // loaded machine must not turn a slow answer into "no router reachable" (which
        // rightly falls back to the last answer).
        c.router_attempt_timeout = Duration::from_secs(10);
        c.router_budget = Duration::from_secs(20);
        c.deadline = Duration::from_secs(30);
        Client::new(c).unwrap()
    }
}

fn port_of(g: &Gw) -> u16 {
    g.listener.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drained_gateway_s_clients_migrate_and_reconnect_elsewhere() {
    let etcd = Etcd::start();
    let a = gateway(&etcd, "gw-a", 100);
    let b = gateway(&etcd, "gw-b", 300);
    let c = gateway(&etcd, "gw-c", 400);
    let p = plane(etcd, 3);

    let client = p.client(0);
    let conn = client.connect().await.unwrap();
    assert_eq!(conn.gateway.id, a.id, "the least loaded first");
    assert_eq!(conn.stream.peer_addr().unwrap().port(), port_of(&a));
    // A second app on the same gateway, which will only see its connection drop.
    let other = p.client(1);
    let dropped = other.connect().await.unwrap();
    assert_eq!(dropped.gateway.id, a.id);

    // The operator drains gw-a; its agent applies the command and signals the gateway.
    let (code, out) = router_ctl(&p.etcd, &["drain", "gw-a"]);
    assert_eq!(code, 0, "{out}");
    wait_until(Duration::from_secs(10), "the migration signal", || {
        a.hook
            .delivered()
            .iter()
            .any(|b| b.contains("\"percent\":100"))
    });
    // The gateway tells its clients to move; the app migrates. The first answer is
    // still within its 300 s TTL, and gw-a still accepts TCP: neither may matter.
    let moved = client.migrate(&conn).await.unwrap();
    assert_ne!(
        moved.gateway.id, a.id,
        "migrated back to the gateway it left"
    );
    assert_eq!(moved.gateway.id, b.id, "the least loaded of the others");
    assert!(
        matches!(moved.source, Source::Router { .. }),
        "{:?}",
        moved.source
    );
    // The other app's connection is lost (gw-a closes it) once the drain has reached
    // the router: a plain reconnect asks the router again instead of reusing its
    // first answer, which still lists gw-a first (and whose TTL has not run out).
    wait_until(
        Duration::from_secs(10),
        "the router stops offering gw-a",
        || !harness::gateway_ids(&p.router.answer("/gateways?count=10")).contains(&a.id),
    );
    drop(dropped);
    let again = other.connect().await.unwrap();
    assert_ne!(again.gateway.id, a.id, "reconnected to the drained gateway");

    // With no router in reach, a migration falls back to the cache file, and still
    // never picks the gateway it leaves, though the file lists it first.
    let (code, out) = router_ctl(&p.etcd, &["serve", "gw-a"]);
    assert_eq!(code, 0, "{out}");
    wait_until(Duration::from_secs(10), "gw-a served again", || {
        harness::gateway_ids(&p.router.answer("/gateways")).first() == Some(&a.id)
    });
    let fresh = p.client(2);
    let on_a = fresh.connect().await.unwrap();
    assert_eq!(on_a.gateway.id, a.id);
    let file = p.dir.path().join("gateways-2.json");
    wait_until(Duration::from_secs(5), "cache file lists gw-a", || {
        std::fs::read_to_string(&file).is_ok_and(|s| s.contains("gw-a"))
    });
    let mut router = p.router;
    router.proc.signal("KILL");
    router.proc.wait_exit(Duration::from_secs(10));
    let off = fresh.migrate(&on_a).await.unwrap();
    assert_eq!(off.source, Source::CacheFile);
    assert_ne!(
        off.gateway.id, a.id,
        "the cache file's gw-a was offered again"
    );
    drop((b, c));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_30_percent_migration_moves_clients_to_less_loaded_gateways() {
    let etcd = Etcd::start();
    let busy = gateway(&etcd, "gw-busy", 600);
    let p = plane(etcd, 1);
    // Ten apps connect while gw-busy is the only gateway.
    let mut apps = Vec::new();
    for n in 0..10 {
        let client = p.client(n);
        let conn = client.connect().await.unwrap();
        assert_eq!(conn.gateway.id, busy.id);
        apps.push((client, conn));
    }
    // Two new gateways join (a scale-out), less loaded than gw-busy will report.
    let x = gateway(&p.etcd, "gw-x", 100);
    let y = gateway(&p.etcd, "gw-y", 200);
    wait_until(Duration::from_secs(15), "three gateways served", || {
        harness::gateway_ids(&p.router.answer("/gateways?count=10")).len() == 3
    });

    let (code, out) = router_ctl(&p.etcd, &["migrate", "gw-busy", "--percent", "30"]);
    assert_eq!(code, 0, "{out}");
    wait_until(Duration::from_secs(10), "the 30 % signal", || {
        busy.hook
            .delivered()
            .iter()
            .any(|b| b.contains("\"percent\":30"))
    });
    // The gateway picks 30 % of its clients and signals them; they migrate.
    let mut landed = Vec::new();
    for (client, conn) in apps.iter().take(3) {
        let moved = client.migrate_with_retry(conn, 3).await.unwrap();
        landed.push(moved.gateway.id.clone());
    }
    assert!(
        landed.iter().all(|id| *id == x.id || *id == y.id),
        "migrated clients land on the less-loaded new gateways: {landed:?}"
    );
    assert!(
        landed.contains(&x.id),
        "the least loaded takes some: {landed:?}"
    );
    // The other 70 % were not told and stay.
    for (_, conn) in apps.iter().skip(3) {
        assert_eq!(conn.gateway.id, busy.id);
    }
    drop(busy.agent);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_migration_with_nothing_else_to_go_to_says_so() {
    let etcd = Etcd::start();
    let only = gateway(&etcd, "gw-only", 100);
    let p = plane(etcd, 1);
    let client = p.client(0);
    let conn = client.connect().await.unwrap();
    let err = client.migrate(&conn).await.unwrap_err();
    assert!(
        matches!(&err, Error::NoOtherGateway { left, .. } if *left == only.id),
        "{err}"
    );
    assert!(err.is_retryable());
    assert!(err.to_string().contains("gw-only"), "{err}");
}
