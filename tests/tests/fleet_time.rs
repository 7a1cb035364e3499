//! The registry path over fleet-time: a stock etcd left alone, endpoint lists whose
//! first members are dead, mass and staggered node loss.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use harness::{get_json, wait_until, Etcd, Proc, RouterProc, P};

/// A stock etcd (Debian's defaults: `--grpc-keepalive-min-time` 5 s), one agent, one
/// router, left quiet: the router must never lose its watch nor answer stale.
#[test]
fn quiet_for_30_seconds_no_reconnect_no_stale_answer() {
    let etcd = Etcd::start();
    let mut agent = Proc::agent(
        &etcd,
        "gw-quiet",
        "r",
        &["--port", "tcp=7000", "--load", "static:10"],
    );
    wait_until(Duration::from_secs(15), "agent registered", || {
        etcd.get(&format!("{P}/nodes/gw-quiet")).is_some()
    });
    let r = RouterProc::start(&etcd, "", &[]);
    let start = Instant::now();
    let mut answers = 0;
    while start.elapsed() < Duration::from_secs(30) {
        let (code, body) = get_json(r.addr, "/gateways").expect("router answers");
        assert_eq!(code, 200, "{body}");
        assert_eq!(
            body["stale"],
            false,
            "stale answer after {:?}",
            start.elapsed()
        );
        answers += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(answers > 100);
    let out = r.proc.output();
    assert!(!out.contains("registry unreachable"), "{out}");
    // Operator-readable: where it connects, and what it loaded.
    assert!(out.contains("router starting") && out.contains(P), "{out}");
    assert!(out.contains("loaded 1 nodes at revision"), "{out}");
    let agent_out = agent.output();
    let registered = agent_out
        .lines()
        .find(|l| l.contains("registered"))
        .unwrap_or("");
    assert!(registered.contains("node_id=gw-quiet"), "{agent_out}");
    assert!(
        !out.contains("too_many_pings") && !out.contains("WARN"),
        "{out}"
    );
    let (_, metrics) = harness::http_get(r.addr, "/metrics").unwrap();
    assert!(
        harness::has_sample(&metrics, "router_registry_connected 1"),
        "{metrics}"
    );
    assert!(
        !agent.output().contains("WARN"),
        "agent warned: {}",
        agent.output()
    );
    agent.signal("TERM");
    assert!(agent.wait_exit(Duration::from_secs(10)).success());
}

/// `--etcd REFUSED,BLACKHOLE,LIVE`: every binary fails over to the live member, names
/// the endpoints it tried, and an agent's SIGTERM still revokes its lease.
#[test]
fn dead_first_endpoints_fail_over_for_agent_router_and_ctl() {
    let etcd = Etcd::start();
    // Connections are refused on port 1: nothing listens there, and no test binds it (a free ephemeral port could
    // be taken meanwhile by another test's etcd, which would then answer).
    let refused = "http://127.0.0.1:1".to_string();
    // This one accepts TCP connections (the kernel's backlog) and never answers.
    let blackhole = TcpListener::bind("127.0.0.1:0").unwrap();
    let blackhole_url = format!("http://{}", blackhole.local_addr().unwrap());
    let endpoints = format!("{refused},{blackhole_url},{}", etcd.endpoints());

    // Built before the clock starts.
    harness::bin("gateway-agent");
    let start = Instant::now();
    let mut agent = Proc::spawn(
        "gateway-agent",
        &[
            "--etcd",
            &endpoints,
            "--id",
            "gw-fo",
            "--ip",
            "127.0.0.1",
            "--region",
            "r",
            "--capacity",
            "100",
            "--port",
            "tcp=7000",
        ],
    );
    wait_until(Duration::from_secs(10), "agent registered", || {
        etcd.get(&format!("{P}/nodes/gw-fo")).is_some()
    });
    let took = start.elapsed();
    println!("agent registered through dead endpoints in {took:?}");
    assert!(
        took < Duration::from_secs(4),
        "{took:?}\n{}",
        agent.output()
    );
    assert!(
        agent.output().contains("trying the next"),
        "{}",
        agent.output()
    );

    let router = Proc::spawn(
        "router-server",
        &["--etcd", &endpoints, "--listen", "127.0.0.1:0"],
    );
    let addr = router.wait_for_addr("serving HTTP", Duration::from_secs(20));
    wait_until(Duration::from_secs(10), "router serves the node", || {
        get_json(addr, "/gateways").is_some_and(|(c, b)| c == 200 && b["stale"] == false)
    });

    for i in 0..5 {
        let t = Instant::now();
        let (status, out) = harness::run(
            "router-server",
            &["ctl", "--etcd", &endpoints, "nodes"],
            Duration::from_secs(20),
        );
        assert!(status.success(), "ctl run {i}: {out}");
        assert!(out.contains("gw-fo"), "{out}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "ctl took {:?}",
            t.elapsed()
        );
    }

    agent.signal("TERM");
    assert!(agent.wait_exit(Duration::from_secs(10)).success());
    assert!(
        agent.output().contains("lease revoked"),
        "{}",
        agent.output()
    );
    assert!(etcd.get(&format!("{P}/nodes/gw-fo")).is_none());
    drop(blackhole);
}

/// Ten agents with a 3 s lease; eight are SIGKILLed, at once or one every 400 ms. Their
/// leases expire one by one, and the watch delivers the deletions in several batches:
/// the router must still see a mass loss, keep serving all ten, stale, with the alarm.
/// `n` agents `gw-0`.. with a 3 s lease, all registered, and a router started after.
fn fleet_of(etcd: &Etcd, n: usize) -> (Vec<Proc>, RouterProc) {
    let agents: Vec<Proc> = (0..n)
        .map(|i| {
            Proc::agent(
                etcd,
                &format!("gw-{i}"),
                "r",
                &["--port", "tcp=7000", "--ttl", "3", "--load", "static:0"],
            )
        })
        .collect();
    wait_until(Duration::from_secs(20), "agents registered", || {
        etcd.keys(&format!("{P}/nodes/")).len() == n
    });
    (agents, RouterProc::start(etcd, "", &[]))
}

fn mass_loss_is_held(stagger: Duration) {
    let etcd = Etcd::start();
    let (mut agents, r) = fleet_of(&etcd, 10);
    let q = "/gateways?count=10";
    wait_until(Duration::from_secs(10), "ten nodes served", || {
        r.ids(q).len() == 10
    });
    for a in agents.iter_mut().take(8) {
        a.signal("KILL");
        std::thread::sleep(stagger);
    }
    wait_until(Duration::from_secs(20), "eight leases expired", || {
        etcd.keys(&format!("{P}/nodes/")).len() == 2
    });
    // The router has seen every deletion by the time etcd lists only two keys... give
    // its watch a moment, then the answer must still hold all ten.
    wait_until(Duration::from_secs(5), "alarm raised", || {
        harness::http_get(r.addr, "/metrics")
            .is_some_and(|(_, m)| harness::has_sample(&m, "router_protect_active 1"))
    });
    let body = r.answer(q);
    assert_eq!(harness::gateway_ids(&body).len(), 10, "{body}");
    assert_eq!(body["stale"], true, "{body}");
    let out = r.proc.output();
    assert!(out.contains("ALARM"), "{out}");
}

#[test]
fn mass_expiry_at_once_is_held() {
    mass_loss_is_held(Duration::ZERO);
}

#[test]
fn staggered_expiry_is_held() {
    mass_loss_is_held(Duration::from_millis(400));
}

/// A planned scale-in (drain, then stop) of most of the fleet is followed at once.
#[test]
fn drained_nodes_leaving_never_trip_the_alarm() {
    let etcd = Etcd::start();
    let (mut agents, r) = fleet_of(&etcd, 6);
    wait_until(Duration::from_secs(10), "six served", || {
        r.ids("/gateways?count=10").len() == 6
    });
    for i in 0..5 {
        etcd.ctl(&[
            "put",
            &format!("{P}/commands/gw-{i}"),
            &format!(r#"{{"id":"c-{i}","action":"drain"}}"#),
        ]);
    }
    wait_until(Duration::from_secs(10), "five draining", || {
        (0..5).all(|i| {
            etcd.get(&format!("{P}/nodes/gw-{i}"))
                .is_some_and(|v| v.contains("\"draining\""))
        })
    });
    for a in agents.iter_mut().take(5) {
        a.signal("KILL");
    }
    wait_until(Duration::from_secs(20), "the router follows", || {
        let b = r.answer("/gateways?count=10");
        harness::gateway_ids(&b).len() == 1 && b["stale"] == false
    });
    let (_, m) = harness::http_get(r.addr, "/metrics").unwrap();
    assert!(m.contains("router_protect_engaged_total 0"), "{m}");
}

/// The leader of a three-member cluster dies while an agent's load changes: the new
/// count reaches etcd within a second of the new leader being elected.
#[test]
fn a_report_reaches_etcd_within_a_second_of_a_new_leader() {
    let mut etcd = Etcd::cluster(3);
    let dir = tempfile::tempdir().unwrap();
    let load = dir.path().join("load");
    std::fs::write(&load, "100").unwrap();
    let load_src = format!("file:{}", load.display());
    let _agent = Proc::agent(
        &etcd,
        "gw-lc",
        "r",
        &["--port", "tcp=7000", "--load", &load_src],
    );
    let key = format!("{P}/nodes/gw-lc");
    let conns = |etcd: &Etcd| {
        etcd.ctl_raw(&["get", &key, "--print-value-only", "--command-timeout=500ms"])
            .stdout
            .iter()
            .map(|&b| b as char)
            .collect::<String>()
    };
    wait_until(Duration::from_secs(20), "registered with 100", || {
        conns(&etcd).contains("\"connections\":100")
    });
    let old = etcd.leader().expect("a leader");
    etcd.stop_member(old);
    std::fs::write(&load, "200").unwrap();
    let mut elected: Option<Instant> = None;
    let mut visible: Option<Instant> = None;
    let start = Instant::now();
    while visible.is_none() || elected.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "elected {elected:?} visible {visible:?}"
        );
        if elected.is_none() && etcd.leader().is_some_and(|l| l != old) {
            elected = Some(Instant::now());
        }
        if visible.is_none() && conns(&etcd).contains("\"connections\":200") {
            visible = Some(Instant::now());
        }
    }
    let (elected, visible) = (elected.unwrap(), visible.unwrap());
    let after = visible.saturating_duration_since(elected);
    println!(
        "leader lost; elected after {:?}, report visible after {:?} ({after:?} after the election)",
        elected - start,
        visible - start
    );
    assert!(
        after <= Duration::from_secs(1),
        "{after:?} after the new leader"
    );
}
