//! Selection cost per request at 10, 1,000 and 10,000 nodes, and what rebuilding the
//! snapshot after one report costs at those sizes; and the client-region lookup in
//! tables of 10 to 100,000 networks, trie against a scan.
//!
//! Selection is timed with nodes reporting after every 1,000 answers (see [`answers`]).
//! "burst" times it mid-burst, when no report comes: every node of the region levelled
//! by the herd counts (see [`burst`]), answered through the herd-adjusted order
//! ("order", as the router does) and by the scan alone ("scan", as it did before).
//!
//! Nodes spread over 10 regions; each request asks for 3 candidates in the client's
//! region (one tenth of the fleet) with one fallback region, as a client with a known
//! region would. "any-region" asks with no region, scanning every node. "region-isp"
//! is "region" on a fleet whose nodes name ISPs (three carriers and `bgp` in turn),
//! asked by a client of one carrier: its line first, then the region's others.

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Bencher, BenchmarkId, Criterion};
use ipnet::{IpNet, Ipv4Net};
use registry::{NodeRecord, Ports, Proto};
use router_server::config::RegionsConfig;
use router_server::herd::HerdView;
use router_server::identity::RegionTable;
use router_server::schedule::{
    select, select_budgeted, Query, Rules, Snapshot, Steer, SCAN_BUDGET,
};

mod common;

fn fleet(n: usize) -> Snapshot {
    Snapshot::build(records(n, false), None, 1, false)
}

/// `n` nodes in 10 regions; with `isps`, each region's nodes on three carriers and
/// `bgp` in turn.
fn records(n: usize, isps: bool) -> impl Iterator<Item = Arc<NodeRecord>> {
    (0..n).map(move |i| {
        let mut r = common::node(i, "192.0.2.1".parse().unwrap());
        if isps {
            r.isp = Some(["ctcc", "cmcc", "cucc", "bgp"][(i / 10) % 4].to_string());
        }
        Arc::new(r)
    })
}

/// Times `select`, with the herd counts cleared (as if every node reported) after
/// each 1,000 answers, so that the figure does not depend on how many iterations
/// criterion happens to run. Between reports a burst levels the least loaded nodes,
/// and the walk grows with the nodes it levelled, up to a scan of the region.
fn answers(b: &mut Bencher<'_>, snap: &Snapshot, query: &Query<'_>, rules: Rules<'_>) {
    b.iter_custom(|iters| {
        let mut total = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            for e in &snap.nodes {
                e.assigned.clear();
            }
            let chunk = left.min(1_000);
            let start = Instant::now();
            for _ in 0..chunk {
                black_box(select(snap, black_box(query), rules));
            }
            total += start.elapsed();
            left -= chunk;
        }
        total
    })
}

/// A fleet of `n` nodes in 10 regions, every node at the same reported load (what a
/// burst levels: the reports say nothing new while it lasts).
fn levelled(n: usize) -> Snapshot {
    let records = (0..n).map(|i| {
        Arc::new(NodeRecord::new(
            format!("gw-{i:06}"),
            "192.0.2.1".parse().unwrap(),
            Ports {
                tcp: Some(8000),
                ws: None,
                wss: None,
            },
            format!("r{}", i % 10),
            1_000_000,
            500_000,
        ))
    });
    Snapshot::build_seeded(records, None, 1, false, 7)
}

/// Microseconds between two answers on the burst's virtual clock: one router
/// answering 100,000 requests a second into one region.
const BURST_STEP_US: u64 = 10;

/// Times selection in a burst with no report: the clock (virtual) moves 10 µs per
/// answer, so the herd counts' slots turn and the window drops old answers as they
/// would at 100,000 answers a second, and the order's keys are computed again each
/// slot (that cost is in the figure). The region is levelled for 6 s first.
fn burst(c: &mut Criterion) {
    let fallbacks = vec!["r1".to_string()];
    let query = Query {
        proto: Proto::Tcp,
        count: 3,
        region: Some("r0"),
        isp: None,
        family: None,
        steer: Steer::NONE,
    };
    let mut group = c.benchmark_group("burst");
    for n in [100usize, 1_000, 10_000, 100_000] {
        let snap = levelled(n);
        let mut clock_us = registry::now_ms() * 1000;
        let answer = |budget: usize, clock_us: &mut u64| {
            *clock_us += BURST_STEP_US;
            let rules = Rules {
                max_load: 0.95,
                fallbacks: &fallbacks,
                herd: HerdView::at(*clock_us / 1000, 20, 1),
            };
            black_box(select_budgeted(&snap, &query, rules, 1, budget))
        };
        for _ in 0..6_000_000 / BURST_STEP_US {
            answer(SCAN_BUDGET, &mut clock_us);
        }
        for (name, budget) in [("order", SCAN_BUDGET), ("scan", usize::MAX)] {
            if name == "scan" && n > 10_000 {
                // A scan of 10,000 nodes per answer: minutes of benchmark for a figure
                // the 10,000-node fleet already gives the trend of.
                continue;
            }
            group.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter(|| answer(budget, &mut clock_us))
            });
        }
    }
    group.finish();
}

/// Selection in a region and with no region, at each fleet size.
fn select_by_size(c: &mut Criterion) {
    let fallbacks = vec!["r1".to_string()];
    // The herd view as a request builds it (the clock read included in the figure
    // would be ~20 ns; the view is built once here, as the counts are what matter).
    let herd = HerdView::now(5000, 1);
    let rules = Rules {
        max_load: 0.95,
        fallbacks: &fallbacks,
        herd,
    };
    let mut group = c.benchmark_group("select");
    for n in [10usize, 1_000, 10_000] {
        let snap = fleet(n);
        let in_region = Query {
            proto: Proto::Tcp,
            count: 3,
            region: Some("r0"),
            isp: None,
            family: None,
            steer: Steer::NONE,
        };
        group.bench_with_input(BenchmarkId::new("region", n), &snap, |b, s| {
            answers(b, s, &in_region, rules)
        });
        // No region known: no fallbacks either, every node is a candidate.
        let anywhere = Query {
            proto: Proto::Tcp,
            count: 3,
            region: None,
            isp: None,
            family: None,
            steer: Steer::NONE,
        };
        let no_fallbacks = Rules {
            max_load: 0.95,
            fallbacks: &[],
            herd,
        };
        group.bench_with_input(BenchmarkId::new("any-region", n), &snap, |b, s| {
            answers(b, s, &anywhere, no_fallbacks)
        });
        let lines = Snapshot::build(records(n, true), None, 1, false);
        let of_isp = Query {
            isp: Some("cmcc"),
            ..in_region.clone()
        };
        group.bench_with_input(BenchmarkId::new("region-isp", n), &lines, |b, s| {
            answers(b, s, &of_isp, rules)
        });
    }
    group.finish();
}

/// What the sorted indexes cost: a snapshot rebuilt after one node's new report, as
/// the updater does for every registry change.
fn rebuild(c: &mut Criterion) {
    let mut group = c.benchmark_group("rebuild");
    for n in [10usize, 1_000, 10_000] {
        let previous = fleet(n);
        let mut records: Vec<Arc<NodeRecord>> =
            previous.nodes.iter().map(|e| e.record.clone()).collect();
        let mut changed = (*records[0]).clone();
        changed.connections += 1;
        records[0] = Arc::new(changed);
        group.bench_with_input(BenchmarkId::new("one-report", n), &records, |b, r| {
            b.iter(|| {
                black_box(Snapshot::build(
                    r.iter().cloned(),
                    Some(&previous),
                    2,
                    false,
                ))
            })
        });
    }
    group.finish();
}

/// The same report applied as the updater applies a report of a known node: a patch
/// of the served snapshot; and a batch of 30, what one update cycle folds in at
/// 100,000 nodes reporting at the 30 s floor.
fn patch(c: &mut Criterion) {
    let mut group = c.benchmark_group("patch");
    for n in [10_000usize, 100_000] {
        let previous = fleet(n);
        let reports: Vec<Arc<NodeRecord>> = (0..30)
            .map(|k| {
                let mut changed = (*previous.nodes[(k * 7919) % n].record).clone();
                changed.connections += 1_000_000;
                Arc::new(changed)
            })
            .collect();
        group.bench_with_input(BenchmarkId::new("30-reports", n), &reports, |b, r| {
            b.iter(|| black_box(previous.patch(r, 2, false)))
        });
    }
    for n in [10usize, 1_000, 10_000] {
        let previous = fleet(n);
        let mut changed = (*previous.nodes[n / 2].record).clone();
        changed.connections += 1;
        let report = [Arc::new(changed)];
        group.bench_with_input(BenchmarkId::new("one-report", n), &report, |b, r| {
            b.iter(|| black_box(previous.patch(r, 2, false)))
        });
    }
    group.finish();
}

/// The client's region: the prefix trie against scanning every network (the obvious
/// implementation, and this router's before the trie), for geo-IP tables.
fn region_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("region-lookup");
    for n in [10usize, 1_000, 100_000] {
        let mut regions = RegionsConfig::default();
        for i in 0..n as u32 {
            // Distinct /24s spread over the address space, a few nested /16s.
            let net = Ipv4Net::new(Ipv4Addr::from(i.wrapping_mul(2_654_435_761) << 8), 24)
                .expect("valid prefix");
            regions.cidrs.insert(IpNet::V4(net), format!("r{}", i % 10));
        }
        let table = RegionTable::new(&regions.cidrs, &regions.default);
        let probe = IpAddr::V4(Ipv4Addr::from((7u32.wrapping_mul(2_654_435_761) << 8) | 9));
        group.bench_with_input(BenchmarkId::new("trie", n), &table, |b, t| {
            b.iter(|| black_box(t.lookup(black_box(probe))))
        });
        group.bench_with_input(BenchmarkId::new("scan", n), &regions, |b, r| {
            b.iter(|| {
                black_box(
                    r.cidrs
                        .iter()
                        .filter(|(net, _)| net.contains(&black_box(probe)))
                        .max_by_key(|(net, _)| net.prefix_len())
                        .map(|(_, r)| r.as_str()),
                )
            })
        });
    }
    group.finish();
}

/// The selection, rebuild, patch and region-lookup groups, in that order.
fn bench(c: &mut Criterion) {
    select_by_size(c);
    rebuild(c);
    patch(c);
    region_lookup(c);
}

/// What the public edge's guard costs a request, beside the selection above, for 4,096
/// clients in turn (each within its budgets): `edge` is the whole guard (a block list
/// of 1,000 networks, an allow list of 100, the request budget and the herd budget);
/// `request-budget-only` is what a request paid before the guard (the per-address
/// limiter alone), so the difference is what the edge added.
fn guard(c: &mut Criterion) {
    let mut text = String::from("[rate_limit]\nper_ip_per_sec = 100000000\nburst = 100000000\n[edge]\nherd_budget = 4000000000\nblock = [");
    for i in 0..1000u32 {
        text.push_str(&format!("\"10.{}.{}.0/24\",", i / 256, i % 256));
    }
    text.push_str("]\nallow = [");
    for i in 0..100u32 {
        text.push_str(&format!("\"172.16.{i}.0/24\","));
    }
    text.push_str("]\n");
    let cfg = router_server::config::FileConfig::parse(&text).expect("bench config");
    let metrics = router_server::metrics::Metrics::default();
    let g = router_server::guard::Guard::new(&cfg, Default::default(), &metrics);
    let before = router_server::guard::Guard::new(
        &router_server::config::FileConfig::parse(
            "[rate_limit]\nper_ip_per_sec = 100000000\nburst = 100000000\n[edge]\nherd_budget = 0\n",
        )
        .expect("config"),
        Default::default(),
        &metrics,
    );
    let mut group = c.benchmark_group("guard");
    let mut k = 0u32;
    for (name, guard) in [("edge", &g), ("request-budget-only", &before)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                // 4,096 clients in turn, spread over many networks (never 10/8 or 172/8).
                k = (k + 1) % 4096;
                let ip = IpAddr::V4(Ipv4Addr::from(k.wrapping_mul(2_654_435_761) | 0x0100_0000));
                let pass = guard.check(black_box(ip)).expect("within budget");
                black_box(guard.herd_weight(ip, pass, 1, 2))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench, burst, guard);
criterion_main!(benches);
