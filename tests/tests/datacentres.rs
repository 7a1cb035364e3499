//! Two data centres, each with its own etcd (DC B's a three-member cluster), a router
//! in each following both registries (its own first), and agents in each.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{gateway_ids, wait_until, Etcd, Proc, RouterProc};

/// Each region falls back to the other DC's; a registry out of reach for 3 s is demoted.
const CONFIG: &str = r#"
registry_stale_secs = 3
[regions.fallbacks]
"a-r" = ["b-r"]
"b-r" = ["a-r"]
"#;

struct Dcs {
    a: Etcd,
    b: Etcd,
    agents: Vec<Proc>,
    /// DC A's router (follows a, then b).
    ra: RouterProc,
    /// DC B's router (follows b, then a).
    rb: RouterProc,
}

fn agent(etcd: &Etcd, id: &str, region: &str) -> Proc {
    Proc::agent(
        etcd,
        id,
        region,
        &["--port", "tcp=7000", "--load", "static:10"],
    )
}

/// Two DCs with gateways `gw-a1`, `gw-a2` (region `a-r`) and `gw-b1`, `gw-b2` (`b-r`),
/// once both routers answer all four.
fn two_dcs() -> Dcs {
    two_dcs_on("127.0.0.1:0", "127.0.0.1:0", "")
}

/// [`two_dcs`] with the routers on `listen_a` and `listen_b`, and `extra` config.
fn two_dcs_on(listen_a: &str, listen_b: &str, extra: &str) -> Dcs {
    let config = format!("{extra}\n{CONFIG}");
    let a = Etcd::start();
    let b = Etcd::cluster(3);
    let agents = vec![
        agent(&a, "gw-a1", "a-r"),
        agent(&a, "gw-a2", "a-r"),
        agent(&b, "gw-b1", "b-r"),
        agent(&b, "gw-b2", "b-r"),
    ];
    let ra = RouterProc::start_registries(listen_a, &[("a", &a), ("b", &b)], &config, &[]);
    let rb = RouterProc::start_registries(listen_b, &[("b", &b), ("a", &a)], &config, &[]);
    for r in [&ra, &rb] {
        wait_until(Duration::from_secs(30), "both DCs' gateways", || {
            ids_now(r, "/gateways?count=10").len() == 4
        });
    }
    Dcs {
        a,
        b,
        agents,
        ra,
        rb,
    }
}

/// Clients asking a router `path` every 5 ms on a thread, counting the answers that are
/// not a 200 whose body passes `ok`.
struct Clients {
    stop: Arc<AtomicBool>,
    asked: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Clients {
    fn start(
        addr: std::net::SocketAddr,
        path: &'static str,
        ok: fn(&serde_json::Value) -> bool,
    ) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let (asked, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let thread = {
            let (stop, asked, failed) = (stop.clone(), asked.clone(), failed.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    asked.fetch_add(1, Ordering::Relaxed);
                    match harness::get_json(addr, path) {
                        Some((200, body)) if ok(&body) => {}
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Clients {
            stop,
            asked,
            failed,
            thread,
        }
    }

    /// Stops them: (requests, failures).
    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        (
            self.asked.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// The `(id, dc)` of each gateway of an answer.
fn placed(body: &serde_json::Value) -> Vec<(String, String)> {
    body["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["id"].as_str().unwrap().to_string(),
                g["dc"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect()
}

/// The ids `r` answers for `path`, none while it has no eligible gateway.
fn ids_now(r: &RouterProc, path: &str) -> Vec<String> {
    match harness::get_json(r.addr, path) {
        Some((200, body)) => gateway_ids(&body),
        _ => Vec::new(),
    }
}

fn in_dc(answer: &[(String, String)], dc: &str) -> bool {
    answer
        .iter()
        .all(|(id, d)| d == dc && id.starts_with(&format!("gw-{dc}")))
}

#[test]
fn clients_stay_in_their_dc_and_fall_back_to_the_other_when_it_is_drained() {
    let dcs = two_dcs();
    // Each DC's clients get their DC's gateways first, then the fallback DC's.
    let a = dcs.ra.answer("/gateways?region=a-r&count=4");
    let got = placed(&a);
    assert!(in_dc(&got[..2], "a") && in_dc(&got[2..], "b"), "{a}");
    let b = dcs.rb.answer("/gateways?region=b-r&count=4");
    let got = placed(&b);
    assert!(in_dc(&got[..2], "b") && in_dc(&got[2..], "a"), "{b}");
    // Both routers registered in both DCs: each DC's router count covers them.
    for etcd in [&dcs.a, &dcs.b] {
        wait_until(
            Duration::from_secs(10),
            "two routers in each registry",
            || etcd.keys("/gateway-router/v1/routers/").len() == 2,
        );
    }
    // ctl over both DCs: one table with a DC column.
    let (specs_a, specs_b) = (
        format!("a={}", dcs.a.endpoints()),
        format!("b={}", dcs.b.endpoints()),
    );
    let both = ["ctl", "--registry", &specs_a, "--registry", &specs_b];
    let (status, table) = harness::run(
        "router-server",
        &[&both[..], &["nodes"]].concat(),
        Duration::from_secs(30),
    );
    assert!(status.success(), "{table}");
    let rows: Vec<&str> = table.lines().filter(|l| !l.contains(" INFO ")).collect();
    assert!(rows[0].starts_with("DC "), "{table}");
    for (dc, id) in [("a", "gw-a1"), ("b", "gw-b2")] {
        assert!(
            rows.iter()
                .any(|r| r.split_whitespace().take(2).eq([dc, id])),
            "{dc} {id}: {table}"
        );
    }
    // Every DC-A gateway of the region drains (each command goes to the DC holding the
    // node): its clients go to DC B.
    for id in ["gw-a1", "gw-a2"] {
        let (status, out) = harness::run(
            "router-server",
            &[&both[..], &["drain", id]].concat(),
            Duration::from_secs(30),
        );
        assert!(status.success(), "{out}");
        assert!(out.contains(&format!("{id} is in registry a")), "{out}");
    }
    for r in [&dcs.ra, &dcs.rb] {
        wait_until(Duration::from_secs(15), "a-r clients sent to DC B", || {
            let body = r.answer("/gateways?region=a-r&count=4");
            let got = placed(&body);
            got.len() == 2 && in_dc(&got, "b") && body["stale"] == false
        });
    }
}

#[test]
fn a_dc_whose_etcd_dies_is_demoted_and_the_other_dc_is_unaffected() {
    let mut dcs = two_dcs();
    // DC A's clients, asking all along.
    let clients = Clients::start(dcs.ra.addr, "/gateways?region=a-r&count=2", |body| {
        placed(body).iter().all(|(_, d)| d == "a")
    });
    // DC B's etcd dies (every member); its gateways stay up.
    dcs.b.stop();
    let died = Instant::now();
    let demoted = wait_until(
        Duration::from_secs(30),
        "DC B demoted by DC A's router",
        || {
            let body = dcs.ra.answer("/gateways?region=b-r&count=4");
            let got = placed(&body);
            got.len() == 4
                && in_dc(&got[..2], "a")
                && in_dc(&got[2..], "b")
                && body["stale"] == true
        },
    );
    println!("DC B's etcd killed: its nodes demoted by DC A's router after {demoted:?}");
    assert!(
        died.elapsed() <= Duration::from_secs(3 + 1),
        "demoted after {:?}, registry_stale_secs is 3",
        died.elapsed()
    );
    // DC B's own router keeps serving its last snapshot, flagged stale.
    let body = dcs.rb.answer("/gateways?region=b-r&count=2");
    assert!(in_dc(&placed(&body), "b"), "{body}");
    assert_eq!(body["stale"], true, "{body}");
    // DC A's answers were never touched.
    let a = dcs.ra.answer("/gateways?region=a-r&count=2");
    assert_eq!(a["stale"], false, "{a}");
    let (asked, failed) = clients.finish();
    println!("DC A's clients meanwhile: {asked} requests, {failed} not answered by DC A");
    assert!(asked > 20, "{asked} requests");
    assert_eq!(failed, 0, "of {asked}");
    // Back: DC B's nodes are served first to its clients again.
    dcs.b.start_again();
    wait_until(Duration::from_secs(30), "DC B current again", || {
        let body = dcs.ra.answer("/gateways?region=b-r&count=2");
        in_dc(&placed(&body), "b") && body["stale"] == false
    });
    let (_, fleet) = harness::get_json(dcs.ra.addr, "/ops/fleet.json").unwrap();
    let regs = &fleet["router"]["registries"];
    assert_eq!(regs[0]["name"], "a", "{regs}");
    assert_eq!(regs[1]["name"], "b", "{regs}");
    assert_eq!(regs[1]["demoted"], false, "{regs}");
}

/// Two single-member DCs: `gw-dup` registered in both (regions `a-r` and `b-r`),
/// `gw-b1` in DC B; returns once the three records are in etcd.
fn duplicate_dcs() -> (Etcd, Etcd, [Proc; 3]) {
    let a = Etcd::start();
    let b = Etcd::start();
    let agents = [
        agent(&a, "gw-dup", "a-r"),
        agent(&b, "gw-dup", "b-r"),
        agent(&b, "gw-b1", "b-r"),
    ];
    wait_until(Duration::from_secs(30), "the three records", || {
        a.keys("/gateway-router/v1/nodes/").len() == 1
            && b.keys("/gateway-router/v1/nodes/").len() == 2
    });
    (a, b, agents)
}

#[test]
fn a_node_id_in_two_dcs_is_reported_by_both_routers() {
    let (a, b, _agents) = duplicate_dcs();
    let ra = RouterProc::start_registries(
        "127.0.0.1:0",
        &[("a", &a), ("b", &b)],
        CONFIG,
        &["--admin-token", "t0ken-t0ken-t0ken"],
    );
    let rb = RouterProc::start_registries("127.0.0.1:0", &[("b", &b), ("a", &a)], CONFIG, &[]);
    for (r, own) in [(&ra, "a"), (&rb, "b")] {
        wait_until(Duration::from_secs(30), "the duplicate reported", || {
            let (_, fleet) = harness::get_json(r.addr, "/ops/fleet.json").unwrap();
            fleet["router"]["invalid"].as_array().is_some_and(|a| {
                a.iter().any(|i| {
                    i["reason"]
                        .as_str()
                        .is_some_and(|s| s.contains("duplicate node id gw-dup"))
                })
            })
        });
        // The first registry's node is the one served (each router's own DC).
        let body = r.answer("/gateways?count=10");
        let got = placed(&body);
        assert!(
            got.contains(&("gw-dup".to_string(), own.to_string())),
            "{body}"
        );
        assert_eq!(gateway_ids(&body).len(), 2, "{body}");
        let (_, metrics) = harness::http_get(r.addr, "/metrics").unwrap();
        assert!(metrics.contains("router_invalid_records 1"), "{metrics}");
    }
}

/// All of DC B fails at once: its etcd, its gateways and its router. A DC-B client whose
/// SDK knows both DCs' routers (DC B's first) gets DC A's gateways, while DC A's own
/// clients lose no request.
#[test]
fn a_whole_dc_fails_and_its_clients_get_the_other_dc() {
    use httpdns_client::{Client, Config, Ipv6Mode, Provider};
    // Both routers on one port, at two loopback addresses: what the SDK's HTTPDNS
    // answer for the router's domain lists.
    let port = harness::free_port();
    let (la, lb) = (format!("127.0.0.1:{port}"), format!("127.0.0.2:{port}"));
    let mut dcs = two_dcs_on(&la, &lb, "ttl_secs = 1");
    let dns = harness::HttpDnsServer::start();
    dns.answer("routers.test", &["127.0.0.2", "127.0.0.1"], &[], 60);
    let mut c = Config::new("routers.test");
    c.router_port = port;
    c.router_https = false;
    c.region = Some("b-r".into());
    c.count = 2;
    c.dns.providers = vec![Provider::alibaba("100000", vec![dns.addr()])];
    c.dns.ipv6 = Ipv6Mode::Never;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = Client::new(c).unwrap();
    let first = |client: &Client| -> Option<(String, String)> {
        let g = rt.block_on(client.gateways()).ok()?;
        g.gateways
            .first()
            .map(|g| (g.id.clone(), g.dc.clone().unwrap_or_default()))
    };
    let before = first(&client).expect("an answer");
    assert_eq!(before.1, "b", "{before:?}");

    let clients = Clients::start(dcs.ra.addr, "/gateways?region=a-r", |_| true);
    // DC B goes dark: etcd, gateways, router.
    dcs.b.stop();
    for a in dcs.agents.iter().skip(2) {
        a.signal("KILL");
    }
    dcs.rb.proc.signal("KILL");
    let failed_at = Instant::now();
    let moved = wait_until(
        Duration::from_secs(30),
        "DC B's client sent to DC A",
        || first(&client).is_some_and(|(id, dc)| dc == "a" && id.starts_with("gw-a")),
    );
    println!("whole DC B down: its client's first candidate is in DC A after {moved:?}");
    assert!(
        failed_at.elapsed() <= Duration::from_secs(15),
        "{:?}",
        failed_at.elapsed()
    );
    let (asked, failed) = clients.finish();
    println!("DC A's clients meanwhile: {asked} requests, {failed} failed");
    assert!(asked > 20);
    assert_eq!(failed, 0, "of {asked}");
}

/// The admin API of a router following two DCs: `?registry=` addresses one; without
/// it a command goes to the DC holding the node, and an id in both is refused.
#[test]
fn the_admin_api_addresses_each_dc() {
    let (a, b, _agents) = duplicate_dcs();
    let r = RouterProc::start_registries(
        "127.0.0.1:0",
        &[("a", &a), ("b", &b)],
        CONFIG,
        &["--admin-token", "t0ken-t0ken-t0ken"],
    );
    wait_until(Duration::from_secs(30), "both DCs' nodes", || {
        ids_now(&r, "/gateways?count=10").len() == 2
    });
    let call = |method: &str, path: &str| -> (u16, serde_json::Value) {
        let (code, body) =
            harness::http_request(r.addr, method, path, Some("t0ken-t0ken-t0ken"), "").unwrap();
        (code, serde_json::from_str(&body).unwrap_or_default())
    };
    let (code, nodes) = call("GET", "/admin/nodes");
    assert_eq!(code, 200, "{nodes}");
    let mut seen: Vec<(String, String)> = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["registry"].as_str().unwrap().to_string(),
                n["record"]["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [("a", "gw-dup"), ("b", "gw-b1"), ("b", "gw-dup")]
            .map(|(r, i)| (r.to_string(), i.to_string()))
    );
    let (code, only_b) = call("GET", "/admin/nodes?registry=b");
    assert_eq!(
        (code, only_b["nodes"].as_array().unwrap().len()),
        (200, 2),
        "{only_b}"
    );
    // Without ?registry the DC holding the node; an id in both DCs must be named.
    let (code, issued) = call("POST", "/admin/nodes/gw-b1/drain");
    assert_eq!(
        (code, issued["registry"].as_str()),
        (202, Some("b")),
        "{issued}"
    );
    let (code, refused) = call("POST", "/admin/nodes/gw-dup/drain");
    assert_eq!(code, 400, "{refused}");
    assert!(
        refused.to_string().contains("registries a and b"),
        "{refused}"
    );
    let (code, unknown) = call("POST", "/admin/nodes/gw-dup/drain?registry=zz");
    assert_eq!(
        (code, unknown["error"]["code"].as_str()),
        (404, Some("unknown_registry")),
        "{unknown}"
    );
    assert_eq!(
        a.keys("/gateway-router/v1/commands/"),
        Vec::<String>::new(),
        "nothing written in DC A"
    );
    let (code, issued) = call("POST", "/admin/nodes/gw-dup/drain?registry=a");
    assert_eq!(
        (code, issued["registry"].as_str()),
        (202, Some("a")),
        "{issued}"
    );
    assert_eq!(
        a.keys("/gateway-router/v1/commands/"),
        ["/gateway-router/v1/commands/gw-dup"]
    );
    assert_eq!(
        b.keys("/gateway-router/v1/commands/"),
        ["/gateway-router/v1/commands/gw-b1"]
    );
    let (code, plan) = call("POST", "/admin/rebalance?dry_run=true&registry=b");
    assert_eq!(
        (code, plan["registry"].as_str()),
        (200, Some("b")),
        "{plan}"
    );
}

/// Every gateway of DC B crashes while its etcd stays up: DC B's protect threshold
/// holds them (offered after every live node, in answers marked stale). DC A's router
/// answers its own clients as before; DC B's router, whose own DC holds, marks every
/// answer stale.
#[test]
fn a_dc_whose_gateways_all_crash_is_held_by_its_own_protect() {
    let dcs = two_dcs();
    for a in dcs.agents.iter().skip(2) {
        a.signal("KILL");
    }
    for (r, own_dc_holds) in [(&dcs.ra, false), (&dcs.rb, true)] {
        wait_until(Duration::from_secs(30), "DC B's nodes held", || {
            let (_, fleet) = harness::get_json(r.addr, "/ops/fleet.json").unwrap();
            fleet["router"]["registries"]
                .as_array()
                .is_some_and(|regs| {
                    regs.iter()
                        .any(|g| g["name"] == "b" && g["protecting"] == true && g["nodes"] == 0)
                })
        });
        let body = r.answer("/gateways?region=b-r&count=4");
        let got = placed(&body);
        assert!(
            got.len() == 4 && in_dc(&got[..2], "a") && in_dc(&got[2..], "b"),
            "live DC A first, then DC B's held nodes: {body}"
        );
        assert_eq!(body["stale"], true, "{body}");
        let a = r.answer("/gateways?region=a-r&count=2");
        assert!(in_dc(&placed(&a), "a"), "{a}");
        assert_eq!(a["stale"], own_dc_holds, "{a}");
    }
    let (_, m) = harness::http_get(dcs.ra.addr, "/metrics").unwrap();
    assert!(m.contains("router_protect_active 1"), "{m}");
}

/// A router whose remote DC's etcd is down from the start is ready and serves its own
/// DC; its own DC's etcd being down keeps it unready.
#[test]
fn readiness_follows_the_router_s_own_dc_only() {
    let a = Etcd::start();
    let mut b = Etcd::start();
    let _agent = agent(&a, "gw-a1", "a-r");
    b.stop();
    let r = RouterProc::start_registries("127.0.0.1:0", &[("a", &a), ("b", &b)], CONFIG, &[]);
    wait_until(Duration::from_secs(30), "gw-a1 served", || {
        ids_now(&r, "/gateways?count=10") == ["gw-a1"]
    });
    let (_, fleet) = harness::get_json(r.addr, "/ops/fleet.json").unwrap();
    let regs = &fleet["router"]["registries"];
    assert_eq!(
        (regs[1]["name"].as_str(), regs[1]["loaded"].as_bool()),
        (Some("b"), Some(false)),
        "{regs}"
    );
    // The other way round: its own DC down, a router does not become ready.
    let mut p = Proc::spawn(
        "router-server",
        &[
            "--listen",
            "127.0.0.1:0",
            "--registry",
            &format!("b={}", b.endpoints()),
            "--registry",
            &format!("a={}", a.endpoints()),
        ],
    );
    let addr = p.wait_for_addr("serving HTTP", Duration::from_secs(20));
    // Long enough for DC A's registry to load.
    wait_until(Duration::from_secs(20), "DC A loaded", || {
        harness::get_json(addr, "/ops/fleet.json")
            .is_some_and(|(_, f)| f["router"]["registries"][1]["loaded"] == true)
    });
    let (code, _) = harness::http_get(addr, "/readyz").unwrap();
    assert_eq!(code, 503, "not ready without its own DC");
    p.signal("TERM");
    p.wait_exit(Duration::from_secs(20));
}

/// A DC out of reach for `protect_max_secs` is dropped: its nodes are no longer offered.
#[test]
fn a_dc_out_of_reach_past_protect_max_secs_is_dropped() {
    let a = Etcd::start();
    let mut b = Etcd::start();
    let _agents = [agent(&a, "gw-a1", "a-r"), agent(&b, "gw-b1", "b-r")];
    let config = format!("protect_max_secs = 4\n{}", CONFIG.replace("= 3", "= 1"));
    let r = RouterProc::start_registries("127.0.0.1:0", &[("a", &a), ("b", &b)], &config, &[]);
    wait_until(Duration::from_secs(30), "both DCs' nodes", || {
        ids_now(&r, "/gateways?region=b-r&count=2") == ["gw-b1", "gw-a1"]
    });
    b.stop();
    let died = Instant::now();
    wait_until(Duration::from_secs(30), "DC B demoted", || {
        ids_now(&r, "/gateways?region=b-r&count=2") == ["gw-a1", "gw-b1"]
    });
    wait_until(Duration::from_secs(30), "DC B dropped", || {
        ids_now(&r, "/gateways?region=b-r&count=2") == ["gw-a1"]
    });
    assert!(
        died.elapsed() >= Duration::from_secs(4),
        "{:?}",
        died.elapsed()
    );
    let (_, m) = harness::http_get(r.addr, "/metrics").unwrap();
    assert!(
        m.contains("router_registry_demoted{registry=\"b\"} 2"),
        "{m}"
    );
}
