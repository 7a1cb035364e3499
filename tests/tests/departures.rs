//! Nodes that leave: a rolling restart of real agents (SIGTERM) is a planned departure.
//! The router must not take it for a mass failure (protect), and must never send a
//! client to a node that has stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::{gateway_ids, get_json, has_sample, http_get, wait_until, Etcd, Proc, RouterProc, P};

/// One answer seen by the poller: when its request started, the ids, `stale`.
type Seen = (Instant, Vec<String>, bool);

#[test]
fn a_rolling_restart_of_two_thirds_of_a_fleet_is_not_a_failure() {
    let etcd = Etcd::start();
    // The nodes that will stop are the least loaded: were they ever served after
    // stopping, they would come first.
    let mut agents: Vec<(String, Proc)> = (0..6)
        .map(|i| {
            let id = format!("ra{i}");
            let load = if i < 4 { "static:0" } else { "static:300" };
            let p = Proc::agent(&etcd, &id, "r", &["--port", "tcp=7000", "--load", load]);
            (id, p)
        })
        .collect();
    wait_until(Duration::from_secs(15), "six nodes registered", || {
        etcd.keys(&format!("{P}/nodes/")).len() == 6
    });
    let r = RouterProc::start(&etcd, "", &[]);
    wait_until(Duration::from_secs(10), "six nodes served", || {
        gateway_ids(&r.answer("/gateways?count=10")).len() == 6
    });

    // A client polling throughout.
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (seen, stop, addr) = (seen.clone(), stop.clone(), r.addr);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                if let Some((200, body)) = get_json(addr, "/gateways?count=10") {
                    let stale = body["stale"] == true;
                    seen.lock()
                        .unwrap()
                        .push((start, gateway_ids(&body), stale));
                }
            }
        })
    };

    // The rolling restart: SIGTERM to four of six, 0.5 s apart.
    let mut stopped: Vec<(String, Instant)> = Vec::new();
    for (id, agent) in agents.iter_mut().take(4) {
        agent.signal("TERM");
        assert!(agent.wait_exit(Duration::from_secs(10)).success());
        stopped.push((id.clone(), Instant::now()));
        std::thread::sleep(Duration::from_millis(500));
    }
    // Until the poller has seen the fleet settle after the last stop.
    let last = stopped.last().unwrap().1;
    wait_until(Duration::from_secs(10), "answers after the roll", || {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|(at, _, _)| *at > last)
            .count()
            >= 20
    });
    stop.store(true, Ordering::Relaxed);
    poller.join().unwrap();

    let seen = seen.lock().unwrap();
    assert!(seen.len() > 50, "the poller got {} answers", seen.len());
    // The survivors, as far as the router's herd accounting still offers them under
    // the poller's own load (each answer counts against its first node).
    let (_, after, _) = seen.last().unwrap();
    assert!(
        !after.is_empty() && after.iter().all(|id| id == "ra4" || id == "ra5"),
        "only the two nodes left running: {after:?}"
    );
    for (at, ids, stale) in seen.iter() {
        assert!(!stale, "protect engaged (stale answer {ids:?})");
        for (id, exited) in &stopped {
            assert!(
                !(at > exited && ids.contains(id)),
                "{id} named {:?} after it stopped: {ids:?}",
                at.duration_since(*exited)
            );
        }
    }
    let (_, metrics) = http_get(r.addr, "/metrics").unwrap();
    assert!(has_sample(&metrics, "router_protect_active 0"), "{metrics}");
    assert!(
        has_sample(&metrics, "router_protect_engaged_total 0"),
        "{metrics}"
    );
    assert!(!r.proc.output().contains("ALARM"), "{}", r.proc.output());
}
