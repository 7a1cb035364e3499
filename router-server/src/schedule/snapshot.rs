//! The [`Snapshot`]: every node as the router serves it, built from the records, with
//! the indexes selection walks (`index.rs`).

use std::collections::HashSet;
use std::sync::Arc;

use registry::imbl::Vector;
use registry::NodeRecord;

use super::arrival::Arrival;
use super::entry::NodeEntry;
use super::index::{indexes, ByRegion, Group};
use super::order;

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
    pub(super) by_region: ByRegion,
    /// Every region's nodes.
    pub(super) all: Group,
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
            Some(e) if Arc::ptr_eq(&e.record, &record) || *e.record == *record => {
                e.same_report(record, tie)
            }
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
