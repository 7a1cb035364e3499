//! The herd-adjusted order of one index, kept for a burst.
//!
//! An index is sorted by *reported* load, a lower bound of the projected load that
//! lets a quiet request stop after `count` + 1 nodes. During a burst the reports lag,
//! the herd counts level the projected loads, and every node whose reported load is
//! below the level has to be read: the walk grows with the fleet. An [`Order`] keeps
//! the index's nodes sorted by a lower bound that is exact when it is set, so the walk
//! reads the `count` best nodes, and those whose key has fallen behind (each is
//! repaired when read), whatever the fleet size.
//!
//! Why the keys stay lower bounds:
//!
//! * within one slot of the herd counts ([`crate::herd::SLOT_MS`]) the window's start
//!   does not move, so a node's projected load only grows: answers are added, never
//!   taken away ([`HerdView::pending_floor`] covers the one exception, a recent sample
//!   whose count moves from fine to coarse slots);
//! * a new report (a patch) may lower it: the node is put back with its reported
//!   load, the lowest its projected load can be;
//! * at the next slot the window moves and loads may fall: the keys are computed
//!   again, once per slot, outside the lock. Until then requests scan the index.
//!
//! Beside each key the order keeps what the walk reads of the node (its load basis,
//! herd counter and record), so a walk does not look nodes up in the snapshot's
//! persistent vector, whose index was the walk's largest cost.
//!
//! An order belongs to one snapshot (its generation). A patch hands it to the next
//! snapshot, and the one patched keeps scanning: a snapshot never reads keys that
//! another one's reports have moved.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use registry::NodeRecord;

use crate::herd::{HerdCounter, HerdView};

use super::entry::LoadBasis;
use super::{NodeEntry, Snapshot};

/// A new snapshot's generation (0 is the empty default snapshot's).
pub(super) fn next_generation() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// One index's herd-adjusted order.
#[derive(Debug, Default)]
pub(super) struct Order {
    state: Mutex<State>,
    /// The herd counts' slot (plus one; 0: never) in which a scan of this index last
    /// ran past its budget: while a burst lasts, requests walk the order at once.
    levelled: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// The generation of the snapshot that uses and updates this order (0: none yet,
    /// the first to claim it).
    owner: u64,
    keyed: Option<Keyed>,
    /// Keys are being computed for this view (outside the lock).
    building: Option<View>,
}

/// What the keys were computed for: the slot, the window's oldest slot and the scale.
type View = (u64, u64, u64);

fn view_of(herd: &HerdView) -> View {
    (herd.now, herd.oldest, herd.scale)
}

#[derive(Debug)]
struct Keyed {
    view: View,
    /// (key as f64 bits, tie rank, node index): a load is never negative, so its bits
    /// order as the number does. Each with what a walk reads of the node.
    set: BTreeMap<(u64, u64, u32), Hot>,
    /// Each node's current key, by index ([`ABSENT`] for the nodes not in the index).
    key: Vec<u64>,
}

/// What a walk reads of one node: copied from its entry when it is keyed.
#[derive(Debug, Clone)]
struct Hot {
    basis: LoadBasis,
    assigned: Arc<HerdCounter>,
    record: Arc<NodeRecord>,
}

impl Hot {
    fn of(e: &NodeEntry) -> Hot {
        Hot {
            basis: e.basis,
            assigned: e.assigned.clone(),
            record: e.record.clone(),
        }
    }
}

/// The key of a node not in the index.
const ABSENT: u64 = u64::MAX;

impl Keyed {
    fn build(nodes: &registry::imbl::Vector<NodeEntry>, list: &[u32], herd: &HerdView) -> Keyed {
        let mut key = vec![ABSENT; nodes.len()];
        let mut set = BTreeMap::new();
        for &i in list {
            let e = &nodes[i as usize];
            let k = e.loads(herd).1.to_bits();
            key[i as usize] = k;
            set.insert((k, e.tie, i), Hot::of(e));
        }
        Keyed {
            view: view_of(herd),
            set,
            key,
        }
    }

    fn remove(&mut self, i: u32, tie: u64) -> Option<Hot> {
        let k = std::mem::replace(&mut self.key[i as usize], ABSENT);
        if k == ABSENT {
            return None;
        }
        self.set.remove(&(k, tie, i))
    }

    fn insert(&mut self, i: u32, tie: u64, k: u64, hot: Hot) {
        self.remove(i, tie);
        self.key[i as usize] = k;
        self.set.insert((k, tie, i), hot);
    }

    /// Moves node `i`, keyed now, to key `k`.
    fn rekey(&mut self, i: u32, tie: u64, k: u64) {
        if let Some(hot) = self.remove(i, tie) {
            self.key[i as usize] = k;
            self.set.insert((k, tie, i), hot);
        }
    }
}

/// What a walk reports to.
pub(super) trait Walker {
    /// True when no node at `key` (or a later one) can be kept: the walk ends.
    fn done(&self, key: f64, tie: u64, i: u32) -> bool;
    /// Node `i` (tie rank `tie`, reporting `record`), at projected `load`.
    fn visit(&mut self, i: u32, tie: u64, record: &NodeRecord, load: f64);
}

impl Order {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes this order the snapshot `generation`'s, when it is `from`'s (or nobody's
    /// yet). False when another snapshot owns it: the caller gives itself a new one.
    pub(super) fn hand_over(&self, from: u64, generation: u64) -> bool {
        let mut s = self.lock();
        if s.owner == from || s.owner == 0 {
            s.owner = generation;
            // Keys being computed for the old owner are not taken.
            s.building = None;
            true
        } else {
            false
        }
    }

    /// A fresh order owned by `generation`.
    pub(super) fn owned_by(generation: u64) -> Order {
        Order {
            state: Mutex::new(State {
                owner: generation,
                keyed: None,
                building: None,
            }),
            levelled: AtomicU64::new(0),
        }
    }

    /// Notes that a scan of the index ran past its budget at `herd`'s slot.
    pub(super) fn mark_levelled(&self, herd: &HerdView) {
        self.levelled.fetch_max(herd.now + 1, Ordering::Relaxed);
    }

    /// True when a scan ran past its budget in this slot or the one before: a burst is
    /// levelling the index, and a scan would only read the budget again.
    pub(super) fn levelled(&self, herd: &HerdView) -> bool {
        self.levelled.load(Ordering::Relaxed) >= herd.now.max(1)
    }

    /// Node `i` left the index (patch).
    pub(super) fn remove(&self, i: u32, tie: u64) {
        if let Some(k) = self.lock().keyed.as_mut() {
            k.remove(i, tie);
        }
    }

    /// Node `i` joined the index, or came back with a new report (patch): keyed by its
    /// reported load, a lower bound of its projected load at any time.
    pub(super) fn insert(&self, e: &NodeEntry, i: u32) {
        if let Some(k) = self.lock().keyed.as_mut() {
            k.insert(i, e.tie, e.reported_load.to_bits(), Hot::of(e));
        }
    }

    /// Walks the members of `list` (this order's index in `snap`) least key first,
    /// until `walker` is done, reading each node's projected load for it; the keys of
    /// the nodes read that were found behind their loads are repaired afterwards.
    ///
    /// False, without a walk, when the order cannot serve `snap` at `herd` now: it
    /// belongs to another snapshot, or its keys are being computed for this slot (the
    /// caller scans the index instead).
    pub(super) fn walk(
        &self,
        snap: &Snapshot,
        list: &[u32],
        herd: &HerdView,
        walker: &mut impl Walker,
    ) -> bool {
        let view = view_of(herd);
        let mut s = self.lock();
        if s.owner == 0 {
            // A new index's order: the snapshot that built it is the first to walk it.
            s.owner = snap.generation;
        }
        if s.owner != snap.generation {
            return false;
        }
        let current = s.keyed.as_ref().is_some_and(|k| k.view == view);
        if !current {
            // Keys of an older slot may be above the loads now: compute them again,
            // once, outside the lock; a request of an older slot than the keys scans.
            if s.building.is_some_and(|b| b >= view)
                || s.keyed.as_ref().is_some_and(|k| k.view > view)
            {
                return false;
            }
            s.building = Some(view);
            drop(s);
            let keyed = Keyed::build(&snap.nodes, list, herd);
            s = self.lock();
            if s.owner != snap.generation || s.building != Some(view) {
                return false;
            }
            s.building = None;
            s.keyed = Some(keyed);
        }
        let keyed = s.keyed.as_mut().expect("keyed above");
        let mut repairs: smallvec::SmallVec<[(u32, u64, u64); 8]> = smallvec::SmallVec::new();
        for (&(k, tie, i), hot) in &keyed.set {
            if walker.done(f64::from_bits(k), tie, i) {
                break;
            }
            #[cfg(test)]
            VISITS.with(|w| w.set(w.get() + 1));
            let (load, floor) = hot.basis.loads(&hot.assigned, herd);
            walker.visit(i, tie, &hot.record, load);
            if floor.to_bits() > k {
                repairs.push((i, tie, floor.to_bits()));
            }
        }
        for (i, tie, k) in repairs {
            keyed.rekey(i, tie, k);
        }
        #[cfg(test)]
        WALKS.with(|w| w.set(w.get() + 1));
        true
    }
}

#[cfg(test)]
thread_local! {
    /// Walks this thread made (tests check that the order, not a scan, answered).
    pub(super) static WALKS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    pub(super) static VISITS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}
