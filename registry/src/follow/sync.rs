//! The list + watch + resync loop: lists the node prefix, watches from the next
//! revision, publishes a view after each change and starts over after any failure.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{FollowOptions, Follower, NodeView};
use crate::backoff::Backoff;
use crate::follow_map::{apply_ready, follow_map, MapView};
use crate::keys::Layout;
use crate::kv::{Kv, KvError};

pub(super) async fn run(
    kv: Arc<dyn Kv>,
    layout: Layout,
    options: FollowOptions,
    tx: watch::Sender<Arc<NodeView>>,
    cancel: CancellationToken,
) {
    let prefix = layout.nodes_prefix();
    // The bindings live in the same store; their follower stops with this one.
    let bindings_cancel = cancel.child_token();
    let _stop_bindings = bindings_cancel.clone().drop_guard();
    let (mut bindings, _bindings_task) =
        follow_map(kv.clone(), layout.bindings_prefix(), bindings_cancel);
    let mut f = Follower {
        require_bindings: options.require_bindings,
        bindings: Arc::new(MapView::default()),
        parsed: HashMap::new(),
        rejected: HashMap::new(),
        layout,
        nodes_prefix: prefix.clone(),
        view: NodeView::default(),
        logged_invalid: HashSet::new(),
        departed_order: Default::default(),
        departed_seq: Default::default(),
        departures: 0,
        peak_nodes: 0,
    };
    // Retries at most 2 s apart (about 2.4 s with jitter): a router is current again
    // within a few seconds of its registry coming back (after a partition heals), and
    // a failed attempt costs one connection attempt.
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2), 2.0, 0.2);
    // Since when the registry has been out of reach, for the "reconnected" line.
    let mut lost_at: Option<tokio::time::Instant> = None;
    loop {
        let err = tokio::select! {
            _ = cancel.cancelled() => return,
            err = sync_once(&*kv, &prefix, &mut f, &tx, &mut backoff, &mut lost_at, &mut bindings) => err,
        };
        if f.view.connected {
            f.view.connected = false;
            lost_at.get_or_insert_with(tokio::time::Instant::now);
            tx.send_replace(Arc::new(f.view.clone()));
        }
        let delay = backoff.next_delay();
        match err {
            KvError::Compacted { .. } | KvError::WatchCancelled(_) => {
                info!(error = %err, "registry watch ended, resyncing");
            }
            // etcd answered, and said no (permission, a bad request): not an outage.
            KvError::Rejected(_) => {
                warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "registry refused the request")
            }
            _ => {
                warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "registry unreachable")
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
            _ = woken(options.wake.as_deref()) => {}
        }
    }
}

/// Returns when `wake` is notified; never without one.
async fn woken(wake: Option<&tokio::sync::Notify>) {
    match wake {
        Some(w) => w.notified().await,
        None => std::future::pending().await,
    }
}

/// Lists, then watches until the watch fails; returns why it stopped.
async fn sync_once(
    kv: &dyn Kv,
    prefix: &str,
    f: &mut Follower,
    tx: &watch::Sender<Arc<NodeView>>,
    backoff: &mut Backoff,
    lost_at: &mut Option<tokio::time::Instant>,
    bindings: &mut watch::Receiver<Arc<MapView>>,
) -> KvError {
    // No record is judged before the bindings are known: a router starting up must
    // not answer a record its binding forbids, even for a moment.
    if bindings.wait_for(|b| b.loaded).await.is_err() {
        return KvError::Unavailable("bindings follower stopped".into());
    }
    let listing = match kv.list(prefix).await {
        Ok(l) => l,
        Err(e) => return e,
    };
    let mut stream = match kv.watch(prefix, listing.revision + 1).await {
        Ok(s) => s,
        Err(e) => return e,
    };
    let first = f.view.resyncs == 0;
    let latest = bindings.borrow_and_update().clone();
    f.set_bindings(latest);
    f.load(&listing.kvs, listing.revision);
    let (nodes, invalid, revision) = (f.view.nodes.len(), f.view.invalid.len(), listing.revision);
    match lost_at.take() {
        _ if first => info!(
            nodes,
            invalid, revision, "loaded {nodes} nodes at revision {revision}"
        ),
        Some(t) => info!(
            nodes,
            revision,
            after_secs = format_args!("{:.1}", t.elapsed().as_secs_f64()),
            "registry reconnected after {:.1} s; {nodes} nodes at revision {revision}",
            t.elapsed().as_secs_f64()
        ),
        None => info!(
            nodes,
            revision, "registry listed again; {nodes} nodes at revision {revision}"
        ),
    }
    tx.send_replace(Arc::new(f.view.clone()));
    backoff.reset();
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            r = bindings.changed() => {
                if r.is_err() {
                    return KvError::Unavailable("bindings follower stopped".into());
                }
                let latest = bindings.borrow_and_update().clone();
                if f.set_bindings(latest) {
                    tx.send_replace(Arc::new(f.view.clone()));
                }
                continue;
            }
        };
        let Some(first) = next else {
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
