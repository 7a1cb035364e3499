//! What the run knows and checks: the state the schedule put each node in, the faults in
//! force, the violations (each naming those faults), the figures for the summary, and
//! the HTTP client that asks the routers in turn and checks every answer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::get_json;

use crate::schedule::Fault;
use crate::{node_id, AGENTS, DRAIN_BOUND, GONE_BOUND, MISSING_BOUND, TTL};

/// What a node is doing, as the schedule made it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum NodeState {
    /// Serving since then (started, restarted, thawed or served again).
    Up(Instant),
    /// Its agent killed or frozen then: gone once its lease has ended.
    Gone(Instant),
    /// Its record said draining then.
    Drained(Instant),
}

/// The figures the summary prints.
#[derive(Default)]
pub(crate) struct Figures {
    /// Faults started, by kind.
    pub(crate) injected: BTreeMap<&'static str, u32>,
    /// The longest recovery seen, by kind.
    pub(crate) worst: BTreeMap<&'static str, Duration>,
    /// Storms judged, and the worst max/mean of their steady nodes.
    pub(crate) storms: (u32, f64),
    /// Storms measured but judged only for `max_load` (started before the loads were
    /// known), and their worst.
    pub(crate) unjudged: (u32, f64),
}

/// Everything the clients check against, shared with the schedule.
pub(crate) struct World {
    /// Each router's address while it runs.
    pub(crate) routers: Mutex<Vec<Option<SocketAddr>>>,
    pub(crate) nodes: Mutex<Vec<NodeState>>,
    pub(crate) in_force: Mutex<Vec<Fault>>,
    /// When each node was last in an answer.
    seen: Mutex<Vec<Option<Instant>>>,
    /// When each node was last missing from a whole answer.
    missed: Mutex<Vec<Option<Instant>>>,
    /// Nodes whose fault ended, with its kind and when: answered again is recovered.
    recovering: Mutex<Vec<(usize, &'static str, Instant)>>,
    violations: Mutex<Vec<String>>,
    pub(crate) figures: Mutex<Figures>,
    /// Answers checked, from the HTTP client and the SDK.
    pub(crate) answers: AtomicU64,
    /// Single checks of an invariant against an answer or a command.
    pub(crate) checks: AtomicU64,
    /// SDK connections made to a gateway.
    pub(crate) sdk_connects: AtomicU64,
    pub(crate) stop: AtomicBool,
    pub(crate) t0: Instant,
}

impl World {
    pub(crate) fn new(routers: Vec<Option<SocketAddr>>) -> World {
        let t0 = Instant::now();
        World {
            routers: Mutex::new(routers),
            nodes: Mutex::new(vec![NodeState::Up(t0); AGENTS]),
            in_force: Mutex::new(Vec::new()),
            seen: Mutex::new(vec![None; AGENTS]),
            missed: Mutex::new(vec![None; AGENTS]),
            recovering: Mutex::new(Vec::new()),
            violations: Mutex::new(Vec::new()),
            figures: Mutex::new(Figures::default()),
            answers: AtomicU64::new(0),
            checks: AtomicU64::new(0),
            sdk_connects: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            t0,
        }
    }

    /// Records a broken promise, with when and the faults in force.
    pub(crate) fn violation(&self, what: String) {
        let faults = self.in_force.lock().unwrap().clone();
        let at = self.t0.elapsed().as_secs_f64();
        let line = format!("[{at:.1}s] {what} (faults in force: {faults:?})");
        eprintln!("VIOLATION {line}");
        self.violations.lock().unwrap().push(line);
    }

    pub(crate) fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }

    pub(crate) fn set(&self, k: usize, state: NodeState) {
        self.nodes.lock().unwrap()[k] = state;
    }

    pub(crate) fn injected(&self, kind: &'static str) {
        *self
            .figures
            .lock()
            .unwrap()
            .injected
            .entry(kind)
            .or_default() += 1;
    }

    /// A fault of `kind` took `took` to recover from.
    pub(crate) fn recovered(&self, kind: &'static str, took: Duration) {
        let mut f = self.figures.lock().unwrap();
        let worst = f.worst.entry(kind).or_default();
        *worst = (*worst).max(took);
    }

    /// The routers running now.
    pub(crate) fn live_routers(&self) -> Vec<SocketAddr> {
        self.routers
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .copied()
            .collect()
    }

    /// A storm ended with its steady nodes at `ratio` max/mean; `judged` when it
    /// started on loads the routers knew.
    pub(crate) fn storm_balance(&self, ratio: f64, judged: bool) {
        let mut f = self.figures.lock().unwrap();
        let s = if judged {
            &mut f.storms
        } else {
            &mut f.unjudged
        };
        *s = (s.0 + 1, s.1.max(ratio));
    }

    /// Whether node `k` was missing from a whole answer at or after `since`.
    pub(crate) fn missed_since(&self, k: usize, since: Instant) -> bool {
        self.missed.lock().unwrap()[k].is_some_and(|at| at >= since)
    }

    /// Node `k`'s fault of `kind` ended now: it recovers when it is answered again.
    pub(crate) fn await_answered(&self, k: usize, kind: &'static str) {
        self.recovering
            .lock()
            .unwrap()
            .push((k, kind, Instant::now()));
    }

    /// Checks one answer, asked for at `now`, naming `ids`, against every node's state;
    /// `whole` when it is a router's whole answer (every node fits in it), so that a
    /// live node missing from it counts.
    pub(crate) fn check(&self, now: Instant, ids: &[String], from: &str, whole: bool) {
        self.answers.fetch_add(1, Ordering::Relaxed);
        if whole && ids.is_empty() {
            self.violation(format!("{from}: an answer without gateways"));
        }
        let nodes = self.nodes.lock().unwrap().clone();
        let mut seen = self.seen.lock().unwrap();
        for (k, state) in nodes.iter().enumerate() {
            self.checks.fetch_add(1, Ordering::Relaxed);
            let answered = ids.contains(&node_id(k));
            if answered {
                seen[k] = Some(now);
            } else if whole {
                self.missed.lock().unwrap()[k] = Some(now);
            }
            match *state {
                NodeState::Gone(at) if answered && now > at + TTL + GONE_BOUND => {
                    self.violation(format!(
                        "{from} named {} {:?} after it was gone",
                        node_id(k),
                        now - at
                    ))
                }
                NodeState::Drained(at) if answered && now > at + DRAIN_BOUND => self.violation(
                    format!("{from} named {} {:?} after its drain", node_id(k), now - at),
                ),
                NodeState::Up(since) if whole && now > since + MISSING_BOUND => {
                    let last = seen[k].unwrap_or(since).max(since);
                    if now > last + MISSING_BOUND {
                        self.violation(format!(
                            "{} serving since {:?} ago has been missing from answers for {:?}",
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
        let mut done = Vec::new();
        self.recovering.lock().unwrap().retain(|&(k, kind, at)| {
            let back = ids.contains(&node_id(k)) && now > at;
            if back {
                done.push((kind, now - at));
            }
            !back
        });
        for (kind, took) in done {
            self.recovered(kind, took);
        }
    }
}

/// The HTTP client: asks the routers in turn, starting with a different one each
/// round, as a fleet of SDKs would, until one answers 200; checks that answer.
pub(crate) fn http_client(world: Arc<World>) {
    let mut round = 0usize;
    while !world.stop.load(Ordering::Relaxed) {
        round += 1;
        let routers = world.live_routers();
        let now = Instant::now();
        let n = routers.len().max(1);
        let answer = (0..routers.len()).find_map(|i| {
            let addr = routers[(round + i) % n];
            match get_json(addr, "/gateways?count=10") {
                Some((200, v)) => Some((addr, v)),
                _ => None,
            }
        });
        let Some((addr, v)) = answer else {
            world.violation(format!("no router answered 200 (routers {routers:?})"));
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        world.check(
            now,
            &harness::gateway_ids(&v),
            &format!("router {addr}"),
            true,
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}
