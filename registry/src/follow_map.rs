//! Follows any prefix of a store and publishes its raw values as immutable snapshots.
//!
//! The same list-then-watch loop as [`crate::follow`], without knowing what the values
//! mean: list `prefix` at revision R, watch from R+1, apply each batch, publish an
//! `Arc<MapView>`. Any watch error marks the view disconnected (the last values stay)
//! and starts over with a fresh list after a jittered backoff, so a resync never keeps
//! a key the store has dropped. Readers parse the values they care about; operator
//! keys such as `P/bindings/` and `P/blocklist/` are followed through it.
//!
//! The number of keys kept is bounded ([`MapOptions::max_keys`]): a prefix anyone
//! with write access can fill must not grow a reader's memory without limit. Keys
//! beyond the bound are counted, not kept, and the view says it is incomplete.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use imbl::OrdMap;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::kv::{KeyValue, Kv, KvError, KvEvent, WatchBatch, WatchStream};

/// The most keys a follower keeps unless told otherwise.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// One immutable view of the keys under a prefix.
#[derive(Debug, Clone, Default)]
pub struct MapView {
    /// Raw values by key suffix (the key with the prefix stripped).
    pub entries: OrdMap<Arc<str>, Arc<[u8]>>,
    /// The store revision the view reflects.
    pub revision: i64,
    /// True once a full listing has been loaded.
    pub loaded: bool,
    /// True while the watch is live; false while the store cannot be reached.
    pub connected: bool,
    /// True while some key of the store may be missing from `entries` because the
    /// bound was reached; cleared by the next listing that fits.
    pub truncated: bool,
    /// Keys not kept because the bound was reached, since start: each key of a
    /// listing left out and each watched put of a new key refused.
    pub refused_total: u64,
    /// Full listings loaded since start (1 + resyncs).
    pub resyncs: u64,
}

impl MapView {
    /// The raw value at `suffix`, if kept.
    pub fn get(&self, suffix: &str) -> Option<&Arc<[u8]>> {
        self.entries.get(suffix)
    }
}

/// How a map follower behaves.
#[derive(Debug, Clone)]
pub struct MapOptions {
    /// The most keys kept at once; further keys are counted in
    /// [`MapView::refused_total`].
    pub max_keys: usize,
}

impl Default for MapOptions {
    fn default() -> Self {
        MapOptions {
            max_keys: DEFAULT_MAX_KEYS,
        }
    }
}

/// Follows `prefix` with the default options until `cancel` fires.
pub fn follow_map(
    kv: Arc<dyn Kv>,
    prefix: String,
    cancel: CancellationToken,
) -> (watch::Receiver<Arc<MapView>>, JoinHandle<()>) {
    follow_map_with(kv, prefix, MapOptions::default(), cancel)
}

/// Follows `prefix` with `options` until `cancel` fires.
pub fn follow_map_with(
    kv: Arc<dyn Kv>,
    prefix: String,
    options: MapOptions,
    cancel: CancellationToken,
) -> (watch::Receiver<Arc<MapView>>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(Arc::new(MapView::default()));
    let follower = MapFollower {
        prefix,
        max_keys: options.max_keys,
        view: MapView::default(),
    };
    let task = tokio::spawn(run(kv, follower, tx, cancel));
    (rx, task)
}

struct MapFollower {
    prefix: String,
    max_keys: usize,
    view: MapView,
}

impl Applies for MapFollower {
    fn apply_put(&mut self, kv: &KeyValue) {
        MapFollower::apply_put(self, kv);
    }
    fn apply_delete(&mut self, key: &str) {
        MapFollower::apply_delete(self, key);
    }
    fn revision(&mut self) -> &mut i64 {
        &mut self.view.revision
    }
}

impl MapFollower {
    fn suffix<'a>(&self, key: &'a str) -> &'a str {
        key.strip_prefix(self.prefix.as_str()).unwrap_or(key)
    }

    fn apply_put(&mut self, kv: &KeyValue) {
        let suffix = self.suffix(&kv.key);
        let value: Arc<[u8]> = Arc::from(kv.value.as_slice());
        if let Some(slot) = self.view.entries.get_mut(suffix) {
            *slot = value;
        } else if self.view.entries.len() < self.max_keys {
            self.view.entries.insert(Arc::from(suffix), value);
        } else {
            if !self.view.truncated {
                warn!(prefix = %self.prefix, max_keys = self.max_keys, "too many keys; the excess is not kept");
            }
            self.view.truncated = true;
            self.view.refused_total += 1;
        }
    }

    fn apply_delete(&mut self, key: &str) {
        let suffix = self.suffix(key);
        self.view.entries.remove(suffix);
    }

    fn load(&mut self, kvs: &[KeyValue], revision: i64) {
        self.view.entries.clear();
        self.view.truncated = false;
        for kv in kvs {
            self.apply_put(kv);
        }
        self.view.revision = revision;
        self.view.loaded = true;
        self.view.connected = true;
        self.view.resyncs += 1;
    }
}

async fn run(
    kv: Arc<dyn Kv>,
    mut f: MapFollower,
    tx: watch::Sender<Arc<MapView>>,
    cancel: CancellationToken,
) {
    // The node follower's pace: at most about 2.4 s between attempts.
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2), 2.0, 0.2);
    loop {
        let err = tokio::select! {
            _ = cancel.cancelled() => return,
            err = sync_once(&*kv, &mut f, &tx, &mut backoff) => err,
        };
        if f.view.connected {
            f.view.connected = false;
            tx.send_replace(Arc::new(f.view.clone()));
        }
        let delay = backoff.next_delay();
        match err {
            KvError::Compacted { .. } | KvError::WatchCancelled(_) => {
                info!(prefix = %f.prefix, error = %err, "watch ended, resyncing");
            }
            _ => {
                warn!(prefix = %f.prefix, error = %err, retry_in_ms = delay.as_millis() as u64, "cannot follow prefix")
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Lists, then watches until the watch fails; returns why it stopped.
async fn sync_once(
    kv: &dyn Kv,
    f: &mut MapFollower,
    tx: &watch::Sender<Arc<MapView>>,
    backoff: &mut Backoff,
) -> KvError {
    let listing = match kv.list(&f.prefix).await {
        Ok(l) => l,
        Err(e) => return e,
    };
    let mut stream = match kv.watch(&f.prefix, listing.revision + 1).await {
        Ok(s) => s,
        Err(e) => return e,
    };
    f.load(&listing.kvs, listing.revision);
    info!(
        prefix = %f.prefix,
        keys = f.view.entries.len(),
        revision = listing.revision,
        "prefix listed"
    );
    tx.send_replace(Arc::new(f.view.clone()));
    backoff.reset();
    loop {
        let Some(first) = stream.next().await else {
            return KvError::Unavailable("watch ended".into());
        };
        let (changed, ended) = apply_ready(first, &mut stream, f);
        if changed {
            tx.send_replace(Arc::new(f.view.clone()));
        }
        if let Some(e) = ended {
            return e;
        }
    }
}

/// What a follower does with the events its watch delivers.
pub(crate) trait Applies {
    /// A key was created or changed.
    fn apply_put(&mut self, kv: &KeyValue);
    /// A key was deleted.
    fn apply_delete(&mut self, key: &str);
    /// The revision its view reflects.
    fn revision(&mut self) -> &mut i64;
}

/// Applies `first` and every batch already waiting behind it, coalesced into one
/// change: whether the view changed, and the error that ended the watch, if one did
/// (the batches before it are applied).
pub(crate) fn apply_ready(
    first: Result<WatchBatch, KvError>,
    stream: &mut WatchStream,
    f: &mut impl Applies,
) -> (bool, Option<KvError>) {
    let mut items = vec![first];
    while let Some(Some(more)) = stream.next().now_or_never() {
        items.push(more);
    }
    let mut changed = false;
    for item in items {
        let batch = match item {
            Ok(b) => b,
            Err(e) => return (changed, Some(e)),
        };
        for ev in &batch.events {
            match ev {
                KvEvent::Put(kv) => f.apply_put(kv),
                KvEvent::Delete { key, .. } => f.apply_delete(key),
            }
            changed = true;
        }
        if batch.revision > *f.revision() {
            *f.revision() = batch.revision;
            changed = true;
        }
    }
    (changed, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryKv;

    async fn wait_for(
        rx: &mut watch::Receiver<Arc<MapView>>,
        what: &str,
        pred: impl Fn(&MapView) -> bool,
    ) -> Arc<MapView> {
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|v| pred(v)))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .expect("follower alive")
            .clone()
    }

    #[tokio::test]
    async fn follows_puts_deletes_and_outages() {
        let kv = MemoryKv::new();
        kv.put("/t/b/x", b"1".to_vec(), None).await.unwrap();
        kv.put("/t/other/y", b"no".to_vec(), None).await.unwrap();
        let cancel = CancellationToken::new();
        let (mut rx, task) = follow_map(kv.clone(), "/t/b/".into(), cancel.clone());
        let v = wait_for(&mut rx, "first load", |v| v.loaded).await;
        assert!(v.connected);
        assert_eq!(v.entries.len(), 1, "only the followed prefix");
        assert_eq!(&**v.get("x").unwrap(), b"1");
        let listed_at = v.revision;

        kv.put("/t/b/y/z", b"2".to_vec(), None).await.unwrap();
        let v = wait_for(&mut rx, "y/z", |v| v.entries.contains_key("y/z")).await;
        assert!(v.revision > listed_at);
        kv.put("/t/b/x", b"3".to_vec(), None).await.unwrap();
        wait_for(&mut rx, "x updated", |v| {
            v.get("x").map(|x| &**x) == Some(&b"3"[..])
        })
        .await;
        kv.delete("/t/b/x").await.unwrap();
        let v = wait_for(&mut rx, "x gone", |v| !v.entries.contains_key("x")).await;
        assert_eq!(v.entries.len(), 1);

        // An outage keeps the last values and says so; the store coming back brings
        // a fresh listing, which drops what was deleted meanwhile.
        kv.set_available(false);
        let v = wait_for(&mut rx, "disconnected", |v| !v.connected).await;
        assert!(v.loaded && v.entries.contains_key("y/z"));
        kv.set_available(true);
        kv.delete("/t/b/y/z").await.unwrap();
        kv.put("/t/b/w", b"4".to_vec(), None).await.unwrap();
        let v = wait_for(&mut rx, "reconnected", |v| {
            v.connected && v.entries.contains_key("w")
        })
        .await;
        assert!(!v.entries.contains_key("y/z"));
        assert!(v.resyncs >= 2);
        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn compaction_triggers_a_clean_resync() {
        let kv = MemoryKv::new();
        kv.put("/t/a", b"0".to_vec(), None).await.unwrap();
        let cancel = CancellationToken::new();
        let (mut rx, _task) = follow_map(kv.clone(), "/t/".into(), cancel.clone());
        wait_for(&mut rx, "load", |v| v.loaded).await;
        // Lag past the store's broadcast buffer: the follower must list again.
        for i in 0..6000 {
            kv.put("/t/a", i.to_string().into_bytes(), None)
                .await
                .unwrap();
        }
        kv.put("/t/z", b"z".to_vec(), None).await.unwrap();
        let v = wait_for(&mut rx, "z after lag", |v| v.entries.contains_key("z")).await;
        assert_eq!(&**v.get("a").unwrap(), b"5999");
        cancel.cancel();
    }

    #[tokio::test]
    async fn keys_beyond_the_bound_are_counted_not_kept() {
        let kv = MemoryKv::new();
        for k in ["a", "b", "c"] {
            kv.put(&format!("/t/{k}"), b"v".to_vec(), None)
                .await
                .unwrap();
        }
        let cancel = CancellationToken::new();
        let (mut rx, _task) = follow_map_with(
            kv.clone(),
            "/t/".into(),
            MapOptions { max_keys: 2 },
            cancel.clone(),
        );
        let v = wait_for(&mut rx, "load", |v| v.loaded).await;
        assert_eq!(v.entries.len(), 2);
        assert!(v.truncated);
        assert_eq!(v.refused_total, 1);

        // A new key is refused while full; a kept key still takes updates.
        kv.put("/t/d", b"v".to_vec(), None).await.unwrap();
        let v = wait_for(&mut rx, "d refused", |v| v.refused_total == 2).await;
        assert!(!v.entries.contains_key("d"));
        kv.put("/t/a", b"new".to_vec(), None).await.unwrap();
        let v = wait_for(&mut rx, "a updated", |v| {
            v.get("a").map(|x| &**x) == Some(&b"new"[..])
        })
        .await;
        assert_eq!(v.entries.len(), 2);

        // Room again: the next put of a new key is kept.
        kv.delete("/t/a").await.unwrap();
        kv.put("/t/e", b"v".to_vec(), None).await.unwrap();
        let v = wait_for(&mut rx, "e kept", |v| v.entries.contains_key("e")).await;
        assert_eq!(v.entries.len(), 2);
        cancel.cancel();
    }
}
