//! The schedule's tests, by concern, and the fixtures they share: nodes, fleets, and
//! the scheduling rules written out the slow way ([`reference`]).

mod arrival;
mod explain;
mod select;
mod snapshot;

use std::sync::Arc;

use proptest::prelude::*;
use registry::{NodeRecord, NodeState, Ports, Proto};

use super::{Candidate, NodeEntry, Query, Rules, Snapshot};
use crate::herd::HerdView;

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
        0usize..4,
    )
        .prop_map(
            move |(region, conns, cap, draining, sick, ports, v6, isp)| {
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
                // No ISP and `bgp`: multi-line; `x` and `y`: single-line.
                n.isp = [None, Some("bgp"), Some("x"), Some("y")][isp].map(str::to_string);
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

/// The rules written out the slow way: every eligible node, by tier (region, then
/// the client's ISP line before the others), then by projected load and id.
fn reference(s: &Snapshot, query: &Query<'_>, rules: Rules<'_>) -> Vec<usize> {
    let mut order: Vec<&str> = query.region.into_iter().collect();
    for f in rules.fallbacks {
        if !order.contains(&f.as_str()) {
            order.push(f);
        }
    }
    // (projected full, tier, projected load, index): nodes the estimate puts at or
    // above max_load come after every other, but still come.
    let mut eligible: Vec<(bool, (usize, bool), f64, usize)> = (0..s.nodes.len())
        .filter_map(|i| {
            let e = &s.nodes[i];
            let r = &e.record;
            let ok = r.state == NodeState::Serving
                && r.healthy
                && r.load() < rules.max_load
                && r.ports.get(query.proto).is_some()
                && r.addr_for(query.family).is_some();
            let region = order
                .iter()
                .position(|t| *t == r.region)
                .unwrap_or(order.len());
            let other_line = !match (query.isp, r.isp.as_deref()) {
                (None, _) | (_, None | Some("bgp")) => true,
                (Some(c), Some(n)) => c == n,
            };
            let tier = (region, other_line);
            let load = e.projected_load(&rules.herd);
            ok.then_some((load >= rules.max_load, tier, load, i))
        })
        .collect();
    eligible.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(a.1.cmp(&b.1))
            .then(a.2.total_cmp(&b.2))
            .then(a.3.cmp(&b.3))
    });
    eligible
        .into_iter()
        .take(query.count)
        .map(|(_, _, _, i)| i)
        .collect()
}
