//! Starting and ending each fault on the fleet, and how long each took to recover
//! from. etcd's faults: a member killed, a member or the leader cut off from its peers,
//! the space quota filled.

use std::process::{Command, Output, Stdio};
use std::time::Instant;

use crate::fleet::{tail, wait_for, Fleet};
use crate::schedule::Fault;
use crate::world::NodeState;
use crate::{node_id, DRAIN_BOUND, MEMBERS, RESTART_BOUND};

/// One blob of the fill: under etcd's request limit (1.5 MiB).
const BLOB: usize = 1_000_000;

/// Starts `fault`; false when it could not be (the reason is recorded).
pub(crate) fn start(fleet: &mut Fleet, fault: Fault) -> bool {
    let now = Instant::now();
    if let (Some(storm), Some(k)) = (&mut fleet.storm, fault.node()) {
        storm.disturbed.insert(k);
    }
    match fault {
        Fault::MemberKill(i) => {
            fleet.lab.stop_member(i);
            fleet.member_out = Some(i);
        }
        Fault::MemberPartition(i) => {
            fleet.lab.cut_peers(i);
            fleet.member_out = Some(i);
        }
        Fault::LeaderCut => {
            let all: Vec<usize> = (0..MEMBERS).collect();
            let mut leader = None;
            wait_for(RESTART_BOUND, || {
                leader = fleet.lab.leader_seen_by(&all);
                leader.is_some()
            });
            let Some(i) = leader else {
                fleet
                    .world
                    .violation("the members agree on no leader".to_string());
                return false;
            };
            eprintln!("  leader is m{i}");
            fleet.lab.cut_peers(i);
            fleet.member_out = Some(i);
        }
        Fault::NoSpace => return fill(fleet),
        Fault::RouterKill(j) => fleet.kill_router(j),
        Fault::AgentFreeze(k) => {
            fleet.signal_agent(k, "STOP");
            fleet.world.set(k, NodeState::Gone(now));
        }
        Fault::AgentKill(k) => {
            fleet.signal_agent(k, "KILL");
            fleet.world.set(k, NodeState::Gone(now));
        }
        Fault::ClockJump(k, offset) => {
            // A crash and a start with the clock off: the node is there all along.
            fleet.signal_agent(k, "KILL");
            fleet.start_agent(k, Some(offset));
            fleet.world.set(k, NodeState::Up(now));
        }
        Fault::Drain(k) => {
            fleet.command(k, "drain", &[]);
            // The grace runs from when the record says draining: what routers follow.
            let key = format!("{}/nodes/{}", harness::P, node_id(k));
            if !wait_for(DRAIN_BOUND, || {
                fleet.get(&key).is_some_and(|v| v.contains("\"draining\""))
            }) {
                fleet.world.violation(format!(
                    "{} applied its drain but its record does not say draining",
                    node_id(k)
                ));
            }
            fleet.world.set(k, NodeState::Drained(Instant::now()));
        }
        Fault::Storm => crate::storm::start(fleet),
        Fault::Migrate(k, percent) => {
            let started = Instant::now();
            if fleet
                .command(k, "migrate", &["--percent", &percent.to_string()])
                .is_some()
            {
                fleet.world.recovered(fault.kind(), started.elapsed());
            }
        }
    }
    true
}

/// Ends `fault`, measuring its recovery where the fleet can see it whole again.
pub(crate) fn end(fleet: &mut Fleet, fault: Fault) {
    let kind = fault.kind();
    let now = Instant::now();
    match fault {
        Fault::MemberKill(i) | Fault::MemberPartition(i) => {
            if let Fault::MemberKill(_) = fault {
                fleet.lab.start_member(i);
            } else {
                fleet.lab.heal_peers(i);
            }
            member_back(fleet, i, kind, now);
        }
        Fault::LeaderCut => {
            if let Some(i) = fleet.member_out {
                fleet.lab.heal_peers(i);
                member_back(fleet, i, kind, now);
            }
        }
        Fault::NoSpace => free_space(fleet),
        Fault::RouterKill(j) => {
            let took = fleet.start_router(j);
            fleet.world.recovered(kind, took);
        }
        Fault::AgentFreeze(k) => {
            fleet.signal_agent(k, "CONT");
            up_again(fleet, k, kind);
        }
        Fault::AgentKill(k) | Fault::ClockJump(k, _) => {
            fleet.signal_agent(k, "KILL");
            fleet.start_agent(k, None);
            up_again(fleet, k, kind);
        }
        Fault::Drain(k) => {
            // Serving from the moment the command is issued: a router may answer the
            // node as soon as its agent applies it.
            up_again(fleet, k, kind);
            fleet.command(k, "serve", &[]);
        }
        Fault::Migrate(..) => {}
        Fault::Storm => crate::storm::end(fleet),
    }
}

fn up_again(fleet: &Fleet, k: usize, kind: &'static str) {
    fleet.world.set(k, NodeState::Up(Instant::now()));
    fleet.world.await_answered(k, kind);
}

/// Member `i` is back: healthy within the bound; records how long from `since`.
fn member_back(fleet: &mut Fleet, i: usize, kind: &'static str, since: Instant) {
    if wait_for(RESTART_BOUND, || fleet.lab.member_healthy(i)) {
        fleet.world.recovered(kind, since.elapsed());
    } else {
        fleet.world.violation(format!(
            "etcd member m{i} not healthy {RESTART_BOUND:?} after the {kind} ended:\n{}",
            fleet.lab.logs()
        ));
    }
    fleet.member_out = None;
}

/// `etcdctl` from the test's namespace against every member, `input` on its stdin.
fn etcdctl(fleet: &Fleet, args: &[&str], input: Option<&[u8]>) -> Output {
    use std::io::Write;
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &fleet.lab.endpoints(),
            "--command-timeout=5s",
        ])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run etcdctl");
    let mut stdin = child.stdin.take().unwrap();
    if let Some(bytes) = input {
        let _ = stdin.write_all(bytes);
    }
    drop(stdin);
    child.wait_with_output().expect("etcdctl output")
}

/// Fills etcd until it refuses a write: the NOSPACE alarm.
fn fill(fleet: &Fleet) -> bool {
    let blob = vec![b'x'; BLOB];
    for n in 0..64 {
        let out = etcdctl(fleet, &["put", &format!("/chaos/fill/{n}")], Some(&blob));
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if !err.contains("database space exceeded") {
                fleet
                    .world
                    .violation(format!("filling etcd failed otherwise: {}", tail(&err, 3)));
                return false;
            }
            let alarms = etcdctl(fleet, &["alarm", "list"], None);
            let listed = String::from_utf8_lossy(&alarms.stdout).contains("NOSPACE");
            if !listed {
                fleet
                    .world
                    .violation("etcd refuses writes but lists no NOSPACE alarm".into());
            }
            eprintln!("  etcd full after {} MB: NOSPACE", n + 1);
            return listed;
        }
    }
    fleet
        .world
        .violation("etcd took 64 MB without reaching its quota".into());
    false
}

/// What an operator does about NOSPACE: delete, compact, defragment, disarm. Writes
/// resume: recovery is the time until a write succeeds again.
fn free_space(fleet: &Fleet) {
    let started = Instant::now();
    let out = etcdctl(fleet, &["del", "/chaos/fill/", "--prefix"], None);
    if !out.status.success() {
        fleet.world.violation(format!(
            "deleting the fill failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let status = etcdctl(fleet, &["endpoint", "status", "-w", "json"], None);
    let revision = serde_json::from_slice::<serde_json::Value>(&status.stdout)
        .ok()
        .and_then(|v| v[0]["Status"]["header"]["revision"].as_i64())
        .unwrap_or(0);
    for args in [
        vec!["compaction".to_string(), revision.to_string()],
        vec!["defrag".into()],
        vec!["alarm".into(), "disarm".into()],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = etcdctl(fleet, &args, None);
        if !out.status.success() {
            fleet.world.violation(format!(
                "etcdctl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    let writes = wait_for(RESTART_BOUND, || {
        etcdctl(fleet, &["put", "/chaos/probe", "ok"], None)
            .status
            .success()
    });
    if writes {
        fleet.world.recovered("nospace", started.elapsed());
    } else {
        fleet.world.violation(format!(
            "etcd refuses writes {RESTART_BOUND:?} after NOSPACE was cleared"
        ));
    }
}
