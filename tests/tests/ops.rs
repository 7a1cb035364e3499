//! Operations end to end: drain, migrate, rebalance, the admin API and `ctl`, with real
//! etcd, real agents and real routers.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harness::{
    free_port, node_record, router_ctl as ctl, run, wait_until, Etcd, HookServer, Proc, RouterProc,
    P,
};
use serde_json::Value;

/// An agent whose connection count the test controls through a file.
struct Gw {
    _proc: Proc,
    conns: PathBuf,
    hook: HookServer,
}

impl Gw {
    fn start(etcd: &Etcd, dir: &Path, id: &str, region: &str, conns: u64) -> Gw {
        let path = dir.join(format!("{id}.conns"));
        std::fs::write(&path, conns.to_string()).unwrap();
        let hook = HookServer::start();
        let load = format!("file:{}", path.display());
        let url = hook.url();
        let flags = [
            "--port",
            "tcp=7000",
            "--ttl",
            "5",
            "--load",
            &load,
            "--hook",
            &url,
            "--report-min-change",
            "0",
        ];
        let proc = Proc::agent(etcd, id, region, &flags);
        Gw {
            _proc: proc,
            conns: path,
            hook,
        }
    }

    fn set(&self, n: u64) {
        std::fs::write(&self.conns, n.to_string()).unwrap();
    }
}

fn record(etcd: &Etcd, id: &str) -> Value {
    node_record(etcd, id).expect("record")
}

fn wait_all_registered(etcd: &Etcd, n: usize) {
    wait_until(Duration::from_secs(15), "agents registered", || {
        etcd.keys(&format!("{P}/nodes/")).len() == n
    });
}

#[test]
fn drain_leaves_every_router_within_200ms_and_wait_follows_connections() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let a = Gw::start(&etcd, dir.path(), "gw-a", "r", 50);
    let _b = Gw::start(&etcd, dir.path(), "gw-b", "r", 100);
    let _c = Gw::start(&etcd, dir.path(), "gw-c", "r", 200);
    wait_all_registered(&etcd, 3);
    let routers = [
        RouterProc::start(&etcd, "", &[]),
        RouterProc::start(&etcd, "", &[]),
    ];
    let q = "/gateways?count=10";
    for r in &routers {
        wait_until(Duration::from_secs(10), "3 nodes", || r.ids(q).len() == 3);
    }

    let e = etcd.endpoints();
    let mut waiter = Proc::spawn(
        "router-server",
        &[
            "ctl",
            "--etcd",
            &e,
            "drain",
            "gw-a",
            "--wait",
            "--timeout",
            "60",
        ],
    );
    waiter.wait_for_output("drain issued to gw-a", Duration::from_secs(10));
    let gone = wait_until(Duration::from_secs(5), "gw-a out of every router", || {
        routers
            .iter()
            .all(|r| !r.ids(q).contains(&"gw-a".to_string()))
    });
    println!("drain → excluded from both routers in {gone:?}");
    assert!(gone <= Duration::from_millis(200), "took {gone:?}");

    wait_until(Duration::from_secs(5), "hook call", || {
        !a.hook.bodies().is_empty()
    });
    let body: Value = serde_json::from_str(&a.hook.bodies()[0]).unwrap();
    assert_eq!(
        (body["action"].as_str(), body["percent"].as_u64()),
        (Some("migrate"), Some(100))
    );
    let rec = record(&etcd, "gw-a");
    assert_eq!(rec["state"], "draining");
    assert_eq!(body["command"], rec["applied_command"]);

    // The gateway moves its clients away; --wait follows and returns at 0.
    for n in [30, 10] {
        a.set(n);
        waiter.wait_for_output(&format!("gw-a: {n} connections"), Duration::from_secs(10));
    }
    assert!(waiter.is_running(), "still waiting at 10 connections");
    a.set(0);
    let status = waiter.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{}", waiter.output());
    assert!(waiter.output().contains("gw-a drained"));

    // serve undoes the drain.
    let (code, out) = ctl(&etcd, &["serve", "gw-a"]);
    assert_eq!(code, 0, "{out}");
    for r in &routers {
        wait_until(Duration::from_secs(5), "gw-a back", || {
            r.ids(q).contains(&"gw-a".to_string())
        });
    }
}

#[test]
fn drain_wait_gives_up_with_a_clear_message() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let _a = Gw::start(&etcd, dir.path(), "gw-stuck", "r", 40);
    wait_all_registered(&etcd, 1);
    let start = Instant::now();
    let (code, out) = ctl(&etcd, &["drain", "gw-stuck", "--wait", "--timeout", "2"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("still has 40 connections after 2s"), "{out}");
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn rebalance_plans_then_issues_each_migrate_once() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let hot: Vec<Gw> = (0..4)
        .map(|i| Gw::start(&etcd, dir.path(), &format!("hot-{i}"), "cn-sh", 900))
        .collect();
    let cold: Vec<Gw> = (0..2)
        .map(|i| Gw::start(&etcd, dir.path(), &format!("new-{i}"), "cn-sh", 0))
        .collect();
    wait_all_registered(&etcd, 6);
    wait_until(Duration::from_secs(10), "loads reported", || {
        (0..4).all(|i| record(&etcd, &format!("hot-{i}"))["connections"] == 900)
    });

    let (code, table) = ctl(&etcd, &["rebalance", "--dry-run"]);
    assert_eq!(code, 0, "{table}");
    assert!(table.contains("dry run: no command issued"), "{table}");
    let (code, json) = ctl(&etcd, &["rebalance", "--dry-run", "--json"]);
    assert_eq!(code, 0, "{json}");
    let plan: Value = serde_json::from_str(&json).unwrap();
    let steps = plan["plan"].as_array().unwrap();
    assert_eq!(steps.len(), 4, "{json}");
    for s in steps {
        assert!(s["node"].as_str().unwrap().starts_with("hot-"));
        assert!((s["region_mean"].as_f64().unwrap() - 0.6).abs() < 1e-9);
        assert_eq!(s["percent"], 34, "900 → 600 of 1000 moves 300 of 900");
    }
    assert!(
        etcd.keys(&format!("{P}/commands/")).is_empty(),
        "dry run issues nothing"
    );

    let (code, out) = ctl(&etcd, &["rebalance"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(etcd.keys(&format!("{P}/commands/")).len(), 4);
    for (i, g) in hot.iter().enumerate() {
        wait_until(Duration::from_secs(10), "hook called", || {
            !g.hook.bodies().is_empty()
        });
        let cmd: Value =
            serde_json::from_str(&etcd.get(&format!("{P}/commands/hot-{i}")).unwrap()).unwrap();
        wait_until(Duration::from_secs(10), "applied", || {
            record(&etcd, &format!("hot-{i}"))["applied_command"] == cmd["id"]
        });
    }
    // Every agent's watch has caught up (applied_command recorded); exactly one call each.
    for g in &hot {
        let bodies = g.hook.bodies();
        assert_eq!(bodies.len(), 1, "{bodies:?}");
        assert!(bodies[0].contains(r#""percent":34"#), "{bodies:?}");
    }
    for g in &cold {
        assert!(g.hook.bodies().is_empty(), "new nodes are not migrated");
    }
    // As the hot gateways shed clients, a second rebalance finds nothing to do.
    for g in &hot {
        g.set(600);
    }
    for g in &cold {
        g.set(600);
    }
    wait_until(Duration::from_secs(10), "even loads", || {
        (0..4).all(|i| record(&etcd, &format!("hot-{i}"))["connections"] == 600)
            && (0..2).all(|i| record(&etcd, &format!("new-{i}"))["connections"] == 600)
    });
    let (code, out) = ctl(&etcd, &["rebalance", "--dry-run"]);
    assert_eq!(code, 0);
    assert!(out.contains("nothing to issue"), "{out}");
}

#[test]
fn admin_api_refuses_without_writing_anything() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let _a = Gw::start(&etcd, dir.path(), "gw-a", "r", 5);
    wait_all_registered(&etcd, 1);
    let r = RouterProc::start(&etcd, "", &["--admin-token", "s3cret-s3cret-s3cret"]);
    let post = |path: &str, token: Option<&str>, body: &str| -> (u16, Value) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(r.addr).unwrap();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(s, "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let code = text.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        (code, serde_json::from_str(body).unwrap_or(Value::Null))
    };
    for token in [
        None,
        Some("wrong"),
        Some("s3cre"),
        Some("S3CRET"),
        Some("s3cret-s3cret-s3cret2"),
    ] {
        assert_eq!(
            post("/admin/nodes/gw-a/drain", token, "").0,
            401,
            "{token:?}"
        );
        assert_eq!(post("/admin/rebalance", token, "").0, 401);
    }
    let (code, body) = post("/admin/nodes/ghost/drain", Some("s3cret-s3cret-s3cret"), "");
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (404, Some("unknown_node"))
    );
    for bad in [r#"{"percent":0}"#, r#"{"percent":101}"#] {
        let (code, body) = post(
            "/admin/nodes/gw-a/migrate",
            Some("s3cret-s3cret-s3cret"),
            bad,
        );
        assert_eq!(
            (code, body["error"]["code"].as_str()),
            (400, Some("invalid_parameter")),
            "{bad}"
        );
    }
    assert!(
        etcd.keys(&format!("{P}/commands/")).is_empty(),
        "nothing written"
    );
    assert!(r.proc.output().contains("admin request refused"));

    let (code, body) = post(
        "/admin/nodes/gw-a/migrate",
        Some("s3cret-s3cret-s3cret"),
        r#"{"percent":25}"#,
    );
    assert_eq!(code, 202, "{body}");
    assert_eq!(
        etcd.keys(&format!("{P}/commands/")),
        vec![format!("{P}/commands/gw-a")]
    );
    wait_until(Duration::from_secs(10), "audit log", || {
        r.proc.output().contains("admin action")
    });
}

#[test]
fn ctl_fails_fast_and_clearly_without_etcd() {
    // Build (once per test process) outside the timed part.
    harness::bin("router-server");
    // Refusing: nothing listens. Blackholed: the kernel accepts, nobody answers.
    let refusing = format!("http://127.0.0.1:{}", free_port());
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let blackholed = format!("http://{}", hole.local_addr().unwrap());
    let cases = [
        (&refusing, &["nodes"][..]),
        (&refusing, &["drain", "gw-1"]),
        (&refusing, &["rebalance", "--dry-run"]),
        (&blackholed, &["nodes"]),
        (&blackholed, &["migrate", "gw-1", "--percent", "5"]),
    ];
    for (dead, args) in cases {
        let start = Instant::now();
        let mut all = vec!["ctl", "--etcd", dead.as_str()];
        all.extend_from_slice(args);
        let (status, out) = run("router-server", &all, Duration::from_secs(30));
        let took = start.elapsed();
        assert_eq!(status.code(), Some(1), "{args:?}: {out}");
        assert!(took < Duration::from_secs(8), "{args:?} took {took:?}");
        let line = out.trim();
        assert!(
            line.starts_with("error:") && line.contains("etcd") && line.contains(dead.as_str()),
            "{line}"
        );
    }
}

#[test]
fn ctl_nodes_lists_by_region_and_load_and_rejects_unknown_nodes() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let _gws = [
        Gw::start(&etcd, dir.path(), "sh-low", "cn-sh", 100),
        Gw::start(&etcd, dir.path(), "sh-high", "cn-sh", 800),
        Gw::start(&etcd, dir.path(), "bj-1", "cn-bj", 300),
    ];
    wait_all_registered(&etcd, 3);
    etcd.put(&format!("{P}/nodes/broken"), "{not json");
    wait_until(Duration::from_secs(10), "loads", || {
        record(&etcd, "sh-high")["connections"] == 800
    });
    let (code, out) = ctl(&etcd, &["nodes"]);
    assert_eq!(code, 0, "{out}");
    let rows: Vec<&str> = out.lines().collect();
    assert!(
        rows[0].contains("REGION")
            && rows[0].contains("CONNECTIONS/CAPACITY")
            && rows[0].contains("APPLIED")
    );
    let order: Vec<&str> = rows[1..4]
        .iter()
        .map(|r| r.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(order, ["bj-1", "sh-high", "sh-low"]);
    assert!(
        rows[2].contains("800/1000") && rows[2].contains("80.0%"),
        "{out}"
    );
    assert!(out.contains("invalid record"), "{out}");

    let (code, out) = ctl(&etcd, &["migrate", "ghost", "--percent", "10"]);
    assert_eq!(code, 1);
    assert!(out.contains("\"ghost\" is not registered"), "{out}");
    assert!(etcd.keys(&format!("{P}/commands/")).is_empty());
}
