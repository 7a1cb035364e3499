//! An in-process store with etcd's lease and watch semantics, for the demo and tests.
//!
//! Every write bumps one global revision and is kept in a bounded history, so a watch
//! can start from a past revision exactly like etcd's, and fails with
//! [`KvError::Compacted`] once that history is gone. Keys attached to a lease vanish
//! when it expires. [`MemoryKv::set_available`] simulates an outage.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::kv::{KeyValue, Kv, KvError, KvEvent, LeaseId, Listing, WatchBatch, WatchStream};

/// How many events the history keeps for watches that start in the past.
const HISTORY: usize = 100_000;

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    mod_revision: i64,
    lease: Option<LeaseId>,
}

#[derive(Debug)]
struct Lease {
    ttl: Duration,
    deadline: Instant,
    keys: HashSet<String>,
}

#[derive(Debug, Clone)]
enum Message {
    Batch(Arc<WatchBatch>),
    /// The store became unavailable: watches end, as they do when etcd goes away.
    Outage,
}

#[derive(Debug)]
struct State {
    revision: i64,
    kvs: BTreeMap<String, Entry>,
    leases: HashMap<LeaseId, Lease>,
    history: VecDeque<KvEvent>,
    next_lease: LeaseId,
    available: bool,
}

/// The in-memory store. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct MemoryKv {
    state: Mutex<State>,
    tx: broadcast::Sender<Message>,
}

fn event_revision(e: &KvEvent) -> i64 {
    match e {
        KvEvent::Put(kv) => kv.mod_revision,
        KvEvent::Delete { mod_revision, .. } => *mod_revision,
    }
}

fn event_key(e: &KvEvent) -> &str {
    match e {
        KvEvent::Put(kv) => &kv.key,
        KvEvent::Delete { key, .. } => key,
    }
}

impl MemoryKv {
    /// A new empty store; spawns the lease reaper on the current tokio runtime.
    pub fn new() -> Arc<MemoryKv> {
        let (tx, _) = broadcast::channel(4096);
        let kv = Arc::new(MemoryKv {
            state: Mutex::new(State {
                revision: 1,
                kvs: BTreeMap::new(),
                leases: HashMap::new(),
                history: VecDeque::new(),
                next_lease: 0x1000,
                available: true,
            }),
            tx,
        });
        tokio::spawn(reap(Arc::downgrade(&kv)));
        kv
    }

    /// Simulates an outage (`false`) or a recovery (`true`). During an outage every call
    /// fails with [`KvError::Unavailable`] and open watches end; leases keep their
    /// deadlines, so they expire if the outage outlasts them, as etcd's would.
    pub fn set_available(&self, available: bool) {
        let mut st = self.state.lock().expect("memory kv lock");
        st.available = available;
        if !available {
            let _ = self.tx.send(Message::Outage);
        }
    }

    /// Drops history up to `revision`, as `etcdctl compact` does.
    pub fn compact(&self, revision: i64) {
        let mut st = self.state.lock().expect("memory kv lock");
        while st
            .history
            .front()
            .is_some_and(|e| event_revision(e) <= revision)
        {
            st.history.pop_front();
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, KvError> {
        let mut st = self.state.lock().expect("memory kv lock");
        if !st.available {
            return Err(KvError::Unavailable(
                "in-memory registry is switched off".into(),
            ));
        }
        self.expire(&mut st, Instant::now());
        Ok(st)
    }

    fn commit(&self, st: &mut State, events: Vec<KvEvent>) {
        if events.is_empty() {
            return;
        }
        for e in &events {
            st.history.push_back(e.clone());
        }
        while st.history.len() > HISTORY {
            st.history.pop_front();
        }
        let batch = WatchBatch {
            events,
            revision: st.revision,
        };
        let _ = self.tx.send(Message::Batch(Arc::new(batch)));
    }

    fn delete_locked(st: &mut State, key: &str) -> Option<KvEvent> {
        let entry = st.kvs.remove(key)?;
        if let Some(lease) = entry.lease.and_then(|l| st.leases.get_mut(&l)) {
            lease.keys.remove(key);
        }
        st.revision += 1;
        Some(KvEvent::Delete {
            key: key.to_string(),
            mod_revision: st.revision,
        })
    }

    fn drop_lease(st: &mut State, id: LeaseId) -> Vec<KvEvent> {
        let Some(lease) = st.leases.remove(&id) else {
            return Vec::new();
        };
        let mut keys: Vec<_> = lease.keys.into_iter().collect();
        keys.sort();
        keys.iter()
            .filter_map(|k| Self::delete_locked(st, k))
            .collect()
    }

    fn expire(&self, st: &mut State, now: Instant) {
        let expired: Vec<LeaseId> = st
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        let mut events = Vec::new();
        for id in expired {
            events.extend(Self::drop_lease(st, id));
        }
        self.commit(st, events);
    }
}

async fn reap(kv: Weak<MemoryKv>) {
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Some(kv) = kv.upgrade() else { return };
        let mut st = kv.state.lock().expect("memory kv lock");
        kv.expire(&mut st, Instant::now());
    }
}

#[async_trait]
impl Kv for MemoryKv {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, KvError> {
        let st = self.lock()?;
        Ok(st.kvs.get(key).map(|e| KeyValue {
            key: key.to_string(),
            value: e.value.clone(),
            mod_revision: e.mod_revision,
        }))
    }

    async fn list(&self, prefix: &str) -> Result<Listing, KvError> {
        let st = self.lock()?;
        let kvs = st
            .kvs
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, e)| KeyValue {
                key: k.clone(),
                value: e.value.clone(),
                mod_revision: e.mod_revision,
            })
            .collect();
        Ok(Listing {
            kvs,
            revision: st.revision,
        })
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<i64, KvError> {
        let mut st = self.lock()?;
        if let Some(id) = lease {
            if !st.leases.contains_key(&id) {
                return Err(KvError::LeaseNotFound(id));
            }
        }
        let old_lease = st.kvs.get(key).and_then(|e| e.lease);
        if let Some(l) = old_lease.and_then(|l| st.leases.get_mut(&l)) {
            l.keys.remove(key);
        }
        if let Some(l) = lease.and_then(|l| st.leases.get_mut(&l)) {
            l.keys.insert(key.to_string());
        }
        st.revision += 1;
        let revision = st.revision;
        st.kvs.insert(
            key.to_string(),
            Entry {
                value: value.clone(),
                mod_revision: revision,
                lease,
            },
        );
        let event = KvEvent::Put(KeyValue {
            key: key.to_string(),
            value,
            mod_revision: revision,
        });
        self.commit(&mut st, vec![event]);
        Ok(revision)
    }

    async fn delete(&self, key: &str) -> Result<bool, KvError> {
        let mut st = self.lock()?;
        let event = Self::delete_locked(&mut st, key);
        let existed = event.is_some();
        self.commit(&mut st, event.into_iter().collect());
        Ok(existed)
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId, KvError> {
        let mut st = self.lock()?;
        let ttl = ttl.max(Duration::from_secs(1));
        st.next_lease += 1;
        let id = st.next_lease;
        st.leases.insert(
            id,
            Lease {
                ttl,
                deadline: Instant::now() + ttl,
                keys: HashSet::new(),
            },
        );
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, KvError> {
        let mut st = self.lock()?;
        let l = st
            .leases
            .get_mut(&lease)
            .ok_or(KvError::LeaseNotFound(lease))?;
        l.deadline = Instant::now() + l.ttl;
        Ok(l.ttl)
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), KvError> {
        let mut st = self.lock()?;
        if !st.leases.contains_key(&lease) {
            return Err(KvError::LeaseNotFound(lease));
        }
        let events = Self::drop_lease(&mut st, lease);
        self.commit(&mut st, events);
        Ok(())
    }

    async fn watch(&self, prefix: &str, start_revision: i64) -> Result<WatchStream, KvError> {
        let st = self.lock()?;
        // As in etcd, revision 0 (or less) means "from now on".
        let start_revision = if start_revision <= 0 {
            st.revision + 1
        } else {
            start_revision
        };
        let oldest = st
            .history
            .front()
            .map(event_revision)
            .unwrap_or(st.revision + 1);
        if start_revision < oldest && start_revision <= st.revision {
            return Err(KvError::Compacted {
                requested: start_revision,
                compact_revision: oldest,
            });
        }
        let backlog: Vec<KvEvent> = st
            .history
            .iter()
            .filter(|e| event_revision(e) >= start_revision && event_key(e).starts_with(prefix))
            .cloned()
            .collect();
        let current = st.revision;
        // Subscribe while holding the lock so no write falls between backlog and live.
        let rx = self.tx.subscribe();
        drop(st);
        let prefix = prefix.to_string();
        let first = WatchBatch {
            events: backlog,
            revision: current,
        };
        let live =
            futures::stream::unfold((rx, prefix, false), |(mut rx, prefix, done)| async move {
                if done {
                    return None;
                }
                loop {
                    match rx.recv().await {
                        Ok(Message::Batch(b)) => {
                            let events: Vec<KvEvent> = b
                                .events
                                .iter()
                                .filter(|e| event_key(e).starts_with(&prefix))
                                .cloned()
                                .collect();
                            if events.is_empty() {
                                continue;
                            }
                            let batch = WatchBatch {
                                events,
                                revision: b.revision,
                            };
                            return Some((Ok(batch), (rx, prefix, false)));
                        }
                        Ok(Message::Outage) => {
                            let e =
                                KvError::Unavailable("in-memory registry is switched off".into());
                            return Some((Err(e), (rx, prefix, true)));
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            let e =
                                KvError::WatchCancelled(format!("watcher fell {n} batches behind"));
                            return Some((Err(e), (rx, prefix, true)));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            });
        use futures::StreamExt;
        Ok(futures::stream::once(async move { Ok(first) })
            .chain(live)
            .boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test(start_paused = true)]
    async fn lease_expiry_deletes_keys_and_notifies_watchers() {
        let kv = MemoryKv::new();
        let lease = kv.grant(Duration::from_secs(10)).await.unwrap();
        kv.put("/p/a", b"1".to_vec(), Some(lease)).await.unwrap();
        kv.put("/p/b", b"2".to_vec(), None).await.unwrap();
        let listing = kv.list("/p/").await.unwrap();
        assert_eq!(listing.kvs.len(), 2);
        let mut w = kv.watch("/p/", listing.revision + 1).await.unwrap();
        assert!(w.next().await.unwrap().unwrap().events.is_empty());

        tokio::time::sleep(Duration::from_secs(6)).await;
        kv.keep_alive(lease).await.unwrap();
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(kv.get("/p/a").await.unwrap().is_some(), "kept alive");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(kv.get("/p/a").await.unwrap().is_none(), "expired");
        let batch = w.next().await.unwrap().unwrap();
        assert!(matches!(&batch.events[0], KvEvent::Delete { key, .. } if key == "/p/a"));
        assert!(matches!(
            kv.keep_alive(lease).await,
            Err(KvError::LeaseNotFound(_))
        ));
        assert!(kv.put("/p/c", vec![], Some(lease)).await.is_err());
    }

    #[tokio::test]
    async fn watch_replays_history_and_reports_compaction() {
        let kv = MemoryKv::new();
        let r1 = kv.put("/p/a", b"1".to_vec(), None).await.unwrap();
        kv.put("/q/x", b"x".to_vec(), None).await.unwrap();
        kv.put("/p/a", b"2".to_vec(), None).await.unwrap();
        let mut w = kv.watch("/p/", r1).await.unwrap();
        let first = w.next().await.unwrap().unwrap();
        assert_eq!(first.events.len(), 2, "only the prefix, both revisions");
        kv.compact(r1 + 1);
        assert!(matches!(
            kv.watch("/p/", r1).await,
            Err(KvError::Compacted { .. })
        ));
    }

    #[tokio::test]
    async fn revoke_and_outage() {
        let kv = MemoryKv::new();
        let lease = kv.grant(Duration::from_secs(10)).await.unwrap();
        kv.put("/p/a", b"1".to_vec(), Some(lease)).await.unwrap();
        let mut w = kv.watch("/p/", 0).await.unwrap();
        kv.revoke(lease).await.unwrap();
        assert!(kv.get("/p/a").await.unwrap().is_none());
        kv.set_available(false);
        assert!(matches!(kv.list("/p/").await, Err(KvError::Unavailable(_))));
        let mut saw_outage = false;
        while let Some(item) = w.next().await {
            if item.is_err() {
                saw_outage = true;
                break;
            }
        }
        assert!(saw_outage);
        kv.set_available(true);
        assert!(kv.list("/p/").await.unwrap().kvs.is_empty());
    }
}
