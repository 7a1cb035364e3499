//! Selection: region tiers, eligibility, herd levelling, the overflow order, and the
//! fast paths (early stop, herd-adjusted order) against the rules written out.

use std::net::IpAddr;
use std::sync::Arc;

use proptest::prelude::*;
use registry::record::IpFamily;
use registry::{NodeRecord, NodeState, Ports, Proto};

use super::{
    arb_fleet, arb_isp, arb_policy, ids, node, q, reference, rules_now, set_pending, snap,
};
use crate::herd::HerdView;
use crate::schedule::order;
use crate::schedule::{select, select_budgeted, Query, Rules, Snapshot, SCAN_BUDGET};

#[test]
fn region_then_fallbacks_then_any() {
    let s = snap(vec![
        node("sh-1", "cn-sh", 50, 100),
        node("hz-1", "cn-hz", 10, 100),
        node("bj-1", "cn-bj", 0, 100),
        node("bj-2", "cn-bj", 5, 100),
        node("sz-1", "cn-sz", 1, 100),
    ]);
    let fallbacks = vec!["cn-hz".to_string()];
    let rules = Rules {
        fallbacks: &fallbacks,
        ..rules_now()
    };
    let c = select(&s, &q(Some("cn-sh"), 4), rules);
    assert_eq!(ids(&s, &c), ["sh-1", "hz-1", "bj-1", "sz-1"]);
    // Unknown region: least loaded anywhere.
    let c = select(&s, &q(None, 2), rules_now());
    assert_eq!(ids(&s, &c), ["bj-1", "sz-1"]);
}

#[test]
fn ineligible_nodes_are_never_chosen() {
    let mut draining = node("d", "r", 0, 100);
    draining.state = NodeState::Draining;
    let mut sick = node("s", "r", 0, 100);
    sick.healthy = false;
    let full = node("f", "r", 95, 100);
    let mut wss_only = node("w", "r", 0, 100);
    wss_only.ports = Ports {
        tcp: None,
        ws: None,
        wss: Some(443),
    };
    let ok = node("ok", "r", 90, 100);
    let s = snap(vec![draining, sick, full, wss_only, ok]);
    assert_eq!(ids(&s, &select(&s, &q(Some("r"), 10), rules_now())), ["ok"]);
    let wss = Query {
        proto: Proto::Wss,
        ..q(Some("r"), 10)
    };
    assert_eq!(ids(&s, &select(&s, &wss, rules_now())), ["w"]);
    let v6 = Query {
        family: Some(IpFamily::V6),
        ..q(Some("r"), 10)
    };
    assert!(select(&s, &v6, rules_now()).is_empty(), "no IPv6 addresses");
}

#[test]
fn dual_stack_answers_in_the_requested_family() {
    let mut n = node("ds", "r", 0, 100);
    n.ipv6 = Some("2001:db8::1".parse().unwrap());
    let s = snap(vec![n]);
    let v6 = Query {
        family: Some(IpFamily::V6),
        ..q(None, 1)
    };
    assert_eq!(
        select(&s, &v6, rules_now())[0].ip,
        "2001:db8::1".parse::<IpAddr>().unwrap()
    );
    let v4 = Query {
        family: Some(IpFamily::V4),
        ..q(None, 1)
    };
    assert_eq!(
        select(&s, &v4, rules_now())[0].ip,
        "10.0.0.1".parse::<IpAddr>().unwrap()
    );
}

/// 10 nodes with unequal loads, 5 000 requests and no new reports: the router's
/// own accounting spreads the burst until projected loads are level.
#[test]
fn herd_burst_levels_projected_loads() {
    let records: Vec<NodeRecord> = (0..10)
        .map(|i| node(&format!("n{i}"), "r", i * 100, 10_000))
        .collect();
    let s = snap(records);
    let rules = rules_now();
    for _ in 0..5000 {
        assert!(!select(&s, &q(Some("r"), 3), rules).is_empty());
    }
    let loads: Vec<f64> = s
        .nodes
        .iter()
        .map(|e| e.projected_load(&rules.herd))
        .collect();
    let mean = loads.iter().sum::<f64>() / loads.len() as f64;
    let max = loads.iter().cloned().fold(0.0, f64::max);
    assert!(max / mean <= 1.05, "max/mean = {} ({loads:?})", max / mean);
    let total: u64 = s
        .nodes
        .iter()
        .map(|e| rules.herd.pending(&e.assigned, 0))
        .sum();
    assert_eq!(total, 5000);
}

/// Answers that never became connections stop counting after the window: three
/// small nodes polled by a monitor are back in service within seconds, without a
/// report.
#[test]
fn phantom_answers_expire_with_the_window() {
    let s = snap(
        (0..3)
            .map(|i| node(&format!("n{i}"), "r", 0, 100))
            .collect(),
    );
    let h = HerdView::now(5000, 1);
    let polled = Rules {
        herd: h,
        ..rules_now()
    };
    let mut answered = 0;
    while select(&s, &q(None, 1), polled)[0].load < 0.95 {
        answered += 1;
    }
    assert!(answered >= 280, "{answered}");
    // Six seconds later, with no report, the answers no longer count.
    let later = Rules {
        herd: HerdView::at(h.now_ms + 6_000, 20, 1),
        ..rules_now()
    };
    let again = select(&s, &q(None, 3), later);
    assert_eq!(again.len(), 3);
    assert!(again.iter().all(|c| c.load < 0.1), "{again:?}");
}

/// Answers alone never make the router refuse: a region that phantom askers have
/// filled on paper is still answered in full, after every node the estimate leaves
/// room on, the least projected first. Only reported load empties an answer.
#[test]
fn projected_load_reorders_but_never_refuses() {
    let s = snap(vec![
        node("a1", "a", 200, 1000),
        node("a2", "a", 100, 1000),
        node("b1", "b", 0, 1000),
        node("full", "a", 960, 1000),
    ]);
    let fallbacks = vec!["b".to_string()];
    let rules = Rules {
        fallbacks: &fallbacks,
        ..rules_now()
    };
    // 1,800 phantom answers: beyond region a's 1,600 free slots, so the last go to
    // the fallback.
    for _ in 0..1800 {
        select(&s, &q(Some("a"), 1), rules);
    }
    let a1 = s.get("a1").unwrap().projected_load(&rules.herd);
    let a2 = s.get("a2").unwrap().projected_load(&rules.herd);
    assert!(a1 >= 0.95 && a2 >= 0.95, "{a1} {a2}");
    // b1 took the overflow once region a was projected full.
    let got = select(&s, &q(Some("a"), 3), rules);
    let names = ids(&s, &got);
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(
        names[0], "b1",
        "the node with projected room first: {names:?}"
    );
    assert!(
        !names.contains(&"full".to_string()),
        "reported load at max_load still refuses: {names:?}"
    );
    assert!(got[1].load <= got[2].load, "least projected first: {got:?}");
    // Nothing with reported room: only then is the answer empty.
    let full = snap(vec![node("f", "a", 960, 1000)]);
    assert!(select(&full, &q(Some("a"), 3), rules_now()).is_empty());
}

/// Two routers behind a balancer: each scales its own answers by the live count,
/// and their tie orders differ, so a storm's first answers do not all name the
/// same node.
#[test]
fn routers_scale_their_answers_and_break_ties_differently() {
    let fleet: Vec<Arc<NodeRecord>> = (0..20)
        .map(|i| Arc::new(node(&format!("n{i:02}"), "r", 0, 1000)))
        .collect();
    let firsts: std::collections::HashSet<usize> = (1..=8u64)
        .map(|seed| {
            let s = Snapshot::build_seeded(fleet.clone(), None, 1, false, seed * 7919);
            select(&s, &q(None, 1), rules_now())[0].index
        })
        .collect();
    assert!(
        firsts.len() >= 4,
        "eight routers' first answers: {firsts:?}"
    );
    let s = Snapshot::build_seeded(fleet, None, 1, false, 42);
    let two = Rules {
        herd: HerdView::now(5000, 2),
        ..rules_now()
    };
    let first = select(&s, &q(None, 1), two)[0].index;
    let e = &s.nodes[first];
    assert_eq!(
        e.projected_load(&two.herd),
        2.0 / 1000.0,
        "one answer counts twice"
    );
}

/// Mid-burst, with every node of the region levelled and no report coming, an
/// answer reads about `count` + 1 nodes whatever the region's size (a scan read
/// them all).
#[test]
fn a_levelled_burst_reads_the_same_few_nodes_at_any_size() {
    let mut per_answer = Vec::new();
    for n in [100usize, 1_000, 10_000] {
        let records =
            (0..n).map(|i| Arc::new(node(&format!("gw-{i:06}"), "r0", 500_000, 1_000_000)));
        let snap = Snapshot::build_seeded(records, None, 1, false, 7);
        let q = q(Some("r0"), 3);
        // Microseconds, after the reports' receipt.
        let mut t = (registry::now_ms() + 1_000) * 1000;
        let (walks, visits) = (
            order::WALKS.with(|w| w.get()),
            order::VISITS.with(|w| w.get()),
        );
        let answers = 20_000u64;
        for _ in 0..answers {
            // 20,000 answers a second: the herd counts' slots turn four times.
            t += 50;
            let rules = Rules {
                max_load: 0.95,
                fallbacks: &[],
                herd: HerdView::at(t / 1000, 20, 1),
            };
            assert_eq!(select(&snap, &q, rules).len(), 3);
        }
        let walked = order::WALKS.with(|w| w.get()) - walks;
        let read = order::VISITS.with(|w| w.get()) - visits;
        assert!(
            walked + u64::try_from(SCAN_BUDGET).unwrap() >= answers,
            "answered by walks: {walked}"
        );
        per_answer.push(read as f64 / answers as f64);
    }
    assert!(
        per_answer.iter().all(|&v| v <= 5.0),
        "nodes read per answer: {per_answer:?}"
    );
}

/// Mid-burst, a report reaches the walk at once: the order keeps a copy of what it
/// reads of each node (load, counter, record), and a patch replaces it.
#[test]
fn a_walk_answers_with_what_the_latest_report_says() {
    let now = 1_800_000_000_000u64;
    let fleet = (0..8).map(|i| Arc::new(node(&format!("gw-{i}"), "r0", 500, 1_000)));
    let s = Snapshot::build_holding(fleet, [], None, 1, false, 0, now);
    let rules = Rules {
        max_load: 0.95,
        fallbacks: &[],
        herd: HerdView::at(now, 8, 1),
    };
    let q = q(Some("r0"), 1);
    let walks = order::WALKS.with(|w| w.get());
    // Budget 0: the walk answers, and keys the order.
    let first = select_budgeted(&s, &q, rules, 1, 0)[0].clone();
    // The node it chose reports, within the same herd slot: a new address, and
    // the least load of the region.
    let record = Arc::new(NodeRecord {
        ip: "198.51.100.7".parse().unwrap(),
        connections: 10,
        sampled_ms: Some(now),
        updated_ms: Some(now),
        ..(*s.nodes[first.index].record).clone()
    });
    let s = s.patch_at([&record], 2, false, now).expect("known id");
    let again = select_budgeted(&s, &q, rules, 1, 0);
    assert_eq!(
        order::WALKS.with(|w| w.get()) - walks,
        2,
        "both answered by walks"
    );
    assert_eq!(
        (again[0].index, again[0].ip, again[0].load),
        // 10 reported, and the first answer, made in the millisecond of the sample.
        (first.index, record.ip, 11.0 / 1_000.0),
        "the walk read the report the patch brought"
    );
}

proptest! {
    /// The sorted walk with early stop chooses exactly what a full scan would,
    /// herd counters included.
    #[test]
    fn selection_equals_full_scan(fleet in arb_fleet(), assigned in proptest::collection::vec(0u64..600, 40),
                                  region in proptest::option::of(0usize..5), count in 1usize..=10,
                                  proto in 0usize..3, fam in 0u8..3,
                                  fallbacks in proptest::collection::vec(0usize..5, 0..3), ties in any::<bool>(),
                                  isp in arb_isp(), policy in arb_policy()) {
        let regions = ["a", "b", "c", "d", "zz"];
        // Small loads on two capacities: many equal loads, so ties are decided by id.
        let fleet = fleet.into_iter().map(|mut n| {
            if ties {
                n.capacity = 4 + n.capacity % 2 * 4;
                n.connections %= 6;
            }
            n
        });
        let s = snap(fleet.collect());
        let herd = HerdView::now(5000, 1);
        for (e, a) in s.nodes.iter().zip(&assigned) {
            set_pending(e, if ties { a % 3 } else { *a }, &herd);
        }
        let fallbacks: Vec<String> = fallbacks.iter().map(|f| regions[*f].to_string()).collect();
        let rules = Rules { max_load: 0.95, fallbacks: &fallbacks, herd };
        let family = [None, Some(IpFamily::V4), Some(IpFamily::V6)][fam as usize];
        let steer = super::steer_of(&policy);
        let query = Query { proto: Proto::ALL[proto], count, region: region.map(|r| regions[r]), isp, family, steer };
        let expected = reference(&s, &query, rules);
        let got: Vec<usize> = select(&s, &query, rules).iter().map(|c| c.index).collect();
        prop_assert_eq!(got, expected);
    }

    /// A burst answered through the herd-adjusted orders (no scan at all) chooses
    /// what a full scan would, answer after answer, while reports patch the
    /// snapshot and time crosses slots and the window.
    #[test]
    fn the_herd_adjusted_order_equals_a_full_scan(
        fleet in arb_fleet(),
        steps in proptest::collection::vec((0u8..10, 0usize..40, 0usize..40, 0u64..400), 1..80),
        routers in 1u64..4, count in 1usize..=4, ties in any::<bool>(),
        policy in arb_policy(),
    ) {
        let regions = ["a", "b", "c", "d", "zz"];
        let mut ids = std::collections::HashSet::new();
        let fleet: Vec<Arc<NodeRecord>> = fleet.into_iter()
            .filter(|n| ids.insert(n.id.clone()))
            .map(|mut n| {
                if ties {
                    n.capacity = 8 + n.capacity % 2 * 8;
                    n.connections %= 4;
                }
                Arc::new(n)
            })
            .collect();
        prop_assume!(!fleet.is_empty());
        let mut now = 1_800_000_000_000u64;
        let mut s = Snapshot::build_holding(fleet.iter().cloned(), [], None, 1, false, 0, now);
        let fallbacks = vec!["b".to_string()];
        let walks = order::WALKS.with(|w| w.get());
        let mut selects = 0;
        for (kind, a, b, ms) in steps {
            // Half the steps leave the clock where it is, so that reports and the
            // walks after them often fall in one herd slot: the walks then answer
            // from the copies the patches made, not from keys computed afresh.
            if kind % 2 == 1 {
                now += ms;
            }
            let rules = Rules { max_load: 0.95, fallbacks: &fallbacks, herd: HerdView::at(now, 8, routers) };
            match kind {
                // A report: node `a` with `b`'s load, sampled a little earlier.
                0 => {
                    let (a, b) = (&fleet[a % fleet.len()], &fleet[b % fleet.len()]);
                    let r = Arc::new(NodeRecord {
                        id: a.id.clone(),
                        region: a.region.clone(),
                        // A new line takes a full build (`patch` says so); reports keep it.
                        isp: a.isp.clone(),
                        sampled_ms: Some(now - ms / 2),
                        updated_ms: Some(now),
                        ..(**b).clone()
                    });
                    s = s.patch_at([&r], 2, false, now).expect("known id");
                }
                _ => {
                    let steer = super::steer_of(&policy);
                    let query = Query { proto: Proto::ALL[a % 3], count, region: Some(regions[b % 5]), isp: [None, Some("x"), Some("z")][(a / 3) % 3], family: None, steer };
                    let expected = reference(&s, &query, rules);
                    let got: Vec<usize> = select_budgeted(&s, &query, rules, 1, 0).iter().map(|c| c.index).collect();
                    // Something to choose: a walk answered (budget 0 allows no scan).
                    selects += u64::from(!expected.is_empty());
                    prop_assert_eq!(got, expected, "at +{}", now % 100_000);
                }
            }
        }
        let walked = order::WALKS.with(|w| w.get()) - walks;
        prop_assert!(walked >= selects, "{} walks for {} selections", walked, selects);
    }

    #[test]
    fn selection_invariants(fleet in arb_fleet(), region in proptest::option::of(0usize..5),
                            count in 1usize..=10, proto in 0usize..3, fam in 0u8..3,
                            fallback in proptest::option::of(0usize..4), isp in arb_isp()) {
        let policy: super::TestSteer = (Vec::new(), None, Vec::new(), Vec::new(), 0);
        let regions = ["a", "b", "c", "d", "zz"];
        let s = snap(fleet);
        let fallbacks: Vec<String> = fallback.map(|f| regions[f].to_string()).into_iter().collect();
        let rules = Rules { max_load: 0.95, fallbacks: &fallbacks, herd: HerdView::now(5000, 1) };
        let family = [None, Some(IpFamily::V4), Some(IpFamily::V6)][fam as usize];
        let steer = super::steer_of(&policy);
        let query = Query { proto: Proto::ALL[proto], count, region: region.map(|r| regions[r]), isp, family, steer };
        // Loads before the call (select counts one client on the first candidate).
        let before: Vec<f64> = s.nodes.iter().map(|e| e.projected_load(&rules.herd)).collect();
        let out = select(&s, &query, rules);
        let eligible = |i: usize| {
            let r = &s.nodes[i].record;
            r.state == NodeState::Serving && r.healthy && before[i] < 0.95
                && r.ports.get(query.proto).is_some() && r.addr_for(family).is_some()
        };
        let n_eligible = (0..s.nodes.len()).filter(|&i| eligible(i)).count();
        prop_assert_eq!(out.len(), count.min(n_eligible), "min(count, eligible)");
        let mut seen = std::collections::HashSet::new();
        for c in &out {
            prop_assert!(eligible(c.index), "ineligible node chosen");
            prop_assert!(seen.insert(c.index), "duplicate");
        }
        // Tier of each candidate never decreases; inside a tier, load never decreases.
        let mut order: Vec<&str> = query.region.into_iter().collect();
        for f in &fallbacks { if !order.contains(&f.as_str()) { order.push(f); } }
        let tier = |i: usize| {
            let r = &s.nodes[i].record;
            let region = order.iter().position(|o| *o == r.region).unwrap_or(order.len());
            (region, !crate::schedule::line::serves(r.isp.as_deref(), isp))
        };
        for w in out.windows(2) {
            let (t0, t1) = (tier(w[0].index), tier(w[1].index));
            prop_assert!(t0 <= t1, "region order");
            if t0 == t1 { prop_assert!(before[w[0].index] <= before[w[1].index], "least loaded first"); }
        }
        // Nothing better was left out: every eligible node not chosen in a tier the
        // answer reached is at least as loaded as the chosen ones of that tier.
        if out.len() == count {
            let last_tier = tier(out[out.len() - 1].index);
            for i in (0..s.nodes.len()).filter(|&i| eligible(i) && !seen.contains(&i)) {
                let t = tier(i);
                prop_assert!(t >= last_tier, "a node of an earlier tier was skipped");
                if t == last_tier {
                    let worst = out.iter().filter(|c| tier(c.index) == t).map(|c| before[c.index]).fold(0.0, f64::max);
                    prop_assert!(before[i] >= worst, "a less loaded node was skipped");
                }
            }
        }
    }
}
