//! The [`Snapshot`]: every node as the router serves it, and the per-region,
//! per-protocol indexes sorted by reported load that selection walks.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use registry::imbl::Vector;
use registry::{NodeRecord, NodeState, Proto};

use crate::answer::NodeJson;
use crate::herd::{HerdCounter, HerdView};

use super::arrival::{sample_time, Arrival, Delivery};
use super::order::{self, Order};

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
    pub(super) reported_load: f64,
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
    pub(super) fn loads(&self, herd: &HerdView) -> (f64, f64) {
        let (pending, floor) = herd.pending_and_floor(&self.assigned, self.sampled_ms);
        let load = |p: u64| self.connections.saturating_add(p) as f64 * self.inv_capacity;
        (load(pending), load(floor))
    }
}

/// Node indexes (into [`Snapshot::nodes`]) that can serve one protocol, per protocol,
/// sorted by reported load, then index; and each list's herd-adjusted [`Order`].
#[derive(Debug, Clone, Default)]
pub(super) struct ByProto(pub(super) [Vec<u32>; 3], pub(super) [Arc<Order>; 3]);

/// One index: its list, sorted by reported load, and its herd-adjusted order.
#[derive(Clone, Copy)]
pub(super) struct Index<'a> {
    pub(super) list: &'a [u32],
    pub(super) order: &'a Order,
}

impl ByProto {
    pub(super) fn get(&self, proto: Proto) -> Index<'_> {
        Index {
            list: &self.0[proto as usize],
            order: &self.1[proto as usize],
        }
    }
}

/// The key an index is sorted by: reported load (a load is never negative, so its
/// bits order as the number does), tie rank, index.
pub(super) fn rank_key(e: &NodeEntry, i: u32) -> (u64, u64, u32) {
    (e.reported_load.to_bits(), e.tie, i)
}

impl NodeEntry {
    /// The entry for a new report; `prev` is the same node's entry before it.
    pub(super) fn new(
        record: Arc<NodeRecord>,
        prev: Option<&NodeEntry>,
        tie: u64,
        received: u64,
    ) -> Self {
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
    pub(super) fn indexed(&self) -> bool {
        self.eligible() && !self.held
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
    pub(super) by_region: HashMap<Arc<str>, ByProto, foldhash::fast::RandomState>,
    pub(super) all: ByProto,
    /// Eligible nodes held by protect (gone from the registry without a drain), by
    /// reported load: offered only when the live nodes cannot fill an answer. Empty
    /// but during a protect hold.
    pub(super) held: Vec<u32>,
    /// Registry revision this snapshot reflects.
    pub revision: i64,
    /// True while answers come from an older set (registry unreachable or protect).
    pub stale: bool,
    /// Which snapshot this is: the herd-adjusted orders serve the snapshot that owns
    /// them (see [`order`]).
    pub(super) generation: u64,
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
        let (records, held_ids) = by_id_with_held(records.into_iter().collect(), held);
        let nodes = entries(records, &held_ids, previous, seed, &received);
        let (by_region, all, held) = indexes(&nodes);
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

    /// The regions that have nodes, in no particular order.
    pub fn regions(&self) -> impl Iterator<Item = &str> {
        self.by_region.keys().map(|r| &**r)
    }

    /// Live nodes (valid records), whatever their state.
    pub fn live(&self) -> usize {
        self.nodes.len()
    }
}

/// The records sorted by id, with the `held` ones whose id has no live record; and
/// the ids of those held records.
fn by_id_with_held(
    mut records: Vec<Arc<NodeRecord>>,
    held: impl IntoIterator<Item = Arc<NodeRecord>>,
) -> (Vec<Arc<NodeRecord>>, HashSet<String>) {
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
    (records, held_ids)
}

/// The entries of `records` (sorted by id), each matched with its entry in `previous`:
/// an unchanged report keeps its entry, a new one keeps the herd counter and tie rank.
fn entries(
    records: Vec<Arc<NodeRecord>>,
    held_ids: &HashSet<String>,
    previous: Option<&Snapshot>,
    seed: u64,
    received: &Arrival,
) -> Vec<NodeEntry> {
    // Records by id (the registry's map yields them sorted already), matched with
    // the previous snapshot's nodes (sorted by id too) in one merge: no hashing.
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
    nodes
}

/// [`Snapshot::by_region`]'s type.
type ByRegion = HashMap<Arc<str>, ByProto, foldhash::fast::RandomState>;

/// The indexes of `nodes`: per region and protocol, per protocol, and the held nodes,
/// each sorted by reported load.
fn indexes(nodes: &[NodeEntry]) -> (ByRegion, ByProto, Vec<u32>) {
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
    (by_region, all, held)
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
