//! The table of open connections: each one's phase, the connection cap and the cap
//! per client network, and which connection is shed to make room.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use ipnet::IpNet;
use tokio::time::Instant;
use tracing::warn;

use super::signal::{Signal, CLOSE, NUDGE};
use crate::identity::connection_network;
use crate::metrics::{ConnLabels, ConnMetrics};

/// `ConnTable::last_full_log_ms` before the cap was ever reached.
const NEVER_LOGGED: u64 = u64::MAX;

/// Where a connection is in its life; the order is the order in which the cap sheds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(super) enum Phase {
    /// Accepted, no byte yet.
    Silent = 0,
    /// Between requests (or before the first complete head).
    Idle = 1,
    /// A request is being answered.
    Busy = 2,
}

/// One open connection, as the table sees it.
pub(super) struct Slot {
    pub(super) phase: AtomicU8,
    /// Requests being answered on it (HTTP/2 multiplexes several).
    pub(super) in_flight: AtomicU64,
    /// Requests answered so far.
    pub(super) served: AtomicU64,
    /// Milliseconds since the table's epoch of the last change of phase.
    pub(super) since_ms: AtomicU64,
    /// Milliseconds since the table's epoch of the last byte read or written.
    pub(super) progress_ms: AtomicU64,
    /// The client network it counts against (`None`: not counted).
    network: Option<IpAddr>,
    /// The flags raised for the connection's task: close it (shed, or shutdown),
    /// re-arm its timer.
    pub(super) signal: Signal,
    /// Milliseconds since the table's epoch when the connection's timer fires next
    /// (kept by the connection's task).
    pub(super) timer_ms: AtomicU64,
    /// HTTP/1, between requests: milliseconds since the table's epoch when the next
    /// request's head began to arrive ([`NO_HEAD`]: it has not). The head must be
    /// whole within the head limit (`request_timeout_ms`) of it.
    pub(super) head_ms: AtomicU64,
    /// The connection speaks HTTP/1 (known from its first request).
    pub(super) http1: AtomicBool,
    /// Why it was closed by the table, for the metric.
    pub(super) shed_reason: Mutex<Option<&'static str>>,
}

impl Slot {
    pub(super) fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Silent,
            1 => Phase::Idle,
            _ => Phase::Busy,
        }
    }

    /// True when bytes arriving now begin the next head: an HTTP/1 connection
    /// between requests, with no head begun.
    pub(super) fn awaits_head(&self) -> bool {
        self.http1.load(Ordering::Relaxed)
            && self.phase() == Phase::Idle
            && self.head_ms.load(Ordering::Relaxed) == NO_HEAD
    }

    /// The next HTTP/1 head began at `now` (ms since the epoch); it must be whole
    /// within `head_limit_ms`.
    pub(super) fn head_begins(&self, now: u64, head_limit_ms: u64) {
        self.head_ms.store(now, Ordering::Relaxed);
        self.watch_by(now + head_limit_ms);
    }

    /// Asks the connection's task to close it.
    pub(super) fn close(&self) {
        self.signal.raise(CLOSE);
    }

    /// True once the connection was asked to close.
    #[cfg(test)]
    pub(super) fn is_closed(&self) -> bool {
        self.signal.is_raised(CLOSE)
    }

    /// The connection's timer must fire by `at_ms` (ms since the epoch). Its task is
    /// woken to re-arm it only when it is set later: waking it for every request would
    /// cost a scheduling round each (about a sixth of `GET /gateways` throughput).
    pub(super) fn watch_by(&self, at_ms: u64) {
        if self.timer_ms.load(Ordering::Relaxed) > at_ms {
            self.signal.raise(NUDGE);
        }
    }
}

/// Milliseconds from `epoch` to now, on std's clock: tokio's asks the runtime for a
/// paused clock when its `test-util` feature is on (tests, and so the benchmarks'
/// examples), a cost per request the product does not pay. No test of the server
/// pauses time.
pub(super) fn since_ms(epoch: Instant) -> u64 {
    ms_at(epoch, std::time::Instant::now())
}

/// Milliseconds from `epoch` to `at`, a reading of std's clock (0 before the epoch).
fn ms_at(epoch: Instant, at: std::time::Instant) -> u64 {
    at.saturating_duration_since(epoch.into_std()).as_millis() as u64
}

/// [`Slot::head_ms`] when no head has begun.
pub(super) const NO_HEAD: u64 = u64::MAX;

/// Why the table refused a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// Every connection is busy within the request deadline.
    Full,
    /// The client's network holds its share already.
    NetworkCap,
}

/// How the table shares its room: the caps and who is exempt.
pub(super) struct TableRules {
    /// Connections open at once.
    pub(super) cap: usize,
    /// Connections open at once per client network; 0: no cap.
    pub(super) per_network: usize,
    /// Peers not counted per network (load balancers).
    pub(super) exempt: Vec<IpNet>,
    /// A connection busy longer than this may be shed for room.
    pub(super) overdue_ms: u64,
}

/// The open connections and how many each client network holds.
#[derive(Default)]
pub(super) struct Open {
    pub(super) slots: HashMap<u64, Arc<Slot>>,
    pub(super) networks: HashMap<IpAddr, usize>,
}

impl Open {
    /// Forgets `id`, if it is still here, and its network's share.
    fn remove(&mut self, id: u64) -> Option<Arc<Slot>> {
        let slot = self.slots.remove(&id)?;
        if let Some(net) = slot.network {
            if let Some(n) = self.networks.get_mut(&net) {
                *n -= 1;
                if *n == 0 {
                    self.networks.remove(&net);
                }
            }
        }
        Some(slot)
    }
}

/// Every open connection, for the caps and for shutdown.
pub(super) struct ConnTable {
    pub(super) epoch: Instant,
    rules: TableRules,
    pub(super) open: Mutex<Open>,
    next_id: AtomicU64,
    /// When "connection cap reached" was last logged (ms since epoch), to log it at
    /// most once a second under a flood.
    last_full_log_ms: AtomicU64,
    /// The same for "per-network connection cap reached".
    last_network_log_ms: AtomicU64,
}

/// The connection to close for room, and why: the longest-silent, else the
/// longest-idle, else the longest-busy if it is busy beyond `overdue_ms`.
fn pick_victim(
    slots: &HashMap<u64, Arc<Slot>>,
    now_ms: u64,
    overdue_ms: u64,
) -> Option<(u64, &'static str)> {
    slots
        .iter()
        .filter(|(_, s)| {
            s.phase() != Phase::Busy
                || now_ms.saturating_sub(s.since_ms.load(Ordering::Relaxed)) > overdue_ms
        })
        .min_by_key(|(_, s)| (s.phase(), s.since_ms.load(Ordering::Relaxed)))
        .map(|(id, s)| {
            let reason = match s.phase() {
                Phase::Silent => "shed_silent",
                Phase::Idle => "shed_idle",
                Phase::Busy => "shed_overdue",
            };
            (*id, reason)
        })
}

impl ConnTable {
    pub(super) fn new(epoch: Instant, rules: TableRules) -> ConnTable {
        ConnTable {
            epoch,
            rules,
            open: Mutex::new(Open::default()),
            next_id: AtomicU64::new(0),
            last_full_log_ms: AtomicU64::new(NEVER_LOGGED),
            last_network_log_ms: AtomicU64::new(NEVER_LOGGED),
        }
    }

    fn now_ms(&self) -> u64 {
        since_ms(self.epoch)
    }

    /// Sets `slot`'s phase as of now; returns now (ms since the epoch).
    pub(super) fn set_phase(&self, slot: &Slot, phase: Phase) -> u64 {
        self.set_phase_ms(slot, phase, self.now_ms())
    }

    /// Sets `slot`'s phase as of `at` (a reading of std's clock the caller made);
    /// returns it in ms since the epoch.
    pub(super) fn set_phase_at(&self, slot: &Slot, phase: Phase, at: std::time::Instant) -> u64 {
        self.set_phase_ms(slot, phase, ms_at(self.epoch, at))
    }

    fn set_phase_ms(&self, slot: &Slot, phase: Phase, now: u64) -> u64 {
        slot.phase.store(phase as u8, Ordering::Relaxed);
        slot.since_ms.store(now, Ordering::Relaxed);
        slot.head_ms.store(NO_HEAD, Ordering::Relaxed);
        now
    }

    /// The network `peer` counts against, if it is counted at all.
    fn network_of(&self, peer: IpAddr) -> Option<IpAddr> {
        let peer = peer.to_canonical();
        (self.rules.per_network > 0 && !self.rules.exempt.iter().any(|n| n.contains(&peer)))
            .then(|| connection_network(peer))
    }

    /// Registers a new connection from `peer`, first making room if the cap is
    /// reached (the module docs give the order); refused when its network holds its
    /// share or nothing may be shed. Every refusal and shedding is counted.
    pub(super) fn admit(
        &self,
        peer: IpAddr,
        metrics: &ConnMetrics,
    ) -> Result<(u64, Arc<Slot>), Refused> {
        self.admit_at(self.now_ms(), peer, metrics)
    }

    pub(super) fn admit_at(
        &self,
        now: u64,
        peer: IpAddr,
        metrics: &ConnMetrics,
    ) -> Result<(u64, Arc<Slot>), Refused> {
        let count = |reason| {
            metrics.closed.get_or_create(&ConnLabels { reason }).inc();
        };
        let mut open = self.open.lock().expect("connection table lock");
        let network = self.network_of(peer);
        if let Some(net) = network {
            let held = open.networks.get(&net).copied().unwrap_or(0);
            if held >= self.rules.per_network {
                count("per_network_cap");
                if self.may_log(&self.last_network_log_ms, now) {
                    warn!(
                        network = %net,
                        held,
                        cap = self.rules.per_network,
                        "per-network connection cap reached (http.max_connections_per_network)"
                    );
                }
                return Err(Refused::NetworkCap);
            }
        }
        if open.slots.len() >= self.rules.cap {
            let victim = pick_victim(&open.slots, now, self.rules.overdue_ms);
            let reason = victim.map_or("refused_full", |(_, r)| r);
            if self.may_log(&self.last_full_log_ms, now) {
                warn!(
                    open = open.slots.len(),
                    cap = self.rules.cap,
                    action = reason,
                    "connection cap reached (http.max_connections / open-file limit)"
                );
            }
            count(reason);
            let (id, _) = victim.ok_or(Refused::Full)?;
            let slot = open.remove(id).expect("the victim is in the table");
            *slot.shed_reason.lock().expect("shed reason lock") = Some(reason);
            slot.close();
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            phase: AtomicU8::new(Phase::Silent as u8),
            in_flight: AtomicU64::new(0),
            served: AtomicU64::new(0),
            since_ms: AtomicU64::new(now),
            progress_ms: AtomicU64::new(now),
            timer_ms: AtomicU64::new(u64::MAX),
            network,
            signal: Signal::default(),
            head_ms: AtomicU64::new(NO_HEAD),
            http1: AtomicBool::new(false),
            shed_reason: Mutex::new(None),
        });
        open.slots.insert(id, slot.clone());
        if let Some(net) = network {
            *open.networks.entry(net).or_default() += 1;
        }
        metrics.open.set(open.slots.len() as i64);
        Ok((id, slot))
    }

    /// True at most once a second per `last` (and the first time).
    fn may_log(&self, last: &AtomicU64, now: u64) -> bool {
        let seen = last.load(Ordering::Relaxed);
        (seen == NEVER_LOGGED || now.saturating_sub(seen) >= 1000)
            && last
                .compare_exchange(seen, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    pub(super) fn remove(&self, id: u64, metrics: &ConnMetrics) {
        let mut open = self.open.lock().expect("connection table lock");
        open.remove(id);
        metrics.open.set(open.slots.len() as i64);
    }

    pub(super) fn len(&self) -> usize {
        self.open.lock().expect("connection table lock").slots.len()
    }

    /// Closes every connection that is not answering a request now.
    pub(super) fn close_all(&self) {
        for slot in self
            .open
            .lock()
            .expect("connection table lock")
            .slots
            .values()
        {
            slot.close();
        }
    }
}
