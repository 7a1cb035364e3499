//! Candidate selection: the contract's scheduling rules as a pure function over an
//! immutable [`Snapshot`].
//!
//! * **Eligible**: serving, healthy, has the requested port and address family, and a
//!   *reported* load below `max_load`. Nodes whose projected load (below) is also below
//!   it come first; the others only after them (`overflow_fill`): the projected load
//!   is an estimate made from answers, which an asker gets for free, so it may reorder
//!   candidates but never empties an answer. Only reported load refuses.
//! * **Region order**: the client's region, then its fallbacks in order, then any.
//! * **Least loaded first, herd-safe**: the load used is the *projected* load, the
//!   reported connections plus the clients the routers sent since the report's sample
//!   (see [`crate::herd`]). Each answer adds one client to its first candidate, so a
//!   reconnect storm fills nodes evenly instead of all landing on the node that was
//!   least loaded at the last report. The counter lives with the node across snapshots
//!   and reports.
//!
//! Static eligibility (state, health, port) is indexed once per snapshot, per region
//! and protocol, and each index is sorted by reported load. A request walks only the
//! nodes that can serve it, least reported load first, keeping the best `count`, and
//! stops as soon as the next node's reported load (a lower bound of its projected load)
//! cannot beat the worst kept one. Without a burst that is `count` + 1 nodes whatever
//! the fleet size. During a burst it would be every node whose projected load has been
//! levelled: past [`SCAN_BUDGET`] nodes the request walks the index's herd-adjusted
//! [`order`] instead, which reads about `count` nodes at any fleet size.
//!
//! Layout:
//!
//! * `arrival.rs`: when each report's count was sampled, on this router's clock
//!   ([`Arrival`], the agents' clock offsets, the registries' lag);
//! * `snapshot.rs`: the [`Snapshot`], its [`NodeEntry`]s and the sorted per-region
//!   indexes, built from the records;
//! * `patch.rs`: a snapshot patched with new reports of nodes it has;
//! * `select.rs`: [`select()`] and its variants, the overflow and held fills;
//! * `order.rs`: the herd-adjusted order an index is walked in during a burst.

mod arrival;
mod order;
mod patch;
mod select;
mod snapshot;

pub use arrival::Arrival;
pub use select::{
    select, select_budgeted, select_weighted, Candidate, Chosen, Query, Rules, MAX_COUNT,
    OVERFLOW_SCAN, SCAN_BUDGET,
};
pub use snapshot::{NodeEntry, Snapshot};

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::Arc;

    use proptest::prelude::*;
    use registry::record::IpFamily;
    use registry::{NodeRecord, NodeState, Ports, Proto};

    use super::*;
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

    /// Two empty nodes `a` and `b` and ten answers given between them now: node `a`,
    /// the snapshot, and the herd view of the moment.
    fn ten_answers() -> (Arc<NodeRecord>, Snapshot, HerdView) {
        let a = Arc::new(node("a", "r", 0, 100));
        let b = Arc::new(node("b", "r", 0, 100));
        let s1 = Snapshot::build(vec![a.clone(), b], None, 1, false);
        let rules = rules_now();
        for _ in 0..10 {
            select(&s1, &q(None, 1), rules);
        }
        (a, s1, rules.herd)
    }

    /// A new report does not zero the count: answers after its sample still count,
    /// answers before it are in it. An unchanged report keeps everything.
    #[test]
    fn a_new_report_keeps_the_answers_it_does_not_include() {
        let (a, s1, h) = ten_answers();
        let pending =
            |s: &Snapshot, i: usize| h.pending(&s.nodes[i].assigned, s.nodes[i].sampled_ms);
        let total = pending(&s1, 0) + pending(&s1, 1);
        assert_eq!(total, 10);
        let now_ms = h.now_ms;
        // A report of b counted `age` ms before it was received at `received`.
        let report = |conns: u64, age: u64| {
            let mut r = node("b", "r", conns, 100);
            r.sample_age_ms = Some(age);
            Arc::new(r)
        };
        let at = |records: Vec<Arc<NodeRecord>>, prev: &Snapshot, received: u64| {
            Snapshot::build_holding(records, [], Some(prev), 2, false, 0, received)
        };
        // b counted before the answers: they all still count on top of its report.
        let s2 = at(vec![a.clone(), report(1, 120_000)], &s1, now_ms + 60_000);
        assert!(Arc::ptr_eq(&s1.nodes[1].assigned, &s2.nodes[1].assigned));
        assert_eq!(
            pending(&s2, 1),
            pending(&s1, 1),
            "sampled before the answers"
        );
        // b counted after them: its report includes them.
        let s3 = at(vec![a.clone(), report(5, 1_000)], &s2, now_ms + 2_000);
        assert_eq!(pending(&s3, 1), 0, "sampled after the answers");
        assert!(Arc::ptr_eq(&s1.nodes[0].assigned, &s3.nodes[0].assigned));
        assert_eq!(pending(&s3, 0), pending(&s1, 0), "a did not report");
    }

    /// The sample is placed on this router's clock: an agent whose wall clock runs
    /// ahead (its `sampled_ms` in this router's future) or behind changes nothing,
    /// since the router anchors the sample's age on its own receive time.
    #[test]
    fn a_slow_delivery_does_not_hide_the_answers_given_meanwhile() {
        const T0: u64 = 1_800_000_000_000;
        // The agent's clock is a second ahead; each report is written 10 ms after its
        // count and arrives `latency` ms later.
        let report = |skew: i64, sampled: u64, latency: u64| {
            let agent = |t: u64| (t as i64 + skew) as u64;
            let mut r = node("a", "r", 0, 100);
            r.sampled_ms = Some(agent(sampled));
            r.updated_ms = Some(agent(sampled + 10));
            r.sample_age_ms = Some(10);
            (Arc::new(r), sampled + 10 + latency)
        };
        let (r1, rx1) = report(1_000, T0, 5);
        let s1 = Snapshot::build_holding(vec![r1], [], None, 1, false, 0, rx1);
        assert_eq!(s1.nodes[0].sampled_ms, T0 + 5, "late by its delivery, 5 ms");
        // Ten answers, 10 ms after the next count is taken; that report then takes
        // 400 ms to arrive (etcd under load).
        for k in 0..10 {
            s1.nodes[0].assigned.add_at(T0 + 2_000 + k * 20);
        }
        let (r2, rx2) = report(1_000, T0 + 1_990, 400);
        let s2 = Snapshot::build_holding(vec![r2], [], Some(&s1), 2, false, 0, rx2);
        let e = &s2.nodes[0];
        // The fastest delivery (5 ms), aged 1 ms for each of the 2 s since.
        assert_eq!(
            e.sampled_ms,
            T0 + 1_990 + 5 + 2,
            "late by the fastest delivery seen"
        );
        let h = HerdView::at(rx2, 20, 1);
        assert_eq!(
            h.pending(&e.assigned, e.sampled_ms),
            10,
            "the answers given while the report travelled are not in it"
        );
        // The minimum ages by 1 ms a second, following a drifting clock.
        let (r3, rx3) = report(1_000, T0 + 61_990, 400);
        let s3 = Snapshot::build_holding(vec![r3], [], Some(&s2), 3, false, 0, rx3);
        assert_eq!(s3.nodes[0].sampled_ms, T0 + 61_990 + 5 + (rx3 - rx1) / 1000);
        // The agent's clock jumps 4 s back (or the node moved host): the minimum starts
        // again rather than placing samples seconds early.
        let (r4, rx4) = report(-3_000, T0 + 70_000, 20);
        let s4 = Snapshot::build_holding(vec![r4], [], Some(&s3), 4, false, 0, rx4);
        assert_eq!(s4.nodes[0].sampled_ms, T0 + 70_000 + 20);
    }

    #[test]
    fn an_agent_clock_off_by_seconds_does_not_hide_answers() {
        let (a, s1, h) = ten_answers();
        let pending =
            |s: &Snapshot, i: usize| h.pending(&s.nodes[i].assigned, s.nodes[i].sampled_ms);
        let before = pending(&s1, 0) + pending(&s1, 1);
        assert_eq!(before, 10);
        let now_ms = h.now_ms;
        for skew in [-5_000i64, -1_000, 500, 1_000, 5_000] {
            // Both reports counted 600 ms before the answers were given, on clocks
            // off by `skew`, and received 100 ms after the answers.
            let report = |id: &str| {
                let mut r = node(id, "r", 0, 100);
                let agent_now = (now_ms as i64 + 100 + skew) as u64;
                r.updated_ms = Some(agent_now);
                r.sampled_ms = Some(agent_now - 700);
                r.sample_age_ms = Some(700);
                Arc::new(r)
            };
            let s2 = Snapshot::build_holding(
                vec![report("a"), report("b")],
                [],
                Some(&s1),
                2,
                false,
                0,
                now_ms + 100,
            );
            assert_eq!(
                pending(&s2, 0) + pending(&s2, 1),
                before,
                "skew {skew} ms: the answers came after the samples"
            );
        }
        // An agent that sends no age: its `sampled_ms` is trusted, but never later
        // than the receipt.
        let mut old = node("b", "r", 0, 100);
        old.sampled_ms = Some(now_ms + 3_600_000);
        let s3 = Snapshot::build_holding(
            vec![a.clone(), Arc::new(old)],
            [],
            Some(&s1),
            3,
            false,
            0,
            now_ms + 100,
        );
        assert_eq!(s3.nodes[1].sampled_ms, now_ms + 100);
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

    fn arb_node(i: usize) -> impl Strategy<Value = NodeRecord> {
        (
            0usize..4,
            0u64..1200,
            1u64..1000,
            any::<bool>(),
            any::<bool>(),
            0u8..8,
            any::<bool>(),
        )
            .prop_map(move |(region, conns, cap, draining, sick, ports, v6)| {
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
                n
            })
    }

    fn arb_fleet() -> impl Strategy<Value = Vec<NodeRecord>> {
        (0usize..40).prop_flat_map(|n| (0..n).map(arb_node).collect::<Vec<_>>())
    }

    /// The rules written out the slow way: every eligible node, by tier, then by
    /// projected load and id.
    fn reference(s: &Snapshot, query: &Query<'_>, rules: Rules<'_>) -> Vec<usize> {
        let mut order: Vec<&str> = query.region.into_iter().collect();
        for f in rules.fallbacks {
            if !order.contains(&f.as_str()) {
                order.push(f);
            }
        }
        // (projected full, tier, projected load, index): nodes the estimate puts at or
        // above max_load come after every other, but still come.
        let mut eligible: Vec<(bool, usize, f64, usize)> = (0..s.nodes.len())
            .filter_map(|i| {
                let e = &s.nodes[i];
                let r = &e.record;
                let ok = r.state == NodeState::Serving
                    && r.healthy
                    && r.load() < rules.max_load
                    && r.ports.get(query.proto).is_some()
                    && r.addr_for(query.family).is_some();
                let tier = order
                    .iter()
                    .position(|t| *t == r.region)
                    .unwrap_or(order.len());
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

    proptest! {
        /// The sorted walk with early stop chooses exactly what a full scan would,
        /// herd counters included.
        #[test]
        fn selection_equals_full_scan(fleet in arb_fleet(), assigned in proptest::collection::vec(0u64..600, 40),
                                      region in proptest::option::of(0usize..5), count in 1usize..=10,
                                      proto in 0usize..3, fam in 0u8..3,
                                      fallbacks in proptest::collection::vec(0usize..5, 0..3), ties in any::<bool>()) {
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
            let query = Query { proto: Proto::ALL[proto], count, region: region.map(|r| regions[r]), family };
            let expected = reference(&s, &query, rules);
            let got: Vec<usize> = select(&s, &query, rules).iter().map(|c| c.index).collect();
            prop_assert_eq!(got, expected);
        }

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

        /// A burst answered through the herd-adjusted orders (no scan at all) chooses
        /// what a full scan would, answer after answer, while reports patch the
        /// snapshot and time crosses slots and the window.
        #[test]
        fn the_herd_adjusted_order_equals_a_full_scan(
            fleet in arb_fleet(),
            steps in proptest::collection::vec((0u8..10, 0usize..40, 0usize..40, 0u64..400), 1..80),
            routers in 1u64..4, count in 1usize..=4, ties in any::<bool>(),
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
                now += ms;
                let rules = Rules { max_load: 0.95, fallbacks: &fallbacks, herd: HerdView::at(now, 8, routers) };
                match kind {
                    // A report: node `a` with `b`'s load, sampled a little earlier.
                    0 => {
                        let (a, b) = (&fleet[a % fleet.len()], &fleet[b % fleet.len()]);
                        let r = Arc::new(NodeRecord {
                            id: a.id.clone(),
                            region: a.region.clone(),
                            sampled_ms: Some(now - ms / 2),
                            updated_ms: Some(now),
                            ..(**b).clone()
                        });
                        s = s.patch_at([&r], 2, false, now).expect("known id");
                    }
                    _ => {
                        let query = Query { proto: Proto::ALL[a % 3], count, region: Some(regions[b % 5]), family: None };
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
                                fallback in proptest::option::of(0usize..4)) {
            let regions = ["a", "b", "c", "d", "zz"];
            let s = snap(fleet);
            let fallbacks: Vec<String> = fallback.map(|f| regions[f].to_string()).into_iter().collect();
            let rules = Rules { max_load: 0.95, fallbacks: &fallbacks, herd: HerdView::now(5000, 1) };
            let family = [None, Some(IpFamily::V4), Some(IpFamily::V6)][fam as usize];
            let query = Query { proto: Proto::ALL[proto], count, region: region.map(|r| regions[r]), family };
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
            let tier = |i: usize| order.iter().position(|r| *r == s.nodes[i].record.region).unwrap_or(order.len());
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
}
