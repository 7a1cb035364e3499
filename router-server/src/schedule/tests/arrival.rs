//! When samples are placed on this router's clock: answers a report does not include
//! keep counting, whatever the agent's clock offset or the report's delivery time.

use std::sync::Arc;

use registry::NodeRecord;

use super::{node, q, rules_now};
use crate::herd::HerdView;
use crate::schedule::{select, Snapshot};

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
        |s: &Snapshot, i: usize| h.pending(&s.nodes[i].assigned, s.nodes[i].basis.sampled_ms);
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
    assert_eq!(
        s1.nodes[0].basis.sampled_ms,
        T0 + 5,
        "late by its delivery, 5 ms"
    );
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
        e.basis.sampled_ms,
        T0 + 1_990 + 5 + 2,
        "late by the fastest delivery seen"
    );
    let h = HerdView::at(rx2, 20, 1);
    assert_eq!(
        h.pending(&e.assigned, e.basis.sampled_ms),
        10,
        "the answers given while the report travelled are not in it"
    );
    // The minimum ages by 1 ms a second, following a drifting clock.
    let (r3, rx3) = report(1_000, T0 + 61_990, 400);
    let s3 = Snapshot::build_holding(vec![r3], [], Some(&s2), 3, false, 0, rx3);
    assert_eq!(
        s3.nodes[0].basis.sampled_ms,
        T0 + 61_990 + 5 + (rx3 - rx1) / 1000
    );
    // The agent's clock jumps 4 s back (or the node moved host): the minimum starts
    // again rather than placing samples seconds early.
    let (r4, rx4) = report(-3_000, T0 + 70_000, 20);
    let s4 = Snapshot::build_holding(vec![r4], [], Some(&s3), 4, false, 0, rx4);
    assert_eq!(s4.nodes[0].basis.sampled_ms, T0 + 70_000 + 20);
}

#[test]
fn an_agent_clock_off_by_seconds_does_not_hide_answers() {
    let (a, s1, h) = ten_answers();
    let pending =
        |s: &Snapshot, i: usize| h.pending(&s.nodes[i].assigned, s.nodes[i].basis.sampled_ms);
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
    assert_eq!(s3.nodes[1].basis.sampled_ms, now_ms + 100);
}
