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
//!   again, once per slot, outside the lock. Requests of that slot wait for them (a
//!   scan would read every node, as the build does); older requests scan the index;
//! * a request whose window starts a slot earlier (the window is the configured one
//!   plus the router's measured lag) counts every answer the keys count, and walks
//!   them; it repairs them to the keys' window, not its own.
//!
//! Beside the keys the order keeps what the walk reads of each node (its load basis,
//! herd counter and record) in a flat array, so a walk does not look nodes up in the
//! snapshot's persistent vector, whose index was the walk's largest cost.
//!
//! An order belongs to one snapshot (its generation). A patch hands it to the next
//! snapshot, and the one patched keeps scanning: a snapshot never reads keys that
//! another one's reports have moved.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use registry::NodeRecord;

use crate::herd::{HerdCounter, HerdView};

use super::entry::LoadBasis;
use super::{NodeEntry, Snapshot};

/// How long a request waits for keys another one is computing before it scans the
/// index itself: a latency bound. Keys for 10,000 nodes took about 5 ms on a busy
/// 2-core machine; an index several times larger is scanned meanwhile, as before.
const BUILD_WAIT: Duration = Duration::from_millis(20);

/// A new snapshot's generation (0 is the empty default snapshot's).
pub(super) fn next_generation() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// One index's herd-adjusted order.
#[derive(Debug, Default)]
pub(super) struct Order {
    state: Mutex<State>,
    /// Signalled when keys being computed are set, or will not be.
    built: Condvar,
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

/// True when keys computed for view `keys` are lower bounds of the loads a request of
/// view `request` reads: the same view, or the same slot and scale over a window that
/// starts no later (the request counts every answer the keys count). The window grows
/// and shrinks by a slot when the router's measured lag crosses a slot's width.
fn covers(keys: View, request: View) -> bool {
    keys.0 == request.0 && keys.2 == request.2 && request.1 <= keys.1
}

#[derive(Debug)]
struct Keyed {
    view: View,
    /// (key as f64 bits, tie rank, node index) → the node's place in `members`: a
    /// load is never negative, so its bits order as the number does.
    set: BTreeMap<(u64, u64, u32), u32>,
    /// What a walk reads of each keyed node, side by side, so the set's elements stay
    /// small for its inserts and removals.
    members: Vec<Member>,
    /// Places in `members` that a removed node left (each keeps its copy until reused).
    free: Vec<u32>,
    /// Each node's place in `members`, by index ([`ABSENT`]: not in the index).
    place: Vec<u32>,
}

/// One keyed node: its key, and what a walk reads of it (copied from its entry when
/// it is keyed).
#[derive(Debug)]
struct Member {
    key: u64,
    basis: LoadBasis,
    assigned: Arc<HerdCounter>,
    record: Arc<NodeRecord>,
}

impl Member {
    fn of(e: &NodeEntry, key: u64) -> Member {
        Member {
            key,
            basis: e.basis,
            assigned: e.assigned.clone(),
            record: e.record.clone(),
        }
    }
}

/// The place of a node not in the index.
const ABSENT: u32 = u32::MAX;

impl Keyed {
    fn build(nodes: &registry::imbl::Vector<NodeEntry>, list: &[u32], herd: &HerdView) -> Keyed {
        let mut keyed = Keyed {
            view: view_of(herd),
            set: BTreeMap::new(),
            members: Vec::with_capacity(list.len()),
            free: Vec::new(),
            place: vec![ABSENT; nodes.len()],
        };
        for &i in list {
            let e = &nodes[i as usize];
            keyed.insert(i, e, e.loads(herd).1.to_bits());
        }
        keyed
    }

    fn remove(&mut self, i: u32, tie: u64) {
        let at = std::mem::replace(&mut self.place[i as usize], ABSENT);
        if at != ABSENT {
            self.set.remove(&(self.members[at as usize].key, tie, i));
            self.free.push(at);
        }
    }

    /// Keys node `i` (entry `e`) at `key`.
    fn insert(&mut self, i: u32, e: &NodeEntry, key: u64) {
        self.remove(i, e.tie);
        let member = Member::of(e, key);
        let at = match self.free.pop() {
            Some(at) => {
                self.members[at as usize] = member;
                at
            }
            None => {
                self.members.push(member);
                (self.members.len() - 1) as u32
            }
        };
        self.place[i as usize] = at;
        self.set.insert((key, e.tie, i), at);
    }

    /// Moves node `i` (tie rank `tie`, at place `at`) to key `key`.
    fn rekey(&mut self, i: u32, tie: u64, at: u32, key: u64) {
        let member = &mut self.members[at as usize];
        self.set.remove(&(member.key, tie, i));
        member.key = key;
        self.set.insert((key, tie, i), at);
    }
}

/// What a walk reports to.
pub(super) trait Walker {
    /// True when no node at `key` (or a later one) can be kept: the walk ends.
    fn done(&self, key: f64, tie: u64, i: u32) -> bool;
    /// Node `i` (tie rank `tie`, reporting `record`), at projected `load`.
    fn visit(&mut self, i: u32, tie: u64, record: &NodeRecord, load: f64);
    /// After the walk, when it chose the answer's first candidate: that node's index
    /// and tie rank.
    fn first(&self) -> Option<(u32, u64)>;
    /// The clients to count against the first candidate, taken: the caller counts them
    /// no more.
    fn take_uncounted(&mut self) -> u64;
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
            self.built.notify_all();
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
            built: Condvar::new(),
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
            k.insert(i, e, e.reported_load.to_bits());
        }
    }

    /// Walks the members of `list` (this order's index in `snap`) least key first,
    /// until `walker` is done, reading each node's projected load for it; the keys of
    /// the nodes read that were found behind their loads are repaired afterwards. When
    /// the walk chose the answer's first candidate, it counts the answer against it
    /// under the lock, so that no walk reads that node without it.
    ///
    /// False, without a walk, when the order cannot serve `snap` at `herd` now: it
    /// belongs to another snapshot, its keys are of a later slot than `herd`'s, or keys
    /// another request is computing did not come within [`BUILD_WAIT`] (the caller
    /// scans the index instead).
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
        let mut waited = false;
        loop {
            if s.owner != snap.generation {
                return false;
            }
            let keys = s.keyed.as_ref().map(|k| k.view);
            if keys.is_some_and(|k| covers(k, view)) {
                break;
            }
            if let Some(b) = s.building.filter(|&b| covers(b, view)) {
                // Another request is computing keys this one can use. A scan would read
                // every node of the index, as the build does: wait for the keys instead.
                if waited {
                    return false;
                }
                waited = true;
                #[cfg(test)]
                WAITS.fetch_add(1, Ordering::Relaxed);
                #[cfg(not(test))]
                let wait = BUILD_WAIT;
                #[cfg(test)]
                let wait = WAIT.with(|w| w.get()).unwrap_or(BUILD_WAIT);
                s = self
                    .built
                    .wait_timeout_while(s, wait, |s| s.building == Some(b))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                continue;
            }
            // Keys of an older slot may be above the loads now: compute them again, once,
            // outside the lock; a request of an older slot than the keys scans.
            if keys.is_some_and(|k| k > view) || s.building.is_some_and(|b| b > view) {
                return false;
            }
            s.building = Some(view);
            drop(s);
            #[cfg(test)]
            BUILD_HOOK.with_borrow_mut(|h| h.as_mut().map(|h| h()));
            let keyed = Keyed::build(&snap.nodes, list, herd);
            s = self.lock();
            let mine = s.owner == snap.generation && s.building == Some(view);
            if mine {
                s.building = None;
                s.keyed = Some(keyed);
            }
            self.built.notify_all();
            if !mine {
                return false;
            }
        }
        let keyed = s.keyed.as_mut().expect("keyed above");
        // A request over a longer window than the keys' repairs them to floors of the
        // keys' window: its own may be above the loads the keys' requests see.
        let own = (keyed.view != view).then_some(HerdView {
            oldest: keyed.view.1,
            ..*herd
        });
        let mut repairs: smallvec::SmallVec<[(u32, u64, u32, u64); 8]> = smallvec::SmallVec::new();
        for (&(k, tie, i), &at) in &keyed.set {
            if walker.done(f64::from_bits(k), tie, i) {
                break;
            }
            #[cfg(test)]
            VISITS.with(|w| w.set(w.get() + 1));
            let m = &keyed.members[at as usize];
            let (load, floor) = m.basis.loads(&m.assigned, herd);
            let floor = own.map_or(floor, |own| m.basis.loads(&m.assigned, &own).1);
            walker.visit(i, tie, &m.record, load);
            if floor.to_bits() > k {
                repairs.push((i, tie, at, floor.to_bits()));
            }
        }
        // The answer's first candidate, when this walk chose it, is counted here, under
        // the lock, and its key raised to the floor that count gives (at least the floor
        // before it, so its repair waits for that): the next walk need not read it only
        // to find its key behind (in a levelled burst, one of the `count` + 1 nodes each
        // walk read).
        let first = walker
            .first()
            .map(|(i, tie)| (i, tie, keyed.place[i as usize]))
            .filter(|&(.., at)| at != ABSENT);
        for (i, tie, at, k) in repairs {
            if first.is_none_or(|(f, ..)| f != i) {
                keyed.rekey(i, tie, at, k);
            }
        }
        if let Some((i, tie, at)) = first {
            let m = &keyed.members[at as usize];
            herd.record_n(&m.assigned, walker.take_uncounted());
            let floor = m.basis.loads(&m.assigned, own.as_ref().unwrap_or(herd)).1;
            if floor.to_bits() > m.key {
                keyed.rekey(i, tie, at, floor.to_bits());
            }
        }
        #[cfg(test)]
        WALKS.with(|w| w.set(w.get() + 1));
        true
    }
}

/// Requests that waited for keys another was computing (tests).
#[cfg(test)]
pub(super) static WAITS: AtomicU64 = AtomicU64::new(0);

#[cfg(test)]
thread_local! {
    /// How long this thread waits for keys another computes (tests; else [`BUILD_WAIT`]).
    pub(super) static WAIT: std::cell::Cell<Option<Duration>> = const { std::cell::Cell::new(None) };
    /// Runs on this thread when it starts computing keys (tests hold a build there).
    pub(super) static BUILD_HOOK: std::cell::RefCell<Option<Box<dyn FnMut()>>> =
        const { std::cell::RefCell::new(None) };
    /// Walks this thread made (tests check that the order, not a scan, answered).
    pub(super) static WALKS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    pub(super) static VISITS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}
