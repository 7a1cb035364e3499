//! The protect threshold, per registry: a mass departure without drains is held.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use registry::{NodeRecord, NodeState};
use tokio::time::Instant;
use tracing::{error, info};

use crate::config::FileConfig;

/// The protect threshold's memory.
///
/// An etcd session loss or a mass lease expiry does not arrive as one update: leases
/// expire one by one over a second or two, and a watch delivers them in several
/// batches. Judging each batch against the set accepted just before lets every batch
/// slip under the threshold. So removals are judged over a **window** (at least twice
/// the agents' lease TTL): the nodes that left without being drained during the window
/// ("unplanned departures") against the highest live count seen during it. A node that
/// was `draining` when it left is a planned departure (drain, then stop) and does not
/// count, so a fast planned scale-in never trips the alarm. A node that comes back is
/// no longer missing.
#[derive(Debug)]
pub struct Protect {
    threshold: f64,
    max_hold: Duration,
    min_nodes: usize,
    window: Duration,
    holding_since: Option<Instant>,
    /// Live-count samples, oldest first; the first one may predate the window (it is
    /// the count in force when the window began).
    samples: VecDeque<(Instant, usize)>,
    /// Unplanned departures in the window: when each left, and its last record (served
    /// again while holding).
    departed: HashMap<Arc<str>, (Instant, Arc<NodeRecord>)>,
}

/// What to do with a registry view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Follow the registry.
    Follow,
    /// Keep serving the nodes that left, beside the registry's.
    Hold,
}

impl Protect {
    /// From the configuration.
    pub fn new(cfg: &FileConfig) -> Protect {
        Protect {
            threshold: cfg.protect_threshold,
            max_hold: Duration::from_secs(cfg.protect_max_secs),
            min_nodes: cfg.protect_min_nodes,
            window: Duration::from_secs(cfg.protect_window_secs),
            holding_since: None,
            samples: VecDeque::new(),
            departed: HashMap::new(),
        }
    }

    /// When a hold ends by itself, if one is active.
    pub fn deadline(&self) -> Option<Instant> {
        self.holding_since.map(|t| t + self.max_hold)
    }

    /// True while holding.
    pub fn holding(&self) -> bool {
        self.holding_since.is_some()
    }

    /// The last records of the nodes missing without a drain (served while holding).
    pub fn missing(&self) -> impl Iterator<Item = &Arc<NodeRecord>> {
        self.departed.values().map(|(_, r)| r)
    }

    /// The highest live count in the window.
    pub fn peak(&self) -> usize {
        self.samples.iter().map(|(_, n)| *n).max().unwrap_or(0)
    }

    /// Takes an update: `left` are the records of nodes gone since the previous view,
    /// `arrived` the ids of nodes new in it, `live` the count now. Returns the verdict.
    pub fn update<'a>(
        &mut self,
        now: Instant,
        live: usize,
        left: impl IntoIterator<Item = &'a Arc<NodeRecord>>,
        arrived: impl IntoIterator<Item = &'a str>,
    ) -> Verdict {
        for r in left {
            if r.state != NodeState::Draining {
                self.departed
                    .insert(Arc::from(r.id.as_str()), (now, r.clone()));
            }
        }
        for id in arrived {
            self.departed.remove(id);
        }
        self.samples.push_back((now, live));
        self.judge(now)
    }

    /// Judges the state as of `now` (also called when a hold's time is up).
    pub fn judge(&mut self, now: Instant) -> Verdict {
        let window_start = now.checked_sub(self.window);
        while self.samples.len() > 1 && window_start.is_some_and(|ws| self.samples[1].0 <= ws) {
            self.samples.pop_front();
        }
        if !self.holding() {
            // While holding, departures stay counted until they return or time is up.
            if let Some(ws) = window_start {
                self.departed.retain(|_, (at, _)| *at > ws);
            }
        }
        let peak = self.peak();
        let missing = self.departed.len();
        let mass_loss =
            peak >= self.min_nodes.max(1) && missing as f64 > self.threshold * peak as f64;
        match (mass_loss, self.holding_since) {
            (false, None) => Verdict::Follow,
            (false, Some(_)) => {
                info!(
                    missing,
                    peak, "registry recovered, protect threshold released"
                );
                self.holding_since = None;
                Verdict::Follow
            }
            (true, None) => {
                error!(peak, missing, threshold = self.threshold, window_secs = self.window.as_secs(),
                       "ALARM: more than the protect threshold of live nodes left without a drain; serving them still");
                self.holding_since = Some(now);
                Verdict::Hold
            }
            (true, Some(since)) if now.duration_since(since) >= self.max_hold => {
                error!(
                    peak,
                    missing,
                    held_secs = self.max_hold.as_secs(),
                    "ALARM: protect threshold held for its maximum; following the registry"
                );
                self.holding_since = None;
                // The registry's set is the truth now: start counting afresh from it.
                self.departed.clear();
                let live = self.samples.back().map(|(_, n)| *n).unwrap_or(0);
                self.samples.clear();
                self.samples.push_back((now, live));
                Verdict::Follow
            }
            (true, Some(_)) => Verdict::Hold,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use registry::Ports;

    fn node(id: &str, state: NodeState) -> Arc<NodeRecord> {
        let mut r = NodeRecord::new(
            id,
            "192.0.2.1".parse().unwrap(),
            Ports {
                tcp: Some(1),
                ws: None,
                wss: None,
            },
            "r",
            100,
            0,
        );
        r.state = state;
        Arc::new(r)
    }

    fn fleet(n: usize) -> Vec<Arc<NodeRecord>> {
        (0..n)
            .map(|i| node(&format!("n{i}"), NodeState::Serving))
            .collect()
    }

    fn protect(max_secs: u64, window_secs: u64) -> Protect {
        Protect::new(&FileConfig {
            protect_max_secs: max_secs,
            protect_window_secs: window_secs,
            ..FileConfig::default()
        })
    }

    const NONE: [&str; 0] = [];

    #[test]
    fn a_mass_loss_is_held_then_released_by_time_or_recovery() {
        let mut p = protect(60, 30);
        let t0 = Instant::now();
        let all = fleet(10);
        assert_eq!(p.update(t0, 10, [], NONE), Verdict::Follow);
        assert_eq!(
            p.update(t0, 5, &all[..5], NONE),
            Verdict::Follow,
            "exactly half"
        );
        assert_eq!(p.update(t0, 4, &all[5..6], NONE), Verdict::Hold);
        assert_eq!(p.missing().count(), 6);
        assert_eq!(p.judge(t0 + Duration::from_secs(30)), Verdict::Hold);
        assert_eq!(
            p.judge(t0 + Duration::from_secs(60)),
            Verdict::Follow,
            "bounded"
        );
        assert!(!p.holding());
        assert_eq!(
            p.missing().count(),
            0,
            "the registry's set is the truth now"
        );
        // Recovery: 4 live, 3 leave (held), 2 come back.
        let t1 = t0 + Duration::from_secs(61);
        assert_eq!(p.update(t1, 1, &all[6..9], NONE), Verdict::Hold);
        assert_eq!(p.update(t1, 3, [], ["n6", "n7"]), Verdict::Follow);
    }

    #[test]
    fn staggered_departures_are_judged_together_within_the_window() {
        let mut p = protect(300, 6);
        let t0 = Instant::now();
        let all = fleet(10);
        p.update(t0, 10, [], NONE);
        // One node every 400 ms: each alone is small.
        let mut verdicts = Vec::new();
        for i in 0..8 {
            let t = t0 + Duration::from_millis(400 * (i as u64 + 1));
            verdicts.push(p.update(t, 9 - i, &all[i..i + 1], NONE));
        }
        assert_eq!(&verdicts[..5], &[Verdict::Follow; 5]);
        assert_eq!(verdicts[5], Verdict::Hold, "the sixth of ten");
        assert_eq!(p.missing().count(), 8);
        // Far apart (beyond the window), the same departures are ordinary churn.
        let mut q = protect(300, 6);
        q.update(t0, 10, [], NONE);
        for i in 0..8 {
            let t = t0 + Duration::from_secs(7 * (i as u64 + 1));
            assert_eq!(
                q.update(t, 9 - i, &all[i..i + 1], NONE),
                Verdict::Follow,
                "{i}"
            );
        }
    }

    #[test]
    fn drained_nodes_leaving_are_planned() {
        let mut p = protect(300, 30);
        let t0 = Instant::now();
        p.update(t0, 10, [], NONE);
        let drained: Vec<_> = (0..8)
            .map(|i| node(&format!("n{i}"), NodeState::Draining))
            .collect();
        assert_eq!(p.update(t0, 2, &drained, NONE), Verdict::Follow);
        assert_eq!(p.missing().count(), 0);
    }

    #[test]
    fn small_fleets_are_not_protected() {
        let mut p = protect(300, 30);
        let t0 = Instant::now();
        let all = fleet(1);
        p.update(t0, 1, [], NONE);
        assert_eq!(p.update(t0, 0, &all, NONE), Verdict::Follow);
    }

    proptest! {
        /// The same removal, delivered in k batches within the window, gets the same
        /// verdict as in one batch.
        #[test]
        fn a_removal_split_into_batches_is_judged_as_one(
            n in 2usize..60, removed_frac in 0.0f64..1.0, k in 1usize..10, gap_ms in 0u64..500,
        ) {
            let all = fleet(n);
            let removed = ((n as f64) * removed_frac) as usize;
            let t0 = Instant::now();
            let mut once = protect(300, 20);
            once.update(t0, n, [], NONE);
            let want = once.update(t0, n - removed, &all[..removed], NONE);
            let mut split = protect(300, 20);
            split.update(t0, n, [], NONE);
            let mut live = n;
            let mut last = Verdict::Follow;
            let per = removed.div_ceil(k).max(1);
            for (b, chunk) in all[..removed].chunks(per).enumerate() {
                live -= chunk.len();
                let t = t0 + Duration::from_millis(gap_ms * (b as u64 + 1));
                last = split.update(t, live, chunk, NONE);
            }
            prop_assert_eq!(last, want);
            prop_assert_eq!(want == Verdict::Hold, removed as f64 > 0.5 * n as f64);
        }
    }
}
