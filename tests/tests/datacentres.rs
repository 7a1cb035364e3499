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
    _agents: Vec<Proc>,
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
    let a = Etcd::start();
    let b = Etcd::cluster(3);
    let agents = vec![
        agent(&a, "gw-a1", "a-r"),
        agent(&a, "gw-a2", "a-r"),
        agent(&b, "gw-b1", "b-r"),
        agent(&b, "gw-b2", "b-r"),
    ];
    let ra = RouterProc::start_registries(&[("a", &a), ("b", &b)], CONFIG, &[]);
    let rb = RouterProc::start_registries(&[("b", &b), ("a", &a)], CONFIG, &[]);
    for r in [&ra, &rb] {
        wait_until(Duration::from_secs(30), "both DCs' gateways", || {
            r.ids("/gateways?count=10").len() == 4
        });
    }
    Dcs {
        a,
        b,
        _agents: agents,
        ra,
        rb,
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
    let stop = Arc::new(AtomicBool::new(false));
    let (asked, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, asked, failed) = (stop.clone(), asked.clone(), failed.clone());
        let addr = dcs.ra.addr;
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                asked.fetch_add(1, Ordering::Relaxed);
                match harness::get_json(addr, "/gateways?region=a-r&count=2") {
                    Some((200, body)) if placed(&body).iter().all(|(_, d)| d == "a") => {}
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
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
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let (asked, failed) = (
        asked.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
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

#[test]
fn a_node_id_in_two_dcs_is_reported_by_both_routers() {
    let a = Etcd::start();
    let b = Etcd::start();
    let _agents = [
        agent(&a, "gw-dup", "a-r"),
        agent(&b, "gw-dup", "b-r"),
        agent(&b, "gw-b1", "b-r"),
    ];
    let ra = RouterProc::start_registries(&[("a", &a), ("b", &b)], CONFIG, &[]);
    let rb = RouterProc::start_registries(&[("b", &b), ("a", &a)], CONFIG, &[]);
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
