//! Herd accounting: the clients a router has sent to a node that its last report does
//! not include yet.
//!
//! A report's count lags: it was sampled at some moment (`sampled_ms`), written, and
//! delivered by the watch, while a reconnect storm sends thousands of clients a second.
//! So each router counts its answers per node, and a node's projected load is
//!
//! ```text
//! (reported connections + routers × answers since max(sample time, now − window)) / capacity
//! ```
//!
//! * **Answers after the sample** are not in the report, whenever the report arrives;
//!   answers before it are (the client connected before the count was taken). A new
//!   report therefore does not zero the count: it moves the start of what still counts.
//!   For a recent sample (the last [`FINE_SPAN_MS`], which is where reports land during
//!   a storm) the count after it is exact to [`FINE_MS`]: each node keeps a running
//!   total and, per fine slot, the total when the slot's first answer came. Older
//!   samples are counted by [`SLOT_MS`] slots, which also carry the window.
//! * **Answers older than the window** (a few seconds, `herd_window_secs`) no longer
//!   count at all: a real client connects within it, so an older answer that is not in
//!   a report never became a connection (a monitor polling `/gateways`, a client that
//!   went away). Without this, a steady node that reports every 30 s would stay
//!   "full" of phantoms that long.
//! * **Several routers** behind a balancer each see only their share of a storm. Each
//!   registers itself under `P/routers/` and scales its own answers by the live
//!   routers that are answering ([`share`]: their heartbeats carry answer counts),
//!   which, with the balancer spreading requests evenly, estimates what all of them
//!   sent. Ties between equally loaded nodes are broken by a per-router random
//!   order (see `Snapshot::build_seeded`), so the routers' first answers of a storm go to
//!   different nodes instead of all to the one with the smallest id.
//! * **One network's share** is bounded ([`budget`]): answers are free to ask for, so
//!   what one client network adds to the estimate per window is capped.

pub mod budget;
pub mod share;

pub use share::SCALE_ONE;

use std::sync::atomic::{AtomicU64, Ordering};

/// Width of one slot of the answer counts (the window's granularity).
pub const SLOT_MS: u64 = 250;

/// Width of one fine slot, for samples of the last [`FINE_SPAN_MS`].
pub const FINE_MS: u64 = 10;
/// Fine slots kept per node.
const FINE_SLOTS: usize = 128;
/// How far back a sample is counted after to [`FINE_MS`].
pub const FINE_SPAN_MS: u64 = FINE_MS * (FINE_SLOTS as u64 - 1);

/// Slots kept per node: the window can span at most `SLOTS - 1` of them (15.75 s).
const SLOTS: usize = 64;

/// Bits of a slot word holding its value (the total before the slot's first answer,
/// modulo); the rest holds the slot number's low bits, so a word left from an earlier
/// lap of the ring is recognised and ignored.
const COUNT_BITS: u32 = 40;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const TAG_MASK: u64 = (1 << (64 - COUNT_BITS)) - 1;

/// The slot of a wall-clock time.
pub fn slot_of(ms: u64) -> u64 {
    ms / SLOT_MS
}

/// Packs a slot's tag with a value.
fn pack(slot: u64, value: u64) -> u64 {
    ((slot & TAG_MASK) << COUNT_BITS) | (value & COUNT_MASK)
}

/// The value of `word` if it belongs to `slot`.
fn unpack(word: u64, slot: u64) -> Option<u64> {
    (word >> COUNT_BITS == slot & TAG_MASK).then_some(word & COUNT_MASK)
}

/// The largest window (in slots) a counter can answer for.
pub const MAX_WINDOW_SLOTS: u64 = SLOTS as u64 - 1;

/// One node's answer counts: a running total and, per slot, the total before the
/// slot's first answer, in two rings of atomic words (coarse [`SLOT_MS`] slots and
/// fine [`FINE_MS`] ones). The answers since a slot are the total less that slot's
/// start, so reading a count is two or three loads whatever the window, and recording
/// an answer is one atomic add (plus one write for a slot's first answer).
///
/// The rings (1.5 KB) are allocated by the node's first answer: a router following
/// 100,000 nodes keeps 150 MB less for the ones it has not answered, and starts
/// without zeroing them.
#[derive(Debug, Default)]
pub struct HerdCounter {
    rings: std::sync::OnceLock<Box<Rings>>,
}

#[derive(Debug)]
struct Rings {
    /// Answers ever.
    total: AtomicU64,
    /// The fine slot of the latest answer, plus one (0: none yet). A node not
    /// answered since a slot is read in one load instead of a walk over the slots
    /// since (the common case for the nodes a burst has not reached).
    last_fine: AtomicU64,
    /// Per coarse slot: `total` before the slot's first answer, tagged with the slot.
    slots: [AtomicU64; SLOTS],
    /// Per fine slot: the same.
    fine: [AtomicU64; FINE_SLOTS],
}

impl Default for Rings {
    fn default() -> Self {
        Rings {
            total: AtomicU64::new(0),
            last_fine: AtomicU64::new(0),
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
            fine: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// Fine slots per coarse slot.
const FINE_PER_SLOT: u64 = SLOT_MS / FINE_MS;
const _: () = assert!(SLOT_MS % FINE_MS == 0);

impl HerdCounter {
    /// Counts one answer given at wall-clock `now_ms`.
    pub fn add_at(&self, now_ms: u64) {
        self.add_n_at(now_ms, 1);
    }

    /// Counts `n` clients at once at wall-clock `now_ms` (a DNS answer, which a
    /// resolver hands to many clients, counts by its weight).
    pub fn add_n_at(&self, now_ms: u64, n: u64) {
        if n == 0 {
            return;
        }
        self.rings().add_n_at(now_ms, n);
    }

    fn rings(&self) -> &Rings {
        self.rings.get_or_init(Box::default)
    }

    /// Answers given at or after wall-clock `from_ms` (which must be within the last
    /// [`FINE_SPAN_MS`] of `now_ms`), to [`FINE_MS`].
    pub fn since_ms(&self, from_ms: u64, now_ms: u64) -> u64 {
        self.rings.get().map_or(0, |r| r.since_ms(from_ms, now_ms))
    }

    /// Answers counted from slot `from` on, up to `now` (at most the ring's span back).
    pub fn since(&self, from: u64, now: u64) -> u64 {
        self.rings.get().map_or(0, |r| r.since(from, now))
    }

    /// Forgets everything (benchmarks).
    pub fn clear(&self) {
        if let Some(r) = self.rings.get() {
            r.clear();
        }
    }
}

impl Rings {
    fn add_n_at(&self, now_ms: u64, n: u64) {
        let before = self.total.fetch_add(n, Ordering::Relaxed);
        let fine = now_ms / FINE_MS;
        // Read before written: most answers do not move it, and a load leaves the
        // cache line shared with the readers.
        let latest = self.last_fine.load(Ordering::Relaxed);
        let latest = if latest <= fine {
            self.last_fine.fetch_max(fine + 1, Ordering::Relaxed)
        } else {
            latest
        };
        let coarse = fine / FINE_PER_SLOT;
        if latest > fine + 1 {
            // A later slot already has answers (this request read the clock before
            // theirs): this answer counts as theirs, so that a slot's start never lies
            // above a later slot's and a count since a slot never falls.
            let last = latest - 1;
            mark_late(&self.fine, fine, last, before);
            mark_late(&self.slots, coarse, last / FINE_PER_SLOT, before);
        } else {
            mark_start(&self.fine, fine, before);
            mark_start(&self.slots, coarse, before);
        }
    }

    fn since_ms(&self, from_ms: u64, now_ms: u64) -> u64 {
        let (first, last) = (from_ms / FINE_MS, now_ms / FINE_MS);
        self.since_in(
            &self.fine,
            first,
            last.min(first + FINE_SLOTS as u64 - 1),
            1,
        )
    }

    fn since(&self, from: u64, now: u64) -> u64 {
        let from = from.max(now.saturating_sub(MAX_WINDOW_SLOTS));
        self.since_in(&self.slots, from, now, FINE_PER_SLOT)
    }

    /// The answers since the first slot of `ring` in `from..=to` that saw one (every
    /// answer since came after its start); `per` fine slots make one of `ring`'s.
    fn since_in(&self, ring: &[AtomicU64], from: u64, to: u64, per: u64) -> u64 {
        let latest = self.last_fine.load(Ordering::Relaxed);
        // No answer in or after the first slot: nothing to walk.
        if latest == 0 || (latest - 1) / per < from {
            return 0;
        }
        let last = to.min((latest - 1) / per);
        match first_start(ring, from, last) {
            // Read after the start (acquired), so it is never below it (both as kept,
            // modulo the word's value bits).
            Some(start) => self.total.load(Ordering::Relaxed).wrapping_sub(start) & COUNT_MASK,
            None => 0,
        }
    }

    fn clear(&self) {
        for s in self.slots.iter().chain(&self.fine) {
            s.store(0, Ordering::Relaxed);
        }
        self.last_fine.store(0, Ordering::Relaxed);
        self.total.store(0, Ordering::Relaxed);
    }
}

/// The start recorded for the first slot of `ring` in `from..=to` that saw an answer.
///
/// Acquire, paired with [`mark_start`]'s release: the total read after a start is at
/// least the start, on any processor (a total read below it would count 2^40 answers).
fn first_start(ring: &[AtomicU64], from: u64, to: u64) -> Option<u64> {
    (from..=to).find_map(|k| unpack(ring[k as usize % ring.len()].load(Ordering::Acquire), k))
}

/// [`mark_start`] for an answer of slot `k` recorded after one of a later slot, up to
/// `last`: its start is at most theirs. An answer more than the ring's span late is
/// left to the later slots (its word may hold one of them).
fn mark_late(ring: &[AtomicU64], k: u64, last: u64, before: u64) {
    if last - k >= ring.len() as u64 {
        return;
    }
    let start = first_start(ring, k + 1, last).map_or(before, |s| s.min(before));
    mark_start(ring, k, start);
}

/// Records that slot `k`'s answers start at `before` (the total before them): the
/// least of the starts its answers saw, so two first answers racing keep the earlier.
/// A word left from an earlier lap of the ring is overwritten.
fn mark_start(ring: &[AtomicU64], k: u64, before: u64) {
    let word = &ring[k as usize % ring.len()];
    let mut cur = word.load(Ordering::Relaxed);
    loop {
        if unpack(cur, k).is_some_and(|v| v <= before) {
            return;
        }
        // Release: the add that made `before` the total is seen by whoever reads it.
        match word.compare_exchange_weak(cur, pack(k, before), Ordering::Release, Ordering::Relaxed)
        {
            Ok(_) => return,
            Err(actual) => cur = actual,
        }
    }
}

/// How a request sees the herd counts: now, where the window starts, and by how much
/// to scale this router's own answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HerdView {
    /// Wall-clock milliseconds now.
    pub now_ms: u64,
    /// The current slot.
    pub now: u64,
    /// The oldest slot still counted.
    pub oldest: u64,
    /// Clients each of this router's answers stands for, in [`SCALE_ONE`]s (at least
    /// one): the live routers that are answering ([`share::Shares`]).
    pub scale: u64,
}

impl HerdView {
    /// At wall-clock `now_ms`, counting `window_slots` back, scaled by `routers`.
    pub fn at(now_ms: u64, window_slots: u64, routers: u64) -> HerdView {
        HerdView::at_scale(now_ms, window_slots, routers.saturating_mul(SCALE_ONE))
    }

    /// At wall-clock `now_ms`, counting `window_slots` back, scaled by `scale`
    /// [`SCALE_ONE`]s.
    pub fn at_scale(now_ms: u64, window_slots: u64, scale: u64) -> HerdView {
        let now = slot_of(now_ms);
        HerdView {
            now_ms,
            now,
            oldest: now.saturating_sub(window_slots.min(MAX_WINDOW_SLOTS)),
            scale: scale.max(SCALE_ONE),
        }
    }

    /// Now, with a window of `window_ms` and `routers` live routers.
    pub fn now(window_ms: u64, routers: u64) -> HerdView {
        HerdView::now_scaled(window_ms, routers.saturating_mul(SCALE_ONE))
    }

    /// Now, with a window of `window_ms`, scaled by `scale` [`SCALE_ONE`]s.
    pub fn now_scaled(window_ms: u64, scale: u64) -> HerdView {
        HerdView::at_scale(registry::now_ms(), window_ms.div_ceil(SLOT_MS), scale)
    }

    /// This router's `own` answers scaled to all the routers'.
    fn scaled(&self, own: u64) -> u64 {
        own.saturating_mul(self.scale).div_ceil(SCALE_ONE)
    }

    /// The clients to add to a report counted at wall-clock `sampled_ms`.
    pub fn pending(&self, counter: &HerdCounter, sampled_ms: u64) -> u64 {
        let own = if sampled_ms + FINE_SPAN_MS > self.now_ms {
            // A recent sample: every answer since is within the window.
            counter.since_ms(sampled_ms, self.now_ms)
        } else {
            counter.since(slot_of(sampled_ms).max(self.oldest), self.now)
        };
        self.scaled(own)
    }

    /// A lower bound of [`HerdView::pending`] from now to the end of the current slot.
    /// Within a slot the window's start does not move, so the count after a sample
    /// only grows, with one exception: a recent sample whose count moves from fine to
    /// coarse slots, which may then start later (at the window) than the fine count
    /// did. The bound is the lesser of the two then.
    pub fn pending_floor(&self, counter: &HerdCounter, sampled_ms: u64) -> u64 {
        self.pending_and_floor(counter, sampled_ms).1
    }

    /// [`HerdView::pending`] and [`HerdView::pending_floor`] in one read.
    pub fn pending_and_floor(&self, counter: &HerdCounter, sampled_ms: u64) -> (u64, u64) {
        let now = self.pending(counter, sampled_ms);
        let fine_now = sampled_ms + FINE_SPAN_MS > self.now_ms;
        let fine_at_end = sampled_ms + FINE_SPAN_MS > (self.now + 1) * SLOT_MS - 1;
        if fine_now && !fine_at_end {
            let coarse = counter.since(slot_of(sampled_ms).max(self.oldest), self.now);
            (now, now.min(self.scaled(coarse)))
        } else {
            (now, now)
        }
    }

    /// Records an answer now.
    pub fn record(&self, counter: &HerdCounter) {
        counter.add_at(self.now_ms);
    }

    /// Records `n` clients now (an answer of weight `n`).
    pub fn record_n(&self, counter: &HerdCounter, n: u64) {
        counter.add_n_at(self.now_ms, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000_000;

    #[test]
    fn answers_count_after_the_sample_and_within_the_window() {
        let c = HerdCounter::default();
        let at = |slot: u64| T0 + slot * SLOT_MS;
        for slot in [0, 0, 1, 4, 10] {
            c.add_at(at(slot));
        }
        let v = HerdView::at(at(10), 20, 1);
        assert_eq!(
            v.pending(&c, 0),
            5,
            "an old sample: everything in the window"
        );
        assert_eq!(
            v.pending(&c, at(1)),
            3,
            "a sample at slot 1 has the first two"
        );
        assert_eq!(v.pending(&c, at(11)), 0);
        let v = HerdView::at(at(10), 8, 1);
        assert_eq!(
            v.pending(&c, 0),
            2,
            "answers older than the window are phantoms"
        );
        assert_eq!(
            HerdView::at(at(10), 20, 3).pending(&c, at(1)),
            9,
            "three routers"
        );
    }

    /// A sample taken in the middle of a burst splits it to the fine slot, not the
    /// coarse one: the answers before it are in the report, the ones after are not.
    #[test]
    fn a_recent_sample_splits_a_burst_exactly() {
        let c = HerdCounter::default();
        // 200 answers, one every millisecond.
        for i in 0..200 {
            c.add_at(T0 + i);
        }
        let v = HerdView::at(T0 + 200, 20, 1);
        assert_eq!(v.pending(&c, T0 + 100), 100);
        assert_eq!(v.pending(&c, T0 + 150), 50);
        assert_eq!(v.pending(&c, T0 + 201), 0);
        assert_eq!(v.pending(&c, T0 - 1000), 200, "a sample before the burst");
        // Within one fine slot the split is to FINE_MS.
        let got = v.pending(&c, T0 + 105);
        assert!((95..=100).contains(&got), "{got}");
        // A quiet gap after the sample: the next answers still count.
        c.add_at(T0 + 900);
        let v = HerdView::at(T0 + 901, 20, 1);
        assert_eq!(v.pending(&c, T0 + 500), 1);
    }

    /// The floor is below what `pending` reads at any later moment of the slot, and
    /// equal to it now but for a sample about to leave the fine span.
    #[test]
    fn the_floor_holds_until_the_slot_ends() {
        let c = HerdCounter::default();
        // A window of 2 slots; answers every 7 ms over 3 s.
        let start = T0 - T0 % SLOT_MS;
        for t in (start..start + 3000).step_by(7) {
            c.add_at(t);
        }
        let end = start + 3000;
        let mut exact_now = 0;
        let mut checked = 0;
        for sampled in (start..end).step_by(13) {
            for now in (end - 2 * SLOT_MS..end).step_by(11) {
                let v = HerdView::at(now, 2, 3);
                let floor = v.pending_floor(&c, sampled);
                assert!(floor <= v.pending(&c, sampled), "floor above now");
                let slot_end = (v.now + 1) * SLOT_MS;
                for later in (now..slot_end.min(end)).step_by(3) {
                    let w = HerdView::at(later, 2, 3);
                    assert!(
                        floor <= w.pending(&c, sampled),
                        "sampled {sampled}, now {now}, later {later}"
                    );
                    checked += 1;
                }
                if floor == v.pending(&c, sampled) {
                    exact_now += 1;
                }
            }
        }
        assert!(checked > 10_000, "{checked}");
        assert!(exact_now > 0);
    }

    #[test]
    fn a_counter_holds_no_rings_until_its_first_answer() {
        let c = HerdCounter::default();
        let v = HerdView::at(T0, 20, 3);
        assert_eq!(v.pending(&c, T0 - 10), 0);
        assert_eq!(v.pending(&c, 0), 0);
        c.clear();
        assert!(c.rings.get().is_none(), "reading allocates nothing");
        assert!(std::mem::size_of::<HerdCounter>() <= 16);
        c.add_at(T0);
        assert!(c.rings.get().is_some());
        assert_eq!(HerdView::at(T0 + 1, 20, 3).pending(&c, T0 - 10), 3);
    }

    /// An answer whose request read the clock before a later slot's first answer
    /// counts as that slot's: no count since a slot falls when it lands.
    #[test]
    fn a_late_answer_never_lowers_a_count() {
        let c = HerdCounter::default();
        let base = T0 - T0 % SLOT_MS;
        c.add_at(base + SLOT_MS);
        let v = HerdView::at(base + SLOT_MS + 1, 20, 1);
        assert_eq!(v.pending(&c, 0), 1);
        assert_eq!(c.since_ms(base, base + SLOT_MS + 1), 1);
        // A request of the slot before, recorded now.
        c.add_at(base + 5);
        assert_eq!(v.pending(&c, 0), 2);
        assert_eq!(c.since(slot_of(base), v.now), 2);
        assert_eq!(
            c.since(slot_of(base) + 1, v.now),
            2,
            "counted as the later slot's"
        );
        assert_eq!(c.since_ms(base, base + SLOT_MS + 1), 2);
        assert_eq!(c.since_ms(base + SLOT_MS, base + SLOT_MS + 1), 2);
    }

    /// Answers recorded from several threads at once are all counted.
    #[test]
    fn concurrent_answers_are_all_counted() {
        let c = std::sync::Arc::new(HerdCounter::default());
        let start = T0 - T0 % SLOT_MS;
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for ms in 0..2_000 {
                        c.add_at(start + ms);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let now = start + 2_000;
        assert_eq!(HerdView::at(now, 20, 1).pending(&c, 0), 8_000);
        // The threads' clocks interleave: an answer of an earlier moment recorded after
        // a later one counts from the later slot, never less.
        let since = c.since(slot_of(start) + 4, slot_of(now));
        assert!((4 * 1_000..=8_000).contains(&since), "{since}");
        let since = c.since_ms(now - 500, now);
        assert!((4 * 500..=8_000).contains(&since), "{since}");
    }

    proptest::proptest! {
        /// Answers recorded in time order: a count since a slot (coarse or fine) is
        /// exactly the answers at or after its start within the ring's span.
        #[test]
        fn counts_match_a_list_of_answers(
            gaps in proptest::collection::vec((0u64..400, 1u64..4), 1..200),
            froms in proptest::collection::vec(0u64..20_000, 1..20),
        ) {
            let c = HerdCounter::default();
            let mut at = T0;
            let mut answers = Vec::new();
            for (gap, n) in gaps {
                at += gap;
                c.add_n_at(at, n);
                answers.push((at, n));
            }
            let now = at + 1;
            for back in froms {
                let from = now.saturating_sub(back);
                let (s, n) = (slot_of(from), slot_of(now));
                let oldest = s.max(n.saturating_sub(MAX_WINDOW_SLOTS));
                let coarse: u64 = answers.iter().filter(|(t, _)| slot_of(*t) >= oldest).map(|(_, n)| n).sum();
                proptest::prop_assert_eq!(c.since(s, n), coarse);
                if from + FINE_SPAN_MS > now {
                    let fine: u64 = answers.iter().filter(|(t, _)| t / FINE_MS >= from / FINE_MS).map(|(_, n)| n).sum();
                    proptest::prop_assert_eq!(c.since_ms(from, now), fine);
                }
            }
        }
    }

    #[test]
    fn a_lap_of_the_ring_does_not_resurrect_old_counts() {
        let c = HerdCounter::default();
        let at = |slot: u64| T0 - T0 % SLOT_MS + slot * SLOT_MS;
        let first = slot_of(at(0));
        c.add_at(at(0));
        c.add_at(at(0));
        let later = first + SLOTS as u64;
        assert_eq!(c.since(later, later), 0, "same word, older lap");
        c.add_at(at(SLOTS as u64));
        assert_eq!(c.since(later, later), 1);
        assert_eq!(
            c.since(0, later),
            1,
            "the window is capped at the ring's span"
        );
    }
}
