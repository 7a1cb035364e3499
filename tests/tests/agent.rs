//! gateway-agent against a real etcd, through its real binary.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use harness::{node_record as record, run, wait_until, Etcd, HookServer, Proc, P as PREFIX};
use serde_json::Value;

fn agent(etcd: &Etcd, id: &str, extra: &[&str]) -> Proc {
    let mut flags = vec![
        "--port",
        "tcp=8000",
        "--port",
        "ws=8080",
        "--ttl",
        "3",
        "--report-min-change",
        "0",
    ];
    flags.extend_from_slice(extra);
    Proc::agent(etcd, id, "cn-sh", &flags)
}

fn wait_record(
    etcd: &Etcd,
    id: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = None;
    wait_until(timeout, what, || {
        last = record(etcd, id);
        last.as_ref().is_some_and(&pred)
    });
    last.unwrap()
}

#[test]
fn record_appears_valid_and_etcdctl_shows_it() {
    let etcd = Etcd::start();
    let _a = agent(
        &etcd,
        "gw-1",
        &[
            "--load",
            "static:42",
            "--zone",
            "cn-sh-a",
            "--label",
            "version=1.8.2",
        ],
    );
    let rec = wait_record(&etcd, "gw-1", "record", Duration::from_secs(10), |_| true);
    let raw = etcd.get(&format!("{PREFIX}/nodes/gw-1")).unwrap();
    let parsed =
        registry::NodeRecord::parse("gw-1", raw.as_bytes()).expect("valid per the contract");
    assert_eq!(parsed.connections, 42);
    assert_eq!(parsed.ports.ws, Some(8080));
    assert_eq!(rec["region"], "cn-sh");
    assert_eq!(rec["zone"], "cn-sh-a");
    assert_eq!(rec["labels"]["version"], "1.8.2");
    assert_eq!(rec["state"], "serving");
    // Exactly one key, attached to a lease.
    assert_eq!(
        etcd.keys(&format!("{PREFIX}/nodes/")),
        vec![format!("{PREFIX}/nodes/gw-1")]
    );
    let json = etcd.ctl(&["get", &format!("{PREFIX}/nodes/gw-1"), "-w", "json"]);
    let v: Value = serde_json::from_str(&json).unwrap();
    assert!(
        v["kvs"][0]["lease"].as_i64().unwrap_or(0) != 0,
        "key has a lease: {json}"
    );
}

/// An agent given no load source reports 0 connections, and says so at start; one
/// given `static:0` on purpose is not warned.
#[test]
fn an_agent_without_a_load_source_says_so() {
    let etcd = Etcd::start();
    let bare = agent(&etcd, "gw-bare", &[]);
    let on_purpose = agent(&etcd, "gw-zero", &["--load", "static:0"]);
    for id in ["gw-bare", "gw-zero"] {
        let rec = wait_record(&etcd, id, "record", Duration::from_secs(10), |_| true);
        assert_eq!(rec["connections"], 0, "{rec}");
    }
    bare.wait_for_output("no --load (AGENT_LOAD)", Duration::from_secs(5));
    assert!(
        !on_purpose.output().contains("no --load"),
        "{}",
        on_purpose.output()
    );
}

#[test]
fn file_source_changes_show_within_one_second() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("conns");
    std::fs::write(&path, "10\n").unwrap();
    let spec = format!("file:{}", path.display());
    let _a = agent(&etcd, "gw-file", &["--load", &spec]);
    wait_record(
        &etcd,
        "gw-file",
        "first count",
        Duration::from_secs(10),
        |r| r["connections"] == 10,
    );
    for n in [500, 7, 0] {
        std::fs::write(&path, format!("{n}\n")).unwrap();
        let took = wait_until(Duration::from_secs(5), "count change", || {
            record(&etcd, "gw-file").is_some_and(|r| r["connections"] == n)
        });
        assert!(took < Duration::from_secs(1), "{n} took {took:?}");
    }
    // Garbage in the file keeps the last good count and the agent running.
    std::fs::write(&path, "lots\n").unwrap();
    std::fs::write(&path, "33\n").unwrap();
    wait_record(&etcd, "gw-file", "recovery", Duration::from_secs(5), |r| {
        r["connections"] == 33
    });
}

#[test]
fn garbage_in_the_load_file_keeps_the_last_count() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("conns");
    std::fs::write(&path, "12").unwrap();
    let spec = format!("file:{}", path.display());
    let mut a = agent(&etcd, "gw-g", &["--load", &spec]);
    wait_record(&etcd, "gw-g", "first count", Duration::from_secs(10), |r| {
        r["connections"] == 12
    });
    std::fs::write(&path, "-5 not a number").unwrap();
    a.wait_for_output("load sample failed", Duration::from_secs(5));
    assert!(a.is_running());
    assert_eq!(record(&etcd, "gw-g").unwrap()["connections"], 12);
}

#[test]
fn tcp_port_counts_real_ipv4_and_ipv6_connections() {
    let etcd = Etcd::start();
    let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = v4.local_addr().unwrap().port();
    let v6 = TcpListener::bind(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)))
        .expect("IPv6 loopback with the same port");
    let spec = format!("tcp-port:{port}");
    let _a = agent(&etcd, "gw-tcp", &["--load", &spec]);
    wait_record(&etcd, "gw-tcp", "zero", Duration::from_secs(10), |r| {
        r["connections"] == 0
    });
    let mut clients = Vec::new();
    let mut accepted = Vec::new();
    for _ in 0..2 {
        clients.push(TcpStream::connect(v4.local_addr().unwrap()).unwrap());
        accepted.push(v4.accept().unwrap().0);
    }
    for _ in 0..3 {
        clients.push(TcpStream::connect(v6.local_addr().unwrap()).unwrap());
        accepted.push(v6.accept().unwrap().0);
    }
    wait_record(
        &etcd,
        "gw-tcp",
        "5 connections",
        Duration::from_secs(5),
        |r| r["connections"] == 5,
    );
    clients.truncate(1);
    accepted.truncate(1);
    wait_record(
        &etcd,
        "gw-tcp",
        "1 connection",
        Duration::from_secs(5),
        |r| r["connections"] == 1,
    );
}

#[test]
fn sigkill_expires_with_the_ttl_and_sigterm_deregisters_at_once() {
    let etcd = Etcd::start();
    let key = format!("{PREFIX}/nodes/gw-k");
    let a = agent(&etcd, "gw-k", &[]);
    wait_until(Duration::from_secs(10), "registered", || {
        etcd.get(&key).is_some()
    });
    a.signal("KILL");
    let gone = wait_until(Duration::from_secs(10), "key to expire", || {
        etcd.get(&key).is_none()
    });
    assert!(
        gone <= Duration::from_secs(4),
        "TTL 3 s + 1 s, took {gone:?}"
    );

    let mut b = agent(&etcd, "gw-t", &[]);
    let key = format!("{PREFIX}/nodes/gw-t");
    wait_until(Duration::from_secs(10), "registered", || {
        etcd.get(&key).is_some()
    });
    b.signal("TERM");
    let gone = wait_until(Duration::from_secs(5), "key to vanish", || {
        etcd.get(&key).is_none()
    });
    assert!(gone <= Duration::from_secs(1), "took {gone:?}");
    assert!(b.wait_exit(Duration::from_secs(5)).success());
    assert!(b.output().contains("lease revoked"), "{}", b.output());
}

#[test]
fn survives_an_etcd_outage_longer_than_the_ttl() {
    let mut etcd = Etcd::start();
    let key = format!("{PREFIX}/nodes/gw-o");
    let mut a = agent(&etcd, "gw-o", &["--load", "static:5"]);
    wait_until(Duration::from_secs(10), "registered", || {
        etcd.get(&key).is_some()
    });
    let lease_of = |etcd: &Etcd| {
        let json = etcd.ctl(&["get", &key, "-w", "json"]);
        serde_json::from_str::<Value>(&json).unwrap()["kvs"][0]["lease"].as_i64()
    };
    let first = lease_of(&etcd).expect("a lease");
    etcd.stop();
    // Outlast the 3 s TTL: the agent must notice and re-register under a new lease.
    a.wait_for_output("lease presumed lost", Duration::from_secs(15));
    etcd.start_again();
    // etcd restores the old lease (and its key) on restart, for a TTL: wait for the
    // agent's new one, not for the key.
    wait_until(Duration::from_secs(15), "re-registered", || {
        lease_of(&etcd).is_some_and(|l| l != first)
    });
    assert!(a.is_running());
    // The old lease, no longer kept alive, expires; one key stays.
    wait_until(Duration::from_secs(15), "exactly one key", || {
        etcd.keys(&format!("{PREFIX}/nodes/")) == vec![key.clone()]
    });
    // And the new lease is being kept alive: its remaining TTL goes back up.
    let lease = lease_of(&etcd).expect("a lease");
    let hex = format!("{lease:x}");
    let remaining = || -> i64 {
        let out = etcd.ctl(&["lease", "timetolive", &hex]);
        out.split("remaining(")
            .nth(1)
            .and_then(|r| r.split('s').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(-1)
    };
    let mut low = i64::MAX;
    wait_until(
        Duration::from_secs(10),
        "a keep-alive to refresh the new lease",
        || {
            let r = remaining();
            assert!(r >= 0, "lease {hex} expired");
            let refreshed = r > low;
            low = low.min(r);
            refreshed
        },
    );
    assert_eq!(etcd.keys(&format!("{PREFIX}/nodes/")), vec![key]);
}

#[test]
fn drain_command_reaches_the_hook_once_and_garbage_is_ignored() {
    let etcd = Etcd::start();
    let hook = HookServer::start();
    let url = hook.url();
    let mut a = agent(&etcd, "gw-d", &["--hook", &url, "--load", "static:100"]);
    wait_record(&etcd, "gw-d", "registered", Duration::from_secs(10), |_| {
        true
    });
    let cmd_key = format!("{PREFIX}/commands/gw-d");

    etcd.put(&cmd_key, r#"{"id":"c-1","action":"drain","issued_ms":1}"#);
    let rec = wait_record(&etcd, "gw-d", "draining", Duration::from_secs(5), |r| {
        r["state"] == "draining"
    });
    assert_eq!(rec["applied_command"], "c-1");
    wait_until(Duration::from_secs(5), "hook call", || {
        !hook.bodies().is_empty()
    });
    let body: Value = serde_json::from_str(&hook.bodies()[0]).unwrap();
    assert_eq!(body["action"], "migrate");
    assert_eq!(body["percent"], 100);
    assert_eq!(body["command"], "c-1");

    // The same id written again is not applied again.
    etcd.put(&cmd_key, r#"{"id":"c-1","action":"drain","issued_ms":2}"#);
    // Garbage is logged and ignored; the agent stays up.
    etcd.put(&cmd_key, "this is not json");
    a.wait_for_output("malformed command ignored", Duration::from_secs(5));
    etcd.put(&cmd_key, r#"{"id":"c-2","action":"migrate","percent":250}"#);
    a.wait_for_output("invalid percent", Duration::from_secs(5));
    assert!(a.is_running());
    // A later valid command still works, and proves the earlier writes were processed.
    etcd.put(&cmd_key, r#"{"id":"c-3","action":"migrate","percent":30}"#);
    wait_record(&etcd, "gw-d", "c-3 applied", Duration::from_secs(5), |r| {
        r["applied_command"] == "c-3"
    });
    wait_until(Duration::from_secs(5), "second hook call", || {
        hook.bodies().len() >= 2
    });
    let bodies = hook.bodies();
    assert_eq!(bodies.len(), 2, "c-1 once, c-3 once: {bodies:?}");
    assert!(bodies[1].contains(r#""percent":30"#));
    let rec = record(&etcd, "gw-d").unwrap();
    assert_eq!(rec["state"], "draining", "migrate does not undo a drain");

    etcd.put(&cmd_key, r#"{"id":"c-4","action":"serve"}"#);
    wait_record(&etcd, "gw-d", "serving", Duration::from_secs(5), |r| {
        r["state"] == "serving"
    });
    assert_eq!(hook.bodies().len(), 2, "serve does not signal the gateway");
}

#[test]
fn unhealthy_gateway_is_reported_not_hidden() {
    let etcd = Etcd::start();
    let gw = TcpListener::bind("127.0.0.1:0").unwrap();
    let probe = format!("tcp:{}", gw.local_addr().unwrap());
    let _a = agent(
        &etcd,
        "gw-h",
        &["--health", &probe, "--health-interval-ms", "100"],
    );
    wait_record(&etcd, "gw-h", "healthy", Duration::from_secs(10), |r| {
        r.get("healthy").is_none_or(|h| h == true)
    });
    drop(gw);
    let rec = wait_record(&etcd, "gw-h", "unhealthy", Duration::from_secs(5), |r| {
        r["healthy"] == false
    });
    assert_eq!(
        rec["id"], "gw-h",
        "the node stays registered while unhealthy"
    );
}

#[test]
fn bad_flags_exit_2_with_one_clear_line() {
    let base = [
        "--etcd",
        "http://127.0.0.1:2379",
        "--id",
        "gw",
        "--ip",
        "10.0.0.1",
        "--region",
        "r",
        "--capacity",
        "10",
        "--port",
        "tcp=8000",
    ];
    let cases: &[(&[&str], &str)] = &[
        (&["--capacity", "0"], "--capacity"),
        (&["--ip", "gateway.example.com"], "--ip"),
        (&["--port", "x=1"], "--port"),
        (&["--port", "tcp=70000"], "--port"),
        (&["--unknown-flag"], "--unknown-flag"),
        (&["--id", "bad/id"], "--id"),
        (&["--load", "file:"], "--load"),
        (&["--health", "icmp:1.2.3.4"], "--health"),
        (&["--etcd", "not a url"], "--etcd"),
        (&["--hook", "ftp://x"], "--hook"),
        (&["--ipv6", "10.0.0.1"], "--ipv6"),
    ];
    for (extra, needle) in cases {
        let mut args: Vec<&str> = base.to_vec();
        args.extend_from_slice(extra);
        let (status, out) = run("gateway-agent", &args, Duration::from_secs(10));
        assert_eq!(status.code(), Some(2), "{extra:?}: {out}");
        let line = out.trim();
        assert_eq!(line.lines().count(), 1, "{extra:?}: one line, got {out:?}");
        assert!(
            line.starts_with("error:") && line.contains(needle),
            "{extra:?}: {line}"
        );
    }
    let (status, out) = run("gateway-agent", &["--id", "x"], Duration::from_secs(10));
    assert_eq!(status.code(), Some(2));
    assert!(
        out.contains("--etcd") && out.trim().lines().count() == 1,
        "{out}"
    );
}

#[test]
fn agent_keeps_one_key_on_a_three_member_cluster() {
    let etcd = Etcd::cluster(3);
    let _a = agent(&etcd, "gw-c", &["--load", "static:9"]);
    wait_record(&etcd, "gw-c", "registered", Duration::from_secs(10), |r| {
        r["connections"] == 9
    });
    assert_eq!(etcd.keys(&format!("{PREFIX}/nodes/")).len(), 1);
}

/// SIGTERM right after a migrate: the signal, still being retried because the gateway's
/// hook endpoint is not up yet, is delivered before the agent exits.
#[test]
fn a_pending_migrate_signal_is_delivered_on_sigterm() {
    let etcd = Etcd::start();
    let port = harness::free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let mut a = agent(&etcd, "gw-t", &["--hook", &url, "--load", "static:100"]);
    wait_until(Duration::from_secs(15), "registered", || {
        etcd.get(&format!("{PREFIX}/nodes/gw-t")).is_some()
    });
    etcd.put(
        &format!("{PREFIX}/commands/gw-t"),
        r#"{"id":"c-term","action":"migrate","percent":40}"#,
    );
    wait_until(Duration::from_secs(10), "command applied", || {
        etcd.get(&format!("{PREFIX}/nodes/gw-t"))
            .is_some_and(|v| v.contains("c-term"))
    });
    a.signal("TERM");
    // The gateway's hook comes up only now.
    let hook = HookServer::start_on(port);
    let status = a.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{}", a.output());
    let bodies = hook.bodies();
    assert_eq!(bodies.len(), 1, "{}", a.output());
    assert!(
        bodies[0].contains("c-term") && bodies[0].contains("40"),
        "{bodies:?}"
    );
    assert!(a.output().contains("lease revoked"), "{}", a.output());
}
