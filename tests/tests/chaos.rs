//! Faults on top of each other, drawn from a seed, with the product's promises checked
//! the whole time. Real binaries: a 3-member etcd, two routers, six agents, and a
//! client that asks the routers the way the SDK does (one, then the other). The
//! schedule kills and restarts etcd members, SIGKILLs and restarts routers mid-stream,
//! freezes agents past their lease (SIGSTOP, SIGCONT), kills and restarts agents, and
//! drains and serves nodes while the rest goes on. At most one etcd member and one
//! router are down at a time (the quorum and the failover the product promises to
//! survive); faults otherwise overlap freely.
//!
//! Invariants, with the faults in force named when one breaks:
//! * **no client stranded**: every round, one of the routers answers 200 with gateways;
//! * **no answer names a node that is gone**: killed or frozen longer than its TTL plus
//!   [`GONE_BOUND`], or draining (its record says so) longer than [`DRAIN_BOUND`]; and
//!   an agent applies a drain within [`APPLY_BOUND`];
//! * **no live node lost**: a node serving undisturbed for [`SETTLE`] is in the answers
//!   again within [`SETTLE`];
//! * **bounded**: each router's memory and open files at the end.
//!
//! The seed is printed first; `CHAOS_SEED=N` replays a run, `CHAOS_STEPS=N` lengthens it
//! (each step is [`STEP`]; the default 20 steps take about a minute).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::{free_port, get_json, router_ctl, Etcd, Proc, RouterProc, P};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const AGENTS: usize = 6;
const ROUTERS: usize = 2;
/// The agents' lease TTL.
const TTL: Duration = Duration::from_secs(3);
/// How long after its lease ends a gone node may still be answered: the lease's expiry
/// reaching the routers' watch, and a watch that was failing over meanwhile.
const GONE_BOUND: Duration = Duration::from_secs(4);
/// How long after its record says draining a drained node may still be answered.
const DRAIN_BOUND: Duration = Duration::from_secs(2);
/// How long an agent may take to apply a drain (command to record).
const APPLY_BOUND: Duration = Duration::from_secs(10);
/// A node undisturbed this long must be answered again within this long.
const SETTLE: Duration = Duration::from_secs(8);
const STEP: Duration = Duration::from_secs(3);

/// One fault, as the schedule draws it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    EtcdMemberKill(usize),
    RouterKill(usize),
    AgentFreeze(usize),
    AgentKill(usize),
    Drain(usize),
}

/// The schedule: per step, the fault that starts then and how many steps it lasts.
fn schedule(seed: u64, steps: usize) -> Vec<(Fault, usize)> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..steps)
        .map(|_| {
            let fault = match rng.random_range(0..5) {
                0 => Fault::EtcdMemberKill(rng.random_range(0..3)),
                1 => Fault::RouterKill(rng.random_range(0..ROUTERS)),
                2 => Fault::AgentFreeze(rng.random_range(0..AGENTS)),
                3 => Fault::AgentKill(rng.random_range(0..AGENTS)),
                _ => Fault::Drain(rng.random_range(0..AGENTS)),
            };
            (fault, rng.random_range(1..=2))
        })
        .collect()
}

/// What each node is doing, as the schedule made it, for the invariants.
#[derive(Debug, Clone, Copy)]
enum NodeState {
    /// Serving since then (started, restarted, thawed or served again).
    Up(Instant),
    /// Its agent killed or frozen then: gone once its lease has ended.
    Gone(Instant),
    /// Drained when `ctl drain` returned.
    Drained(Instant),
}

/// Everything the client thread checks against, shared with the schedule.
struct World {
    routers: Mutex<Vec<Option<SocketAddr>>>,
    nodes: Mutex<Vec<NodeState>>,
    /// The faults in force, for the report.
    in_force: Mutex<Vec<Fault>>,
    /// When each node was last seen in an answer.
    seen: Mutex<Vec<Option<Instant>>>,
    violations: Mutex<Vec<String>>,
    stop: AtomicBool,
}

impl World {
    fn violation(&self, what: String) {
        let faults = self.in_force.lock().unwrap().clone();
        self.violations
            .lock()
            .unwrap()
            .push(format!("{what} (faults in force: {faults:?})"));
    }
}

fn node_id(k: usize) -> String {
    format!("gw-{k}")
}

fn start_agent(etcd: &Etcd, k: usize, port: u16) -> Proc {
    let load = format!("static:{}", 10 * (k + 1));
    let ttl = TTL.as_secs().to_string();
    let tcp = format!("tcp={port}");
    Proc::agent(
        etcd,
        &node_id(k),
        "r",
        &[
            "--port",
            &tcp,
            "--load",
            &load,
            "--ttl",
            &ttl,
            "--report-min-change",
            "0",
        ],
    )
}

fn start_router(etcd: &Etcd, j: usize) -> RouterProc {
    RouterProc::start(etcd, "", &["--router-id", &format!("r{j}")])
}

/// The client: asks the routers in turn, as the SDK does, and checks each answer.
fn client(world: Arc<World>) {
    while !world.stop.load(Ordering::Relaxed) {
        let routers: Vec<SocketAddr> = world
            .routers
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .copied()
            .collect();
        let now = Instant::now();
        let answer = routers
            .iter()
            .find_map(|&addr| match get_json(addr, "/gateways?count=10") {
                Some((200, v)) => Some(v),
                _ => None,
            });
        let Some(v) = answer else {
            world.violation(format!("no router answered 200 (routers {routers:?})"));
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        let ids: Vec<String> = v["gateways"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g["id"].as_str().map(str::to_string))
            .collect();
        if ids.is_empty() {
            world.violation(format!("an answer without gateways: {v}"));
        }
        let nodes = world.nodes.lock().unwrap().clone();
        let mut seen = world.seen.lock().unwrap();
        for (k, state) in nodes.iter().enumerate() {
            let answered = ids.contains(&node_id(k));
            if answered {
                seen[k] = Some(now);
            }
            match *state {
                NodeState::Gone(at) if answered && now > at + TTL + GONE_BOUND => world.violation(
                    format!("{} answered {:?} after it was gone", node_id(k), now - at),
                ),
                NodeState::Drained(at) if answered && now > at + DRAIN_BOUND => world.violation(
                    format!("{} answered {:?} after its drain", node_id(k), now - at),
                ),
                NodeState::Up(since) if now > since + SETTLE => {
                    let last = seen[k].unwrap_or(since).max(since);
                    if now > last + SETTLE {
                        world.violation(format!(
                            "{} serving since {:?} ago is missing from answers for {:?}",
                            node_id(k),
                            now - since,
                            now - last
                        ));
                        seen[k] = Some(now);
                    }
                }
                _ => {}
            }
        }
        drop(seen);
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The resources a router holds: (resident KiB, open files).
fn resources(pid: u32) -> (u64, usize) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (harness::rss_kib(pid), fds)
}

#[test]
fn faults_on_top_of_each_other_keep_every_promise() {
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let steps: usize = std::env::var("CHAOS_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let plan = schedule(seed, steps);
    eprintln!("chaos seed {seed} ({steps} steps; replay with CHAOS_SEED={seed})");
    eprintln!("schedule: {plan:?}");

    let mut etcd = Etcd::cluster(3);
    let ports: Vec<u16> = (0..AGENTS).map(|_| free_port()).collect();
    let mut agents: Vec<Proc> = (0..AGENTS)
        .map(|k| start_agent(&etcd, k, ports[k]))
        .collect();
    let mut routers: Vec<Option<RouterProc>> =
        (0..ROUTERS).map(|j| Some(start_router(&etcd, j))).collect();
    let t0 = Instant::now();
    let world = Arc::new(World {
        routers: Mutex::new(routers.iter().map(|r| r.as_ref().map(|r| r.addr)).collect()),
        nodes: Mutex::new(vec![NodeState::Up(t0); AGENTS]),
        in_force: Mutex::new(Vec::new()),
        seen: Mutex::new(vec![None; AGENTS]),
        violations: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
    });
    harness::wait_until(Duration::from_secs(20), "every node answered", || {
        let addr = routers[0].as_ref().unwrap().addr;
        get_json(addr, "/gateways?count=10").is_some_and(|(s, v)| {
            s == 200 && v["gateways"].as_array().is_some_and(|a| a.len() == AGENTS)
        })
    });
    let checker = {
        let world = world.clone();
        std::thread::spawn(move || client(world))
    };

    // Faults in force, with the step they end at.
    let mut active: Vec<(Fault, usize)> = Vec::new();
    let mut frozen_until: BTreeMap<usize, usize> = BTreeMap::new();
    for (step, &(fault, lasts)) in plan.iter().enumerate() {
        // End the faults due now.
        let (ending, going_on): (Vec<_>, Vec<_>) =
            active.into_iter().partition(|&(_, end)| end <= step);
        active = going_on;
        for (f, _) in ending {
            undo(f, &mut etcd, &mut routers, &mut agents, &ports, &world);
        }
        frozen_until.retain(|_, end| *end > step);
        // Start this step's fault unless it would break the stated limits.
        let clashes = active.iter().any(|&(a, _)| match (a, fault) {
            (Fault::EtcdMemberKill(_), Fault::EtcdMemberKill(_)) => true,
            (Fault::RouterKill(_), Fault::RouterKill(_)) => true,
            (
                Fault::AgentFreeze(x) | Fault::AgentKill(x) | Fault::Drain(x),
                Fault::AgentFreeze(y) | Fault::AgentKill(y) | Fault::Drain(y),
            ) => x == y,
            _ => false,
        });
        if !clashes {
            apply(fault, &mut etcd, &mut routers, &mut agents, &world);
            active.push((fault, step + lasts));
        }
        *world.in_force.lock().unwrap() = active.iter().map(|&(f, _)| f).collect();
        std::thread::sleep(STEP);
    }
    for (f, _) in std::mem::take(&mut active) {
        undo(f, &mut etcd, &mut routers, &mut agents, &ports, &world);
    }
    world.in_force.lock().unwrap().clear();
    // Everything back: every node is answered again within SETTLE.
    std::thread::sleep(SETTLE + STEP);
    world.stop.store(true, Ordering::Relaxed);
    checker.join().unwrap();

    for r in routers.iter().flatten() {
        let (rss_kib, fds) = resources(r.proc.pid());
        if rss_kib > 256 * 1024 || fds > 512 {
            world.violation(format!(
                "router {} holds {rss_kib} KiB and {fds} open files",
                r.addr
            ));
        }
    }
    let violations = world.violations.lock().unwrap();
    assert!(
        violations.is_empty(),
        "chaos seed {seed}: {} violations after {:?}:\n{}\nschedule: {plan:?}\nreplay with CHAOS_SEED={seed}",
        violations.len(),
        t0.elapsed(),
        violations.join("\n")
    );
}

fn apply(
    fault: Fault,
    etcd: &mut Etcd,
    routers: &mut [Option<RouterProc>],
    agents: &mut [Proc],
    world: &World,
) {
    match fault {
        Fault::EtcdMemberKill(i) => etcd.stop_member(i),
        Fault::RouterKill(j) => {
            world.routers.lock().unwrap()[j] = None;
            if let Some(r) = routers[j].take() {
                r.proc.signal("KILL");
            }
        }
        Fault::AgentFreeze(k) => {
            agents[k].signal("STOP");
            world.nodes.lock().unwrap()[k] = NodeState::Gone(Instant::now());
        }
        Fault::AgentKill(k) => {
            agents[k].signal("KILL");
            world.nodes.lock().unwrap()[k] = NodeState::Gone(Instant::now());
        }
        Fault::Drain(k) => {
            let (code, out) = router_ctl(etcd, &["drain", &node_id(k)]);
            assert_eq!(code, 0, "ctl drain: {out}");
            // The bound runs from when the node's record says draining: what the
            // routers follow (the agent applies the command first, on its own time).
            let key = format!("{P}/nodes/{}", node_id(k));
            let deadline = Instant::now() + APPLY_BOUND;
            while !etcd.get(&key).is_some_and(|v| v.contains("\"draining\"")) {
                if Instant::now() > deadline {
                    world.violation(format!(
                        "{} not draining {APPLY_BOUND:?} after ctl drain",
                        node_id(k)
                    ));
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            world.nodes.lock().unwrap()[k] = NodeState::Drained(Instant::now());
        }
    }
}

fn undo(
    fault: Fault,
    etcd: &mut Etcd,
    routers: &mut [Option<RouterProc>],
    agents: &mut [Proc],
    ports: &[u16],
    world: &World,
) {
    match fault {
        Fault::EtcdMemberKill(_) => etcd.start_again(),
        Fault::RouterKill(j) => {
            let r = start_router(etcd, j);
            world.routers.lock().unwrap()[j] = Some(r.addr);
            routers[j] = Some(r);
        }
        Fault::AgentFreeze(k) => {
            agents[k].signal("CONT");
            world.nodes.lock().unwrap()[k] = NodeState::Up(Instant::now());
        }
        Fault::AgentKill(k) => {
            agents[k] = start_agent(etcd, k, ports[k]);
            world.nodes.lock().unwrap()[k] = NodeState::Up(Instant::now());
        }
        Fault::Drain(k) => {
            let (code, out) = router_ctl(etcd, &["serve", &node_id(k)]);
            assert_eq!(code, 0, "ctl serve: {out}");
            world.nodes.lock().unwrap()[k] = NodeState::Up(Instant::now());
        }
    }
}
