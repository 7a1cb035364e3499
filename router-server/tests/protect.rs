//! The protect threshold through the real server on the in-memory registry: a mass
//! removal is held back (stale, alarm, metric) for a bounded time; a recovery releases
//! it at once.

use std::time::Duration;

use registry::memory::MemoryKv;
use registry::{Kv, Layout, LeaseId, NodeRecord, Ports};
use router_server::config::FileConfig;
use router_server::{run, Listeners, ServeOptions};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

fn record(id: &str) -> Vec<u8> {
    loaded(id, 1)
}

/// A node with `connections` of its 1,000,000 capacity (large: the test's own polling
/// is counted against nodes, herd safety).
fn loaded(id: &str, connections: u64) -> Vec<u8> {
    NodeRecord::new(
        id,
        "192.0.2.1".parse().unwrap(),
        Ports {
            tcp: Some(1),
            ws: None,
            wss: None,
        },
        "r",
        1_000_000,
        connections,
    )
    .to_json()
}

async fn answer(base: &str) -> Value {
    let resp = reqwest::get(format!("{base}/gateways?count=10"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

async fn wait_for(base: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..500 {
        let v = answer(base).await;
        if pred(&v) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never saw {what}");
}

fn count(v: &Value) -> usize {
    v["gateways"].as_array().unwrap().len()
}

fn ids(v: &Value) -> Vec<String> {
    v["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn mass_removal_is_held_then_released() {
    let kv = MemoryKv::new();
    let layout = Layout::default();
    let doomed = ten_nodes(&kv, &layout).await;
    let config =
        FileConfig::parse("protect_max_secs = 2\n[rate_limit]\nper_ip_per_sec = 0").unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(run(
        kv.clone(),
        ServeOptions {
            router_id: None,
            public_addrs: Vec::new(),
            config,
            config_file: None,
            layout: layout.clone(),
            admin_tokens: Default::default(),
            tls: None,
        },
        Listeners {
            main: listener,
            plain: None,
            admin: None,
        },
        shutdown.clone(),
    ));
    ready(&base).await;
    wait_for(&base, "10 nodes", |v| count(v) == 10).await;

    // One lease revocation deletes 6 of 10 keys in one batch: held back.
    kv.revoke(doomed).await.unwrap();
    check_held(&base).await;

    // Bounded: after protect_max_secs the router follows the registry.
    let start = std::time::Instant::now();
    let released = wait_for(&base, "release", |v| v["stale"] == false).await;
    assert_eq!(count(&released), 4);
    assert!(
        start.elapsed() <= Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );

    check_recovery(&kv, &layout, &base).await;

    shutdown.cancel();
    server.await.unwrap().unwrap();
}

/// Ten nodes: four under a lease that stays, busier (30 %) than the six under a lease
/// about to be revoked (almost empty): held nodes must still come after every live
/// one. Returns the doomed lease.
async fn ten_nodes(kv: &MemoryKv, layout: &Layout) -> LeaseId {
    let keep = kv.grant(Duration::from_secs(600)).await.unwrap();
    let doomed = kv.grant(Duration::from_secs(600)).await.unwrap();
    for i in 0..10 {
        let (lease, conns) = if i < 4 { (keep, 300_000) } else { (doomed, 1) };
        kv.put(
            &layout.node_key(&format!("n{i}")),
            loaded(&format!("n{i}"), conns),
            Some(lease),
        )
        .await
        .unwrap();
    }
    doomed
}

/// Waits until `/readyz` answers 200 (up to 5 s, then goes on).
async fn ready(base: &str) {
    for _ in 0..500 {
        if reqwest::get(format!("{base}/readyz"))
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The held answer: the previous set kept, every live node first, only live ones when
/// fewer are asked for, and the protect metrics.
async fn check_held(base: &str) {
    let held = wait_for(base, "stale", |v| v["stale"] == true).await;
    assert_eq!(count(&held), 10, "previous set kept");
    let order = ids(&held);
    let mut live: Vec<String> = order[..4].to_vec();
    live.sort();
    assert_eq!(
        live,
        ["n0", "n1", "n2", "n3"],
        "every live node before any held one, though the held are less loaded: {order:?}"
    );
    // Asked for fewer than the live nodes: only live ones.
    let three: Value = reqwest::get(format!("{base}/gateways?count=3"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        ids(&three)
            .iter()
            .all(|id| ["n0", "n1", "n2", "n3"].contains(&id.as_str())),
        "{three}"
    );
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The sample line itself: its HELP text also starts with "1 while".
    assert!(
        metrics.lines().any(|l| l == "router_protect_active 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("router_protect_engaged_total 1"),
        "{metrics}"
    );
}

/// Recovery releases at once: 9 nodes, 5 vanish (held), then 2 come back.
async fn check_recovery(kv: &MemoryKv, layout: &Layout, base: &str) {
    let l2 = kv.grant(Duration::from_secs(600)).await.unwrap();
    for i in 10..15 {
        kv.put(
            &layout.node_key(&format!("n{i}")),
            record(&format!("n{i}")),
            Some(l2),
        )
        .await
        .unwrap();
    }
    wait_for(base, "9 nodes", |v| count(v) == 9).await;
    kv.revoke(l2).await.unwrap();
    let held = wait_for(base, "stale again", |v| v["stale"] == true).await;
    assert_eq!(count(&held), 9);
    for i in 10..12 {
        kv.put(
            &layout.node_key(&format!("n{i}")),
            record(&format!("n{i}")),
            None,
        )
        .await
        .unwrap();
    }
    let v = wait_for(base, "recovered", |v| v["stale"] == false).await;
    assert_eq!(count(&v), 6);
}
