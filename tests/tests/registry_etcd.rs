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
