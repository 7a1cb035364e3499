//! router-server end to end: real etcd, real agents, records written by etcdctl.

use std::time::{Duration, Instant};

use harness::{gateway_ids, get_json, run, wait_until, Etcd, NodeJson, Proc, RouterProc, P};
use serde_json::Value;

fn agent(etcd: &Etcd, id: &str, region: &str, conns: u64) -> Proc {
    let load = format!("static:{conns}");
    Proc::agent(
        etcd,
        id,
        region,
        &["--port", "tcp=7000", "--ttl", "3", "--load", &load],
    )
}

fn router(etcd: &Etcd, config: &str) -> RouterProc {
    RouterProc::start(etcd, config, &[])
}

fn ids(body: &Value) -> Vec<String> {
    gateway_ids(body)
}

/// Waits until `n` node keys exist, so a router started afterwards sees them all in its
/// first snapshot (before, it would rightly answer `no_gateways`).
fn wait_registered(etcd: &Etcd, n: usize) {
    wait_until(Duration::from_secs(15), "nodes registered", || {
        etcd.keys(&format!("{P}/nodes/")).len() >= n
    });
}

fn record(id: &str, region: &str, conns: u64) -> String {
    NodeJson::new(id)
        .region(region)
        .conns(conns)
        .with("future", "ignored")
        .build()
}

#[test]
fn candidates_follow_etcd_writes_kills_and_drains() {
    let etcd = Etcd::start();
    let _a = agent(&etcd, "gw-a", "cn-sh", 100);
    let b = agent(&etcd, "gw-b", "cn-sh", 500);
    let _c = agent(&etcd, "gw-c", "cn-bj", 0);
    etcd.put(&format!("{P}/nodes/gw-d"), &record("gw-d", "cn-sh", 50));
    etcd.put(
        &format!("{P}/nodes/gw-bad"),
        r#"{"id":"gw-bad","ip":"not-an-ip"}"#,
    );
    etcd.put(&format!("{P}/nodes/gw-worse"), "{{{{ garbage");
    wait_registered(&etcd, 6);
    let r = router(&etcd, "[regions]\nfallbacks = { cn-sh = [\"cn-bj\"] }\n");

    let q = "/gateways?region=cn-sh&count=4";
    wait_until(Duration::from_secs(10), "all four nodes", || {
        Some(r.answer(q)).is_some_and(|b| ids(&b).len() == 4)
    });
    let body = r.answer(q);
    assert_eq!(ids(&body), ["gw-d", "gw-a", "gw-b", "gw-c"], "{body}");
    assert!(body["revision"].as_i64().unwrap() > 0);
    let (_, metrics) = harness::http_get(r.addr, "/metrics").unwrap();
    assert!(metrics.contains("router_invalid_records 2"), "{metrics}");
    assert!(r.proc.output().contains("invalid node record skipped"));

    // etcd write → visible in answers: each of 5 changes within 100 ms.
    let mut took = Vec::new();
    for conns in [900u64, 10, 800, 20, 700] {
        etcd.put(&format!("{P}/nodes/gw-d"), &record("gw-d", "cn-sh", conns));
        let start = Instant::now();
        let want_first = conns < 100;
        wait_until(Duration::from_secs(5), "change visible", || {
            Some(r.answer(q)).is_some_and(|b| (ids(&b)[0] == "gw-d") == want_first)
        });
        took.push(start.elapsed());
    }
    println!("etcd write to answer: {took:?}");
    assert!(
        took.iter().all(|t| *t <= Duration::from_millis(100)),
        "{took:?}"
    );

    // A drain command written with etcdctl: the node leaves every answer.
    etcd.put(
        &format!("{P}/commands/gw-a"),
        r#"{"id":"c-1","action":"drain"}"#,
    );
    wait_until(Duration::from_secs(5), "gw-a excluded", || {
        Some(r.answer(q)).is_some_and(|b| !ids(&b).contains(&"gw-a".to_string()))
    });

    // SIGKILL an agent: its node is gone after the TTL.
    b.signal("KILL");
    let gone = wait_until(Duration::from_secs(10), "gw-b gone", || {
        Some(r.answer(q)).is_some_and(|b| !ids(&b).contains(&"gw-b".to_string()))
    });
    assert!(gone <= Duration::from_secs(5), "TTL 3 s; took {gone:?}");
    let body = r.answer(q);
    assert_eq!(ids(&body), ["gw-d", "gw-c"], "{body}");
}

#[test]
fn etcd_outage_serves_stale_without_errors_then_resyncs() {
    let mut etcd = Etcd::start();
    let _a = agent(&etcd, "gw-a", "r", 100);
    let _b = agent(&etcd, "gw-b", "r", 200);
    wait_registered(&etcd, 2);
    let r = router(&etcd, "");
    wait_until(Duration::from_secs(10), "two nodes", || {
        Some(r.answer("/gateways")).is_some_and(|b| ids(&b).len() == 2)
    });

    etcd.stop();
    let mut statuses = Vec::new();
    wait_until(Duration::from_secs(20), "stale answers", || {
        let (code, body) = get_json(r.addr, "/gateways").unwrap();
        statuses.push(code);
        body["stale"] == true
    });
    // Keep asking during the outage: always the last snapshot, never a 5xx.
    for _ in 0..50 {
        let (code, body) = get_json(r.addr, "/gateways").unwrap();
        statuses.push(code);
        assert_eq!(ids(&body).len(), 2);
        assert_eq!(body["stale"], true);
    }
    assert!(statuses.iter().all(|c| *c == 200), "{statuses:?}");
    let (_, metrics) = harness::http_get(r.addr, "/metrics").unwrap();
    assert!(
        harness::has_sample(&metrics, "router_registry_connected 0"),
        "{metrics}"
    );

    etcd.start_again();
    wait_until(Duration::from_secs(20), "stale cleared", || {
        Some(r.answer("/gateways")).is_some_and(|b| b["stale"] == false)
    });
    etcd.put(&format!("{P}/nodes/gw-new"), &record("gw-new", "r", 0));
    wait_until(Duration::from_secs(5), "new node after resync", || {
        Some(r.answer("/gateways"))
            .is_some_and(|b| ids(&b).first().map(String::as_str) == Some("gw-new"))
    });
}

#[test]
fn sigterm_finishes_and_exits_zero() {
    let etcd = Etcd::start();
    let mut r = router(&etcd, "");
    assert_eq!(harness::http_get(r.addr, "/healthz").unwrap().0, 200);
    r.proc.signal("TERM");
    exits_zero_and_stops_accepting(&mut r);
}

/// `r`, signalled, exits 0 and no longer accepts connections.
fn exits_zero_and_stops_accepting(r: &mut RouterProc) {
    assert!(
        r.proc.wait_exit(Duration::from_secs(20)).success(),
        "{}",
        r.proc.output()
    );
    assert!(
        harness::http_get(r.addr, "/healthz").is_none(),
        "stopped accepting"
    );
}

/// On SIGTERM a router first goes away: `/readyz` answers 503 while new connections
/// and requests are still served, for `shutdown_readiness_delay_ms`, so a balancer's
/// health check takes it out before its listeners close; then it exits 0.
#[test]
fn sigterm_first_says_going_away_while_still_serving() {
    let etcd = Etcd::start();
    etcd.put(&format!("{P}/nodes/gw-a"), &record("gw-a", "r", 0));
    let mut r = router(&etcd, "[http]\nshutdown_readiness_delay_ms = 3000\n");
    wait_until(Duration::from_secs(10), "node served", || {
        harness::http_get(r.addr, "/gateways").is_some_and(|(s, _)| s == 200)
    });
    assert_eq!(harness::http_get(r.addr, "/readyz").unwrap().0, 200);
    r.proc.signal("TERM");
    let mut going = String::new();
    wait_until(
        Duration::from_secs(5),
        "/readyz says going away",
        || match harness::http_get(r.addr, "/readyz") {
            Some((503, body)) => {
                going = body;
                true
            }
            _ => false,
        },
    );
    assert!(going.contains("going away"), "{going}");
    // Still serving, on a new connection each time (http_get opens one).
    let (status, body) = harness::http_get(r.addr, "/gateways").expect("still accepting");
    assert_eq!(status, 200, "{body}");
    assert!(r.proc.is_running(), "the delay has not passed");
    exits_zero_and_stops_accepting(&mut r);
    assert!(
        r.proc.output().contains("going away"),
        "{}",
        r.proc.output()
    );
}

/// Each router publishes its version in its registration, and the fleet page lists
/// every live router with its version (an upgrade in progress shows as two). What a
/// registration says is bounded: a control character is shown as `?`.
#[test]
fn the_fleet_page_lists_each_router_with_its_version() {
    let etcd = Etcd::start();
    let r1 = RouterProc::start(&etcd, "", &["--router-id", "r1"]);
    let _r2 = RouterProc::start(&etcd, "", &["--router-id", "r2"]);
    etcd.put(
        &format!("{P}/routers/odd"),
        r#"{"id": "odd\u001b[2J", "version": "9.9.9", "commit": "c"}"#,
    );
    let (_, out) = run("router-server", &["--version"], Duration::from_secs(10));
    // `router-server 0.1.0 (commit 1a2b3c4, built DATE)`
    let rest = out.trim().strip_prefix("router-server ").expect(&out);
    let (version, rest) = rest.split_once(" (commit ").expect(&out);
    let commit = rest.split(',').next().unwrap();
    let ours = format!("{version} ({commit})");
    let mut routers = Value::Null;
    wait_until(Duration::from_secs(10), "three routers listed", || {
        routers = get_json(r1.addr, "/ops/fleet.json").unwrap().1["router"]["routers"].clone();
        routers.as_array().is_some_and(|a| a.len() == 3)
    });
    let listed: Vec<(String, String)> = routers
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_string(),
                p["version"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("?".to_string(), "9.9.9 (c)".to_string()),
            ("r1".to_string(), ours.clone()),
            ("r2".to_string(), ours),
        ]
    );
}

#[test]
fn bad_flags_and_config_exit_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad_cfg = dir.path().join("bad.toml");
    std::fs::write(&bad_cfg, "max_load = 7\n").unwrap();
    let bad_cfg = bad_cfg.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--etcd", "http://127.0.0.1:1", "--listen", "not-an-address"],
            "--listen",
        ),
        (
            &[
                "--etcd",
                "http://127.0.0.1:1",
                "--listen",
                "127.0.0.1:0",
                "--bogus",
            ],
            "--bogus",
        ),
        (&["--listen", "127.0.0.1:0"], "--etcd"),
        (
            &[
                "--etcd",
                "http://127.0.0.1:1",
                "--listen",
                "127.0.0.1:0",
                "--config",
                bad_cfg,
            ],
            "max_load",
        ),
        (
            &[
                "--etcd",
                "http://127.0.0.1:1",
                "--listen",
                "127.0.0.1:0",
                "--config",
                "/nonexistent.toml",
            ],
            "/nonexistent.toml",
        ),
        (
            &[
                "--etcd",
                "http://127.0.0.1:1",
                "--listen",
                "127.0.0.1:0",
                "--tls-cert",
                "/x.pem",
            ],
            "--tls-key",
        ),
        (
            &[
                "--etcd",
                "http://127.0.0.1:1",
                "--listen",
                "127.0.0.1:0",
                "--tls-cert",
                "/x.pem",
                "--tls-key",
                "/y.pem",
            ],
            "/x.pem",
        ),
        (&["demo", "--nodes", "0"], "--nodes"),
        (
            &[
                "ctl",
                "--etcd",
                "http://127.0.0.1:1",
                "migrate",
                "gw",
                "--percent",
                "0",
            ],
            "--percent",
        ),
        (
            &["ctl", "--etcd", "http://127.0.0.1:1", "explode"],
            "explode",
        ),
    ];
    for (args, needle) in cases {
        let (status, out) = run("router-server", args, Duration::from_secs(10));
        assert_eq!(status.code(), Some(2), "{args:?}: {out}");
        let line = out.trim();
        assert_eq!(line.lines().count(), 1, "{args:?}: {out:?}");
        assert!(
            line.starts_with("error:") && line.contains(needle),
            "{args:?}: {line}"
        );
    }
}

#[test]
fn slow_and_oversized_request_heads_are_refused() {
    use std::io::{Read, Write};
    let etcd = Etcd::start();
    let r = RouterProc::start(
        &etcd,
        "[http]\nrequest_timeout_ms = 300\nmax_header_bytes = 8192\n",
        &[],
    );
    // A client that never finishes its head is cut off after the head timeout.
    let mut slow = std::net::TcpStream::connect(r.addr).unwrap();
    slow.write_all(b"GET /gateways HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let start = std::time::Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
    // A head larger than the limit is refused.
    let mut big = std::net::TcpStream::connect(r.addr).unwrap();
    let filler = "a".repeat(20_000);
    let _ = write!(
        big,
        "GET /gateways HTTP/1.1\r\nHost: x\r\nX-Big: {filler}\r\n\r\n"
    );
    big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = String::new();
    let _ = big.read_to_string(&mut answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    // The server is fine afterwards.
    assert_eq!(harness::http_get(r.addr, "/healthz").unwrap().0, 200);
}
