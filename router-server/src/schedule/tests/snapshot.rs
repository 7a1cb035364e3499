//! Building and patching snapshots: a patch gives what a full build would.

use std::sync::Arc;

use proptest::prelude::*;
use registry::NodeRecord;

use super::{arb_fleet, node};
use crate::schedule::index::Group;
use crate::schedule::Snapshot;

proptest! {
    /// Patching a snapshot with reports gives the snapshot a full build gives:
    /// the same entries (herd counters carried over) and the same sorted indexes,
    /// every ISP line's included, whatever changed (load, state, health, region,
    /// ports, ISP), for any seed; or no patch, when a node joins a line its region (or
    /// the fleet) has no index for.
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
        let built = Snapshot::build_seeded(now.values().cloned(), Some(&base), 2, true, seed);
        let Some(patched) = base.patch(&reports, 2, true) else {
            // Only a line new to a group refuses a patch.
            let new_line = built.by_region.iter().map(|(r, g)| (Some(r), g)).chain([(None, &built.all)])
                .any(|(r, g)| {
                    let before = match r { Some(r) => base.by_region.get(r), None => Some(&base.all) };
                    g.lines.keys().any(|isp| !before.is_some_and(|b| b.lines.contains_key(isp)))
                });
            prop_assert!(new_line, "a patch refused without a new line");
            return Ok(());
        };
        prop_assert_eq!(patched.nodes.len(), built.nodes.len());
        for (p, b) in patched.nodes.iter().zip(built.nodes.iter()) {
            prop_assert_eq!(&p.record, &b.record);
            prop_assert!(Arc::ptr_eq(&p.assigned, &b.assigned), "herd counter carried over");
            prop_assert_eq!(p.tie, b.tie);
            prop_assert_eq!(p.reported_load.to_bits(), b.reported_load.to_bits());
        }
        // What a client of each ISP walks, the line then the whole group, is the same.
        let walks = |g: &Group, isp: Option<&str>| {
            (g.line(isp).map(|l| l.0.clone()), g.all.0.clone())
        };
        let isps = [None, Some("x"), Some("y"), Some("z")];
        for isp in isps {
            let (p, b) = (walks(&patched.all, isp), walks(&built.all, isp));
            // A line the patch emptied stays as its group's multi-line nodes: the
            // same walk as no line at all, as the whole group follows.
            prop_assert_eq!(&p.1, &b.1);
            prop_assert!(p.0 == b.0 || b.0.is_none() && p.0.as_ref() == Some(&p.1), "isp {:?}", isp);
        }
        for (region, g) in &built.by_region {
            let p = patched.by_region.get(region);
            prop_assert!(p.is_some(), "region {}", region);
            for isp in isps {
                let (p, b) = (walks(p.unwrap(), isp), walks(g, isp));
                prop_assert_eq!(&p.1, &b.1, "region {}", region);
                prop_assert!(p.0 == b.0 || b.0.is_none() && p.0.as_ref() == Some(&p.1), "region {} isp {:?}", region, isp);
            }
        }
        // A region the patch emptied keeps empty lists; no other difference.
        for (region, g) in &patched.by_region {
            if !built.by_region.contains_key(region) {
                prop_assert!(g.all.0.iter().all(Vec::is_empty), "region {}", region);
            }
        }
        prop_assert_eq!((patched.revision, patched.stale), (2, true));
        prop_assert!(base.patch([&Arc::new(node("not-there", "a", 1, 10))], 3, false).is_none());
    }
}
