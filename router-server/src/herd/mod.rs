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

/// Bits of a slot word holding the count; the rest holds the slot number's low bits,
/// so a word left from an earlier lap of the ring is recognised and ignored.
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

/// One node's answer counts by slot: a ring of atomic words, so recording an answer is
/// one atomic add and reading the recent sum touches two cache lines.
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
    slots: [AtomicU64; SLOTS],
    /// Answers ever.
    total: AtomicU64,
    /// Per fine slot: `total` before the slot's first answer.
    fine: [AtomicU64; FINE_SLOTS],
    /// The fine slot of the latest answer, plus one (0: none yet). A node not
    /// answered since its sample is read in one load instead of a walk over the fine
    /// slots since (the common case for the nodes a burst has levelled).
    last_fine: AtomicU64,
}

impl Default for Rings {
    fn default() -> Self {
        Rings {
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
            total: AtomicU64::new(0),
            fine: std::array::from_fn(|_| AtomicU64::new(0)),
            last_fine: AtomicU64::new(0),
        }
    }
}

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

    /// Answers counted in slots `from..=now` (at most the ring's span).
    pub fn since(&self, from: u64, now: u64) -> u64 {
        self.rings.get().map_or(0, |r| r.since(from, now))
    }

    /// Forgets everything (benchmarks).
    pub fn clear(&self) {
        if let Some(r) = self.rings.get() {
            r.clear();
        }
    }

    #[cfg(test)]
    fn add(&self, now: u64, n: u64) {
        self.rings().add(now, n);
    }
}

impl Rings {
    fn add_n_at(&self, now_ms: u64, n: u64) {
        let before = self.total.fetch_add(n, Ordering::Relaxed);
        let fine = now_ms / FINE_MS;
        self.last_fine.fetch_max(fine + 1, Ordering::Relaxed);
        let word = &self.fine[fine as usize % FINE_SLOTS];
        let cur = word.load(Ordering::Relaxed);
        if unpack(cur, fine).is_none() {
            // The first answer of this fine slot (a race loses one answer at most).
            let _ = word.compare_exchange(
                cur,
                pack(fine, before),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        self.add(slot_of(now_ms), n);
    }

    fn since_ms(&self, from_ms: u64, now_ms: u64) -> u64 {
        let (first, last) = (from_ms / FINE_MS, now_ms / FINE_MS);
        // No answer in or after the first fine slot: nothing to walk.
        if self.last_fine.load(Ordering::Relaxed) <= first {
            return 0;
        }
        let total = self.total.load(Ordering::Relaxed);
        // The first fine slot at or after `from_ms` that saw an answer: every answer
        // since came after its start.
        for k in first..=last.min(first + FINE_SLOTS as u64 - 1) {
            if let Some(start) = unpack(
                self.fine[k as usize % FINE_SLOTS].load(Ordering::Relaxed),
                k,
            ) {
                return total.saturating_sub(start);
            }
        }
        0
    }

    /// Counts `n` answers in (coarse) slot `now`.
    fn add(&self, now: u64, n: u64) {
        let word = &self.slots[now as usize % SLOTS];
        let tag = now & TAG_MASK;
        let mut cur = word.load(Ordering::Relaxed);
        loop {
            if cur >> COUNT_BITS == tag {
                word.fetch_add(n, Ordering::Relaxed);
                return;
            }
            // The word still holds an older lap: start this slot at `n`.
            match word.compare_exchange_weak(
                cur,
                (tag << COUNT_BITS) | n.min(COUNT_MASK),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    fn since(&self, from: u64, now: u64) -> u64 {
        let from = from.max(now.saturating_sub(MAX_WINDOW_SLOTS));
        (from..=now)
            .map(|s| {
                let v = self.slots[s as usize % SLOTS].load(Ordering::Relaxed);
                if v >> COUNT_BITS == s & TAG_MASK {
                    v & COUNT_MASK
                } else {
                    0
                }
            })
            .sum()
    }

    fn clear(&self) {
        for s in self.slots.iter().chain(&self.fine) {
            s.store(0, Ordering::Relaxed);
        }
        self.last_fine.store(0, Ordering::Relaxed);
        self.total.store(0, Ordering::Relaxed);
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

    #[test]
    fn a_lap_of_the_ring_does_not_resurrect_old_counts() {
        let c = HerdCounter::default();
        c.add(5, 1);
        c.add(5, 1);
        let later = 5 + SLOTS as u64;
        assert_eq!(c.since(later, later), 0, "same word, older lap");
        c.add(later, 1);
        assert_eq!(c.since(later, later), 1);
        assert_eq!(
            c.since(0, later),
            1,
            "the window is capped at the ring's span"
        );
    }
}
