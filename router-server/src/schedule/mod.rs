//! Candidate selection: the contract's scheduling rules as a pure function over an
//! immutable [`Snapshot`].
//!
//! * **Eligible**: serving, healthy, has the requested port and address family, and a
//!   *reported* load below `max_load`. Nodes whose projected load (below) is also below
//!   it come first; the others only after them ([`overflow_fill`]): the projected load
//!   is an estimate made from answers, which an asker gets for free, so it may reorder
//!   candidates but never empties an answer. Only reported load refuses.
//! * **Region order**: the client's region, then its fallbacks in order, then any.
//! * **Least loaded first, herd-safe**: the load used is the *projected* load, the
//!   reported connections plus the clients the routers sent since the report's sample
//!   (see [`crate::herd`]). Each answer adds one client to its first candidate, so a
//!   reconnect storm fills nodes evenly instead of all landing on the node that was
//!   least loaded at the last report. The counter lives with the node across snapshots
//!   and reports.
//!
//! Static eligibility (state, health, port) is indexed once per snapshot, per region
//! and protocol, and each index is sorted by reported load. A request walks only the
//! nodes that can serve it, least reported load first, keeping the best `count`, and
//! stops as soon as the next node's reported load (a lower bound of its projected load)
//! cannot beat the worst kept one. Without a burst that is `count` + 1 nodes whatever
//! the fleet size. During a burst it would be every node whose projected load has been
//! levelled: past [`SCAN_BUDGET`] nodes the request walks the index's herd-adjusted
//! [`order`] instead, which reads about `count` nodes at any fleet size.

mod order;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use registry::imbl::Vector;
use registry::record::IpFamily;
use registry::{NodeRecord, NodeState, Proto};

use crate::answer::NodeJson;
use crate::herd::{HerdCounter, HerdView};
use order::{Order, Walker};

/// One node as the router serves it.
#[derive(Debug, Clone)]
pub struct NodeEntry {
    /// The record as last reported.
    pub record: Arc<NodeRecord>,
    /// This router's answers naming this node first, by time slot; kept across reports.
    pub assigned: Arc<HerdCounter>,
    /// When the reported count was sampled, on this router's clock (see
    /// [`sample_time`]). Later answers are not in it.
    pub sampled_ms: u64,
    /// The least delivery offset of this node's reports (see [`sample_time`]).
    delivery: Option<Delivery>,
    /// Rank among equally loaded nodes (a per-router random order).
    pub tie: u64,
    /// The node's answer fields, JSON-escaped once per report instead of per answer.
    pub json: Arc<NodeJson>,
    /// `1 / capacity`: the scan multiplies instead of dividing for every node.
    inv_capacity: f64,
    /// The reported load, inline: a lower bound of the projected load that lets the
    /// scan reject most nodes without following a pointer.
    reported_load: f64,
    /// The reported connections, inline for the same reason.
    connections: u64,
    /// Gone from the registry without a drain and served only because protect holds
    /// it: offered after every live candidate (the node may well be dead).
    pub held: bool,
}

impl NodeEntry {
    /// `(connections + answers not in the report) / capacity`.
    pub fn projected_load(&self, herd: &HerdView) -> f64 {
        let conns = self
            .connections
            .saturating_add(herd.pending(&self.assigned, self.sampled_ms));
        conns as f64 * self.inv_capacity
    }

    /// The projected load, and a lower bound of it until the herd counts' slot ends
    /// (see [`HerdView::pending_floor`]), computed the same way.
    fn loads(&self, herd: &HerdView) -> (f64, f64) {
        let (pending, floor) = herd.pending_and_floor(&self.assigned, self.sampled_ms);
        let load = |p: u64| self.connections.saturating_add(p) as f64 * self.inv_capacity;
        (load(pending), load(floor))
    }
}

/// Node indexes (into [`Snapshot::nodes`]) that can serve one protocol, per protocol,
/// sorted by reported load, then index; and each list's herd-adjusted [`Order`].
#[derive(Debug, Clone, Default)]
struct ByProto([Vec<u32>; 3], [Arc<Order>; 3]);

/// One index: its list, sorted by reported load, and its herd-adjusted order.
#[derive(Clone, Copy)]
struct Index<'a> {
    list: &'a [u32],
    order: &'a Order,
}

impl ByProto {
    fn get(&self, proto: Proto) -> Index<'_> {
        Index {
            list: &self.0[proto as usize],
            order: &self.1[proto as usize],
        }
    }
}

/// The key an index is sorted by: reported load (a load is never negative, so its
/// bits order as the number does), tie rank, index.
fn rank_key(e: &NodeEntry, i: u32) -> (u64, u64, u32) {
    (e.reported_load.to_bits(), e.tie, i)
}

impl NodeEntry {
    /// The entry for a new report; `prev` is the same node's entry before it.
    fn new(record: Arc<NodeRecord>, prev: Option<&NodeEntry>, tie: u64, received: u64) -> Self {
        let (sampled_ms, delivery) = sample_time(&record, prev.and_then(|e| e.delivery), received);
        NodeEntry {
            assigned: prev.map(|e| e.assigned.clone()).unwrap_or_default(),
            sampled_ms,
            delivery,
            tie,
            json: Arc::new(NodeJson::of(&record)),
            inv_capacity: 1.0 / record.capacity as f64,
            // The projected load's own formula with nothing assigned, so it is an exact
            // lower bound (no rounding difference at ties).
            reported_load: record.connections as f64 * (1.0 / record.capacity as f64),
            connections: record.connections,
            record,
            held: false,
        }
    }

    /// Serving and healthy.
    fn eligible(&self) -> bool {
        self.record.state == NodeState::Serving && self.record.healthy
    }

    /// Eligible and live: the node is in the indexes of the protocols it has ports for.
    /// (Held nodes are kept apart, in [`Snapshot::held`].)
    fn indexed(&self) -> bool {
        self.eligible() && !self.held
    }
}

/// The least `received − updated_ms` of a node's reports: the agent's clock offset plus
/// the fastest delivery seen (etcd's commit, the watch, this router's batching).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Delivery {
    least_ms: i64,
    /// When it was seen (router clock).
    at: u64,
}

/// A delivery minimum ages by this much per second, so a drifting clock is followed.
const DELIVERY_AGING_MS_PER_SEC: u64 = 1;
/// A report this much slower than the minimum means the agent's clock jumped (or the
/// agent restarted on another host): the minimum starts again.
const DELIVERY_RESET_MS: i64 = 2_000;

/// When a report's count was sampled, on this router's clock, and the node's delivery
/// minimum after it.
///
/// A report carries `sampled_ms` and `updated_ms` on the agent's clock, which may be off
/// by seconds. `received − updated_ms` is that offset plus how long this report took to
/// arrive; its least value over the node's reports is the offset plus the fastest
/// delivery. The sample time is `sampled_ms` plus that least value: right to within the
/// fastest delivery, whatever the clock offset, and not moved later by a report that
/// was slow to arrive (etcd under load), which would hide the answers given meanwhile.
/// An agent that sends only `sample_age_ms`: receipt minus age. One that sends only
/// `sampled_ms`: trusted, but never later than the receipt.
fn sample_time(
    record: &NodeRecord,
    prev: Option<Delivery>,
    received: u64,
) -> (u64, Option<Delivery>) {
    match (record.updated_ms, record.sampled_ms, record.sample_age_ms) {
        (Some(written), Some(sampled), _) if sampled <= written => {
            let d = received as i64 - written as i64;
            let least = match prev {
                Some(p) => {
                    let aged = p.least_ms.saturating_add(
                        (received.saturating_sub(p.at) / 1000 * DELIVERY_AGING_MS_PER_SEC) as i64,
                    );
                    if d <= aged || d - aged > DELIVERY_RESET_MS {
                        Delivery {
                            least_ms: d,
                            at: received,
                        }
                    } else {
                        // Kept as it was seen: it goes on ageing from then.
                        p
                    }
                }
                None => Delivery {
                    least_ms: d,
                    at: received,
                },
            };
            let offset = least.least_ms.saturating_add(
                (received.saturating_sub(least.at) / 1000 * DELIVERY_AGING_MS_PER_SEC) as i64,
            );
            let at = (sampled as i64).saturating_add(offset).max(0) as u64;
            (at.min(received), Some(least))
        }
        (_, _, Some(age)) => (received.saturating_sub(age), None),
        (_, Some(at), None) => (at.min(received), None),
        _ => (received, None),
    }
}

/// When reports arrived (this router's wall-clock ms), and how far behind etcd each
/// registry's view was then (its watch lag, see `crate::lag`).
///
/// A report reached the router `lag` after etcd had it. Left in, a steady lag reads
/// as a clock offset: the least `received − updated_ms` grows by it, every sample is
/// placed that much later, and the answers given between the true sample and its
/// late arrival are taken for counted. Subtracting the lag places a report at the
/// moment etcd had it, which is what the delivery minimum of [`sample_time`] assumes.
#[derive(Debug, Clone, Default)]
pub struct Arrival {
    /// When the reports arrived.
    pub at_ms: u64,
    /// Each registry's lag, ms, by name (the records' `dc`).
    pub lag_ms: Vec<(Arc<str>, u64)>,
    /// The lag of a record whose registry is not in `lag_ms` (or that has no `dc`).
    pub default_lag_ms: u64,
}

impl Arrival {
    /// Reports arrived at `at_ms` over a view `lag_ms` behind etcd.
    pub fn lagged(at_ms: u64, lag_ms: u64) -> Arrival {
        Arrival {
            at_ms,
            lag_ms: Vec::new(),
            default_lag_ms: lag_ms,
        }
    }

    /// When etcd had `record`, on this router's clock: the arrival less its
    /// registry's lag.
    fn of(&self, record: &NodeRecord) -> u64 {
        let lag = record
            .dc
            .as_ref()
            .and_then(|dc| self.lag_ms.iter().find(|(n, _)| n == dc))
            .map_or(self.default_lag_ms, |(_, l)| *l);
        self.at_ms.saturating_sub(lag)
    }
}

impl From<u64> for Arrival {
    fn from(at_ms: u64) -> Arrival {
        Arrival::lagged(at_ms, 0)
    }
}

/// An immutable, indexed view of the fleet, swapped atomically on every change.
///
/// The nodes are a persistent vector: a report patches one entry of a copy that
/// shares every other one ([`Snapshot::patch`]), so the updater's cost per report does
/// not grow with the fleet.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every valid node, sorted by id.
    pub nodes: Vector<NodeEntry>,
    /// Region names are looked up on every request; foldhash hashes a short name in a
    /// few nanoseconds (names come from the registry, whose writers are trusted).
    by_region: HashMap<Arc<str>, ByProto, foldhash::fast::RandomState>,
    all: ByProto,
    /// Eligible nodes held by protect (gone from the registry without a drain), by
    /// reported load: offered only when the live nodes cannot fill an answer. Empty
    /// but during a protect hold.
    held: Vec<u32>,
    /// Registry revision this snapshot reflects.
    pub revision: i64,
    /// True while answers come from an older set (registry unreachable or protect).
    pub stale: bool,
    /// Which snapshot this is: the herd-adjusted orders serve the snapshot that owns
    /// them (see [`order`]).
    generation: u64,
}

impl Snapshot {
    /// [`Snapshot::build_seeded`] with ties broken by node id.
    pub fn build(
        records: impl IntoIterator<Item = Arc<NodeRecord>>,
        previous: Option<&Snapshot>,
        revision: i64,
        stale: bool,
    ) -> Snapshot {
        Snapshot::build_seeded(records, previous, revision, stale, 0)
    }

    /// Builds a snapshot, keeping each node's herd counter from `previous` (a new
    /// report moves where its count starts, it does not zero it). Equally loaded nodes
    /// rank in an order drawn from `seed` (0: by id). Each router uses its own seed:
    /// with one shared order, every router behind a balancer would send the first
    /// client of a storm to the same node, and the next, until reports catch up.
    pub fn build_seeded(
        records: impl IntoIterator<Item = Arc<NodeRecord>>,
        previous: Option<&Snapshot>,
        revision: i64,
        stale: bool,
        seed: u64,
    ) -> Snapshot {
        let received = registry::now_ms();
        Snapshot::build_holding(records, [], previous, revision, stale, seed, received)
    }

    /// [`Snapshot::build_seeded`] with `held`: the last records of nodes that left the
    /// registry without a drain, which protect keeps serving. They are ranked after
    /// every live node: a mass departure is more often a crash than a lost session,
    /// so a client must reach a live gateway first whenever one can take it.
    /// `received` is when the reports arrived (this router's wall-clock ms, and the
    /// registries' lags: see [`Arrival`]), on which their sample ages are anchored.
    pub fn build_holding(
        records: impl IntoIterator<Item = Arc<NodeRecord>>,
        held: impl IntoIterator<Item = Arc<NodeRecord>>,
        previous: Option<&Snapshot>,
        revision: i64,
        stale: bool,
        seed: u64,
        received: impl Into<Arrival>,
    ) -> Snapshot {
        let received = received.into();
        // Records by id (the registry's map yields them sorted already), matched with
        // the previous snapshot's nodes (sorted by id too) in one merge: no hashing.
        let mut records: Vec<Arc<NodeRecord>> = records.into_iter().collect();
        // Held nodes join the list, marked; a live record of the same id wins.
        let mut held_ids: HashSet<String> = HashSet::new();
        let held: Vec<Arc<NodeRecord>> = held.into_iter().collect();
        if !held.is_empty() {
            let extra: Vec<Arc<NodeRecord>> = {
                let live: HashSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
                held.into_iter()
                    .filter(|r| !live.contains(r.id.as_str()))
                    .collect()
            };
            held_ids.extend(extra.iter().map(|r| r.id.clone()));
            records.extend(extra);
        }
        if !records.windows(2).all(|w| w[0].id < w[1].id) {
            // Stable: of two records with one id, the first (the live one) is kept.
            records.sort_by(|a, b| a.id.cmp(&b.id));
            records.dedup_by(|a, b| a.id == b.id);
        }
        let mut old = previous
            .map(|p| p.nodes.iter())
            .into_iter()
            .flatten()
            .peekable();
        let mut nodes: Vec<NodeEntry> = Vec::with_capacity(records.len());
        for record in records {
            // An unchanged record is the same allocation: matched without comparing ids.
            let same = old.peek().is_some_and(|e| Arc::ptr_eq(&e.record, &record));
            if !same {
                while old.peek().is_some_and(|e| e.record.id < record.id) {
                    old.next();
                }
            }
            // Ids are unique: the next record starts after this one.
            let prev = old.next_if(|e| same || e.record.id == record.id);
            // The tie rank depends on the seed and the id only: reuse it. With seed 0
            // ties go by index, set below once every node is in place.
            let tie = match prev {
                _ if seed == 0 => 0,
                Some(e) => e.tie,
                None => tie_key(seed, &record.id),
            };
            nodes.push(match prev {
                // The same report: keep its herd counter and its serialized fields.
                Some(e) if Arc::ptr_eq(&e.record, &record) || *e.record == *record => NodeEntry {
                    inv_capacity: e.inv_capacity,
                    reported_load: e.reported_load,
                    connections: e.connections,
                    record,
                    assigned: e.assigned.clone(),
                    sampled_ms: e.sampled_ms,
                    delivery: e.delivery,
                    tie,
                    json: e.json.clone(),
                    held: false,
                },
                previous => {
                    let at = received.of(&record);
                    NodeEntry::new(record, previous, tie, at)
                }
            });
            if !held_ids.is_empty() {
                let e = nodes.last_mut().expect("just pushed");
                e.held = held_ids.contains(&e.record.id);
            }
        }
        if seed == 0 {
            // Ties by id: the index order.
            for (i, e) in nodes.iter_mut().enumerate() {
                e.tie = i as u64;
            }
        }
        let mut by_region: HashMap<Arc<str>, ByProto, _> = HashMap::default();
        let mut all = ByProto::default();
        for (i, e) in nodes.iter().enumerate() {
            let r = &e.record;
            if !e.indexed() {
                continue;
            }
            // Looked up by name first: a key is allocated once per region, not per node.
            let region = match by_region.get_mut(r.region.as_str()) {
                Some(lists) => lists,
                None => by_region.entry(Arc::from(r.region.as_str())).or_default(),
            };
            for proto in Proto::ALL {
                if r.ports.get(proto).is_some() {
                    region.0[proto as usize].push(i as u32);
                    all.0[proto as usize].push(i as u32);
                }
            }
        }
        // Sorted on plain keys gathered once, not by following indexes into the nodes.
        let mut keys: Vec<(u64, u64, u32)> = Vec::new();
        let mut by_load = |list: &mut Vec<u32>| {
            keys.clear();
            keys.extend(list.iter().map(|&i| rank_key(&nodes[i as usize], i)));
            keys.sort_unstable();
            list.clear();
            list.extend(keys.iter().map(|k| k.2));
        };
        for lists in by_region.values_mut().chain([&mut all]) {
            lists.0.iter_mut().for_each(&mut by_load);
        }
        let mut held: Vec<u32> = (0..nodes.len() as u32)
            .filter(|&i| nodes[i as usize].held && nodes[i as usize].eligible())
            .collect();
        by_load(&mut held);
        Snapshot {
            nodes: Vector::from(nodes),
            by_region,
            all,
            held,
            revision,
            stale,
            generation: order::next_generation(),
        }
    }

    /// This snapshot with new reports of nodes it has, or `None` when one of them is
    /// not in it (arrivals and departures take a [`Snapshot::build_seeded`]).
    ///
    /// The cost is per report, not per node: the nodes are shared with `self` but for
    /// the changed entries, and each changed entry moves within the sorted indexes it
    /// is in (binary search, then one shift of a flat array), instead of the whole
    /// fleet being sorted again.
    pub fn patch<'a>(
        &self,
        reports: impl IntoIterator<Item = &'a Arc<NodeRecord>>,
        revision: i64,
        stale: bool,
    ) -> Option<Snapshot> {
        self.patch_at(reports, revision, stale, registry::now_ms())
    }

    /// [`Snapshot::patch`] with the reports received at `received` (this router's
    /// wall-clock ms, and the registries' lags: see [`Arrival`]), on which their
    /// sample ages are anchored.
    pub fn patch_at<'a>(
        &self,
        reports: impl IntoIterator<Item = &'a Arc<NodeRecord>>,
        revision: i64,
        stale: bool,
        received: impl Into<Arrival>,
    ) -> Option<Snapshot> {
        let received = received.into();
        let mut next = self.clone();
        next.generation = order::next_generation();
        // The orders go to the new snapshot, which updates them below; this one scans.
        for lists in next.by_region.values_mut().chain([&mut next.all]) {
            for order in &mut lists.1 {
                if !order.hand_over(self.generation, next.generation) {
                    *order = Arc::new(Order::owned_by(next.generation));
                }
            }
        }
        for record in reports {
            let i = next.position(&record.id)?;
            let old = next.nodes[i].clone();
            if Arc::ptr_eq(&old.record, record) || *old.record == **record {
                continue;
            }
            if old.held {
                // A held node reported again: it is back, which takes a full build.
                return None;
            }
            let entry = NodeEntry::new(record.clone(), Some(&old), old.tie, received.of(record));
            next.unindex(i as u32, &old);
            next.nodes.set(i, entry);
            next.reindex(i as u32);
        }
        next.revision = revision;
        next.stale = stale;
        Some(next)
    }

    /// The index of the node `id`, if it is in the snapshot.
    pub fn position(&self, id: &str) -> Option<usize> {
        self.nodes
            .binary_search_by(|e| e.record.id.as_str().cmp(id))
            .ok()
    }

    /// The node `id`, if it is in the snapshot.
    pub fn get(&self, id: &str) -> Option<&NodeEntry> {
        self.position(id).map(|i| &self.nodes[i])
    }

    /// Removes node `i`, as `old` describes it, from the indexes it is in.
    fn unindex(&mut self, i: u32, old: &NodeEntry) {
        if !old.indexed() {
            return;
        }
        let key = rank_key(old, i);
        let nodes = &self.nodes;
        let region = self.by_region.get_mut(old.record.region.as_str());
        for list in [region, Some(&mut self.all)].into_iter().flatten() {
            for proto in Proto::ALL {
                if old.record.ports.get(proto).is_none() {
                    continue;
                }
                list.1[proto as usize].remove(i, old.tie);
                let list = &mut list.0[proto as usize];
                if let Ok(at) =
                    list.binary_search_by(|&j| rank_key(&nodes[j as usize], j).cmp(&key))
                {
                    list.remove(at);
                }
            }
        }
    }

    /// Adds node `i` to the indexes its current entry belongs in.
    fn reindex(&mut self, i: u32) {
        let e = &self.nodes[i as usize];
        if !e.indexed() {
            return;
        }
        let key = rank_key(e, i);
        let region = match self.by_region.get_mut(e.record.region.as_str()) {
            Some(lists) => lists,
            None => self
                .by_region
                .entry(Arc::from(e.record.region.as_str()))
                .or_default(),
        };
        let nodes = &self.nodes;
        for list in [region, &mut self.all] {
            for proto in Proto::ALL {
                if e.record.ports.get(proto).is_none() {
                    continue;
                }
                list.1[proto as usize].insert(e, i);
                let list = &mut list.0[proto as usize];
                let at = list.partition_point(|&j| rank_key(&nodes[j as usize], j) < key);
                list.insert(at, i);
            }
        }
    }

    /// The regions that have nodes, in no particular order.
    pub fn regions(&self) -> impl Iterator<Item = &str> {
        self.by_region.keys().map(|r| &**r)
    }

    /// Live nodes (valid records), whatever their state.
    pub fn live(&self) -> usize {
        self.nodes.len()
    }
}

/// What a client asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Query<'a> {
    /// Protocol the client speaks.
    pub proto: Proto,
    /// Candidates wanted (1 to [`MAX_COUNT`]; `/gateways` allows 1-10).
    pub count: usize,
    /// The client's region, if known.
    pub region: Option<&'a str>,
    /// The address family the client can reach, if restricted.
    pub family: Option<IpFamily>,
}

/// One chosen gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Index into [`Snapshot::nodes`].
    pub index: usize,
    /// The address for the requested family.
    pub ip: IpAddr,
    /// The port for the requested protocol.
    pub port: u16,
    /// Projected load when chosen.
    pub load: f64,
    /// The node's rank among equally loaded ones.
    pub tie: u64,
}

/// The candidates of one answer: the default three live on the stack.
pub type Chosen = smallvec::SmallVec<[Candidate; 3]>;

/// The scheduling parameters from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    /// Nodes at or above this projected load are skipped.
    pub max_load: f64,
    /// Fallback regions for the client's region.
    pub fallbacks: &'a [String],
    /// The herd counts as of this request.
    pub herd: HerdView,
}

/// The most candidates one answer can hold (`/gateways` allows 10; a DNS answer more).
pub const MAX_COUNT: usize = crate::config::MAX_CANDIDATES;

/// Up to `query.count` distinct eligible nodes, best first, and counts one client
/// against the first of them.
pub fn select(snap: &Snapshot, query: &Query<'_>, rules: Rules<'_>) -> Chosen {
    select_weighted(snap, query, rules, 1)
}

/// [`select`], counting `weight` clients against the first candidate: a DNS answer
/// reaches every client behind the resolver that asked.
pub fn select_weighted(
    snap: &Snapshot,
    query: &Query<'_>,
    rules: Rules<'_>,
    weight: u64,
) -> Chosen {
    select_budgeted(snap, query, rules, weight, SCAN_BUDGET)
}

/// [`select_weighted`], walking the herd-adjusted order after `budget` nodes of a scan
/// (benchmarks and tests compare the two ways).
pub fn select_budgeted(
    snap: &Snapshot,
    query: &Query<'_>,
    rules: Rules<'_>,
    weight: u64,
    budget: usize,
) -> Chosen {
    let want = query.count.clamp(1, MAX_COUNT);
    let mut out = Chosen::new();
    let tiers = Tiers {
        first: query.region,
        fallbacks: rules.fallbacks,
    };
    let ordered = query
        .region
        .into_iter()
        .chain(rules.fallbacks.iter().map(String::as_str));
    for (k, region) in ordered.enumerate() {
        if out.len() >= want {
            break;
        }
        if tiers.seen_before(k, region) {
            continue;
        }
        if let Some(idx) = snap.by_region.get(region) {
            best_of(
                snap,
                idx.get(query.proto),
                query,
                rules,
                want,
                None,
                &mut out,
                budget,
            );
        }
    }
    if out.len() < want {
        best_of(
            snap,
            snap.all.get(query.proto),
            query,
            rules,
            want,
            Some(tiers),
            &mut out,
            budget,
        );
    }
    if out.len() < want {
        overflow_fill(snap, query, rules, want, tiers, &mut out);
    }
    if out.len() < want && !snap.held.is_empty() {
        held_fill(snap, query, rules, want, tiers, &mut out);
    }
    if let Some(first) = out.first() {
        rules
            .herd
            .record_n(&snap.nodes[first.index].assigned, weight);
    }
    out
}

/// Nodes per index that [`overflow_fill`] considers, least reported load first.
pub const OVERFLOW_SCAN: usize = 64;

/// Fills the rest of an answer from live nodes whose *reported* load leaves room but
/// whose projected load does not: the herd count is an estimate of clients that have
/// not connected yet (and some never will: an answer costs an asker nothing), so it
/// may put a node last, never out of the answer. Only reported load refuses.
///
/// By region tier (the client's region, its fallbacks in order, any other), then
/// projected load; each index is read up to [`OVERFLOW_SCAN`] nodes by reported load,
/// so the cost stays bounded while a region is projected full.
fn overflow_fill(
    snap: &Snapshot,
    query: &Query<'_>,
    rules: Rules<'_>,
    want: usize,
    tiers: Tiers<'_>,
    out: &mut Chosen,
) {
    let mut found: Vec<(usize, Candidate)> = Vec::new();
    let mut tier_of_index = |tier: usize, index: Index<'_>, skip: Option<Tiers<'_>>| {
        for &i in index.list.iter().take(OVERFLOW_SCAN) {
            let i = i as usize;
            let e = &snap.nodes[i];
            if e.reported_load >= rules.max_load {
                break;
            }
            let r = &e.record;
            if skip.is_some_and(|t| t.contains(&r.region))
                || out.iter().any(|c| c.index == i)
                || found.iter().any(|(_, c)| c.index == i)
            {
                continue;
            }
            let (Some(ip), Some(port)) = (r.addr_for(query.family), r.ports.get(query.proto))
            else {
                continue;
            };
            let load = e.projected_load(&rules.herd);
            found.push((
                tier,
                Candidate {
                    index: i,
                    ip,
                    port,
                    load,
                    tie: e.tie,
                },
            ));
        }
    };
    let ordered = query
        .region
        .into_iter()
        .chain(rules.fallbacks.iter().map(String::as_str));
    let mut tier = 0;
    for (k, region) in ordered.enumerate() {
        if tiers.seen_before(k, region) {
            continue;
        }
        if let Some(idx) = snap.by_region.get(region) {
            tier_of_index(tier, idx.get(query.proto), None);
        }
        tier += 1;
    }
    tier_of_index(tier, snap.all.get(query.proto), Some(tiers));
    found.sort_by(|(ta, a), (tb, b)| {
        ta.cmp(tb)
            .then(a.load.total_cmp(&b.load))
            .then((a.tie, a.index).cmp(&(b.tie, b.index)))
    });
    let room = want - out.len();
    out.extend(found.into_iter().take(room).map(|(_, c)| c));
}

/// Fills the rest of an answer from the nodes protect holds, after every live
/// candidate: by region tier (the client's region, its fallbacks in order, any other),
/// then least loaded. A held node may be dead; it is only worth a try when no live
/// node can take the client.
fn held_fill(
    snap: &Snapshot,
    query: &Query<'_>,
    rules: Rules<'_>,
    want: usize,
    tiers: Tiers<'_>,
    out: &mut Chosen,
) {
    let tier = |region: &str| -> usize {
        if tiers.first == Some(region) {
            return 0;
        }
        tiers
            .fallbacks
            .iter()
            .position(|f| f == region)
            .map_or(usize::MAX, |k| k + 1)
    };
    let mut found: Vec<(usize, Candidate)> = Vec::new();
    for &i in &snap.held {
        let i = i as usize;
        let e = &snap.nodes[i];
        let load = e.projected_load(&rules.herd);
        if load >= rules.max_load {
            continue;
        }
        let r = &e.record;
        let (Some(ip), Some(port)) = (r.addr_for(query.family), r.ports.get(query.proto)) else {
            continue;
        };
        found.push((
            tier(&r.region),
            Candidate {
                index: i,
                ip,
                port,
                load,
                tie: e.tie,
            },
        ));
    }
    found.sort_by(|(ta, a), (tb, b)| {
        ta.cmp(tb)
            .then(a.load.total_cmp(&b.load))
            .then((a.tie, a.index).cmp(&(b.tie, b.index)))
    });
    let room = want - out.len();
    out.extend(found.into_iter().take(room).map(|(_, c)| c));
}

/// The regions a query tries before "any region": its own, then its fallbacks.
/// Borrowed, so a request allocates nothing to remember them.
#[derive(Debug, Clone, Copy)]
struct Tiers<'a> {
    first: Option<&'a str>,
    fallbacks: &'a [String],
}

impl Tiers<'_> {
    fn contains(&self, region: &str) -> bool {
        self.first == Some(region) || self.fallbacks.iter().any(|f| f == region)
    }

    /// True when the `k`-th region of the order already came up earlier in it.
    fn seen_before(&self, k: usize, region: &str) -> bool {
        match (self.first, k) {
            (Some(_), 0) => false,
            (Some(first), k) => {
                first == region || self.fallbacks[..k - 1].iter().any(|f| f == region)
            }
            (None, k) => self.fallbacks[..k].iter().any(|f| f == region),
        }
    }
}

/// Nodes a request reads in reported-load order before it walks the index's
/// herd-adjusted order instead. A quiet request reads `count` + 1.
pub const SCAN_BUDGET: usize = 32;

/// Appends the best of `index` (excluding the regions of `skip` and nodes already
/// chosen) to `out`, up to `want` in total, least loaded first.
#[allow(clippy::too_many_arguments)]
fn best_of(
    snap: &Snapshot,
    index: Index<'_>,
    query: &Query<'_>,
    rules: Rules<'_>,
    want: usize,
    skip: Option<Tiers<'_>>,
    out: &mut Chosen,
    budget: usize,
) {
    let mut keep = Keep {
        snap,
        query,
        rules,
        skip,
        start: out.len(),
        room: want - out.len(),
        out,
    };
    // Mid-burst (a scan of this index ran past its budget lately), the order at once.
    if budget == usize::MAX || !index.order.levelled(&rules.herd) {
        if keep.scan(index.list, budget) {
            return;
        }
        // A levelled burst: the reported loads no longer tell where to stop.
        index.order.mark_levelled(&rules.herd);
        keep.out.truncate(keep.start);
    }
    if !index.order.walk(snap, index.list, &rules.herd, &mut keep) {
        keep.out.truncate(keep.start);
        keep.scan(index.list, usize::MAX);
    }
}

/// The candidates one index adds to an answer: `out[start..]`, at most `room` of them.
struct Keep<'a, 'q> {
    snap: &'a Snapshot,
    query: &'a Query<'q>,
    rules: Rules<'a>,
    skip: Option<Tiers<'a>>,
    start: usize,
    room: usize,
    out: &'a mut Chosen,
}

impl Walker for Keep<'_, '_> {
    fn done(&self, key: f64, tie: u64, i: u32) -> bool {
        key >= self.rules.max_load || !self.may_beat(key, tie, i as usize)
    }

    fn visit(&mut self, i: u32, load: f64) {
        self.consider(i as usize, load);
    }
}

impl Keep<'_, '_> {
    /// Whether a node at `load` (or any load above it) could still be kept.
    fn may_beat(&self, load: f64, tie: u64, i: usize) -> bool {
        let full = self.out.len() - self.start == self.room;
        !full || beats(load, tie, i, &self.out[self.out.len() - 1])
    }

    /// Walks `list` by reported load. False when it read `budget` nodes and could not
    /// stop yet.
    fn scan(&mut self, list: &[u32], budget: usize) -> bool {
        for (n, &i) in list.iter().enumerate() {
            let i = i as usize;
            let e = &self.snap.nodes[i];
            // `list` is sorted by reported load (then tie rank), and the reported load
            // never exceeds the projected one: once a node's reported load cannot beat
            // the worst kept candidate (or reaches `max_load`), no later node can either.
            if e.reported_load >= self.rules.max_load || !self.may_beat(e.reported_load, e.tie, i) {
                return true;
            }
            if n == budget {
                return false;
            }
            // The herd counter is only read for contenders.
            let load = e.projected_load(&self.rules.herd);
            self.consider(i, load);
        }
        true
    }

    /// Keeps node `i` at projected `load` if it serves the query and ranks among the
    /// best so far.
    fn consider(&mut self, i: usize, load: f64) {
        let e = &self.snap.nodes[i];
        if load >= self.rules.max_load || !self.may_beat(load, e.tie, i) {
            return;
        }
        let r = &e.record;
        if self.skip.is_some_and(|t| t.contains(&r.region)) {
            return;
        }
        if self.out[..self.start].iter().any(|c| c.index == i) {
            return;
        }
        let Some(ip) = r.addr_for(self.query.family) else {
            return;
        };
        let Some(port) = r.ports.get(self.query.proto) else {
            return;
        };
        let cand = Candidate {
            index: i,
            ip,
            port,
            load,
            tie: e.tie,
        };
        // Insertion into the kept tail, ordered by load then tie rank.
        let start = self.start;
        let pos = start + self.out[start..].partition_point(|c| !beats(load, e.tie, i, c));
        if self.out.len() - start == self.room {
            self.out.pop();
        }
        self.out.insert(pos, cand);
    }
}

/// True when a node at `load` with tie rank `tie` and index `i` ranks before candidate
/// `c`: less loaded, or equally loaded and earlier in the router's tie order.
fn beats(load: f64, tie: u64, i: usize, c: &Candidate) -> bool {
    load < c.load || (load == c.load && (tie, i) < (c.tie, c.index))
}

/// A node's place in a router's tie order: a hash of its id under the router's seed.
fn tie_key(seed: u64, id: &str) -> u64 {
    // FNV-1a over the id, mixed with the seed (SplitMix64's finalizer).
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in id.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use registry::Ports;

    pub(crate) fn node(id: &str, region: &str, conns: u64, cap: u64) -> NodeRecord {
        NodeRecord::new(
            id,
            "10.0.0.1".parse().unwrap(),
            Ports {
                tcp: Some(8000),
                ws: Some(8080),
                wss: None,
            },
            region,
            cap,
            conns,
        )
    }

    fn snap(records: Vec<NodeRecord>) -> Snapshot {
        Snapshot::build(records.into_iter().map(Arc::new), None, 1, false)
    }

    fn q(region: Option<&str>, count: usize) -> Query<'_> {
        Query {
            proto: Proto::Tcp,
            count,
            region,
            family: None,
        }
    }

    /// The default rules, with the herd counts as of now.
    fn rules_now() -> Rules<'static> {
        Rules {
            max_load: 0.95,
            fallbacks: &[],
            herd: HerdView::now(5000, 1),
        }
    }

    /// Sets a node's answers not in its report to `n`, all given at `herd`'s now.
    fn set_pending(e: &NodeEntry, n: u64, herd: &HerdView) {
        e.assigned.clear();
        for _ in 0..n {
            herd.record(&e.assigned);
        }
    }

    fn ids(s: &Snapshot, c: &[Candidate]) -> Vec<String> {
        c.iter()
            .map(|c| s.nodes[c.index].record.id.clone())
            .collect()
    }

    #[test]
    fn region_then_fallbacks_then_any() {
        let s = snap(vec![
            node("sh-1", "cn-sh", 50, 100),
            node("hz-1", "cn-hz", 10, 100),
            node("bj-1", "cn-bj", 0, 100),
            node("bj-2", "cn-bj", 5, 100),
            node("sz-1", "cn-sz", 1, 100),
        ]);
        let fallbacks = vec!["cn-hz".to_string()];
        let rules = Rules {
            fallbacks: &fallbacks,
            ..rules_now()
        };
        let c = select(&s, &q(Some("cn-sh"), 4), rules);
        assert_eq!(ids(&s, &c), ["sh-1", "hz-1", "bj-1", "sz-1"]);
        // Unknown region: least loaded anywhere.
        let c = select(&s, &q(None, 2), rules_now());
        assert_eq!(ids(&s, &c), ["bj-1", "sz-1"]);
    }

    #[test]
    fn ineligible_nodes_are_never_chosen() {
        let mut draining = node("d", "r", 0, 100);
        draining.state = NodeState::Draining;
        let mut sick = node("s", "r", 0, 100);
        sick.healthy = false;
        let full = node("f", "r", 95, 100);
        let mut wss_only = node("w", "r", 0, 100);
        wss_only.ports = Ports {
            tcp: None,
            ws: None,
            wss: Some(443),
        };
        let ok = node("ok", "r", 90, 100);
        let s = snap(vec![draining, sick, full, wss_only, ok]);
        assert_eq!(ids(&s, &select(&s, &q(Some("r"), 10), rules_now())), ["ok"]);
        let wss = Query {
            proto: Proto::Wss,
            ..q(Some("r"), 10)
        };
        assert_eq!(ids(&s, &select(&s, &wss, rules_now())), ["w"]);
        let v6 = Query {
            family: Some(IpFamily::V6),
            ..q(Some("r"), 10)
        };
        assert!(select(&s, &v6, rules_now()).is_empty(), "no IPv6 addresses");
    }

    #[test]
    fn dual_stack_answers_in_the_requested_family() {
        let mut n = node("ds", "r", 0, 100);
        n.ipv6 = Some("2001:db8::1".parse().unwrap());
        let s = snap(vec![n]);
        let v6 = Query {
            family: Some(IpFamily::V6),
            ..q(None, 1)
        };
        assert_eq!(
            select(&s, &v6, rules_now())[0].ip,
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        let v4 = Query {
            family: Some(IpFamily::V4),
            ..q(None, 1)
        };
        assert_eq!(
            select(&s, &v4, rules_now())[0].ip,
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    /// 10 nodes with unequal loads, 5 000 requests and no new reports: the router's
    /// own accounting spreads the burst until projected loads are level.
    #[test]
    fn herd_burst_levels_projected_loads() {
        let records: Vec<NodeRecord> = (0..10)
            .map(|i| node(&format!("n{i}"), "r", i * 100, 10_000))
            .collect();
        let s = snap(records);
        let rules = rules_now();
        for _ in 0..5000 {
            assert!(!select(&s, &q(Some("r"), 3), rules).is_empty());
        }
        let loads: Vec<f64> = s
            .nodes
            .iter()
            .map(|e| e.projected_load(&rules.herd))
            .collect();
        let mean = loads.iter().sum::<f64>() / loads.len() as f64;
        let max = loads.iter().cloned().fold(0.0, f64::max);
        assert!(max / mean <= 1.05, "max/mean = {} ({loads:?})", max / mean);
        let total: u64 = s
            .nodes
            .iter()
            .map(|e| rules.herd.pending(&e.assigned, 0))
            .sum();
        assert_eq!(total, 5000);
    }

    /// Two empty nodes `a` and `b` and ten answers given between them now: node `a`,
    /// the snapshot, and the herd view of the moment.
    fn ten_answers() -> (Arc<NodeRecord>, Snapshot, HerdView) {
        let a = Arc::new(node("a", "r", 0, 100));
        let b = Arc::new(node("b", "r", 0, 100));
        let s1 = Snapshot::build(vec![a.clone(), b], None, 1, false);
        let rules = rules_now();
        for _ in 0..10 {
            select(&s1, &q(None, 1), rules);
        }
        (a, s1, rules.herd)
    }

    /// A new report does not zero the count: answers after its sample still count,
    /// answers before it are in it. An unchanged report keeps everything.
    #[test]
    fn a_new_report_keeps_the_answers_it_does_not_include() {
        let (a, s1, h) = ten_answers();
        let pending =
            |s: &Snapshot, i: usize| h.pending(&s.nodes[i].assigned, s.nodes[i].sampled_ms);
        let total = pending(&s1, 0) + pending(&s1, 1);
        assert_eq!(total, 10);
        let now_ms = h.now_ms;
        // A report of b counted `age` ms before it was received at `received`.
        let report = |conns: u64, age: u64| {
            let mut r = node("b", "r", conns, 100);
            r.sample_age_ms = Some(age);
            Arc::new(r)
        };
        let at = |records: Vec<Arc<NodeRecord>>, prev: &Snapshot, received: u64| {
            Snapshot::build_holding(records, [], Some(prev), 2, false, 0, received)
        };
        // b counted before the answers: they all still count on top of its report.
        let s2 = at(vec![a.clone(), report(1, 120_000)], &s1, now_ms + 60_000);
        assert!(Arc::ptr_eq(&s1.nodes[1].assigned, &s2.nodes[1].assigned));
        assert_eq!(
            pending(&s2, 1),
            pending(&s1, 1),
            "sampled before the answers"
        );
        // b counted after them: its report includes them.
        let s3 = at(vec![a.clone(), report(5, 1_000)], &s2, now_ms + 2_000);
        assert_eq!(pending(&s3, 1), 0, "sampled after the answers");
        assert!(Arc::ptr_eq(&s1.nodes[0].assigned, &s3.nodes[0].assigned));
        assert_eq!(pending(&s3, 0), pending(&s1, 0), "a did not report");
    }

    /// The sample is placed on this router's clock: an agent whose wall clock runs
    /// ahead (its `sampled_ms` in this router's future) or behind changes nothing,
    /// since the router anchors the sample's age on its own receive time.
    #[test]
    fn a_slow_delivery_does_not_hide_the_answers_given_meanwhile() {
        const T0: u64 = 1_800_000_000_000;
        // The agent's clock is a second ahead; each report is written 10 ms after its
        // count and arrives `latency` ms later.
        let report = |skew: i64, sampled: u64, latency: u64| {
            let agent = |t: u64| (t as i64 + skew) as u64;
            let mut r = node("a", "r", 0, 100);
            r.sampled_ms = Some(agent(sampled));
            r.updated_ms = Some(agent(sampled + 10));
            r.sample_age_ms = Some(10);
            (Arc::new(r), sampled + 10 + latency)
        };
        let (r1, rx1) = report(1_000, T0, 5);
        let s1 = Snapshot::build_holding(vec![r1], [], None, 1, false, 0, rx1);
        assert_eq!(s1.nodes[0].sampled_ms, T0 + 5, "late by its delivery, 5 ms");
        // Ten answers, 10 ms after the next count is taken; that report then takes
        // 400 ms to arrive (etcd under load).
        for k in 0..10 {
            s1.nodes[0].assigned.add_at(T0 + 2_000 + k * 20);
        }
        let (r2, rx2) = report(1_000, T0 + 1_990, 400);
        let s2 = Snapshot::build_holding(vec![r2], [], Some(&s1), 2, false, 0, rx2);
        let e = &s2.nodes[0];
        // The fastest delivery (5 ms), aged 1 ms for each of the 2 s since.
        assert_eq!(
            e.sampled_ms,
            T0 + 1_990 + 5 + 2,
            "late by the fastest delivery seen"
        );
        let h = HerdView::at(rx2, 20, 1);
        assert_eq!(
            h.pending(&e.assigned, e.sampled_ms),
            10,
            "the answers given while the report travelled are not in it"
        );
        // The minimum ages by 1 ms a second, following a drifting clock.
        let (r3, rx3) = report(1_000, T0 + 61_990, 400);
        let s3 = Snapshot::build_holding(vec![r3], [], Some(&s2), 3, false, 0, rx3);
        assert_eq!(s3.nodes[0].sampled_ms, T0 + 61_990 + 5 + (rx3 - rx1) / 1000);
        // The agent's clock jumps 4 s back (or the node moved host): the minimum starts
        // again rather than placing samples seconds early.
        let (r4, rx4) = report(-3_000, T0 + 70_000, 20);
        let s4 = Snapshot::build_holding(vec![r4], [], Some(&s3), 4, false, 0, rx4);
        assert_eq!(s4.nodes[0].sampled_ms, T0 + 70_000 + 20);
    }

    #[test]
    fn an_agent_clock_off_by_seconds_does_not_hide_answers() {
        let (a, s1, h) = ten_answers();
        let pending =
            |s: &Snapshot, i: usize| h.pending(&s.nodes[i].assigned, s.nodes[i].sampled_ms);
        let before = pending(&s1, 0) + pending(&s1, 1);
        assert_eq!(before, 10);
        let now_ms = h.now_ms;
        for skew in [-5_000i64, -1_000, 500, 1_000, 5_000] {
            // Both reports counted 600 ms before the answers were given, on clocks
            // off by `skew`, and received 100 ms after the answers.
            let report = |id: &str| {
                let mut r = node(id, "r", 0, 100);
                let agent_now = (now_ms as i64 + 100 + skew) as u64;
                r.updated_ms = Some(agent_now);
                r.sampled_ms = Some(agent_now - 700);
                r.sample_age_ms = Some(700);
                Arc::new(r)
            };
            let s2 = Snapshot::build_holding(
                vec![report("a"), report("b")],
                [],
                Some(&s1),
                2,
                false,
                0,
                now_ms + 100,
            );
            assert_eq!(
                pending(&s2, 0) + pending(&s2, 1),
                before,
                "skew {skew} ms: the answers came after the samples"
            );
        }
        // An agent that sends no age: its `sampled_ms` is trusted, but never later
        // than the receipt.
        let mut old = node("b", "r", 0, 100);
        old.sampled_ms = Some(now_ms + 3_600_000);
        let s3 = Snapshot::build_holding(
            vec![a.clone(), Arc::new(old)],
            [],
            Some(&s1),
            3,
            false,
            0,
            now_ms + 100,
        );
        assert_eq!(s3.nodes[1].sampled_ms, now_ms + 100);
    }

    /// Answers that never became connections stop counting after the window: three
    /// small nodes polled by a monitor are back in service within seconds, without a
    /// report.
    #[test]
    fn phantom_answers_expire_with_the_window() {
        let s = snap(
            (0..3)
                .map(|i| node(&format!("n{i}"), "r", 0, 100))
                .collect(),
        );
        let h = HerdView::now(5000, 1);
        let polled = Rules {
            herd: h,
            ..rules_now()
        };
        let mut answered = 0;
        while select(&s, &q(None, 1), polled)[0].load < 0.95 {
            answered += 1;
        }
        assert!(answered >= 280, "{answered}");
        // Six seconds later, with no report, the answers no longer count.
        let later = Rules {
            herd: HerdView::at(h.now_ms + 6_000, 20, 1),
            ..rules_now()
        };
        let again = select(&s, &q(None, 3), later);
        assert_eq!(again.len(), 3);
        assert!(again.iter().all(|c| c.load < 0.1), "{again:?}");
    }

    /// Answers alone never make the router refuse: a region that phantom askers have
    /// filled on paper is still answered in full, after every node the estimate leaves
    /// room on, the least projected first. Only reported load empties an answer.
    #[test]
    fn projected_load_reorders_but_never_refuses() {
        let s = snap(vec![
            node("a1", "a", 200, 1000),
            node("a2", "a", 100, 1000),
            node("b1", "b", 0, 1000),
            node("full", "a", 960, 1000),
        ]);
        let fallbacks = vec!["b".to_string()];
        let rules = Rules {
            fallbacks: &fallbacks,
            ..rules_now()
        };
        // 1,800 phantom answers: beyond region a's 1,600 free slots, so the last go to
        // the fallback.
        for _ in 0..1800 {
            select(&s, &q(Some("a"), 1), rules);
        }
        let a1 = s.get("a1").unwrap().projected_load(&rules.herd);
        let a2 = s.get("a2").unwrap().projected_load(&rules.herd);
        assert!(a1 >= 0.95 && a2 >= 0.95, "{a1} {a2}");
        // b1 took the overflow once region a was projected full.
        let got = select(&s, &q(Some("a"), 3), rules);
        let names = ids(&s, &got);
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(
            names[0], "b1",
            "the node with projected room first: {names:?}"
        );
        assert!(
            !names.contains(&"full".to_string()),
            "reported load at max_load still refuses: {names:?}"
        );
        assert!(got[1].load <= got[2].load, "least projected first: {got:?}");
        // Nothing with reported room: only then is the answer empty.
        let full = snap(vec![node("f", "a", 960, 1000)]);
        assert!(select(&full, &q(Some("a"), 3), rules_now()).is_empty());
    }

    /// Two routers behind a balancer: each scales its own answers by the live count,
    /// and their tie orders differ, so a storm's first answers do not all name the
    /// same node.
    #[test]
    fn routers_scale_their_answers_and_break_ties_differently() {
        let fleet: Vec<Arc<NodeRecord>> = (0..20)
            .map(|i| Arc::new(node(&format!("n{i:02}"), "r", 0, 1000)))
            .collect();
        let firsts: std::collections::HashSet<usize> = (1..=8u64)
            .map(|seed| {
                let s = Snapshot::build_seeded(fleet.clone(), None, 1, false, seed * 7919);
                select(&s, &q(None, 1), rules_now())[0].index
            })
            .collect();
        assert!(
            firsts.len() >= 4,
            "eight routers' first answers: {firsts:?}"
        );
        let s = Snapshot::build_seeded(fleet, None, 1, false, 42);
        let two = Rules {
            herd: HerdView::now(5000, 2),
            ..rules_now()
        };
        let first = select(&s, &q(None, 1), two)[0].index;
        let e = &s.nodes[first];
        assert_eq!(
            e.projected_load(&two.herd),
            2.0 / 1000.0,
            "one answer counts twice"
        );
    }

    fn arb_node(i: usize) -> impl Strategy<Value = NodeRecord> {
        (
            0usize..4,
            0u64..1200,
            1u64..1000,
            any::<bool>(),
            any::<bool>(),
            0u8..8,
            any::<bool>(),
        )
            .prop_map(move |(region, conns, cap, draining, sick, ports, v6)| {
                let mut n = node(
                    &format!("n{i:03}"),
                    ["a", "b", "c", "d"][region],
                    conns,
                    cap,
                );
                n.state = if draining {
                    NodeState::Draining
                } else {
                    NodeState::Serving
                };
                n.healthy = !sick;
                n.ports = Ports {
                    tcp: (ports & 1 != 0).then_some(1),
                    ws: (ports & 2 != 0).then_some(2),
                    wss: (ports & 4 != 0 || ports == 0).then_some(3),
                };
                if v6 {
                    n.ipv6 = Some("2001:db8::1".parse().unwrap());
                }
                n
            })
    }

    fn arb_fleet() -> impl Strategy<Value = Vec<NodeRecord>> {
        (0usize..40).prop_flat_map(|n| (0..n).map(arb_node).collect::<Vec<_>>())
    }

    /// The rules written out the slow way: every eligible node, by tier, then by
    /// projected load and id.
    fn reference(s: &Snapshot, query: &Query<'_>, rules: Rules<'_>) -> Vec<usize> {
        let mut order: Vec<&str> = query.region.into_iter().collect();
        for f in rules.fallbacks {
            if !order.contains(&f.as_str()) {
                order.push(f);
            }
        }
        // (projected full, tier, projected load, index): nodes the estimate puts at or
        // above max_load come after every other, but still come.
        let mut eligible: Vec<(bool, usize, f64, usize)> = (0..s.nodes.len())
            .filter_map(|i| {
                let e = &s.nodes[i];
                let r = &e.record;
                let ok = r.state == NodeState::Serving
                    && r.healthy
                    && r.load() < rules.max_load
                    && r.ports.get(query.proto).is_some()
                    && r.addr_for(query.family).is_some();
                let tier = order
                    .iter()
                    .position(|t| *t == r.region)
                    .unwrap_or(order.len());
                let load = e.projected_load(&rules.herd);
                ok.then_some((load >= rules.max_load, tier, load, i))
            })
            .collect();
        eligible.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then(a.1.cmp(&b.1))
                .then(a.2.total_cmp(&b.2))
                .then(a.3.cmp(&b.3))
        });
        eligible
            .into_iter()
            .take(query.count)
            .map(|(_, _, _, i)| i)
            .collect()
    }

    /// Mid-burst, with every node of the region levelled and no report coming, an
    /// answer reads about `count` + 1 nodes whatever the region's size (a scan read
    /// them all).
    #[test]
    fn a_levelled_burst_reads_the_same_few_nodes_at_any_size() {
        let mut per_answer = Vec::new();
        for n in [100usize, 1_000, 10_000] {
            let records =
                (0..n).map(|i| Arc::new(node(&format!("gw-{i:06}"), "r0", 500_000, 1_000_000)));
            let snap = Snapshot::build_seeded(records, None, 1, false, 7);
            let q = q(Some("r0"), 3);
            // Microseconds, after the reports' receipt.
            let mut t = (registry::now_ms() + 1_000) * 1000;
            let (walks, visits) = (
                order::WALKS.with(|w| w.get()),
                order::VISITS.with(|w| w.get()),
            );
            let answers = 20_000u64;
            for _ in 0..answers {
                // 20,000 answers a second: the herd counts' slots turn four times.
                t += 50;
                let rules = Rules {
                    max_load: 0.95,
                    fallbacks: &[],
                    herd: HerdView::at(t / 1000, 20, 1),
                };
                assert_eq!(select(&snap, &q, rules).len(), 3);
            }
            let walked = order::WALKS.with(|w| w.get()) - walks;
            let read = order::VISITS.with(|w| w.get()) - visits;
            assert!(
                walked + u64::try_from(SCAN_BUDGET).unwrap() >= answers,
                "answered by walks: {walked}"
            );
            per_answer.push(read as f64 / answers as f64);
        }
        assert!(
            per_answer.iter().all(|&v| v <= 5.0),
            "nodes read per answer: {per_answer:?}"
        );
    }

    proptest! {
        /// The sorted walk with early stop chooses exactly what a full scan would,
        /// herd counters included.
        #[test]
        fn selection_equals_full_scan(fleet in arb_fleet(), assigned in proptest::collection::vec(0u64..600, 40),
                                      region in proptest::option::of(0usize..5), count in 1usize..=10,
                                      proto in 0usize..3, fam in 0u8..3,
                                      fallbacks in proptest::collection::vec(0usize..5, 0..3), ties in any::<bool>()) {
            let regions = ["a", "b", "c", "d", "zz"];
            // Small loads on two capacities: many equal loads, so ties are decided by id.
            let fleet = fleet.into_iter().map(|mut n| {
                if ties {
                    n.capacity = 4 + n.capacity % 2 * 4;
                    n.connections %= 6;
                }
                n
            });
            let s = snap(fleet.collect());
            let herd = HerdView::now(5000, 1);
            for (e, a) in s.nodes.iter().zip(&assigned) {
                set_pending(e, if ties { a % 3 } else { *a }, &herd);
            }
            let fallbacks: Vec<String> = fallbacks.iter().map(|f| regions[*f].to_string()).collect();
            let rules = Rules { max_load: 0.95, fallbacks: &fallbacks, herd };
            let family = [None, Some(IpFamily::V4), Some(IpFamily::V6)][fam as usize];
            let query = Query { proto: Proto::ALL[proto], count, region: region.map(|r| regions[r]), family };
            let expected = reference(&s, &query, rules);
            let got: Vec<usize> = select(&s, &query, rules).iter().map(|c| c.index).collect();
            prop_assert_eq!(got, expected);
        }

        /// Patching a snapshot with reports gives the snapshot a full build gives:
        /// the same entries (herd counters carried over) and the same sorted indexes,
        /// whatever changed (load, state, health, region, ports), for any seed.
        #[test]
        fn patch_equals_build(fleet in arb_fleet(), changes in proptest::collection::vec((0usize..40, 0usize..40), 0..12),
                              seed in prop_oneof![Just(0u64), any::<u64>()]) {
            let mut ids = std::collections::HashSet::new();
            let fleet: Vec<Arc<NodeRecord>> = fleet.into_iter().filter(|n| ids.insert(n.id.clone())).map(Arc::new).collect();
            prop_assume!(!fleet.is_empty());
            let base = Snapshot::build_seeded(fleet.iter().cloned(), None, 1, false, seed);
            // Each change gives node `a` the fields of a random other node `b`.
            let mut now: std::collections::BTreeMap<String, Arc<NodeRecord>> =
                fleet.iter().map(|r| (r.id.clone(), r.clone())).collect();
            let mut reports = Vec::new();
            for (a, b) in changes {
                let (a, b) = (&fleet[a % fleet.len()], &fleet[b % fleet.len()]);
                let r = Arc::new(NodeRecord { id: a.id.clone(), ..(**b).clone() });
                now.insert(a.id.clone(), r.clone());
                reports.push(r);
            }
            let patched = base.patch(&reports, 2, true).expect("every id is in the snapshot");
            let built = Snapshot::build_seeded(now.values().cloned(), Some(&base), 2, true, seed);
            prop_assert_eq!(patched.nodes.len(), built.nodes.len());
            for (p, b) in patched.nodes.iter().zip(built.nodes.iter()) {
                prop_assert_eq!(&p.record, &b.record);
                prop_assert!(Arc::ptr_eq(&p.assigned, &b.assigned), "herd counter carried over");
                prop_assert_eq!(p.tie, b.tie);
                prop_assert_eq!(p.reported_load.to_bits(), b.reported_load.to_bits());
            }
            prop_assert_eq!(&patched.all.0, &built.all.0);
            for (region, lists) in &built.by_region {
                prop_assert_eq!(&patched.by_region.get(region).map(|l| &l.0), &Some(&lists.0), "region {}", region);
            }
            // A region the patch emptied keeps empty lists; no other difference.
            for (region, lists) in &patched.by_region {
                if !built.by_region.contains_key(region) {
                    prop_assert!(lists.0.iter().all(Vec::is_empty), "region {}", region);
                }
            }
            prop_assert_eq!((patched.revision, patched.stale), (2, true));
            prop_assert!(base.patch([&Arc::new(node("not-there", "a", 1, 10))], 3, false).is_none());
        }

        /// A burst answered through the herd-adjusted orders (no scan at all) chooses
        /// what a full scan would, answer after answer, while reports patch the
        /// snapshot and time crosses slots and the window.
        #[test]
        fn the_herd_adjusted_order_equals_a_full_scan(
            fleet in arb_fleet(),
            steps in proptest::collection::vec((0u8..10, 0usize..40, 0usize..40, 0u64..400), 1..80),
            routers in 1u64..4, count in 1usize..=4, ties in any::<bool>(),
        ) {
            let regions = ["a", "b", "c", "d", "zz"];
            let mut ids = std::collections::HashSet::new();
            let fleet: Vec<Arc<NodeRecord>> = fleet.into_iter()
                .filter(|n| ids.insert(n.id.clone()))
                .map(|mut n| {
                    if ties {
                        n.capacity = 8 + n.capacity % 2 * 8;
                        n.connections %= 4;
                    }
                    Arc::new(n)
                })
                .collect();
            prop_assume!(!fleet.is_empty());
            let mut now = 1_800_000_000_000u64;
            let mut s = Snapshot::build_holding(fleet.iter().cloned(), [], None, 1, false, 0, now);
            let fallbacks = vec!["b".to_string()];
            let walks = order::WALKS.with(|w| w.get());
            let mut selects = 0;
            for (kind, a, b, ms) in steps {
                now += ms;
                let rules = Rules { max_load: 0.95, fallbacks: &fallbacks, herd: HerdView::at(now, 8, routers) };
                match kind {
                    // A report: node `a` with `b`'s load, sampled a little earlier.
                    0 => {
                        let (a, b) = (&fleet[a % fleet.len()], &fleet[b % fleet.len()]);
                        let r = Arc::new(NodeRecord {
                            id: a.id.clone(),
                            region: a.region.clone(),
                            sampled_ms: Some(now - ms / 2),
                            updated_ms: Some(now),
                            ..(**b).clone()
                        });
                        s = s.patch_at([&r], 2, false, now).expect("known id");
                    }
                    _ => {
                        let query = Query { proto: Proto::ALL[a % 3], count, region: Some(regions[b % 5]), family: None };
                        let expected = reference(&s, &query, rules);
                        let got: Vec<usize> = select_budgeted(&s, &query, rules, 1, 0).iter().map(|c| c.index).collect();
                        // Something to choose: a walk answered (budget 0 allows no scan).
                        selects += u64::from(!expected.is_empty());
                        prop_assert_eq!(got, expected, "at +{}", now % 100_000);
                    }
                }
            }
            let walked = order::WALKS.with(|w| w.get()) - walks;
            prop_assert!(walked >= selects, "{} walks for {} selections", walked, selects);
        }

        #[test]
        fn selection_invariants(fleet in arb_fleet(), region in proptest::option::of(0usize..5),
                                count in 1usize..=10, proto in 0usize..3, fam in 0u8..3,
                                fallback in proptest::option::of(0usize..4)) {
            let regions = ["a", "b", "c", "d", "zz"];
            let s = snap(fleet);
            let fallbacks: Vec<String> = fallback.map(|f| regions[f].to_string()).into_iter().collect();
            let rules = Rules { max_load: 0.95, fallbacks: &fallbacks, herd: HerdView::now(5000, 1) };
            let family = [None, Some(IpFamily::V4), Some(IpFamily::V6)][fam as usize];
            let query = Query { proto: Proto::ALL[proto], count, region: region.map(|r| regions[r]), family };
            // Loads before the call (select counts one client on the first candidate).
            let before: Vec<f64> = s.nodes.iter().map(|e| e.projected_load(&rules.herd)).collect();
            let out = select(&s, &query, rules);
            let eligible = |i: usize| {
                let r = &s.nodes[i].record;
                r.state == NodeState::Serving && r.healthy && before[i] < 0.95
                    && r.ports.get(query.proto).is_some() && r.addr_for(family).is_some()
            };
            let n_eligible = (0..s.nodes.len()).filter(|&i| eligible(i)).count();
            prop_assert_eq!(out.len(), count.min(n_eligible), "min(count, eligible)");
            let mut seen = std::collections::HashSet::new();
            for c in &out {
                prop_assert!(eligible(c.index), "ineligible node chosen");
                prop_assert!(seen.insert(c.index), "duplicate");
            }
            // Tier of each candidate never decreases; inside a tier, load never decreases.
            let mut order: Vec<&str> = query.region.into_iter().collect();
            for f in &fallbacks { if !order.contains(&f.as_str()) { order.push(f); } }
            let tier = |i: usize| order.iter().position(|r| *r == s.nodes[i].record.region).unwrap_or(order.len());
            for w in out.windows(2) {
                let (t0, t1) = (tier(w[0].index), tier(w[1].index));
                prop_assert!(t0 <= t1, "region order");
                if t0 == t1 { prop_assert!(before[w[0].index] <= before[w[1].index], "least loaded first"); }
            }
            // Nothing better was left out: every eligible node not chosen in a tier the
            // answer reached is at least as loaded as the chosen ones of that tier.
            if out.len() == count {
                let last_tier = tier(out[out.len() - 1].index);
                for i in (0..s.nodes.len()).filter(|&i| eligible(i) && !seen.contains(&i)) {
                    let t = tier(i);
                    prop_assert!(t >= last_tier, "a node of an earlier tier was skipped");
                    if t == last_tier {
                        let worst = out.iter().filter(|c| tier(c.index) == t).map(|c| before[c.index]).fold(0.0, f64::max);
                        prop_assert!(before[i] >= worst, "a less loaded node was skipped");
                    }
                }
            }
        }
    }
}
