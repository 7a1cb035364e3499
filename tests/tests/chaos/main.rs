//! Faults on top of each other, drawn from a seed, with the product's promises checked
//! the whole time. Real parts: a 3-member etcd in network namespaces of its own
//! (`harness::netns`, reached from the test's namespace through one link), three
//! routers, ten agents with real TCP gateways and a hook that hears their migrate
//! signals, an HTTP client that asks the routers in turn, and clients through the SDK over HTTPS
//! that connect to gateways and move between them on fresh answers.
//!
//! The schedule ([`schedule`]) kills and restarts etcd members, cuts a member or the
//! current leader off from its peers (its client port still answering) and heals it,
//! fills etcd past its quota (NOSPACE) and frees it, SIGKILLs and restarts routers
//! mid-stream, freezes agents past their lease (SIGSTOP, SIGCONT), kills and restarts
//! agents, restarts agents with their clock off (libfaketime), issues drains, serves
//! and migrations, and sends storms of clients while the rest goes on. One etcd fault at a time (a majority
//! is always up and joined) and one router down at a time (the failover the product
//! promises to survive); the rest overlap freely. What would write to etcd waits while
//! it is full.
//!
//! Invariants, each violation naming when and the faults in force:
//! * **no client stranded**: every round, a router answers 200 with gateways, and no SDK
//!   call fails (the SDK goes on to another router);
//! * **no answer names a node that is gone**: killed or frozen longer than its TTL plus
//!   [`GONE_BOUND`], or draining longer than [`DRAIN_BOUND`];
//! * **no live node lost**: a node serving is in the answers again within
//!   [`MISSING_BOUND`] (its TTL plus 5 s), while a majority of etcd exists;
//! * **every command applied exactly once**: applied (and its migrate signal delivered)
//!   within [`APPLY_BOUND`], one `command applied` across the agent's lives, one
//!   delivery of its signal;
//! * **writes resume** after NOSPACE is cleared, members and routers come back within
//!   [`RESTART_BOUND`];
//! * **bounded**: every router's and agent's memory and open files, sampled each step;
//! * **storms land evenly**: a storm ([`storm`]) of clients that connect and stay,
//!   started on top of the other faults, leaves the nodes nothing disturbed meanwhile
//!   within [`storm::MAX_OVER_MEAN`] of even by their real connections, none at
//!   `max_load`.
//!
//! The seed and the schedule are printed first; `CHAOS_SEED=N` replays a run,
//! `CHAOS_STEPS=N` sets its length in steps of [`STEP`] (25 by default, about two
//! minutes in all), `CHAOS_MINUTES=N` in minutes (the long mode). The end prints the
//! faults injected, the answers checked and the worst recovery by fault kind.

mod faults;
mod fleet;
mod schedule;
mod sdk;
mod storm;
mod world;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use harness::netns::Lab;

use fleet::Fleet;
use schedule::{Fault, KINDS};

pub(crate) const MEMBERS: usize = 3;
pub(crate) const ROUTERS: usize = 3;
/// As many as one answer holds (`count` is at most 10), so that every live node is in
/// every answer.
pub(crate) const AGENTS: usize = 10;
/// The agents' lease TTL.
pub(crate) const TTL: Duration = Duration::from_secs(3);
/// How long after its lease ends a gone node may still be answered: the lease's expiry
/// reaching the routers' watch, and a watch that was failing over meanwhile.
pub(crate) const GONE_BOUND: Duration = Duration::from_secs(4);
/// How long after its record says draining a drained node may still be answered.
pub(crate) const DRAIN_BOUND: Duration = Duration::from_secs(2);
/// How long an agent may take to apply a command and deliver its signal.
pub(crate) const APPLY_BOUND: Duration = Duration::from_secs(10);
/// How long a serving node may be missing from the answers: its TTL (a lease lost to
/// a member cut off under it) plus 5 s (an election, a new lease, the watch).
pub(crate) const MISSING_BOUND: Duration = Duration::from_secs(8);
/// How long a restarted router or etcd member, or an etcd freed of NOSPACE, may take
/// to serve again.
pub(crate) const RESTART_BOUND: Duration = Duration::from_secs(20);
const STEP: Duration = Duration::from_secs(3);
/// The etcd quota: the fill reaches it in a few writes, and a long run's own history
/// stays well under it between two NOSPACE faults.
const QUOTA: &str = "8388608";
/// Resident memory (KiB) and open files a router or an agent may hold.
const ROUTER_LIMITS: (u64, usize) = (256 * 1024, 512);
const AGENT_LIMITS: (u64, usize) = (128 * 1024, 256);

pub(crate) fn node_id(k: usize) -> String {
    format!("gw-{k}")
}

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

#[test]
fn faults_on_top_of_each_other_keep_every_promise() {
    let seed = env("CHAOS_SEED").unwrap_or_else(rand::random);
    let steps = match (env("CHAOS_MINUTES"), env("CHAOS_STEPS")) {
        (Some(m), _) => (m * 60 / STEP.as_secs()) as usize,
        (None, Some(s)) => s as usize,
        (None, None) => 25,
    };
    let plan = schedule::schedule(seed, steps);
    eprintln!("chaos seed {seed} ({steps} steps of {STEP:?}; replay with CHAOS_SEED={seed})");
    for (step, (fault, lasts)) in plan.iter().enumerate() {
        eprintln!("  schedule {step:>4}: {fault:?} for {lasts} step(s)");
    }

    // The lab's own addresses (10.77.71.x, 10.77.72.x): apart from other tests' labs.
    let lab = Lab::with_flags(MEMBERS, 7, &["--quota-backend-bytes", QUOTA]);
    lab.attach_host();
    let mut fleet = Fleet::start(lab);
    assert!(
        fleet.wait_whole(Duration::from_secs(30)),
        "every router answers every node at the start"
    );
    let world = fleet.world.clone();
    let clients = [
        std::thread::spawn({
            let world = world.clone();
            move || world::http_client(world)
        }),
        std::thread::spawn({
            let (world, port, ca) = (world.clone(), fleet.https_port, fleet.ca.pem());
            move || sdk::sdk_clients(world, port, ca)
        }),
    ];

    let t0 = world.t0;
    // To line the logs' wall-clock times up with the run's seconds.
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        - t0.elapsed().as_secs_f64();
    eprintln!("chaos t0: {wall:.1} s since the epoch (UTC)");
    let mut worst_use: BTreeMap<String, (u64, usize)> = BTreeMap::new();
    let mut active: Vec<(Fault, usize)> = Vec::new();
    for (step, &(fault, lasts)) in plan.iter().enumerate() {
        let began = Instant::now();
        end_due(&mut fleet, &mut active, step);
        let clash = active.iter().find(|(a, _)| fault.clashes(a));
        let started = match clash {
            Some((a, _)) => {
                eprintln!(
                    "step {step} [{:.1}s]: {fault:?} not started ({a:?} in force)",
                    secs(t0)
                );
                false
            }
            None => {
                eprintln!("step {step} [{:.1}s]: {fault:?} for {lasts}", secs(t0));
                faults::start(&mut fleet, fault)
            }
        };
        if started {
            world.injected(fault.kind());
            active.push((fault, step + lasts));
        }
        *world.in_force.lock().unwrap() = active.iter().map(|&(f, _)| f).collect();
        for (name, rss, fds) in fleet.resources() {
            let w = worst_use.entry(name).or_default();
            *w = (w.0.max(rss), w.1.max(fds));
        }
        std::thread::sleep(STEP.saturating_sub(began.elapsed()));
    }
    end_due(&mut fleet, &mut active, usize::MAX);
    world.in_force.lock().unwrap().clear();
    // Everything back: every router answers every node, and stays so a while.
    if !fleet.wait_whole(MISSING_BOUND) {
        world.violation(format!(
            "not every node answered by every router {MISSING_BOUND:?} after the last fault"
        ));
    }
    std::thread::sleep(STEP);
    world.stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    fleet.check_commands();
    for (name, (rss, fds)) in &worst_use {
        let (max_rss, max_fds) = if name.starts_with("router") {
            ROUTER_LIMITS
        } else {
            AGENT_LIMITS
        };
        world.checks.fetch_add(1, Ordering::Relaxed);
        if *rss > max_rss || *fds > max_fds {
            world.violation(format!("{name} held {rss} KiB and {fds} open files"));
        }
    }
    summary(&fleet, seed, t0.elapsed(), &worst_use);
    let violations = world.violations();
    // The agents' and routers' own account of what a violation names, to tell what
    // happened.
    let named = |what: &str| violations.iter().any(|v| v.contains(what));
    for k in 0..AGENTS {
        let id = node_id(k);
        if named(&format!("{id} ")) || named(&format!("\"{id}\"")) {
            print_notable(&format!("{id}'s agents"), &fleet.agent_log(k));
        }
    }
    for j in 0..ROUTERS {
        if named(&format!(
            "router {}",
            fleet::router_addr(j, fleet.router_port)
        )) {
            print_notable(&format!("router r{j}"), &fleet.router_log(j));
        }
    }
    assert!(
        violations.is_empty(),
        "chaos seed {seed}: {} violations:\n{}\nreplay with CHAOS_SEED={seed}",
        violations.len(),
        violations.join("\n")
    );
}

/// Prints `whose` log's warnings, errors and lease and endpoint events, the last 40.
fn print_notable(whose: &str, log: &str) {
    let notable: Vec<&str> = log
        .lines()
        .filter(|l| {
            ["WARN", "ERROR", "lease", "endpoint", "watch"]
                .iter()
                .any(|m| l.contains(m))
        })
        .collect();
    eprintln!(
        "{whose}: warnings, lease and endpoint events (last 40 of {}):\n{}",
        notable.len(),
        notable[notable.len().saturating_sub(40)..].join("\n")
    );
}

fn secs(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64()
}

/// Ends the faults due at `step`: NOSPACE first, and what would write to etcd while it
/// is still full is held over a step.
fn end_due(fleet: &mut Fleet, active: &mut Vec<(Fault, usize)>, step: usize) {
    let (mut due, rest): (Vec<_>, Vec<_>) = active.drain(..).partition(|&(_, end)| end <= step);
    *active = rest;
    due.sort_by_key(|(f, _)| *f != Fault::NoSpace);
    for (f, end) in due {
        let full = active.iter().any(|(a, _)| *a == Fault::NoSpace);
        if full && f.ends_with_a_write() && step != usize::MAX {
            active.push((f, end + 1));
            continue;
        }
        eprintln!("  end {f:?}");
        faults::end(fleet, f);
    }
}

fn summary(fleet: &Fleet, seed: u64, took: Duration, worst_use: &BTreeMap<String, (u64, usize)>) {
    let world = &fleet.world;
    let figures = world.figures.lock().unwrap();
    let violations = world.violations().len();
    let mut out = format!(
        "chaos summary: seed {seed}, {:.0} s, {} answers checked ({} SDK connections), {} invariant checks, {} violations, {} commands\n",
        took.as_secs_f64(),
        world.answers.load(Ordering::Relaxed),
        world.sdk_connects.load(Ordering::Relaxed),
        world.checks.load(Ordering::Relaxed),
        violations,
        fleet.issued.len(),
    );
    out.push_str("| fault | injected | worst recovery |\n|---|---|---|\n");
    for kind in KINDS {
        let n = figures.injected.get(kind).copied().unwrap_or(0);
        let worst = figures
            .worst
            .get(kind)
            .map(|d| format!("{:.2} s", d.as_secs_f64()))
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!("| {kind} | {n} | {worst} |\n"));
    }
    let peak = |p: &str| {
        worst_use
            .iter()
            .filter(|(n, _)| n.starts_with(p))
            .fold((0, 0), |a, (_, &(r, f))| (a.0.max(r), a.1.max(f)))
    };
    let (rr, rf) = peak("router");
    let (ar, af) = peak("agent");
    let ((storms, worst), (unjudged, unjudged_worst)) = (figures.storms, figures.unjudged);
    out.push_str(&format!(
        "storms judged: {storms}, worst max/mean {worst:.3} (bound {}); started before the loads were known: {unjudged}, worst {unjudged_worst:.3}\n",
        storm::MAX_OVER_MEAN
    ));
    out.push_str(&format!(
        "peak: router {} MiB, {rf} files; agent {} MiB, {af} files\n",
        rr / 1024,
        ar / 1024
    ));
    eprintln!("{out}");
}
