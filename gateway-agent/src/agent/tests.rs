//! Tests of the whole agent on the in-memory store: the embedded API, the report
//! policy's spacing, re-registration, and the hook's retries across restarts.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use registry::memory::MemoryKv;
use registry::{Applied, HookState, Kv, Layout, NodeRecord, Ports};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Agent, AgentConfig, NodeSpec};
use crate::hook::{FnHook, MigrateSignal};

fn spec() -> NodeSpec {
    let mut ports = Ports::default();
    ports.set(registry::Proto::Tcp, 8000);
    NodeSpec {
        id: "gw-lib".into(),
        ip: "10.0.0.1".parse().unwrap(),
        ports,
        region: "r".into(),
        capacity: 1000,
        ipv6: None,
        domain: None,
        zone: None,
        isp: None,
        labels: BTreeMap::new(),
    }
}

async fn record(kv: &MemoryKv, key: &str) -> Option<NodeRecord> {
    let v = kv.get(key).await.unwrap()?;
    Some(NodeRecord::parse("gw-lib", &v.value).unwrap())
}

async fn wait(
    kv: &MemoryKv,
    key: &str,
    what: &str,
    pred: impl Fn(&NodeRecord) -> bool,
) -> NodeRecord {
    for _ in 0..2000 {
        if let Some(r) = record(kv, key).await.filter(|r| pred(r)) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never saw {what}");
}

/// The library API on the in-memory store, with paused time: direct counts,
/// callbacks, the report policy's spacing, and re-registration after an outage.
#[tokio::test(start_paused = true)]
async fn embedded_agent_lifecycle() {
    let kv = MemoryKv::new();
    let signals = Arc::new(Mutex::new(Vec::new()));
    let sink = signals.clone();
    let mut config = AgentConfig::new(spec());
    config.ttl = Duration::from_secs(3);
    config.policy.min_change = 0.0;
    config.hook = Some(Arc::new(FnHook(move |s: &MigrateSignal| {
        sink.lock().unwrap().push(s.clone());
        Ok(())
    })));
    let key = config.layout.node_key("gw-lib");
    let cmd_key = config.layout.command_key("gw-lib");
    let (agent, handle) = Agent::new(kv.clone(), config);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(agent.run(cancel.clone()));

    wait(&kv, &key, "registration", |_| true).await;
    handle.set_connections(250);
    let r = wait(&kv, &key, "250", |r| r.connections == 250).await;
    assert!((r.load() - 0.25).abs() < 1e-9);

    // Writes are spaced by min_interval however fast the count moves.
    let writes_before = handle.status().borrow().writes;
    let start = Instant::now();
    for n in 0..100 {
        handle.set_connections(300 + n);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let writes = handle.status().borrow().writes - writes_before;
    let allowed = start.elapsed().as_millis() as u64 / 500 + 1;
    assert!(
        writes <= allowed,
        "{writes} writes in {:?}",
        start.elapsed()
    );

    kv.put(
        &cmd_key,
        br#"{"id":"m-1","action":"migrate","percent":40}"#.to_vec(),
        None,
    )
    .await
    .unwrap();
    wait(&kv, &key, "m-1 applied", |r| {
        r.applied_command.as_deref() == Some("m-1")
    })
    .await;
    assert_eq!(signals.lock().unwrap().len(), 1);
    assert_eq!(signals.lock().unwrap()[0].percent, 40);

    // An outage longer than the TTL: the lease expires, the agent registers again.
    kv.set_available(false);
    tokio::time::sleep(Duration::from_secs(5)).await;
    kv.set_available(true);
    wait(&kv, &key, "re-registration", |_| true).await;
    assert_eq!(handle.status().borrow().registrations, 2);
    assert_eq!(
        kv.list(&format!("{}/nodes/", config_prefix()))
            .await
            .unwrap()
            .kvs
            .len(),
        1
    );
    assert_eq!(
        signals.lock().unwrap().len(),
        1,
        "m-1 is not re-applied after the resync"
    );

    cancel.cancel();
    task.await.unwrap();
    assert!(kv.get(&key).await.unwrap().is_none(), "revoked on shutdown");
}

/// The library hook has the HTTP hook's semantics: a failing callback is retried
/// until it succeeds, its cause shown in the record; a newer command supersedes an
/// undelivered one, which is never delivered after it; a restart over the same
/// registry does not apply the last command again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_hook_retries_supersedes_and_survives_restarts() {
    let kv = MemoryKv::new();
    let calls = Arc::new(Mutex::new(Vec::<(String, bool)>::new()));
    let accept = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let config = {
        let (calls, accept) = (calls.clone(), accept.clone());
        let mut config = AgentConfig::new(spec());
        config.hook = Some(Arc::new(FnHook(move |s: &MigrateSignal| {
            let ok = accept.load(std::sync::atomic::Ordering::SeqCst);
            calls.lock().unwrap().push((s.command.clone(), ok));
            if ok {
                Ok(())
            } else {
                Err("gateway busy".to_string())
            }
        })));
        config
    };
    let key = config.layout.node_key("gw-lib");
    let cmd_key = config.layout.command_key("gw-lib");
    let applied_key = config.layout.applied_key("gw-lib");
    let (agent, _handle) = Agent::new(kv.clone(), config.clone());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(agent.run(cancel.clone()));
    wait(&kv, &key, "registration", |_| true).await;

    let put = |id: &str, percent: u8| {
        let kv = kv.clone();
        let (key, value) = (
            cmd_key.clone(),
            format!(r#"{{"id":"{id}","action":"migrate","percent":{percent}}}"#),
        );
        async move { kv.put(&key, value.into_bytes(), None).await.unwrap() }
    };
    put("m-old", 10).await;
    let r = wait(&kv, &key, "retrying", |r| {
        r.hook
            .as_ref()
            .is_some_and(|h| h.state == HookState::Retrying)
    })
    .await;
    assert_eq!(r.hook.unwrap().error.as_deref(), Some("gateway busy"));
    put("m-new", 20).await;
    wait(&kv, &key, "new retrying", |r| {
        r.hook.as_ref().is_some_and(|h| h.command == "m-new")
    })
    .await;
    accept.store(true, std::sync::atomic::Ordering::SeqCst);
    wait(&kv, &key, "delivered", |r| {
        r.hook
            .as_ref()
            .is_some_and(|h| h.command == "m-new" && h.state == HookState::Delivered)
    })
    .await;
    {
        let calls = calls.lock().unwrap();
        let first_new = calls.iter().position(|(c, _)| c == "m-new").unwrap();
        assert!(
            calls[first_new..].iter().all(|(c, _)| c == "m-new"),
            "{calls:?}"
        );
        assert_eq!(calls.iter().filter(|(_, ok)| *ok).count(), 1, "{calls:?}");
    }
    cancel.cancel();
    task.await.unwrap();
    let kept = Applied::parse(&kv.get(&applied_key).await.unwrap().unwrap().value).unwrap();
    assert_eq!(kept.command, "m-new");
    assert_eq!(kept.hook.unwrap().state, HookState::Delivered);

    // The record is gone (revoked); the command is still there. A new run does not
    // apply it again.
    let before = calls.lock().unwrap().len();
    let (agent, _handle) = Agent::new(kv.clone(), config);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(agent.run(cancel.clone()));
    let r = wait(&kv, &key, "registered again", |_| true).await;
    assert_eq!(r.applied_command.as_deref(), Some("m-new"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(calls.lock().unwrap().len(), before, "not delivered again");
    cancel.cancel();
    task.await.unwrap();
}

fn config_prefix() -> String {
    Layout::default().prefix().to_string()
}
