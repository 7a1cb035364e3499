//! A store for unit tests: the in-memory one, with watch delivery held back by a delay
//! the test sets, and alarms the test raises.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use registry::kv::{KeyValue, Listing, WatchStream};
use registry::memory::MemoryKv;
use registry::{Alarm, Kv, KvError, LeaseId};
use tokio::time::Instant;

/// [`MemoryKv`], with every watch batch delivered `delay` after the store sent it
/// (a constant lag, not one that accumulates), and `alarms` as the test sets them.
pub(crate) struct TestKv {
    /// The store.
    pub(crate) inner: Arc<MemoryKv>,
    /// How long each watch batch is held back (read when the batch is sent).
    pub(crate) delay: Arc<Mutex<Duration>>,
    /// The alarms raised.
    pub(crate) raised: Mutex<Vec<Alarm>>,
    /// While set, every put fails as a store without a leader refuses it (the lease
    /// calls still work).
    pub(crate) refusing_puts: std::sync::atomic::AtomicBool,
}

impl TestKv {
    /// An empty store, delivering at once, without alarms.
    pub(crate) fn new() -> TestKv {
        TestKv {
            inner: MemoryKv::new(),
            delay: Arc::new(Mutex::new(Duration::ZERO)),
            raised: Mutex::new(Vec::new()),
            refusing_puts: Default::default(),
        }
    }

    /// Holds every watch batch sent from now on back by `d`.
    pub(crate) fn set_delay(&self, d: Duration) {
        *self.delay.lock().unwrap() = d;
    }
}

#[async_trait::async_trait]
impl Kv for TestKv {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, KvError> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Listing, KvError> {
        self.inner.list(prefix).await
    }
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<i64, KvError> {
        if self
            .refusing_puts
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(KvError::Unavailable("etcdserver: no leader".into()));
        }
        self.inner.put(key, value, lease).await
    }
    async fn delete(&self, key: &str) -> Result<bool, KvError> {
        self.inner.delete(key).await
    }
    async fn grant(&self, ttl: Duration) -> Result<LeaseId, KvError> {
        self.inner.grant(ttl).await
    }
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, KvError> {
        self.inner.keep_alive(lease).await
    }
    async fn revoke(&self, lease: LeaseId) -> Result<(), KvError> {
        self.inner.revoke(lease).await
    }
    async fn watch(&self, prefix: &str, start_revision: i64) -> Result<WatchStream, KvError> {
        let mut inner = self.inner.watch(prefix, start_revision).await?;
        let delay = self.delay.clone();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(item) = inner.next().await {
                let due = Instant::now() + *delay.lock().unwrap();
                if tx.send((due, item)).is_err() {
                    break;
                }
            }
        });
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            let (due, item) = rx.recv().await?;
            tokio::time::sleep_until(due).await;
            Some((item, rx))
        })))
    }
    async fn alarms(&self) -> Result<Vec<Alarm>, KvError> {
        Ok(self.raised.lock().unwrap().clone())
    }
}
