//! Storms: [`CLIENTS`] clients from [`NETWORKS`] client networks ask the routers within
//! about a second, whatever else is going on, each asking a router at random for one
//! candidate (the next router when one does not answer, as the SDK does), connecting
//! to it and holding the connection until the storm ends. Then the balance is checked
//! over the nodes nothing disturbed meanwhile: the gateways' real connection counts
//! (which their agents report) within [`MAX_OVER_MEAN`] of even, none at `max_load`.
//!
//! A storm is judged when it starts on loads the routers know: every steady node's
//! record says what its gateway holds. One that starts while the last storm's
//! departures are still unreported (etcd full, or a leader cut holding the reports
//! up, as the storm begins) is measured and printed but judged only for `max_load`:
//! the routers then take the nodes whose departures they have seen for emptier than
//! the rest, and fill them to the others' stale level first (the first 30-minute run
//! with storms measured max/mean up to 1.78 so, none at `max_load`). Routers cannot
//! know of clients that left before the reports say so.

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use harness::get_json_from;

use crate::fleet::{wait_for, Fleet, CAPACITY};
use crate::world::{NodeState, World};
use crate::{node_id, AGENTS, MISSING_BOUND};

/// Clients per storm: about half of the fleet's capacity.
pub(crate) const CLIENTS: usize = AGENTS * CAPACITY / 2;
/// The client networks a storm comes from (127.N.0.1).
const NETWORKS: usize = 100;
const THREADS: usize = 20;
/// Each thread's pause between two clients: the storm lasts about a second.
const PAUSE: Duration = Duration::from_millis(40);
/// The most a steady node may hold over the steady nodes' mean when a storm ends,
/// whatever faults were in force (a router killed mid-storm, etcd holding reports
/// up). Measured on the 2-core machine: in a 30-minute run alone, median 1.11 and at
/// most 1.25 of 81 storms that started on known loads; up to 1.30 beside `stress-ng
/// --cpu 2`, and 1.32 inside the whole suite (before the checks' phantom answers were held
/// to a network's herd budget). Everything here shares two cores, and reports slow
/// down with the machine. The storm tests, with no other fault, hold 1.10.
pub(crate) const MAX_OVER_MEAN: f64 = 1.5;
/// The routers' `max_load`: no steady node may reach it.
const MAX_LOAD: f64 = 0.95;

/// How long a storm waits for the routers to know the loads before it starts anyway
/// (then judged only for `max_load`).
const SETTLE: Duration = Duration::from_secs(2);
/// How far a node's record may be from its gateway's count and still be known: the
/// SDK clients come and go.
const KNOWN_WITHIN: usize = 2;

/// A storm under way.
pub(crate) struct Storm {
    started: Instant,
    /// It started on loads the routers knew: its balance is judged.
    judged: bool,
    /// Nodes a fault acted on while the storm lasted (or was in force when it began).
    pub(crate) disturbed: BTreeSet<usize>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    threads: Vec<JoinHandle<()>>,
}

/// Whether every node's record (of those nothing disturbs) says what its gateway
/// holds.
fn loads_known(fleet: &Fleet, disturbed: &BTreeSet<usize>) -> bool {
    (0..AGENTS).filter(|k| !disturbed.contains(k)).all(|k| {
        let held = fleet.gateways[k].held.load(Ordering::Relaxed);
        let record = fleet.get(&format!("{}/nodes/{}", harness::P, node_id(k)));
        let reported = record
            .and_then(|r| serde_json::from_str::<serde_json::Value>(&r).ok())
            .and_then(|v| v["connections"].as_u64());
        reported.is_some_and(|n| (n as usize).abs_diff(held) <= KNOWN_WITHIN)
    })
}

/// Starts a storm on the fleet, once the routers know the loads (or [`SETTLE`] on).
pub(crate) fn start(fleet: &mut Fleet) {
    let world = fleet.world.clone();
    let disturbed = world
        .in_force
        .lock()
        .unwrap()
        .iter()
        .filter_map(|f| f.node())
        .collect();
    let judged = wait_for(SETTLE, || loads_known(fleet, &disturbed));
    if !judged {
        eprintln!("  the loads are not all reported yet: this storm is judged only for max_load");
    }
    let conns = Arc::new(Mutex::new(Vec::new()));
    let next = Arc::new(AtomicUsize::new(0));
    let threads = (0..THREADS)
        .map(|t| {
            let (world, conns, next) = (world.clone(), conns.clone(), next.clone());
            std::thread::spawn(move || clients(t, &world, &conns, &next))
        })
        .collect();
    fleet.storm = Some(Storm {
        started: Instant::now(),
        judged,
        disturbed,
        conns,
        threads,
    });
}

/// One thread of a storm's clients, until [`CLIENTS`] have asked.
fn clients(t: usize, world: &World, conns: &Mutex<Vec<TcpStream>>, next: &AtomicUsize) {
    let mut rng = t as u64 * 0x9e37_79b9 + 1;
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= CLIENTS {
            return;
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let routers = world.live_routers();
        let first = rng as usize % routers.len().max(1);
        let answer = (0..routers.len()).find_map(|i| {
            let addr = routers[(first + i) % routers.len()];
            match get_json_from(
                harness::client_network(n, NETWORKS),
                addr,
                "/gateways?count=1",
            ) {
                Some((200, v)) => Some(v),
                _ => None,
            }
        });
        let Some(port) = answer.and_then(|v| v["gateways"][0]["port"].as_u64()) else {
            world.violation(format!(
                "a storm client found no router answering (routers {routers:?})"
            ));
            continue;
        };
        match TcpStream::connect(("127.0.0.1", port as u16)) {
            Ok(s) => conns.lock().unwrap().push(s),
            Err(e) => world.violation(format!(
                "a storm client could not connect to its gateway: {e}"
            )),
        }
        std::thread::sleep(PAUSE);
    }
}

/// Ends the storm: checks the balance over the steady nodes, then lets its clients go.
pub(crate) fn end(fleet: &mut Fleet) {
    let Some(storm) = fleet.storm.take() else {
        return;
    };
    for t in storm.threads {
        t.join().unwrap();
    }
    let conns = storm.conns.lock().unwrap().len();
    let held = |k: usize| fleet.gateways[k].held.load(Ordering::Relaxed);
    if !wait_for(Duration::from_secs(5), || {
        (0..AGENTS).map(held).sum::<usize>() >= conns
    }) {
        fleet.world.violation(format!(
            "the gateways did not accept the storm's {conns} clients"
        ));
    }
    let world = &fleet.world;
    let nodes = world.nodes.lock().unwrap().clone();
    let steady: Vec<usize> = (0..AGENTS)
        .filter(|k| !storm.disturbed.contains(k))
        .filter(
            |&k| matches!(nodes[k], NodeState::Up(since) if since + MISSING_BOUND < storm.started),
        )
        .filter(|&k| !world.missed_since(k, storm.started))
        .collect();
    let loads: Vec<(String, f64)> = steady
        .iter()
        .map(|&k| (node_id(k), held(k) as f64 / CAPACITY as f64))
        .collect();
    if loads.len() >= 3 {
        let mean = loads.iter().map(|(_, l)| l).sum::<f64>() / loads.len() as f64;
        let max = loads.iter().map(|(_, l)| *l).fold(0.0, f64::max);
        let ratio = max / mean;
        world.checks.fetch_add(1, Ordering::Relaxed);
        world.storm_balance(ratio, storm.judged);
        eprintln!(
            "  storm of {conns}: max/mean {ratio:.3} over {} steady nodes{}",
            loads.len(),
            if storm.judged { "" } else { " (not judged)" }
        );
        if max >= MAX_LOAD || (storm.judged && ratio > MAX_OVER_MEAN) {
            world.violation(format!(
                "a storm landed unevenly: max/mean {ratio:.3} (bound {MAX_OVER_MEAN}), loads {loads:.2?}"
            ));
        }
    } else {
        eprintln!("  storm of {conns}: too few steady nodes to judge ({steady:?})");
    }
    // The clients leave.
    storm.conns.lock().unwrap().clear();
}
