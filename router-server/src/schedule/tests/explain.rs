//! `explain`: the answer is the selection's, nothing is counted, and each node left out
//! is given the rule that left it out.

use std::sync::Arc;

use proptest::prelude::*;
use registry::record::IpFamily;
use registry::{NodeState, Proto};

use super::super::{explain, select, select_budgeted, Reason, Tier, SCAN_BUDGET};
use super::*;

/// The reason given for node `id` (`None`: it is in the answer).
fn why(s: &Snapshot, query: &Query<'_>, rules: Rules<'_>, id: &str) -> Option<Reason> {
    let x = explain(s, query, rules);
    let v = x
        .nodes
        .iter()
        .find(|v| v.entry.record.id == id)
        .unwrap_or_else(|| panic!("{id} is not in the snapshot"));
    v.outcome.err()
}

#[test]
fn each_rule_names_the_nodes_it_leaves_out() {
    let mut draining = node("draining", "a", 0, 100);
    draining.state = NodeState::Draining;
    let mut sick = node("sick", "a", 0, 100);
    sick.healthy = false;
    let s = snap(vec![
        node("a1", "a", 10, 100),
        node("a2", "a", 20, 100),
        node("a3", "a", 30, 100),
        node("a4", "a", 40, 100),
        node("b1", "b", 0, 100),
        draining,
        sick,
        node("full", "a", 95, 100),
    ]);
    let rules = rules_now();
    let query = q(Some("a"), 3);
    let x = explain(&s, &query, rules);
    assert_eq!(ids(&s, &x.chosen), ["a1", "a2", "a3"]);
    let reasons: Vec<(&str, Option<Reason>)> = x
        .nodes
        .iter()
        .map(|v| (v.entry.record.id.as_str(), v.outcome.err()))
        .collect();
    assert_eq!(
        reasons,
        [
            ("a1", None),
            ("a2", None),
            ("a3", None),
            ("a4", Some(Reason::Outranked)),
            ("b1", Some(Reason::OtherRegion)),
            ("draining", Some(Reason::Draining)),
            ("full", Some(Reason::Full)),
            ("sick", Some(Reason::Unhealthy)),
        ]
    );
    let tiers: Vec<Tier> = x.nodes.iter().map(|v| v.tier).collect();
    assert_eq!(tiers[4], Tier::Any, "b is no fallback of a");
    assert_eq!(tiers[0], Tier::Region);
    // A node of another region still comes when the client's region runs short.
    assert_eq!(why(&s, &q(Some("a"), 5), rules, "b1"), None);
    assert_eq!(why(&s, &q(Some("a"), 5), rules, "full"), Some(Reason::Full));
    // A fallback region ranks before any other, and after the client's own.
    let fallbacks = ["b".to_string()];
    let with_fallback = Rules {
        fallbacks: &fallbacks,
        ..rules
    };
    let x = explain(&s, &q(Some("a"), 3), with_fallback);
    assert_eq!(x.nodes[4].tier, Tier::Fallback(0));
    assert_eq!(x.nodes[4].outcome, Err(Reason::OtherRegion));
}

#[test]
fn protocol_and_family_come_before_load() {
    let mut v6 = node("v6", "a", 50, 100);
    v6.ipv6 = Some("2001:db8::1".parse().unwrap());
    let s = snap(vec![node("v4", "a", 0, 100), v6]);
    let rules = rules_now();
    let wss = Query {
        proto: Proto::Wss,
        ..q(Some("a"), 3)
    };
    assert_eq!(why(&s, &wss, rules, "v4"), Some(Reason::NoPort));
    let six = Query {
        family: Some(IpFamily::V6),
        ..q(Some("a"), 3)
    };
    assert_eq!(why(&s, &six, rules, "v4"), Some(Reason::NoAddress));
    assert_eq!(why(&s, &six, rules, "v6"), None);
    // Draining wins over a missing port: the first rule the selection applies.
    let mut d = node("d", "a", 0, 100);
    d.state = NodeState::Draining;
    d.ports.wss = None;
    let s = snap(vec![d]);
    assert_eq!(why(&s, &wss, rules, "d"), Some(Reason::Draining));
}

#[test]
fn the_estimate_puts_a_node_last_and_protect_after_every_live_one() {
    let held = Arc::new(node("held", "a", 0, 100));
    let held_full = Arc::new(node("held-full", "a", 96, 100));
    let records = ["busy", "b1", "b2"].map(|id| {
        Arc::new(node(
            id,
            if id == "busy" { "a" } else { "b" },
            if id == "busy" { 50 } else { 60 },
            100,
        ))
    });
    let s = Snapshot::build_holding(
        records,
        [held, held_full],
        None,
        1,
        true,
        0,
        registry::now_ms(),
    );
    let rules = rules_now();
    let busy = &s.nodes[s.position("busy").unwrap()];
    set_pending(busy, 50, &rules.herd);
    // busy: reported 0.5, projected 1.0: after every other live node, before held.
    let x = explain(&s, &q(Some("a"), 2), rules);
    assert_eq!(ids(&s, &x.chosen), ["b1", "b2"]);
    assert_eq!(
        why(&s, &q(Some("a"), 2), rules, "busy"),
        Some(Reason::ProjectedFull)
    );
    assert_eq!(why(&s, &q(Some("a"), 2), rules, "held"), Some(Reason::Held));
    assert_eq!(
        why(&s, &q(Some("a"), 2), rules, "held-full"),
        Some(Reason::Full)
    );
    let x = explain(&s, &q(Some("a"), 5), rules);
    assert_eq!(ids(&s, &x.chosen), ["b1", "b2", "busy", "held"]);
}

#[test]
fn explaining_counts_no_answer() {
    let s = snap(vec![node("a1", "a", 10, 100), node("a2", "a", 20, 100)]);
    let rules = rules_now();
    for _ in 0..100 {
        explain(&s, &q(Some("a"), 1), rules);
    }
    for e in s.nodes.iter() {
        assert_eq!(e.pending(&rules.herd), 0);
    }
    // A request counts: the check above would see it.
    select(&s, &q(Some("a"), 1), rules);
    assert_eq!(
        rules
            .herd
            .pending(&s.nodes[0].assigned, s.nodes[0].basis.sampled_ms),
        1
    );
}

#[test]
fn every_reason_has_its_name() {
    let names: Vec<String> = Reason::ALL
        .iter()
        .map(|r| {
            serde_json::to_value(r)
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let own: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(names, own);
}

proptest! {
    /// On any fleet: the answer is the selection's, a node left out for its rank only
    /// when the answer is full, and a node left out by a rule breaks that rule.
    #[test]
    fn verdicts_agree_with_the_selection(
        fleet in arb_fleet(),
        region in prop::option::of(0usize..4),
        count in 1usize..6,
        proto in 0usize..3,
        six in any::<bool>(),
        isp in super::arb_isp(),
        policy in super::arb_policy(),
    ) {
        let s = snap(fleet);
        let region = region.map(|r| ["a", "b", "c", "d"][r]);
        let fallbacks = ["c".to_string(), "a".to_string()];
        let rules = Rules { fallbacks: &fallbacks, ..rules_now() };
        let query = Query {
            proto: Proto::ALL[proto],
            count,
            region,
            isp,
            family: six.then_some(IpFamily::V6),
            steer: super::steer_of(&policy),
        };
        let x = explain(&s, &query, rules);
        let selected = select_budgeted(&s, &query, rules, 0, SCAN_BUDGET);
        prop_assert_eq!(ids(&s, &x.chosen), ids(&s, &selected));
        prop_assert_eq!(ids(&s, &x.chosen), reference(&s, &query, rules)
            .into_iter().map(|i| s.nodes[i].record.id.clone()).collect::<Vec<_>>());
        for v in &x.nodes {
            let r = &v.entry.record;
            match v.outcome {
                Ok(rank) => prop_assert_eq!(x.chosen[rank].index, v.index),
                Err(Reason::Draining) => prop_assert_eq!(r.state, NodeState::Draining),
                Err(Reason::Unhealthy) => prop_assert!(!r.healthy),
                Err(Reason::NoPort) => prop_assert!(r.ports.get(query.proto).is_none()),
                Err(Reason::NoAddress) => prop_assert!(r.addr_for(query.family).is_none()),
                Err(Reason::Excluded) => prop_assert!(query.steer.excludes(r)),
                Err(Reason::Capped) => {
                    prop_assert_eq!(x.chosen.len(), count);
                    prop_assert!(query.steer.holds_back(r));
                }
                Err(Reason::Demoted) => {
                    prop_assert_eq!(x.chosen.len(), count);
                    prop_assert!(query.steer.demotes(r));
                }
                Err(Reason::Full) => prop_assert!(v.entry.reported_load >= rules.max_load),
                Err(Reason::OtherIsp) => {
                    prop_assert_eq!(x.chosen.len(), count);
                    prop_assert!(!crate::schedule::line::serves(r.isp.as_deref(), query.isp), "{} is on the client's line", r.id);
                }
                Err(_) => prop_assert_eq!(x.chosen.len(), count, "{} left out with room", r.id),
            }
        }
    }
}
