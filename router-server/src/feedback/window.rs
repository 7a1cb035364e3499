//! Counts over a sliding window of ticks: what this router heard, per (network,
//! gateway) and per network.

use std::collections::VecDeque;

/// Successes and failures in one tick, or summed over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Connections made.
    pub ok: u64,
    /// Attempts that failed or never answered.
    pub failed: u64,
}

impl Counts {
    /// Every outcome.
    pub fn total(&self) -> u64 {
        self.ok.saturating_add(self.failed)
    }

    /// `other` added, saturating.
    pub fn plus(self, other: Counts) -> Counts {
        Counts {
            ok: self.ok.saturating_add(other.ok),
            failed: self.failed.saturating_add(other.failed),
        }
    }

    /// The share of successes; `None` without outcomes.
    pub fn success(&self) -> Option<f64> {
        let n = self.total();
        (n > 0).then(|| self.ok as f64 / n as f64)
    }
}

/// One key's counts per tick, the last `ticks` ticks kept.
#[derive(Debug, Default)]
pub struct Window {
    buckets: VecDeque<(u64, Counts)>,
}

impl Window {
    /// Adds `c` at `tick`, forgetting ticks that left a window of `ticks`.
    pub fn add(&mut self, tick: u64, ticks: u64, c: Counts) {
        self.forget(tick, ticks);
        match self.buckets.back_mut() {
            Some((t, counts)) if *t == tick => *counts = counts.plus(c),
            _ => self.buckets.push_back((tick, c)),
        }
    }

    /// Forgets the ticks before the window of `ticks` ending at `tick`.
    pub fn forget(&mut self, tick: u64, ticks: u64) {
        let first = tick.saturating_sub(ticks.saturating_sub(1));
        while self.buckets.front().is_some_and(|(t, _)| *t < first) {
            self.buckets.pop_front();
        }
    }

    /// The counts of the window of `ticks` ending at `tick`.
    pub fn sum(&self, tick: u64, ticks: u64) -> Counts {
        let first = tick.saturating_sub(ticks.saturating_sub(1));
        self.buckets
            .iter()
            .filter(|(t, _)| *t >= first && *t <= tick)
            .fold(Counts::default(), |a, (_, c)| a.plus(*c))
    }

    /// True when nothing is left in it.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_sums_its_ticks_and_forgets_older_ones() {
        let mut w = Window::default();
        let one = |ok, failed| Counts { ok, failed };
        w.add(1, 3, one(1, 0));
        w.add(1, 3, one(0, 2));
        w.add(2, 3, one(3, 0));
        assert_eq!(w.sum(2, 3), one(4, 2));
        assert_eq!(w.sum(3, 3), one(4, 2));
        assert_eq!(w.sum(4, 3), one(3, 0));
        w.add(5, 3, one(0, 1));
        assert_eq!(w.sum(5, 3), one(0, 1));
        w.forget(9, 3);
        assert!(w.is_empty());
        assert_eq!(one(u64::MAX, 1).total(), u64::MAX);
        assert_eq!(one(1, 3).success(), Some(0.25));
        assert_eq!(Counts::default().success(), None);
    }
}
