//! Shared router state and the task that turns registry views into snapshots.
//!
//! Request handlers read the current [`Snapshot`] through an `ArcSwapOption`: one
//! atomic load, no lock. The updater is the only writer. It applies the **protect
//! threshold**: when a view would remove more than `protect_threshold` of the live
//! nodes at once (a lost etcd session, a mass lease expiry), it keeps serving the
//! previous membership with `stale: true` and an alarm, until the registry recovers
//! or `protect_max_secs` pass.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use registry::follow::NodeView;
use registry::{NodeRecord, NodeState};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::FileConfig;
use crate::metrics::{Metrics, NodeLabels};
use crate::schedule::Snapshot;

/// What every handler shares.
pub struct AppState {
    /// The served snapshot; `None` until the first full load. In an `Arc` so that
    /// request threads can keep a cache of it (see `api::gateways`).
    pub snapshot: Arc<ArcSwapOption<Snapshot>>,
    /// The validated configuration.
    pub config: FileConfig,
    /// Metrics.
    pub metrics: Metrics,
    /// When the snapshot last followed the registry (for the age metric).
    pub last_sync: std::sync::Mutex<Option<Instant>>,
    /// The constant part of every answer, serialized once (see [`crate::api::answer_tail`]).
    pub answer_tail: String,
}

impl AppState {
    /// Fresh state with no snapshot.
    pub fn new(config: FileConfig) -> AppState {
        AppState {
            answer_tail: crate::api::answer_tail(&config),
            snapshot: Arc::new(ArcSwapOption::empty()),
            config,
            metrics: Metrics::default(),
            last_sync: std::sync::Mutex::new(None),
        }
    }
}

/// The protect threshold's memory.
#[derive(Debug)]
pub struct Protect {
    threshold: f64,
    max_hold: Duration,
    min_nodes: usize,
    holding_since: Option<Instant>,
}

/// What to do with a registry view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Follow the registry.
    Follow,
    /// Keep the previous membership.
    Hold,
}

impl Protect {
    /// From the configuration.
    pub fn new(cfg: &FileConfig) -> Protect {
        Protect {
            threshold: cfg.protect_threshold,
            max_hold: Duration::from_secs(cfg.protect_max_secs),
            min_nodes: cfg.protect_min_nodes,
            holding_since: None,
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

    /// Decides for an update that removes `removed` of `previous` live nodes.
    pub fn judge(&mut self, previous: usize, removed: usize, now: Instant) -> Verdict {
        let mass_loss =
            previous >= self.min_nodes.max(1) && removed as f64 > self.threshold * previous as f64;
        match (mass_loss, self.holding_since) {
            (false, None) => Verdict::Follow,
            (false, Some(_)) => {
                info!("registry recovered, protect threshold released");
                self.holding_since = None;
                Verdict::Follow
            }
            (true, None) => {
                error!(previous, removed, threshold = self.threshold,
                       "ALARM: update would remove more than the protect threshold of live nodes; serving the previous set");
                self.holding_since = Some(now);
                Verdict::Hold
            }
            (true, Some(since)) if now.duration_since(since) >= self.max_hold => {
                error!(
                    previous,
                    removed,
                    held_secs = self.max_hold.as_secs(),
                    "ALARM: protect threshold held for its maximum; following the registry"
                );
                self.holding_since = None;
                Verdict::Follow
            }
            (true, Some(_)) => Verdict::Hold,
        }
    }
}

/// Follows `views` until `cancel`, storing each resulting snapshot in `state`.
pub async fn run_updater(
    state: Arc<AppState>,
    mut views: watch::Receiver<Arc<NodeView>>,
    cancel: CancellationToken,
) {
    let mut protect = Protect::new(&state.config);
    // The membership the protect threshold compares against: what we last accepted.
    let mut accepted: BTreeMap<Arc<str>, Arc<NodeRecord>> = BTreeMap::new();
    let mut seen_invalid = 0u64;
    loop {
        let deadline = protect.deadline();
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = views.changed() => if r.is_err() { return },
            _ = sleep_until_opt(deadline) => {}
        }
        let view = views.borrow_and_update().clone();
        if !view.loaded {
            continue;
        }
        let removed = accepted
            .keys()
            .filter(|id| !view.nodes.contains_key(*id))
            .count();
        let verdict = protect.judge(accepted.len(), removed, Instant::now());
        let members: Vec<Arc<NodeRecord>> = match verdict {
            Verdict::Follow => {
                accepted = view.nodes.clone();
                accepted.values().cloned().collect()
            }
            Verdict::Hold => {
                // Previous membership, with fresh reports for the nodes still present.
                accepted
                    .iter()
                    .map(|(id, old)| view.nodes.get(id).unwrap_or(old).clone())
                    .chain(
                        view.nodes
                            .iter()
                            .filter(|(id, _)| !accepted.contains_key(*id))
                            .map(|(_, r)| r.clone()),
                    )
                    .collect()
            }
        };
        let stale = !view.connected || protect.holding();
        let previous = state.snapshot.load_full();
        let snap = Snapshot::build(members, previous.as_deref(), view.revision, stale);
        let m = &state.metrics;
        m.nodes.clear();
        for e in &snap.nodes {
            let r = &e.record;
            let s = if !r.healthy {
                "unhealthy"
            } else if r.state == NodeState::Draining {
                "draining"
            } else {
                "serving"
            };
            m.nodes
                .get_or_create(&NodeLabels {
                    region: r.region.clone(),
                    state: s.into(),
                })
                .inc();
        }
        m.invalid_records.set(view.invalid.len() as i64);
        m.invalid_seen
            .inc_by(view.invalid_seen_total.saturating_sub(seen_invalid));
        seen_invalid = view.invalid_seen_total;
        m.revision.set(view.revision);
        m.registry_connected.set(view.connected as i64);
        if protect.holding() && m.protect_active.get() == 0 {
            m.protect_engaged.inc();
        }
        m.protect_active.set(protect.holding() as i64);
        if view.connected {
            *state.last_sync.lock().expect("last_sync lock") = Some(Instant::now());
        }
        state.snapshot.store(Some(Arc::new(snap)));
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protect_threshold() {
        let cfg = FileConfig {
            protect_max_secs: 60,
            ..FileConfig::default()
        };
        let mut p = Protect::new(&cfg);
        let t0 = Instant::now();
        assert_eq!(
            p.judge(10, 5, t0),
            Verdict::Follow,
            "exactly half is allowed"
        );
        assert_eq!(p.judge(10, 6, t0), Verdict::Hold);
        assert!(p.holding());
        assert_eq!(p.judge(10, 10, t0 + Duration::from_secs(30)), Verdict::Hold);
        assert_eq!(
            p.judge(10, 10, t0 + Duration::from_secs(60)),
            Verdict::Follow,
            "bounded"
        );
        assert!(!p.holding());
        assert_eq!(p.judge(10, 7, t0), Verdict::Hold);
        assert_eq!(p.judge(10, 1, t0), Verdict::Follow, "recovered");
        assert_eq!(
            p.judge(1, 1, t0),
            Verdict::Follow,
            "fleets below protect_min_nodes"
        );
        assert_eq!(p.judge(0, 0, t0), Verdict::Follow);
    }
}
