//! Tests of the follower over the in-memory store: puts, deletes, invalid values,
//! outages, compaction and bindings.

use super::*;
use crate::memory::MemoryKv;
use std::time::Duration;

fn record(id: &str, conns: u64) -> Vec<u8> {
    format!(
        r#"{{"id":"{id}","ip":"10.0.0.1","ports":{{"tcp":8000}},"region":"r","capacity":100,"connections":{conns}}}"#
    )
    .into_bytes()
}

async fn wait_for(
    rx: &mut watch::Receiver<Arc<NodeView>>,
    what: &str,
    pred: impl Fn(&NodeView) -> bool,
) -> Arc<NodeView> {
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|v| pred(v)))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .expect("follower alive")
        .clone()
}

#[tokio::test]
async fn follows_puts_deletes_invalid_values_and_outages() {
    let kv = MemoryKv::new();
    let layout = Layout::new("/t");
    kv.put(&layout.node_key("a"), record("a", 1), None)
        .await
        .unwrap();
    kv.put(&layout.node_key("bad"), b"{nope".to_vec(), None)
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let (mut rx, task) = follow(kv.clone(), layout.clone(), cancel.clone());
    let v = wait_for(&mut rx, "first load", |v| v.loaded).await;
    assert_eq!(v.nodes.len(), 1);
    assert_eq!(v.invalid.len(), 1);
    assert!(v.connected);

    kv.put(&layout.node_key("b"), record("b", 2), None)
        .await
        .unwrap();
    wait_for(&mut rx, "b", |v| v.nodes.contains_key("b")).await;
    // A valid node turning invalid is dropped alone; the others stay.
    kv.put(&layout.node_key("b"), record("x", 2), None)
        .await
        .unwrap();
    let v = wait_for(&mut rx, "b invalid", |v| v.invalid.contains_key("b")).await;
    assert!(v.nodes.contains_key("a") && !v.nodes.contains_key("b"));
    kv.delete(&layout.node_key("a")).await.unwrap();
    wait_for(&mut rx, "a gone", |v| !v.nodes.contains_key("a")).await;

    kv.set_available(false);
    let v = wait_for(&mut rx, "disconnected", |v| !v.connected).await;
    assert!(v.loaded);
    kv.set_available(true);
    kv.put(&layout.node_key("c"), record("c", 3), None)
        .await
        .unwrap();
    let v = wait_for(&mut rx, "reconnected", |v| {
        v.connected && v.nodes.contains_key("c")
    })
    .await;
    assert!(v.resyncs >= 2);
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn compaction_triggers_a_clean_resync() {
    let kv = MemoryKv::new();
    let layout = Layout::new("/t");
    let cancel = CancellationToken::new();
    kv.put(&layout.node_key("a"), record("a", 1), None)
        .await
        .unwrap();
    let (mut rx, _task) = follow(kv.clone(), layout.clone(), cancel.clone());
    wait_for(&mut rx, "load", |v| v.loaded).await;
    // Force the watcher to lag past the broadcast buffer: it must resync, not drift.
    for i in 0..6000 {
        kv.put(&layout.node_key("a"), record("a", i), None)
            .await
            .unwrap();
    }
    kv.put(&layout.node_key("z"), record("z", 1), None)
        .await
        .unwrap();
    let v = wait_for(&mut rx, "z after lag", |v| v.nodes.contains_key("z")).await;
    assert_eq!(v.nodes["a"].connections, 5999);
    cancel.cancel();
}

#[tokio::test]
async fn records_outside_their_binding_are_invalid_until_the_binding_allows_them() {
    let kv = MemoryKv::new();
    let layout = Layout::new("/t");
    let bind = |v: &str| {
        let (kv, key, v) = (kv.clone(), layout.binding_key("a"), v.as_bytes().to_vec());
        async move { kv.put(&key, v, None).await.unwrap() }
    };
    // Bound before the router starts: the first view already judges it.
    bind(r#"{"ips": ["10.0.0.0/24"], "max_capacity": 50}"#).await;
    kv.put(&layout.node_key("a"), record("a", 1), None)
        .await
        .unwrap();
    kv.put(&layout.node_key("b"), record("b", 1), None)
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let (mut rx, task) = follow(kv.clone(), layout.clone(), cancel.clone());
    let v = wait_for(&mut rx, "first load", |v| v.loaded).await;
    assert!(!v.nodes.contains_key("a"));
    assert_eq!(
        v.invalid["a"],
        "binding: capacity 100 is above max_capacity 50"
    );
    assert!(
        v.nodes.contains_key("b"),
        "an unbound node is judged as before"
    );
    assert_eq!(v.invalid_seen_total, 1);

    // Relaxing the binding admits the last record at once, with no new report.
    bind(r#"{"ips": ["10.0.0.0/24"], "max_capacity": 100}"#).await;
    let v = wait_for(&mut rx, "a admitted", |v| v.nodes.contains_key("a")).await;
    assert!(!v.invalid.contains_key("a"));

    // Tightening it rejects the record in the view at once.
    bind(r#"{"ips": ["10.0.1.0/24"]}"#).await;
    let v = wait_for(&mut rx, "a outside", |v| v.invalid.contains_key("a")).await;
    assert_eq!(
        v.invalid["a"],
        "binding: ip 10.0.0.1 is outside 10.0.1.0/24"
    );
    assert!(!v.nodes.contains_key("a"));
    assert_eq!(v.invalid_seen_total, 2);

    // A report inside again is admitted; one outside is refused.
    let inside = br#"{"id":"a","ip":"10.0.1.9","ports":{"tcp":1},"region":"r","capacity":100,"connections":1}"#;
    kv.put(&layout.node_key("a"), inside.to_vec(), None)
        .await
        .unwrap();
    wait_for(&mut rx, "a inside", |v| v.nodes.contains_key("a")).await;

    // A binding that does not parse refuses its node (fail closed), naming it.
    bind(r#"{"ips": ["10.0.1.0/33"]}"#).await;
    let v = wait_for(&mut rx, "broken binding", |v| v.invalid.contains_key("a")).await;
    let why = &v.invalid["a"];
    assert!(why.starts_with("binding: /t/bindings/a is broken"), "{why}");
    assert!(why.contains("ips"), "{why}");

    // Removing the binding leaves the record to the contract alone.
    kv.delete(&layout.binding_key("a")).await.unwrap();
    let v = wait_for(&mut rx, "unbound", |v| v.nodes.contains_key("a")).await;
    assert!(v.invalid.is_empty(), "{:?}", v.invalid);

    // The node leaving forgets its rejected record: a binding added later does
    // not bring it back.
    bind(r#"{"max_capacity": 1}"#).await;
    wait_for(&mut rx, "a outside", |v| v.invalid.contains_key("a")).await;
    kv.delete(&layout.node_key("a")).await.unwrap();
    wait_for(&mut rx, "a gone", |v| !v.invalid.contains_key("a")).await;
    kv.delete(&layout.binding_key("a")).await.unwrap();
    let rev = kv.put("/t/other", b"x".to_vec(), None).await.unwrap();
    kv.put(&layout.node_key("b"), record("b", 2), None)
        .await
        .unwrap();
    let v = wait_for(&mut rx, "later", |v| v.revision > rev).await;
    assert!(!v.nodes.contains_key("a") && !v.invalid.contains_key("a"));
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn require_bindings_refuses_unbound_nodes() {
    let kv = MemoryKv::new();
    let layout = Layout::new("/t");
    kv.put(&layout.node_key("a"), record("a", 1), None)
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let (mut rx, _task) = follow_with(
        kv.clone(),
        layout.clone(),
        FollowOptions {
            require_bindings: true,
            ..FollowOptions::default()
        },
        cancel.clone(),
    );
    let v = wait_for(&mut rx, "first load", |v| v.loaded).await;
    assert_eq!(
        v.invalid["a"],
        "binding: none for this node and require_bindings is set"
    );
    kv.put(&layout.binding_key("a"), b"{}".to_vec(), None)
        .await
        .unwrap();
    wait_for(&mut rx, "bound", |v| v.nodes.contains_key("a")).await;
    cancel.cancel();
}

/// A follower that failed through a long outage (its backoff grown to 2 s) tries again
/// as soon as its owner's write is taken, not at its next retry.
#[tokio::test(start_paused = true)]
async fn a_write_taken_wakes_a_follower_waiting_out_its_backoff() {
    let kv = MemoryKv::new();
    let layout = Layout::new("/t");
    let wake = Arc::new(tokio::sync::Notify::new());
    let cancel = CancellationToken::new();
    let (mut rx, _task) = follow_with(
        kv.clone(),
        layout.clone(),
        FollowOptions {
            wake: Some(wake.clone()),
            ..FollowOptions::default()
        },
        cancel.clone(),
    );
    wait_for(&mut rx, "first load", |v| v.loaded).await;
    kv.set_available(false);
    wait_for(&mut rx, "disconnected", |v| !v.connected).await;
    // Long enough for the retries to back off to their longest.
    tokio::time::sleep(Duration::from_secs(20)).await;
    kv.set_available(true);
    kv.put(&layout.node_key("a"), record("a", 1), None)
        .await
        .unwrap();
    wake.notify_waiters();
    let back = tokio::time::timeout(
        Duration::from_millis(100),
        rx.wait_for(|v| v.connected && v.nodes.contains_key("a")),
    )
    .await;
    assert!(
        back.is_ok(),
        "the follower waited out its backoff after the wake"
    );
    cancel.cancel();
}
