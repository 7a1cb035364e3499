//! The registry's etcd store and follower against a real etcd: leases, watch
//! compaction, and resync after an outage.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use harness::Etcd;
use registry::etcd::{EtcdKv, EtcdOptions};
use registry::kv::{Kv, KvError, KvEvent};
use registry::Layout;
use tokio_util::sync::CancellationToken;

async fn connect(etcd: &Etcd) -> EtcdKv {
    EtcdKv::connect(&etcd.endpoint_list(), &EtcdOptions::default())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn leases_keep_alive_and_revoke() {
    let etcd = Etcd::start();
    let kv = connect(&etcd).await;
    let lease = kv.grant(Duration::from_secs(5)).await.unwrap();
    kv.put("/t/a", b"1".to_vec(), Some(lease)).await.unwrap();
    assert_eq!(kv.keep_alive(lease).await.unwrap(), Duration::from_secs(5));
    assert_eq!(etcd.get("/t/a").as_deref(), Some("1"));
    kv.revoke(lease).await.unwrap();
    assert!(
        kv.get("/t/a").await.unwrap().is_none(),
        "revoking deletes the key at once"
    );
    let after = kv.keep_alive(lease).await;
    assert!(
        matches!(after, Err(KvError::LeaseNotFound(l)) if l == lease),
        "{after:?}"
    );
    assert!(matches!(
        kv.put("/t/b", vec![], Some(lease)).await,
        Err(KvError::LeaseNotFound(_))
    ));
    assert!(matches!(
        kv.revoke(lease).await,
        Err(KvError::LeaseNotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_from_a_compacted_revision_reports_compaction() {
    let etcd = Etcd::start();
    let kv = connect(&etcd).await;
    let first = kv.put("/t/k", b"1".to_vec(), None).await.unwrap();
    let last = kv.put("/t/k", b"2".to_vec(), None).await.unwrap();
    etcd.ctl(&["compact", &last.to_string()]);
    let mut w = kv.watch("/t/", first).await.unwrap();
    let mut item = w.next().await;
    // A progress notice may come first; skip empty batches.
    while matches!(&item, Some(Ok(b)) if b.events.is_empty()) {
        item = w.next().await;
    }
    match item {
        Some(Err(KvError::Compacted {
            requested,
            compact_revision,
        })) => {
            assert_eq!(requested, first);
            assert!(compact_revision >= last);
        }
        other => panic!("expected a compaction error, got {other:?}"),
    }
    // From the current revision it works.
    let mut w = kv.watch("/t/", last + 1).await.unwrap();
    kv.put("/t/k", b"3".to_vec(), None).await.unwrap();
    let batch = loop {
        let b = w.next().await.unwrap().unwrap();
        if !b.events.is_empty() {
            break b;
        }
    };
    assert!(matches!(&batch.events[0], KvEvent::Put(e) if e.value == b"3"));
}

#[tokio::test(flavor = "multi_thread")]
async fn follower_marks_outages_and_resyncs_cleanly() {
    let mut etcd = Etcd::start();
    let layout = Layout::default();
    let rec = |id: &str| {
        format!(
            r#"{{"id":"{id}","ip":"10.0.0.1","ports":{{"tcp":1}},"region":"r","capacity":10,"connections":1}}"#
        )
    };
    etcd.put(&layout.node_key("a"), &rec("a"));
    etcd.put(&layout.node_key("b"), &rec("b"));
    let kv: Arc<dyn Kv> = Arc::new(connect(&etcd).await);
    let cancel = CancellationToken::new();
    let (mut rx, _task) = registry::follow::follow(kv, layout.clone(), cancel.clone());
    let wait = |rx: &mut tokio::sync::watch::Receiver<_>,
                what: &'static str,
                f: fn(&registry::follow::NodeView) -> bool| {
        let mut rx = rx.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(20),
                rx.wait_for(|v: &Arc<registry::follow::NodeView>| f(v)),
            )
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap()
            .clone()
        }
    };
    let v = wait(&mut rx, "first load", |v| v.loaded && v.nodes.len() == 2).await;
    assert!(v.connected);
    etcd.stop();
    let v = wait(&mut rx, "disconnected", |v| !v.connected).await;
    assert_eq!(
        v.nodes.len(),
        2,
        "the last nodes are kept for serving stale"
    );
    etcd.start_again();
    // Changes made right after the restart, then compacted away: the follower must not
    // rely on history; it lists again.
    etcd.ctl(&["del", &layout.node_key("a")]);
    etcd.put(&layout.node_key("c"), &rec("c"));
    let rev = etcd.ctl(&["get", &layout.node_key("c"), "-w", "json"]);
    let rev: serde_json::Value = serde_json::from_str(&rev).unwrap();
    etcd.ctl(&["compact", &rev["header"]["revision"].to_string()]);
    let v = wait(&mut rx, "resynced", |v| {
        v.connected && v.nodes.contains_key("c") && !v.nodes.contains_key("a")
    })
    .await;
    assert!(v.resyncs >= 2);
    cancel.cancel();
}

/// A fleet whose records add up to more than the client's 4 MB message limit: a
/// listing in one answer was refused ("decoded message length too large"), so a
/// router never became ready and `ctl nodes` failed. Listed in pages, it loads; a
/// router starts and `ctl nodes` lists every node.
#[test]
fn a_registry_over_4_mb_is_listed_in_pages() {
    let etcd = Etcd::start();
    const NODES: usize = 2_600;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let total = rt.block_on(async {
        let kv = Arc::new(connect(&etcd).await);
        let layout = Layout::default();
        // About 2 KB each (labels, as a real fleet carries): 5 MB in all.
        let pad = "x".repeat(1900);
        let mut total = 0;
        let mut writes = futures::stream::iter((0..NODES).map(|i| {
            let (kv, key) = (kv.clone(), layout.node_key(&format!("big-{i:05}")));
            let value = format!(
                r#"{{"id":"big-{i:05}","ip":"192.0.2.1","ports":{{"tcp":8000}},"region":"r{}","capacity":1000,"connections":{},"labels":{{"pad":"{pad}"}}}}"#,
                i % 4,
                i % 900
            );
            total += value.len();
            async move { kv.put(&key, value.into_bytes(), None).await.unwrap() }
        }))
        .buffer_unordered(32);
        while writes.next().await.is_some() {}
        drop(writes);
        // The store lists it whole, in one revision.
        let listing = kv.list(&layout.nodes_prefix()).await.unwrap();
        assert_eq!(listing.kvs.len(), NODES);
        assert!(listing.kvs.windows(2).all(|w| w[0].key < w[1].key));
        total
    });
    assert!(total > 4_500_000, "the records add up to {total} bytes");

    let r = harness::RouterProc::start(&etcd, "", &[]);
    let out = r.proc.output();
    assert!(out.contains(&format!("loaded {NODES} nodes")), "{out}");
    // The gauges follow the served snapshot (readiness) a moment later.
    let served = || {
        let (_, metrics) = harness::http_get(r.addr, "/metrics").unwrap();
        metrics
            .lines()
            .filter(|l| l.starts_with("router_nodes{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
            .sum::<i64>()
    };
    harness::wait_until(
        Duration::from_secs(30),
        "router_nodes counts every node",
        || served() == NODES as i64,
    );

    let (code, table) = harness::router_ctl(&etcd, &["nodes"]);
    assert_eq!(code, 0, "{table}");
    for i in [0, 1, NODES / 2, NODES - 1] {
        assert!(table.contains(&format!("big-{i:05}")), "big-{i:05} missing");
    }
    assert_eq!(
        table.lines().filter(|l| l.contains("big-")).count(),
        NODES,
        "every node listed once"
    );
}
