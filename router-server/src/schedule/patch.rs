//! Patching a [`Snapshot`] with new reports of nodes it has: the changed entries
//! move within the sorted indexes instead of the whole fleet being sorted again.

use std::sync::Arc;

use registry::{NodeRecord, Proto};

use super::arrival::Arrival;
use super::entry::NodeEntry;
use super::index::{rank_key, region_mut};
use super::order;
use super::snapshot::Snapshot;

impl Snapshot {
    /// This snapshot with new reports of nodes it has, or `None` when one of them is
    /// not in it (arrivals and departures take a [`Snapshot::build_seeded`]).
    ///
    /// The cost is per report, not per node: the nodes are shared with `self` but for
    /// the changed entries, and each changed entry moves within the sorted indexes it
    /// is in (binary search, then one shift of a flat array), instead of the whole
    /// fleet being sorted again.
    pub fn patch<'a>(
        &self,
        reports: impl IntoIterator<Item = &'a Arc<NodeRecord>>,
        revision: i64,
        stale: bool,
    ) -> Option<Snapshot> {
        self.patch_at(reports, revision, stale, registry::now_ms())
    }

    /// [`Snapshot::patch`] with the reports received at `received` (this router's
    /// wall-clock ms, and the registries' lags: see [`Arrival`]), on which their
    /// sample ages are anchored.
    pub fn patch_at<'a>(
        &self,
        reports: impl IntoIterator<Item = &'a Arc<NodeRecord>>,
        revision: i64,
        stale: bool,
        received: impl Into<Arrival>,
    ) -> Option<Snapshot> {
        let received = received.into();
        let mut next = self.clone();
        next.generation = order::next_generation();
        // The orders go to the new snapshot, which updates them below; this one scans.
        for g in next.by_region.values_mut().chain([&mut next.all]) {
            g.hand_over(self.generation, next.generation);
        }
        for record in reports {
            let i = next.position(&record.id)?;
            let old = next.nodes[i].clone();
            if Arc::ptr_eq(&old.record, record) || *old.record == **record {
                continue;
            }
            if old.held {
                // A held node reported again: it is back, which takes a full build.
                return None;
            }
            let entry = NodeEntry::new(record.clone(), Some(&old), old.tie, received.of(record));
            next.unindex(i as u32, &old);
            next.nodes.set(i, entry);
            // A node on a line its region has no index for yet: a full build makes it.
            next.reindex(i as u32)?;
        }
        next.revision = revision;
        next.stale = stale;
        Some(next)
    }

    /// Removes node `i`, as `old` describes it, from the indexes it is in.
    fn unindex(&mut self, i: u32, old: &NodeEntry) {
        if !old.indexed() {
            return;
        }
        let key = rank_key(old, i);
        let nodes = &self.nodes;
        let r = &old.record;
        let region = self.by_region.get_mut(r.region.as_str());
        for g in [region, Some(&mut self.all)].into_iter().flatten() {
            for lists in g.memberships(r.isp.as_deref()).into_iter().flatten() {
                for proto in Proto::ALL {
                    if r.ports.get(proto).is_none() {
                        continue;
                    }
                    lists.1[proto as usize].remove(i, old.tie);
                    let list = &mut lists.0[proto as usize];
                    if let Ok(at) =
                        list.binary_search_by(|&j| rank_key(&nodes[j as usize], j).cmp(&key))
                    {
                        list.remove(at);
                    }
                }
            }
        }
    }

    /// Adds node `i` to the indexes its current entry belongs in. `None` when its
    /// line has no index in its region (or in all of them): a new line takes a build.
    fn reindex(&mut self, i: u32) -> Option<()> {
        let e = &self.nodes[i as usize];
        if !e.indexed() {
            return Some(());
        }
        let key = rank_key(e, i);
        let r = &e.record;
        let region = region_mut(&mut self.by_region, &r.region);
        let nodes = &self.nodes;
        for g in [region, &mut self.all] {
            for lists in g.memberships(r.isp.as_deref())? {
                for proto in Proto::ALL {
                    if r.ports.get(proto).is_none() {
                        continue;
                    }
                    lists.1[proto as usize].insert(e, i);
                    let list = &mut lists.0[proto as usize];
                    let at = list.partition_point(|&j| rank_key(&nodes[j as usize], j) < key);
                    list.insert(at, i);
                }
            }
        }
        Some(())
    }
}
