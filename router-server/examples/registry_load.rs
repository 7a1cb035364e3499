//! Load for `scripts/bench-registry.sh`: a fleet of records in a real etcd, updated at
//! a steady rate, while a probe measures how long an update takes to show in a router's
//! `/gateways` answers and a request loop counts answers that are not 200.
//!
//! `registry_load ENDPOINTS NODES RATE SECS [ROUTER_ADDR]` (RATE = updates/s; with SECS 0
//! it only writes the fleet and exits; without ROUTER_ADDR it only writes updates, so the
//! router's cost of following them is measured alone).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use registry::etcd::{EtcdKv, EtcdOptions};
use registry::{Kv, Layout, NodeRecord, Ports};

/// Node ids are `{ID_PREFIX}-{i}`: `gw` unless `REGISTRY_LOAD_ID_PREFIX` says otherwise
/// (a second registry's fleet, say).
fn id_prefix() -> &'static str {
    static P: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    P.get_or_init(|| std::env::var("REGISTRY_LOAD_ID_PREFIX").unwrap_or_else(|_| "gw".into()))
}

fn record(i: usize, conns: u64) -> NodeRecord {
    NodeRecord {
        updated_ms: Some(registry::now_ms()),
        sampled_ms: Some(registry::now_ms()),
        sample_age_ms: Some(0),
        ..NodeRecord::new(
            format!("{}-{i:05}", id_prefix()),
            "192.0.2.1".parse().expect("literal"),
            Ports {
                tcp: Some(8000),
                ws: Some(8080),
                wss: None,
            },
            format!("r{}", i % 10),
            1_000_000,
            conns,
        )
    }
}

/// The probe node: alone in its region, so `/gateways?region=probe` shows its load.
fn probe(k: u64) -> NodeRecord {
    NodeRecord::new(
        "probe",
        "192.0.2.9".parse().expect("literal"),
        Ports {
            tcp: Some(9000),
            ws: None,
            wss: None,
        },
        "probe",
        1_000_000_000,
        k * 100_000,
    )
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Writes `nodes` records and the probe, 32 writers at a time.
async fn write_fleet(kv: &Arc<EtcdKv>, layout: &Layout, nodes: usize) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for chunk in (0..nodes)
        .collect::<Vec<_>>()
        .chunks(nodes.div_ceil(32).max(1))
    {
        let (kv, layout, chunk) = (kv.clone(), layout.clone(), chunk.to_vec());
        set.spawn(async move {
            for i in chunk {
                let r = record(i, (i as u64 * 7919) % 900_000);
                kv.put(&layout.node_key(&r.id), r.to_json(), None).await?;
            }
            Ok::<_, registry::KvError>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let p = probe(0);
    kv.put(&layout.node_key(&p.id), p.to_json(), None).await?;
    println!("wrote {nodes} nodes in {:?}", start.elapsed());
    Ok(())
}

/// Updates until `deadline`: `rate` a second, spread evenly, each to a random node of
/// `nodes`. The task returns how many it wrote.
fn spawn_writer(
    kv: &Arc<EtcdKv>,
    layout: &Layout,
    nodes: usize,
    rate: u64,
    deadline: Instant,
) -> tokio::task::JoinHandle<u64> {
    let (kv, layout) = (kv.clone(), layout.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut n = 0u64;
        let inflight = Arc::new(tokio::sync::Semaphore::new(64));
        while Instant::now() < deadline {
            tick.tick().await;
            let i = rand::random::<u64>() as usize % nodes;
            let r = record(i, rand::random::<u64>() % 900_000);
            let (kv, key) = (kv.clone(), layout.node_key(&r.id));
            let permit = inflight.clone().acquire_owned().await.expect("open");
            tokio::spawn(async move {
                let _ = kv.put(&key, r.to_json(), None).await;
                drop(permit);
            });
            n += 1;
        }
        n
    })
}

/// The requests asked and those not answered 200.
#[derive(Default)]
struct Asked {
    asked: AtomicU64,
    non_200: AtomicU64,
}

/// A request loop until `deadline`, as clients would keep asking during all this.
fn spawn_looper(
    http: &reqwest::Client,
    router: &str,
    deadline: Instant,
    counts: &Arc<Asked>,
) -> tokio::task::JoinHandle<()> {
    let (http, url) = (http.clone(), format!("http://{router}/gateways"));
    let counts = counts.clone();
    tokio::spawn(async move {
        while Instant::now() < deadline {
            let ok = http.get(&url).send().await.is_ok_and(|r| r.status() == 200);
            counts.asked.fetch_add(1, Ordering::Relaxed);
            if !ok {
                counts.non_200.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

/// The probe until `deadline`: write a new load, then poll until the router answers
/// it. Returns each update's milliseconds to show (5,000 where it never did).
async fn probe_latencies(
    kv: &EtcdKv,
    layout: &Layout,
    http: &reqwest::Client,
    router: &str,
    deadline: Instant,
) -> anyhow::Result<Vec<f64>> {
    let mut latencies = Vec::new();
    let url = format!("http://{router}/gateways?region=probe&count=1");
    let mut k = 0u64;
    while Instant::now() < deadline {
        k += 1;
        let want = format!("\"load\":{}", (k * 100_000) as f64 / 1e9);
        let p = probe(k);
        kv.put(&layout.node_key(&p.id), p.to_json(), None).await?;
        let acked = Instant::now();
        loop {
            let body = http.get(&url).send().await?.text().await?;
            if body.contains(&want) {
                latencies.push(acked.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if acked.elapsed() > Duration::from_secs(5) {
                latencies.push(5000.0);
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(latencies)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let endpoints: Vec<String> = a[0].split(',').map(str::to_string).collect();
    let nodes: usize = a[1].parse()?;
    let rate: u64 = a[2].parse()?;
    let secs: u64 = a[3].parse()?;
    let router = a.get(4).cloned().unwrap_or_default();
    let kv = Arc::new(EtcdKv::connect(&endpoints, &EtcdOptions::default()).await?);
    let layout = Layout::default();
    if secs == 0 {
        return write_fleet(&kv, &layout, nodes).await;
    }

    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let writer = spawn_writer(&kv, &layout, nodes, rate, deadline);
    let counts = Arc::new(Asked::default());
    if router.is_empty() {
        let updates = writer.await?;
        println!(
            "updates {updates} ({:.0}/s), no requests",
            updates as f64 / secs as f64
        );
        return Ok(());
    }
    let looper = spawn_looper(&http, &router, deadline, &counts);
    let mut latencies = probe_latencies(&kv, &layout, &http, &router, deadline).await?;
    let updates = writer.await?;
    looper.await?;
    latencies.sort_by(f64::total_cmp);
    println!(
        "updates {updates} ({:.0}/s) visible_ms p50 {:.1} p99 {:.1} max {:.1} (n={}) requests {} non_200 {}",
        updates as f64 / secs as f64,
        pct(&latencies, 0.5),
        pct(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN),
        latencies.len(),
        counts.asked.load(Ordering::Relaxed),
        counts.non_200.load(Ordering::Relaxed),
    );
    Ok(())
}
