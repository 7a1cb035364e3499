//! The sorted indexes selection walks: per region and for every region ([`Group`]),
//! each with its ISP lines, per protocol ([`ByProto`]), sorted by reported load; and
//! how a snapshot's nodes are put in them.

use std::collections::HashMap;
use std::sync::Arc;

use registry::Proto;

use super::entry::NodeEntry;
use super::line;
use super::order::Order;

/// Node indexes (into [`super::Snapshot::nodes`]) that can serve one protocol, per protocol,
/// sorted by reported load, then index; and each list's herd-adjusted [`Order`].
#[derive(Debug, Clone, Default)]
pub(super) struct ByProto(pub(super) [Vec<u32>; 3], pub(super) [Arc<Order>; 3]);

/// One index: its list, sorted by reported load, and its herd-adjusted order.
#[derive(Clone, Copy)]
pub(super) struct Index<'a> {
    pub(super) list: &'a [u32],
    pub(super) order: &'a Order,
}

impl ByProto {
    pub(super) fn get(&self, proto: Proto) -> Index<'_> {
        Index {
            list: &self.0[proto as usize],
            order: &self.1[proto as usize],
        }
    }
}

/// The indexes of one group of nodes (a region, or every region): all of them, and
/// by ISP line (see [`line`]).
#[derive(Debug, Clone, Default)]
pub(super) struct Group {
    /// Every node of the group.
    pub(super) all: ByProto,
    /// Per ISP a node of the group names as its line (or one of its lines): those
    /// nodes and the group's multi-line ones. Empty while no node of the group names an ISP: every node
    /// then serves every ISP, and `all` is the only index.
    pub(super) lines: HashMap<Arc<str>, ByProto, foldhash::fast::RandomState>,
    /// The group's multi-line nodes alone, kept while `lines` is not empty: what a
    /// client of an ISP with no node of its own in the group tries first.
    pub(super) multi: ByProto,
}

/// The indexes of a [`Group`] one node is in.
type Memberships<'a> = smallvec::SmallVec<[&'a mut ByProto; 4]>;

impl Group {
    /// The index a client of `isp` walks first in this group, before [`Group::all`];
    /// `None` when every node of the group serves it alike (no ISP known, or no node
    /// of the group names one).
    pub(super) fn line(&self, isp: Option<&str>) -> Option<&ByProto> {
        let isp = isp?;
        if self.lines.is_empty() {
            return None;
        }
        Some(self.lines.get(isp).unwrap_or(&self.multi))
    }

    /// The group's indexes a node whose record names `isp` belongs in; `None` when
    /// it names an ISP the group has no index for (a patch cannot add one: a new line
    /// takes a full build).
    pub(super) fn memberships(&mut self, isp: Option<&str>) -> Option<Memberships<'_>> {
        let Group { all, lines, multi } = self;
        let mut out = Memberships::new();
        out.push(all);
        if line::multi_line(isp) {
            if !lines.is_empty() {
                out.push(multi);
                out.extend(lines.values_mut());
            }
            return Some(out);
        }
        if !line::lines(isp).all(|l| lines.contains_key(l)) {
            return None;
        }
        out.extend(
            lines
                .iter_mut()
                .filter(|(k, _)| line::lines(isp).any(|l| l == &***k))
                .map(|(_, v)| v),
        );
        Some(out)
    }

    /// Every index of the group.
    fn indexes_mut(&mut self) -> impl Iterator<Item = &mut ByProto> {
        [&mut self.all, &mut self.multi]
            .into_iter()
            .chain(self.lines.values_mut())
    }

    /// Hands every order of the group from snapshot `from` to `generation` (a patch);
    /// an order another snapshot owns is replaced by a fresh one.
    pub(super) fn hand_over(&mut self, from: u64, generation: u64) {
        for lists in self.indexes_mut() {
            for order in &mut lists.1 {
                if !order.hand_over(from, generation) {
                    *order = Arc::new(Order::owned_by(generation));
                }
            }
        }
    }
}

/// The key an index is sorted by: reported load (a load is never negative, so its
/// bits order as the number does), tie rank, index.
pub(super) fn rank_key(e: &NodeEntry, i: u32) -> (u64, u64, u32) {
    (e.reported_load.to_bits(), e.tie, i)
}

/// [`super::Snapshot::by_region`]'s type.
pub(super) type ByRegion = HashMap<Arc<str>, Group, foldhash::fast::RandomState>;

/// The group of `region`, made if it is new: a key is allocated once per region, not
/// per node.
pub(super) fn region_mut<'a>(by_region: &'a mut ByRegion, region: &str) -> &'a mut Group {
    if !by_region.contains_key(region) {
        by_region.insert(Arc::from(region), Group::default());
    }
    by_region.get_mut(region).expect("inserted above")
}

/// The indexes of `nodes`: per region, every region, and the held nodes, each sorted
/// by reported load.
pub(super) fn indexes(nodes: &[NodeEntry]) -> (ByRegion, Group, Vec<u32>) {
    let mut by_region: ByRegion = HashMap::default();
    let mut all = Group::default();
    // The lines first: a multi-line node joins every line of its groups. Every node
    // that names an ISP makes its line, indexed or not, so that a node coming back
    // to serving (a patch) finds its line there.
    for e in nodes {
        for isp in line::lines(e.record.isp.as_deref()) {
            for g in [region_mut(&mut by_region, &e.record.region), &mut all] {
                if !g.lines.contains_key(isp) {
                    g.lines.insert(Arc::from(isp), ByProto::default());
                }
            }
        }
    }
    for (i, e) in nodes.iter().enumerate() {
        let r = &e.record;
        if !e.indexed() {
            continue;
        }
        let region = region_mut(&mut by_region, &r.region);
        for g in [region, &mut all] {
            let lists = g
                .memberships(r.isp.as_deref())
                .expect("every line was made above");
            for lists in lists {
                for proto in Proto::ALL {
                    if r.ports.get(proto).is_some() {
                        lists.0[proto as usize].push(i as u32);
                    }
                }
            }
        }
    }
    // Sorted on plain keys gathered once, not by following indexes into the nodes.
    let mut keys: Vec<(u64, u64, u32)> = Vec::new();
    let mut by_load = |list: &mut Vec<u32>| {
        keys.clear();
        keys.extend(list.iter().map(|&i| rank_key(&nodes[i as usize], i)));
        keys.sort_unstable();
        list.clear();
        list.extend(keys.iter().map(|k| k.2));
    };
    for g in by_region.values_mut().chain([&mut all]) {
        for lists in g.indexes_mut() {
            lists.0.iter_mut().for_each(&mut by_load);
        }
    }
    let mut held: Vec<u32> = (0..nodes.len() as u32)
        .filter(|&i| nodes[i as usize].held && nodes[i as usize].eligible())
        .collect();
    by_load(&mut held);
    (by_region, all, held)
}
