//! The explanation over a built snapshot: region, guard, networks, outcome, the
//! answer and every reason, the invalid records.

use std::sync::Arc;

use registry::blocklist::BlockEntry;
use registry::imbl::OrdMap;
use registry::{NodeRecord, NodeState, Ports, Proto};

use super::*;
use crate::clock::LimiterClock;
use crate::config::FileConfig;
use crate::metrics::Metrics;

const CONFIG: &str = r#"
max_load = 0.9
[regions]
default = "cn-gz"
cidrs = { "198.51.100.0/24" = "cn-sh", "198.51.100.128/25" = "cn-bj" }
fallbacks = { cn-sh = ["cn-bj"] }
[rate_limit]
ipv4_prefix_len = 32
[edge]
block = ["203.0.113.0/24"]
allow = ["198.51.0.0/16"]
"#;

fn node(id: &str, region: &str, conns: u64) -> NodeRecord {
    NodeRecord::new(
        id,
        "192.0.2.1".parse().unwrap(),
        Ports {
            tcp: Some(8000),
            ..Ports::default()
        },
        region,
        100,
        conns,
    )
}

struct World {
    config: FileConfig,
    regions: RegionTable,
    guard: Guard,
    snap: Snapshot,
    invalid: OrdMap<Arc<str>, String>,
}

fn world() -> World {
    let config = FileConfig::parse(CONFIG).unwrap();
    let regions = RegionTable::new(&config.regions.cidrs, &config.regions.default);
    let guard = Guard::new(&config, LimiterClock::default(), &Metrics::default());
    let mut draining = node("sh-draining", "cn-sh", 0);
    draining.state = NodeState::Draining;
    let mut sick = node("sh-sick", "cn-sh", 0);
    sick.healthy = false;
    let records = vec![
        node("sh-1", "cn-sh", 10),
        node("sh-2", "cn-sh", 20),
        node("sh-full", "cn-sh", 90),
        node("bj-1", "cn-bj", 5),
        node("bj-2", "cn-bj", 50),
        node("gz-1", "cn-gz", 0),
        draining,
        sick,
    ];
    let snap = Snapshot::build(records.into_iter().map(Arc::new), None, 42, false);
    let mut invalid = OrdMap::new();
    invalid.insert(
        Arc::from("/gateway-router/v1/nodes/sh-evil"),
        "binding: ip 198.51.100.7 is outside 203.0.113.0/28".to_string(),
    );
    invalid.insert(
        Arc::from("/gateway-router/v1/nodes/broken"),
        "capacity: must be > 0".to_string(),
    );
    World {
        config,
        regions,
        guard,
        snap,
        invalid,
    }
}

/// No gateway demoted.
static NO_DEMOTIONS: std::sync::LazyLock<crate::feedback::Demotions> =
    std::sync::LazyLock::new(Default::default);
/// No policy in force.
static NO_POLICIES: std::sync::LazyLock<crate::policy::Policies> =
    std::sync::LazyLock::new(Default::default);

fn facts(w: &World) -> Facts<'_> {
    Facts {
        reading: Reading {
            policies: &NO_POLICIES,
            demotions: &NO_DEMOTIONS,
            snapshot: Some(&w.snap),
            config: &w.config,
            regions: &w.regions,
        },
        guard: &w.guard,
        invalid: &w.invalid,
        herd: HerdView::now(5000, 1),
        lagging: false,
        now_ms: registry::now_ms(),
    }
}

fn ask(ip: &str) -> Ask {
    Ask {
        ip: ip.parse().unwrap(),
        region: None,
        isp: None,
        proto: Proto::Tcp,
        count: 3,
        family: None,
    }
}

fn reason_of(x: &Explanation, id: &str) -> Reason {
    x.passed_over
        .iter()
        .find(|p| p.id == id)
        .unwrap_or_else(|| panic!("{id} not passed over: {x:#?}"))
        .reason
}

#[test]
fn a_client_of_a_region_gets_its_region_then_its_fallback() {
    let w = world();
    let x = explain(&ask("198.51.100.7"), &facts(&w));
    assert_eq!(x.region.as_deref(), Some("cn-sh"));
    assert_eq!(x.region_from, RegionFrom::Cidr);
    assert_eq!(x.region_cidr.unwrap().to_string(), "198.51.100.0/24");
    assert_eq!(x.fallbacks, ["cn-bj"]);
    assert_eq!(x.outcome, Outcome::Answered);
    assert_eq!(x.revision, Some(42));
    let ids: Vec<&str> = x.answer.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["sh-1", "sh-2", "bj-1"]);
    assert_eq!(x.answer[2].tier, "fallback");
    assert_eq!(reason_of(&x, "sh-full"), Reason::Full);
    assert_eq!(reason_of(&x, "sh-draining"), Reason::Draining);
    assert_eq!(reason_of(&x, "sh-sick"), Reason::Unhealthy);
    assert_eq!(reason_of(&x, "bj-2"), Reason::Outranked);
    assert_eq!(reason_of(&x, "gz-1"), Reason::OtherRegion);
    assert_eq!(x.passed_over.len(), 5, "every other node once");
    let gz = x.passed_over.iter().find(|p| p.id == "gz-1").unwrap();
    assert_eq!(gz.tier, "any");
    assert!(gz.detail.contains("cn-gz"), "{}", gz.detail);
    let full = x.passed_over.iter().find(|p| p.id == "sh-full").unwrap();
    assert!(
        full.detail.contains("0.900") && full.detail.contains("0.9"),
        "{}",
        full.detail
    );
    // The longest network wins, and the parameter wins over the table.
    let bj = explain(&ask("198.51.100.200"), &facts(&w));
    assert_eq!(bj.region.as_deref(), Some("cn-bj"));
    let asked = Ask {
        region: Some("cn-gz".into()),
        isp: Some("ctcc".into()),
        ..ask("198.51.100.7")
    };
    let x = explain(&asked, &facts(&w));
    assert_eq!(
        (x.region.as_deref(), x.region_from),
        (Some("cn-gz"), RegionFrom::Query)
    );
    assert_eq!(x.answer[0].id, "gz-1");
    assert_eq!(x.isp.as_deref(), Some("ctcc"));
}

#[test]
fn the_default_region_and_no_region() {
    let w = world();
    let x = explain(&ask("192.0.2.9"), &facts(&w));
    assert_eq!(
        (x.region.as_deref(), x.region_from),
        (Some("cn-gz"), RegionFrom::Default)
    );
    let config = FileConfig::parse("").unwrap();
    let regions = RegionTable::new(&config.regions.cidrs, &config.regions.default);
    let all = facts(&w);
    let f = Facts {
        reading: Reading {
            config: &config,
            regions: &regions,
            ..all.reading
        },
        ..all
    };
    let x = explain(&ask("192.0.2.9"), &f);
    assert_eq!((x.region, x.region_from), (None, RegionFrom::None));
    assert!(x.fallbacks.is_empty());
}

#[test]
fn networks_and_the_guard() {
    let w = world();
    let x = explain(&ask("::ffff:198.51.100.7"), &facts(&w));
    assert_eq!(
        x.ip.to_string(),
        "198.51.100.7",
        "IPv4-mapped counts as IPv4"
    );
    assert_eq!(x.network.to_string(), "198.51.100.0/24");
    assert_eq!(x.request_network.to_string(), "198.51.100.7/32");
    assert_eq!(x.guard.blocked, None);
    assert_eq!(x.guard.allowed.unwrap().to_string(), "198.51.0.0/16");
    let v6 = explain(&ask("2001:db8:1:2:3::1"), &facts(&w));
    assert_eq!(v6.network.to_string(), "2001:db8:1::/56");
    // A static block, then a narrower etcd entry: the longest names the reason.
    let x = explain(&ask("203.0.113.9"), &facts(&w));
    assert_eq!(x.outcome, Outcome::Blocked);
    let b = x.guard.blocked.unwrap();
    assert_eq!(
        (b.source, b.cidr.to_string()),
        ("config", "203.0.113.0/24".into())
    );
    assert!(!x.answer.is_empty(), "what it would get once unblocked");
    w.guard.set_dynamic(vec![BlockEntry {
        cidr: "203.0.113.0/28".parse().unwrap(),
        reason: "scraper".into(),
        expires_ms: 0,
        by: "alice".into(),
        at_ms: 1,
    }]);
    let b = explain(&ask("203.0.113.9"), &facts(&w))
        .guard
        .blocked
        .unwrap();
    assert_eq!(
        (b.source, b.reason.as_str(), b.by.as_str()),
        ("etcd", "scraper", "alice")
    );
    // Allowed and blocked: the block wins, as in the guard.
    w.guard.set_dynamic(vec![BlockEntry {
        cidr: "198.51.100.0/24".parse().unwrap(),
        reason: "r".into(),
        expires_ms: 0,
        by: String::new(),
        at_ms: 1,
    }]);
    assert_eq!(
        explain(&ask("198.51.100.7"), &facts(&w)).outcome,
        Outcome::Blocked
    );
}

#[test]
fn outcomes_staleness_and_invalid_records() {
    let w = world();
    let x = explain(&ask("198.51.100.7"), &facts(&w));
    assert!(!x.stale);
    let kinds: Vec<(&str, &str)> = x.invalid.iter().map(|i| (i.id.as_str(), i.kind)).collect();
    assert_eq!(kinds, [("broken", "record"), ("sh-evil", "binding")]);
    let lagging = Facts {
        lagging: true,
        ..facts(&w)
    };
    assert!(explain(&ask("198.51.100.7"), &lagging).stale);
    let wss = Ask {
        proto: Proto::Wss,
        ..ask("198.51.100.7")
    };
    let x = explain(&wss, &facts(&w));
    assert_eq!(x.outcome, Outcome::NoGateways);
    assert!(x.answer.is_empty());
    assert_eq!(x.passed_over.len(), w.snap.nodes.len());
    assert_eq!(reason_of(&x, "sh-1"), Reason::NoPort);
    assert_eq!(
        reason_of(&x, "sh-draining"),
        Reason::Draining,
        "the first rule"
    );
    let six = Ask {
        family: Some(IpFamily::V6),
        ..ask("198.51.100.7")
    };
    assert_eq!(
        reason_of(&explain(&six, &facts(&w)), "sh-1"),
        Reason::NoAddress
    );
    let all = facts(&w);
    let not_ready = Facts {
        reading: Reading {
            snapshot: None,
            ..all.reading
        },
        ..all
    };
    let x = explain(&ask("198.51.100.7"), &not_ready);
    assert_eq!((x.outcome, x.revision), (Outcome::NotReady, None));
    assert!(x.answer.is_empty() && x.passed_over.is_empty());
}

#[test]
fn the_explanation_serialises_with_its_names() {
    let w = world();
    let v = serde_json::to_value(explain(&ask("198.51.100.7"), &facts(&w))).unwrap();
    assert_eq!(v["region_from"], "cidr");
    assert_eq!(v["outcome"], "answered");
    assert_eq!(v["proto"], "tcp");
    assert_eq!(v["guard"]["blocked"], serde_json::Value::Null);
    let reasons: Vec<&str> = v["passed_over"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["reason"].as_str().unwrap())
        .collect();
    assert!(reasons.contains(&"other_region"), "{reasons:?}");
}
