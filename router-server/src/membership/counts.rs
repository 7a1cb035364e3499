//! The node-count gauges, kept up to date report by report.

use std::collections::HashMap;
use std::sync::Arc;

use registry::{HookState, NodeRecord, NodeState};

use crate::metrics::NodeLabels;

/// Live nodes by region and state, as the `router_nodes` gauge shows them, kept up
/// to date by each report's change (a fleet's count is not recounted per report).
/// The gauge family is replaced whole, under the metrics lock, and only when a count
/// changed: a scrape never sees a half-filled family.
#[derive(Debug, Default)]
pub(crate) struct NodeCounts {
    /// Per region.
    /// Per registry (data centre), per region.
    counts: HashMap<Arc<str>, Regions, foldhash::fast::RandomState>,
    /// Per hook state, in the order of [`HookState::ALL`].
    hooks: [i64; 5],
    changed: bool,
}

type Regions = HashMap<Arc<str>, RegionCounts, foldhash::fast::RandomState>;

/// The registry a record was read from (`default` for one followed alone).
fn dc(r: &NodeRecord) -> &str {
    r.dc.as_deref().unwrap_or("default")
}

/// One region's counts.
#[derive(Debug, Default)]
struct RegionCounts {
    /// Nodes per class of [`NodeCounts::CLASSES`].
    nodes: [i64; 3],
    /// Connections and capacity of its serving, healthy nodes.
    connections: i64,
    capacity: i64,
}

impl NodeCounts {
    const CLASSES: [&'static str; 3] = ["serving", "draining", "unhealthy"];

    pub(crate) fn of<'a>(records: impl Iterator<Item = &'a NodeRecord>) -> NodeCounts {
        let mut c = NodeCounts {
            changed: true,
            ..NodeCounts::default()
        };
        for r in records {
            c.add(r, 1);
        }
        c
    }

    fn class(r: &NodeRecord) -> usize {
        if !r.healthy {
            2
        } else if r.state == NodeState::Draining {
            1
        } else {
            0
        }
    }

    fn add(&mut self, r: &NodeRecord, n: i64) {
        let regions = match self.counts.get_mut(dc(r)) {
            Some(m) => m,
            None => self.counts.entry(Arc::from(dc(r))).or_default(),
        };
        let region = match regions.get_mut(r.region.as_str()) {
            Some(c) => c,
            None => regions.entry(Arc::from(r.region.as_str())).or_default(),
        };
        region.nodes[NodeCounts::class(r)] += n;
        if NodeCounts::class(r) == 0 {
            region.connections += n * r.connections as i64;
            region.capacity += n * r.capacity as i64;
        }
        if let Some(h) = &r.hook {
            let i = HookState::ALL
                .iter()
                .position(|s| *s == h.state)
                .unwrap_or(0);
            self.hooks[i] += n;
        }
        self.changed = true;
    }

    pub(crate) fn replace(&mut self, old: &NodeRecord, new: &NodeRecord) {
        let hook = |r: &NodeRecord| r.hook.as_ref().map(|h| h.state);
        if old.region != new.region
            || old.dc != new.dc
            || NodeCounts::class(old) != NodeCounts::class(new)
            || hook(old) != hook(new)
            || old.capacity != new.capacity
        {
            self.add(old, -1);
            self.add(new, 1);
        } else if old.connections != new.connections && NodeCounts::class(new) == 0 {
            if let Some(region) = self
                .counts
                .get_mut(dc(new))
                .and_then(|m| m.get_mut(new.region.as_str()))
            {
                region.connections += new.connections as i64 - old.connections as i64;
                self.changed = true;
            }
        }
    }

    /// Per region: connections and capacity of its serving, healthy nodes.
    pub(crate) fn region_loads(&self) -> Vec<(String, i64, i64)> {
        let mut by_region: HashMap<&str, (i64, i64)> = HashMap::new();
        for (r, c) in self.counts.values().flat_map(|m| m.iter()) {
            let e = by_region.entry(r).or_default();
            e.0 += c.connections;
            e.1 += c.capacity;
        }
        by_region
            .into_iter()
            .filter(|(_, (_, cap))| *cap > 0)
            .map(|(r, (conns, cap))| (r.to_string(), conns, cap))
            .collect()
    }

    pub(crate) fn hook_counts(&self) -> [(HookState, i64); 5] {
        std::array::from_fn(|i| (HookState::ALL[i], self.hooks[i]))
    }

    pub(crate) fn take_changed(&mut self) -> bool {
        for m in self.counts.values_mut() {
            m.retain(|_, c| c.nodes.iter().any(|&n| n != 0));
        }
        self.counts.retain(|_, m| !m.is_empty());
        std::mem::take(&mut self.changed)
    }

    pub(crate) fn labelled(&self) -> HashMap<NodeLabels, i64> {
        let mut out = HashMap::new();
        let all = self
            .counts
            .iter()
            .flat_map(|(dc, m)| m.iter().map(move |(region, c)| (dc, region, c)));
        for (dc, region, counts) in all {
            for (class, &n) in NodeCounts::CLASSES.iter().zip(&counts.nodes) {
                if n != 0 {
                    let labels = NodeLabels {
                        region: region.to_string(),
                        state: class.to_string(),
                        registry: dc.to_string(),
                    };
                    out.insert(labels, n);
                }
            }
        }
        out
    }
}
