//! The schedule's tests, by concern, and the fixtures they share: nodes, fleets, and
//! the scheduling rules written out the slow way ([`reference`]).

mod arrival;
mod explain;
mod order;
mod select;
mod snapshot;

use std::sync::Arc;

use proptest::prelude::*;
use registry::{NodeRecord, NodeState, Ports, Proto};

use super::{Candidate, NodeEntry, Query, Rules, Snapshot, Steer};
use crate::herd::HerdView;
use registry::policy::{Group, POOL_LABEL};

pub(crate) fn node(id: &str, region: &str, conns: u64, cap: u64) -> NodeRecord {
    NodeRecord::new(
        id,
        "10.0.0.1".parse().unwrap(),
        Ports {
            tcp: Some(8000),
            ws: Some(8080),
            wss: None,
        },
        region,
        cap,
        conns,
    )
}

fn snap(records: Vec<NodeRecord>) -> Snapshot {
    Snapshot::build(records.into_iter().map(Arc::new), None, 1, false)
}

fn q(region: Option<&str>, count: usize) -> Query<'_> {
    Query {
        proto: Proto::Tcp,
        count,
        region,
        isp: None,
        family: None,
        steer: Steer::NONE,
    }
}

/// The default rules, with the herd counts as of now.
fn rules_now() -> Rules<'static> {
    Rules {
        max_load: 0.95,
        fallbacks: &[],
        herd: HerdView::now(5000, 1),
    }
}

/// Sets a node's answers not in its report to `n`, all given at `herd`'s now.
fn set_pending(e: &NodeEntry, n: u64, herd: &HerdView) {
    e.assigned.clear();
    for _ in 0..n {
        herd.record(&e.assigned);
    }
}

fn ids(s: &Snapshot, c: &[Candidate]) -> Vec<String> {
    c.iter()
        .map(|c| s.nodes[c.index].record.id.clone())
        .collect()
}

fn arb_node(i: usize) -> impl Strategy<Value = NodeRecord> {
    (
        0usize..4,
        0u64..1200,
        1u64..1000,
        any::<bool>(),
        any::<bool>(),
        0u8..8,
        any::<bool>(),
        (0usize..6, 0usize..2, 0usize..3),
    )
        .prop_map(
            move |(region, conns, cap, draining, sick, ports, v6, (isp, dc, pool))| {
                let mut n = node(
                    &format!("n{i:03}"),
                    ["a", "b", "c", "d"][region],
                    conns,
                    cap,
                );
                n.state = if draining {
                    NodeState::Draining
                } else {
                    NodeState::Serving
                };
                n.healthy = !sick;
                n.ports = Ports {
                    tcp: (ports & 1 != 0).then_some(1),
                    ws: (ports & 2 != 0).then_some(2),
                    wss: (ports & 4 != 0 || ports == 0).then_some(3),
                };
                if v6 {
                    n.ipv6 = Some("2001:db8::1".parse().unwrap());
                }
                // No ISP, `bgp` and a list with `bgp`: multi-line; `x` and `y`:
                // single-line; `x,y`: on two lines.
                n.isp = [
                    None,
                    Some("bgp"),
                    Some("x"),
                    Some("y"),
                    Some("x,y"),
                    Some("y,bgp"),
                ][isp]
                    .map(str::to_string);
                // Groups operator policy names: two DCs, two pools and no pool.
                n.dc = Some(["d1", "d2"][dc].into());
                if let Some(p) = [Some("p1"), Some("p2"), None][pool] {
                    n.labels.insert(POOL_LABEL.into(), p.into());
                }
                n
            },
        )
}

fn arb_fleet() -> impl Strategy<Value = Vec<NodeRecord>> {
    (0usize..40).prop_flat_map(|n| (0..n).map(arb_node).collect::<Vec<_>>())
}

/// The ISP a test client is of: none known, one with nodes of its own (`x`), one with
/// none (`z`: only multi-line nodes serve it first).
pub(crate) fn arb_isp() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![Just(None), Just(Some("x")), Just(Some("z"))]
}

/// A test client network's steering, owned: the groups its policy excludes, the group
/// first, the nodes (of [`arb_fleet`]'s ids) demoted for it, its caps and those held
/// back.
pub(crate) type TestSteer = (
    Vec<Group>,
    Option<Group>,
    Vec<std::sync::Arc<str>>,
    Vec<registry::policy::Ratio>,
    u8,
);

/// A test policy's decision and demotions (see [`TestSteer`]).
pub(crate) fn arb_policy() -> impl Strategy<Value = TestSteer> {
    let group = prop_oneof![
        Just(Group::Dc("d1".into())),
        Just(Group::Dc("d2".into())),
        Just(Group::Pool("p1".into())),
        Just(Group::Pool("p2".into())),
    ];
    let demoted = proptest::collection::vec(0usize..12, 0..3).prop_map(|ids| {
        ids.into_iter()
            .map(|i| std::sync::Arc::from(format!("n{i:03}")))
            .collect()
    });
    let caps = proptest::collection::vec(
        (group.clone(), 1u8..100).prop_map(|(to, percent)| registry::policy::Ratio { to, percent }),
        0..2,
    );
    (
        proptest::collection::vec(group.clone(), 0..2),
        proptest::option::of(group),
        demoted,
        caps,
        0u8..4,
    )
}

/// The [`Steer`] of a [`TestSteer`].
pub(crate) fn steer_of(t: &TestSteer) -> Steer<'_> {
    Steer {
        exclude: &t.0,
        first: t.1.as_ref(),
        demoted: &t.2,
        caps: &t.3,
        held: t.4,
    }
}

/// The rules written out the slow way: every eligible node the policy does not
/// exclude; those neither held back nor demoted for the network before those that
/// are; in each, nodes of
/// the policy's first group with projected room, then the others with room, then
/// those projected full; in each, by tier (region, then the client's
/// ISP line before the others), then by projected load and id.
fn reference(s: &Snapshot, query: &Query<'_>, rules: Rules<'_>) -> Vec<usize> {
    let mut order: Vec<&str> = query.region.into_iter().collect();
    for f in rules.fallbacks {
        if !order.contains(&f.as_str()) {
            order.push(f);
        }
    }
    // (projected full, tier, projected load, index): nodes the estimate puts at or
    // above max_load come after every other, but still come.
    // (demoted, class, tier, projected load, index).
    type Ranked = (bool, u8, (usize, bool), f64, usize);
    let mut eligible: Vec<Ranked> = (0..s.nodes.len())
        .filter_map(|i| {
            let e = &s.nodes[i];
            let r = &e.record;
            let ok = r.state == NodeState::Serving
                && r.healthy
                && r.load() < rules.max_load
                && r.ports.get(query.proto).is_some()
                && r.addr_for(query.family).is_some()
                && !query.steer.excludes(r);
            let region = order
                .iter()
                .position(|t| *t == r.region)
                .unwrap_or(order.len());
            // Written out without `line`: a list of lines, `bgp` among them or alone.
            let other_line = !match (query.isp, r.isp.as_deref()) {
                (None, _) | (_, None) => true,
                (Some(c), Some(n)) => n.split(',').any(|l| l == c || l == "bgp"),
            };
            let tier = (region, other_line);
            let load = e.projected_load(&rules.herd);
            let class = match () {
                _ if load >= rules.max_load => 2,
                _ if query.steer.first.is_some_and(|g| g.contains(r)) => 0,
                _ => 1,
            };
            ok.then_some((query.steer.last(r), class, tier, load, i))
        })
        .collect();
    eligible.sort_by(|a, b| {
        (a.0, a.1, a.2)
            .cmp(&(b.0, b.1, b.2))
            .then(a.3.total_cmp(&b.3))
            .then(a.4.cmp(&b.4))
    });
    eligible
        .into_iter()
        .take(query.count)
        .map(|(_, _, _, _, i)| i)
        .collect()
}
