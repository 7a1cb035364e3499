//! The registry's etcd store and follower against a real etcd: leases, watch
//! compaction, resync after an outage, and calls that wait out an election.

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
        // Eight labels of 237 bytes: within a record's bounds (values of 256 at most).
        let value = "x".repeat(237);
        let pad = (0..8)
            .map(|k| format!(r#""pad{k}":"{value}""#))
            .collect::<Vec<_>>()
            .join(",");
        let mut total = 0;
        let mut writes = futures::stream::iter((0..NODES).map(|i| {
            let (kv, key) = (kv.clone(), layout.node_key(&format!("big-{i:05}")));
            let value = format!(
                r#"{{"id":"big-{i:05}","ip":"192.0.2.1","ports":{{"tcp":8000}},"region":"r{}","capacity":1000,"connections":{},"labels":{{{pad}}}}}"#,
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

/// The log lines the calls on this thread write, to see what a call tried.
#[derive(Clone, Default)]
struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .matches(needle)
            .count()
    }
}

/// With `retry_for`, a put sent while the cluster has no leader (two of three members
/// down: the third answers "no leader", the others refuse) passes over the endpoints
/// again until a leader is elected, and then lands; with the default, it fails after
/// one pass. (`ctl` issues its commands this way.)
#[tokio::test(flavor = "current_thread")]
async fn a_patient_call_waits_out_an_election_and_lands() {
    let lines = Lines::default();
    let writer = lines.clone();
    let _log = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish(),
    );
    let mut etcd = Etcd::cluster(3);
    let eps = etcd.endpoint_list();
    let impatient = EtcdKv::connect(&eps, &EtcdOptions::default())
        .await
        .unwrap();
    let member_0 = EtcdKv::connect(&eps[..1], &EtcdOptions::default())
        .await
        .unwrap();
    let patient = EtcdKv::connect(
        &eps,
        &EtcdOptions {
            retry_for: Duration::from_secs(300),
            ..EtcdOptions::default()
        },
    )
    .await
    .unwrap();
    patient.put("/t/before", b"1".to_vec(), None).await.unwrap();

    etcd.stop_member(1);
    etcd.stop_member(2);
    // Member 0 notices it has lost its peers: it answers, without a leader.
    let start = std::time::Instant::now();
    loop {
        match member_0.put("/t/k", b"x".to_vec(), None).await {
            Err(KvError::Unavailable(m)) if m.contains("no leader") => break,
            other => assert!(
                start.elapsed() < Duration::from_secs(60),
                "member 0 never lost its leader: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // One pass, and the verdict: unavailable.
    assert!(
        matches!(
            impatient.put("/t/k", b"x".to_vec(), None).await,
            Err(KvError::Unavailable(_))
        ),
        "a put landed without a leader"
    );

    // Per pass, member 0's "no leader" is logged (the others refuse the connection).
    let failed_before = lines.count("etcd endpoint failed");
    let put = tokio::spawn(async move { patient.put("/t/k", b"patient".to_vec(), None).await });
    let start = std::time::Instant::now();
    while lines.count("etcd endpoint failed") < failed_before + 2 {
        assert!(
            !put.is_finished(),
            "the call gave up after one pass: {:?}",
            put.await.unwrap()
        );
        assert!(start.elapsed() < Duration::from_secs(60), "no second pass");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    etcd.start_again();
    let rev = tokio::time::timeout(Duration::from_secs(120), put)
        .await
        .expect("the call ends once a leader is elected")
        .unwrap()
        .expect("the put lands");
    assert!(rev > 0);
    assert_eq!(etcd.get("/t/k").as_deref(), Some("patient"));
}
