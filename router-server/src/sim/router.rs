//! The simulated routers: each one's view of the fleet (the router's own
//! [`Snapshot`]), patched in batches from what etcd delivers to it, late by its lag.

use std::collections::VecDeque;
use std::sync::Arc;

use registry::NodeRecord;

use super::fleet::{dynamic, record, Agent, EPOCH_MS};
use super::SimConfig;
use crate::schedule::{Arrival, Snapshot};

/// One simulated router: its view of the fleet and what etcd has yet to deliver to it.
pub(super) struct Router {
    pub(super) snap: Snapshot,
    pub(super) lag: u64,
    /// The lag this router takes into account (0 when it does not know it).
    pub(super) known_lag: u64,
    /// Deliveries due: (virtual ms, record).
    inbox: VecDeque<(u64, Arc<NodeRecord>)>,
    revision: i64,
}

impl Router {
    /// Queues `rec` for delivery at `t`, in order: etcd's watch is ordered, so a write
    /// is never delivered before an earlier one.
    pub(super) fn deliver(&mut self, t: u64, rec: Arc<NodeRecord>) {
        let t = self.inbox.back().map_or(t, |(last, _)| t.max(*last));
        self.inbox.push_back((t, rec));
    }

    /// Applies what etcd delivered by `ms`, in one batch (a watch response and the
    /// snapshot patch after it).
    pub(super) fn apply_due(&mut self, ms: u64, now_abs: u64) {
        let mut due: Vec<Arc<NodeRecord>> = Vec::new();
        while self.inbox.front().is_some_and(|(t, _)| *t <= ms) {
            due.push(self.inbox.pop_front().expect("peeked").1);
        }
        if !due.is_empty() {
            self.revision += 1;
            self.snap = self
                .snap
                .patch_at(
                    due.iter(),
                    self.revision,
                    false,
                    Arrival::lagged(now_abs, self.known_lag),
                )
                .expect("reports of known nodes");
        }
    }
}

/// Every router starts from a view of the initial reports, sampled just before t=0;
/// each agent's last report is that one.
pub(super) fn initial_routers(c: &SimConfig, agents: &mut [Agent], conns: &[u64]) -> Vec<Router> {
    let initial: Vec<Arc<NodeRecord>> = agents
        .iter()
        .enumerate()
        .filter(|(_, a)| !a.gone)
        .map(|(i, a)| {
            let t = (EPOCH_MS as i64 - 1 + a.skew) as u64;
            Arc::new(record(i, a, conns[i], Some((t, t))))
        })
        .collect();
    for (i, a) in agents.iter_mut().enumerate() {
        if !a.gone {
            a.last = Some((dynamic(conns[i]), 0));
        }
    }
    (0..c.routers.max(1))
        .map(|k| Router {
            snap: Snapshot::build_holding(
                initial.iter().cloned(),
                [],
                None,
                1,
                false,
                k as u64 + 1,
                EPOCH_MS,
            ),
            lag: c.router_lag_ms.get(k).copied().unwrap_or(0),
            known_lag: if c.routers_know_lag {
                c.router_lag_ms.get(k).copied().unwrap_or(0)
            } else {
                0
            },
            inbox: VecDeque::new(),
            revision: 1,
        })
        .collect()
}
