//! The feedback's rules: who is demoted for whom, for how long, within what bounds.

use std::time::Duration;

use gateway_api::{Outcome, OutcomeKind};
use tokio::time::Instant;

use super::*;

fn cfg() -> FeedbackConfig {
    FeedbackConfig {
        window_ms: 3_000,
        share_ms: 1_000,
        hold_ms: 5_000,
        max_hold_ms: 40_000,
        min_reports: 10,
        demote_below: 0.5,
        ..FeedbackConfig::default()
    }
}

fn outcomes(gateway: &str, ok: usize, failed: usize) -> Vec<Outcome> {
    let one = |result| Outcome {
        gateway: gateway.into(),
        result,
        ms: 5,
    };
    std::iter::repeat_n(one(OutcomeKind::Ok), ok)
        .chain(std::iter::repeat_n(one(OutcomeKind::Timeout), failed))
        .collect()
}

fn known(id: &str) -> bool {
    id.starts_with("gw-")
}

fn net(region: &str, isp: &str) -> Network {
    Network::of(Some(region), Some(isp))
}

#[test]
fn a_networks_failures_demote_a_gateway_for_that_network_only() {
    let f = Feedback::default();
    let m = FeedbackMetrics::default();
    let (a, b) = (net("sh", "cmcc"), net("sh", "ctcc"));
    let t0 = Instant::now();
    f.record(&a, &outcomes("gw-1", 2, 10), known, &cfg(), &m);
    f.record(&a, &outcomes("gw-2", 12, 0), known, &cfg(), &m);
    f.record(&b, &outcomes("gw-1", 12, 0), known, &cfg(), &m);
    let own = f.tick(t0, &cfg(), [], &m);
    assert_eq!(own.len(), 3);
    assert_eq!(own[0].1.total(), 12);
    let d = f.demotions.load();
    assert_eq!(
        d.for_network(Some("sh"), Some("cmcc"))
            .iter()
            .map(|g| &**g)
            .collect::<Vec<_>>(),
        ["gw-1"]
    );
    assert!(d.for_network(Some("sh"), Some("ctcc")).is_empty());
    assert!(d.for_network(Some("sh"), None).is_empty());
    let shown = f.demoted(t0 + Duration::from_secs(1));
    assert_eq!(shown.len(), 1);
    assert_eq!(
        (shown[0].ok, shown[0].failed, shown[0].remaining_ms),
        (2, 10, 4_000)
    );
    assert_eq!(m.demotions.get(), 1);
    let gauge = m.demoted.get_or_create(&NetworkLabels {
        region: "sh".into(),
        isp: "cmcc".into(),
    });
    assert_eq!(gauge.get(), 1);
}

#[test]
fn a_demotion_ends_after_its_hold_and_a_second_one_lasts_twice_as_long() {
    let f = Feedback::default();
    let m = FeedbackMetrics::default();
    let a = net("sh", "cmcc");
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    f.record(&a, &outcomes("gw-1", 0, 10), known, &cfg(), &m);
    f.tick(at(0), &cfg(), [], &m);
    let demoted = |f: &Feedback| {
        !f.demotions
            .load()
            .for_network(Some("sh"), Some("cmcc"))
            .is_empty()
    };
    assert!(demoted(&f));
    // Ticks go on with nothing heard; the failures leave the window (3 ticks).
    for ms in (1_000..5_000).step_by(1_000) {
        f.tick(at(ms), &cfg(), [], &m);
        assert!(demoted(&f), "still held at {ms} ms");
    }
    f.tick(at(5_000), &cfg(), [], &m);
    assert!(!demoted(&f), "answered again when the hold ends");
    // Still failing: demoted again, for twice as long.
    f.record(&a, &outcomes("gw-1", 1, 9), known, &cfg(), &m);
    f.tick(at(6_000), &cfg(), [], &m);
    assert!(demoted(&f));
    assert_eq!(f.demoted(at(6_000))[0].remaining_ms, 10_000);
    assert_eq!(f.demoted(at(6_000))[0].strikes, 1);
    for ms in (7_000..16_000).step_by(1_000) {
        f.tick(at(ms), &cfg(), [], &m);
        assert!(demoted(&f), "still held at {ms} ms");
    }
    f.tick(at(16_000), &cfg(), [], &m);
    assert!(!demoted(&f));
    // Healthy reports after it: nothing happens.
    f.record(&a, &outcomes("gw-1", 10, 1), known, &cfg(), &m);
    f.tick(at(17_000), &cfg(), [], &m);
    assert!(!demoted(&f));
    assert_eq!(m.demotions.get(), 2);
}

#[test]
fn too_few_reports_or_enough_successes_demote_nothing_and_old_ones_leave_the_window() {
    let f = Feedback::default();
    let m = FeedbackMetrics::default();
    let a = net("sh", "cmcc");
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    f.record(&a, &outcomes("gw-1", 0, 9), known, &cfg(), &m);
    f.record(&a, &outcomes("gw-2", 5, 5), known, &cfg(), &m);
    f.tick(at(0), &cfg(), [], &m);
    assert!(f.demoted(at(0)).is_empty(), "9 reports, and 50 % success");
    // Three ticks later the 9 failures are out of the window: 9 more do not add up.
    for ms in [1_000, 2_000] {
        f.tick(at(ms), &cfg(), [], &m);
    }
    f.record(&a, &outcomes("gw-1", 0, 9), known, &cfg(), &m);
    f.tick(at(3_000), &cfg(), [], &m);
    assert!(f.demoted(at(3_000)).is_empty());
}

#[test]
fn other_routers_windows_count_with_this_ones() {
    let f = Feedback::default();
    let m = FeedbackMetrics::default();
    let a = net("sh", "cmcc");
    f.record(&a, &outcomes("gw-1", 0, 4), known, &cfg(), &m);
    let peer = Pair {
        network: a.clone(),
        gateway: Arc::from("gw-1"),
    };
    let others = [(peer.clone(), Counts { ok: 1, failed: 5 })];
    f.tick(Instant::now(), &cfg(), others, &m);
    let shown = f.demoted(Instant::now());
    assert_eq!((shown.len(), shown[0].ok, shown[0].failed), (1, 1, 9));
    // What this router shares is its own window only.
    let value = ShareValue::encode(&[(peer, Counts { ok: 0, failed: 4 })]);
    let back = ShareValue::parse(&value).unwrap();
    assert_eq!(back[0].1, Counts { ok: 0, failed: 4 });
    assert_eq!(&*back[0].0.network.isp, "cmcc");
}

#[test]
fn reports_are_bounded_per_network_and_in_pairs_and_unknown_gateways_are_not_counted() {
    let f = Feedback::default();
    let m = FeedbackMetrics::default();
    let bounded = FeedbackConfig {
        max_reports_per_network: 15,
        max_pairs: 2,
        ..cfg()
    };
    let (a, b) = (net("sh", "cmcc"), net("bj", "cmcc"));
    let t = f.record(&a, &outcomes("nope", 0, 3), known, &bounded, &m);
    assert_eq!((t.accepted, t.unknown), (0, 3));
    let t = f.record(&a, &outcomes("gw-1", 0, 10), known, &bounded, &m);
    assert_eq!(t.accepted, 10);
    // The network's share of the window: 5 more, whatever gateway they name.
    let t = f.record(&a, &outcomes("gw-2", 0, 10), known, &bounded, &m);
    assert_eq!((t.accepted, t.over_bound), (5, 5));
    // Another network has its own share, but no new pair beyond max_pairs.
    let t = f.record(&b, &outcomes("gw-1", 0, 3), known, &bounded, &m);
    assert_eq!((t.accepted, t.over_bound), (0, 3));
    let count = |result| m.outcomes.get_or_create(&OutcomeLabels { result }).get();
    assert_eq!(
        (
            count("accepted"),
            count("unknown_gateway"),
            count("over_bound")
        ),
        (15, 3, 8)
    );
    // The liar in `a` demoted gw-2 for `a` alone.
    f.tick(Instant::now(), &bounded, [], &m);
    assert!(f
        .demotions
        .load()
        .for_network(Some("bj"), Some("cmcc"))
        .is_empty());
}

#[test]
fn a_shared_value_is_checked_before_it_counts() {
    let long = "x".repeat(129);
    for (value, why) in [
        (b"{nope".to_vec(), "key must be a string"),
        (vec![b' '; MAX_SHARE_BYTES + 1], "bytes, over"),
        (
            format!(
                r#"{{"pairs":[{{"region":"","isp":"","gateway":"{long}","ok":1,"failed":0}}]}}"#
            )
            .into_bytes(),
            "a name over 128 bytes",
        ),
        (
            br#"{"pairs":[{"region":"","isp":"","gateway":"","ok":1,"failed":0}]}"#.to_vec(),
            "no gateway",
        ),
    ] {
        let e = ShareValue::parse(&value).unwrap_err();
        assert!(e.contains(why), "{e}");
    }
    let many: Vec<(Pair, Counts)> = (0..MAX_SHARED_PAIRS + 5)
        .map(|i| {
            (
                Pair {
                    network: net("r", "i"),
                    gateway: Arc::from(format!("gw-{i}")),
                },
                Counts { ok: 1, failed: 0 },
            )
        })
        .collect();
    let value = ShareValue::encode(&many);
    assert_eq!(ShareValue::parse(&value).unwrap().len(), MAX_SHARED_PAIRS);
    let over = format!(
        r#"{{"pairs":[{}]}}"#,
        vec![r#"{"region":"","isp":"","gateway":"g","ok":1,"failed":0}"#; MAX_SHARED_PAIRS + 1]
            .join(",")
    );
    assert!(ShareValue::parse(over.as_bytes())
        .unwrap_err()
        .contains("pairs, over"));
    // Counts saturate rather than wrap.
    let big =
        br#"{"pairs":[{"region":"","isp":"","gateway":"g","ok":18446744073709551615,"failed":5}]}"#;
    assert_eq!(ShareValue::parse(big).unwrap()[0].1.total(), u64::MAX);
}
