//! One registry as the updater holds it: its last view, its protect verdict, and
//! whether it is in reach; each round observes its latest view through it.

use std::sync::Arc;
use std::time::Duration;

use registry::follow::NodeView;
use registry::imbl;
use registry::NodeRecord;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::protect::{Protect, Verdict};
use crate::config::FileConfig;

/// One registry's views, as the updater takes them.
pub struct Input {
    /// The registry's (DC's) name.
    pub name: Arc<str>,
    /// This router's own DC.
    pub local: bool,
    /// `P/nodes/` of this registry, to name its invalid records.
    pub nodes_prefix: String,
    /// The follower's views.
    pub views: watch::Receiver<Arc<NodeView>>,
    /// How far behind etcd the views are (see [`crate::lag`]): reports are placed at
    /// the moment etcd had them. `None`: not measured, taken as none.
    pub lag: Option<Arc<crate::lag::Lag>>,
}

/// A report of a known node: the registry it came from (by index), its old record and
/// its new one.
pub(super) type Report = (usize, Arc<NodeRecord>, Arc<NodeRecord>);

/// One registry's state in the updater: its last view, its protect threshold, and how
/// long it has been out of reach.
pub(super) struct Member {
    pub(super) input: Input,
    pub(super) protect: Protect,
    pub(super) previous: Option<Arc<NodeView>>,
    pub(super) verdict: Verdict,
    /// Since when the registry cannot be reached (its follower says so).
    pub(super) unreachable_since: Option<Instant>,
    pub(super) seen_invalid: u64,
    /// Demoted (out of reach for `registry_stale_secs`) as of the served snapshot.
    pub(super) demoted: bool,
    /// Dropped (out of reach for `protect_max_secs`) as of the served snapshot.
    pub(super) dropped: bool,
}

impl Member {
    /// `input` as first seen: no view yet, followed, in reach.
    pub(super) fn new(input: Input, cfg: &FileConfig) -> Member {
        Member {
            input,
            protect: Protect::new(cfg),
            previous: None,
            verdict: Verdict::Follow,
            unreachable_since: None,
            seen_invalid: 0,
            demoted: false,
            dropped: false,
        }
    }

    pub(super) fn demote_at(&self, stale: Duration) -> Option<Instant> {
        (!self.input.local).then_some(self.unreachable_since? + stale)
    }

    pub(super) fn drop_at(&self, max: Duration) -> Option<Instant> {
        (!self.input.local).then_some(self.unreachable_since? + max)
    }

    /// Takes the registry's latest view (if it was loaded): tracks whether the registry
    /// is in reach and judges the view with its protect threshold. Reports of known
    /// nodes go to `updated`; true when the membership changed.
    pub(super) fn observe(
        &mut self,
        i: usize,
        now: Instant,
        (stale_after, max_hold): (Duration, Duration),
        updated: &mut Vec<Report>,
    ) -> bool {
        let view = self.input.views.borrow_and_update().clone();
        if !view.loaded {
            return false;
        }
        let mut changed = self.track_reach(&view, now, stale_after, max_hold);
        changed |= self.judge(i, &view, now, updated);
        self.previous = Some(view);
        changed
    }

    /// Notes when the registry went out of reach and whether it is now demoted or
    /// dropped; true when either changed.
    fn track_reach(
        &mut self,
        view: &NodeView,
        now: Instant,
        stale_after: Duration,
        max_hold: Duration,
    ) -> bool {
        if view.connected {
            if self.unreachable_since.take().is_some() && self.demoted {
                info!(registry = %self.input.name, "registry reachable again; its nodes are served as usual");
            }
        } else if self.unreachable_since.is_none() {
            self.unreachable_since = Some(now);
        }
        let demoted = self.demote_at(stale_after).is_some_and(|t| now >= t);
        let dropped = self.drop_at(max_hold).is_some_and(|t| now >= t);
        if demoted == self.demoted && dropped == self.dropped {
            return false;
        }
        if demoted && !self.demoted {
            warn!(registry = %self.input.name, secs = stale_after.as_secs(), "registry out of reach: its nodes are offered only after every live one");
        }
        if dropped && !self.dropped {
            error!(registry = %self.input.name, secs = max_hold.as_secs(), "registry out of reach for protect_max_secs: its nodes are no longer offered");
        }
        self.demoted = demoted;
        self.dropped = dropped;
        true
    }

    /// Judges `view` with the protect threshold, from what left and arrived since the
    /// previous view; true when a node left or arrived (or this is the first view).
    fn judge(
        &mut self,
        i: usize,
        view: &Arc<NodeView>,
        now: Instant,
        updated: &mut Vec<Report>,
    ) -> bool {
        let mut changed = false;
        self.verdict = match &self.previous {
            Some(prev) if !Arc::ptr_eq(prev, view) => {
                let (left, arrived) = diff(prev, view, i, updated);
                changed = !left.is_empty() || !arrived.is_empty();
                self.protect
                    .update(now, view.nodes.len(), &left, arrived.iter().map(|a| &**a))
            }
            Some(_) => self.protect.judge(now),
            None => {
                changed = true;
                self.protect.update(now, view.nodes.len(), [], [])
            }
        };
        changed
    }
}

/// What changed from `prev` to `view` of registry `i`: the records of the nodes that
/// left and the ids of those that arrived; reports of known nodes go to `updated`.
fn diff(
    prev: &NodeView,
    view: &NodeView,
    i: usize,
    updated: &mut Vec<Report>,
) -> (Vec<Arc<NodeRecord>>, Vec<Arc<str>>) {
    let mut left = Vec::new();
    let mut arrived = Vec::new();
    for d in prev.nodes.diff(&view.nodes) {
        match d {
            // How it left: its last record the watch saw (a `draining` mark just before
            // the lease's revocation may fall between the two views), else its record
            // in the previous view.
            imbl::ordmap::DiffItem::Remove(id, r) => {
                left.push(view.departed.get(id).unwrap_or(r).clone())
            }
            imbl::ordmap::DiffItem::Add(id, _) => arrived.push(id.clone()),
            imbl::ordmap::DiffItem::Update { old, new } => {
                updated.push((i, old.1.clone(), new.1.clone()))
            }
        }
    }
    (left, arrived)
}
