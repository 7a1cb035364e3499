//! Selection cost per request at 10, 1,000 and 10,000 nodes, and what rebuilding the
//! snapshot after one report costs at those sizes.
//!
//! Nodes spread over 10 regions; each request asks for 3 candidates in the client's
//! region (one tenth of the fleet) with one fallback region, as a client with a known
//! region would. "any-region" asks with no region, scanning every node.

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use registry::{NodeRecord, Ports, Proto};
use router_server::schedule::{select, Query, Rules, Snapshot};

fn fleet(n: usize) -> Snapshot {
    let records = (0..n).map(|i| {
        Arc::new(NodeRecord::new(
            format!("gw-{i:05}"),
            "192.0.2.1".parse().unwrap(),
            Ports {
                tcp: Some(8000),
                ws: Some(8080),
                wss: None,
            },
            format!("r{}", i % 10),
            // Large capacity: the benchmark's own requests must not fill nodes up.
            1_000_000_000,
            (i as u64 * 7919) % 900_000_000,
        ))
    });
    Snapshot::build(records, None, 1, false)
}

fn bench(c: &mut Criterion) {
    let fallbacks = vec!["r1".to_string()];
    let rules = Rules {
        max_load: 0.95,
        fallbacks: &fallbacks,
    };
    let mut group = c.benchmark_group("select");
    for n in [10usize, 1_000, 10_000] {
        let snap = fleet(n);
        let in_region = Query {
            proto: Proto::Tcp,
            count: 3,
            region: Some("r0"),
            family: None,
        };
        group.bench_with_input(BenchmarkId::new("region", n), &snap, |b, s| {
            b.iter(|| black_box(select(s, black_box(&in_region), rules)))
        });
        // No region known: no fallbacks either, every node is a candidate.
        let anywhere = Query {
            proto: Proto::Tcp,
            count: 3,
            region: None,
            family: None,
        };
        let no_fallbacks = Rules {
            max_load: 0.95,
            fallbacks: &[],
        };
        group.bench_with_input(BenchmarkId::new("any-region", n), &snap, |b, s| {
            b.iter(|| black_box(select(s, black_box(&anywhere), no_fallbacks)))
        });
    }
    group.finish();

    // What the sorted indexes cost: a snapshot rebuilt after one node's new report,
    // as the updater does for every registry change.
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

criterion_group!(benches, bench);
criterion_main!(benches);
