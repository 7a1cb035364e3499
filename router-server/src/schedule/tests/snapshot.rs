//! Building and patching snapshots: a patch gives what a full build would.

use std::sync::Arc;

use proptest::prelude::*;
use registry::NodeRecord;

use super::{arb_fleet, node};
use crate::schedule::Snapshot;

proptest! {
    /// Patching a snapshot with reports gives the snapshot a full build gives:
    /// the same entries (herd counters carried over) and the same sorted indexes,
    /// whatever changed (load, state, health, region, ports), for any seed.
    #[test]
    fn patch_equals_build(fleet in arb_fleet(), changes in proptest::collection::vec((0usize..40, 0usize..40), 0..12),
                          seed in prop_oneof![Just(0u64), any::<u64>()]) {
        let mut ids = std::collections::HashSet::new();
        let fleet: Vec<Arc<NodeRecord>> = fleet.into_iter().filter(|n| ids.insert(n.id.clone())).map(Arc::new).collect();
        prop_assume!(!fleet.is_empty());
        let base = Snapshot::build_seeded(fleet.iter().cloned(), None, 1, false, seed);
        // Each change gives node `a` the fields of a random other node `b`.
        let mut now: std::collections::BTreeMap<String, Arc<NodeRecord>> =
            fleet.iter().map(|r| (r.id.clone(), r.clone())).collect();
        let mut reports = Vec::new();
        for (a, b) in changes {
            let (a, b) = (&fleet[a % fleet.len()], &fleet[b % fleet.len()]);
            let r = Arc::new(NodeRecord { id: a.id.clone(), ..(**b).clone() });
            now.insert(a.id.clone(), r.clone());
            reports.push(r);
        }
        let patched = base.patch(&reports, 2, true).expect("every id is in the snapshot");
        let built = Snapshot::build_seeded(now.values().cloned(), Some(&base), 2, true, seed);
        prop_assert_eq!(patched.nodes.len(), built.nodes.len());
        for (p, b) in patched.nodes.iter().zip(built.nodes.iter()) {
            prop_assert_eq!(&p.record, &b.record);
            prop_assert!(Arc::ptr_eq(&p.assigned, &b.assigned), "herd counter carried over");
            prop_assert_eq!(p.tie, b.tie);
            prop_assert_eq!(p.reported_load.to_bits(), b.reported_load.to_bits());
        }
        prop_assert_eq!(&patched.all.0, &built.all.0);
        for (region, lists) in &built.by_region {
            prop_assert_eq!(&patched.by_region.get(region).map(|l| &l.0), &Some(&lists.0), "region {}", region);
        }
        // A region the patch emptied keeps empty lists; no other difference.
        for (region, lists) in &patched.by_region {
            if !built.by_region.contains_key(region) {
                prop_assert!(lists.0.iter().all(Vec::is_empty), "region {}", region);
            }
        }
        prop_assert_eq!((patched.revision, patched.stale), (2, true));
        prop_assert!(base.patch([&Arc::new(node("not-there", "a", 1, 10))], 3, false).is_none());
    }
}
