//! Follows the node prefix of a store and publishes immutable snapshots.
//!
//! The loop is the classic list-then-watch: list `P/nodes/` at revision R, watch from
//! R+1, apply each batch, publish. Any watch error — compaction, cancellation, a lost
//! connection — marks the view disconnected (the last nodes stay, for serving stale)
//! and starts over with a fresh list after a jittered backoff, so a resync replaces
//! the whole set and never keeps a node the store has dropped.
//!
//! Each valid record is also judged against its node's binding (`P/bindings/{id}`,
//! followed from the same store through [`crate::follow_map`]): a record claiming
//! outside it is invalid, listed with the reason like any other invalid value. A
//! change of binding judges that node's last record again at once, so relaxing a
//! binding re-admits a rejected node without waiting for its next report.
//!
//! The view's maps are persistent (`imbl::OrdMap`): publishing a view after each batch
//! shares every unchanged node with the previous one instead of copying the fleet, and
//! a reader finds what changed between two views by walking only the changed parts
//! (`OrdMap::diff`).

use std::collections::{HashMap, HashSet};

use imbl::OrdMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::binding::{self, Binding};
use crate::follow_map::{apply_ready, follow_map, MapView};
use crate::keys::Layout;
use crate::kv::{KeyValue, Kv, KvError};
use crate::record::NodeRecord;

/// One immutable view of the registry's nodes.
#[derive(Debug, Clone, Default)]
pub struct NodeView {
    /// Valid records by node id.
    pub nodes: OrdMap<Arc<str>, Arc<NodeRecord>>,
    /// Keys whose values are invalid, with the reason.
    pub invalid: OrdMap<Arc<str>, String>,
    /// The last record of each node the watch saw deleted (until it comes back), the
    /// most recent few thousand. A reader comparing two views learns from it how a
    /// node left: an agent that marks its record `draining` just before it revokes
    /// its lease has left as planned, even when both events fall between the views.
    pub departed: OrdMap<Arc<str>, Arc<NodeRecord>>,
    /// The store revision the view reflects.
    pub revision: i64,
    /// True once a full listing has been loaded.
    pub loaded: bool,
    /// True while the watch is live; false while the store cannot be reached.
    pub connected: bool,
    /// Invalid values seen since start (each distinct key+revision counted once).
    pub invalid_seen_total: u64,
    /// Full listings loaded since start (1 + resyncs).
    pub resyncs: u64,
}

/// How a follower judges records beyond the contract's own rules.
#[derive(Debug, Clone, Default)]
pub struct FollowOptions {
    /// A node without a binding is invalid (the router's `require_bindings`).
    pub require_bindings: bool,
}

/// Runs [`follow`]'s loop until `cancel` fires, with the default options (a node
/// without a binding is judged by the contract alone). Returns the receiver of views.
pub fn follow(
    kv: Arc<dyn Kv>,
    layout: Layout,
    cancel: CancellationToken,
) -> (watch::Receiver<Arc<NodeView>>, tokio::task::JoinHandle<()>) {
    follow_with(kv, layout, FollowOptions::default(), cancel)
}

/// [`follow`] with `options`.
pub fn follow_with(
    kv: Arc<dyn Kv>,
    layout: Layout,
    options: FollowOptions,
    cancel: CancellationToken,
) -> (watch::Receiver<Arc<NodeView>>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(Arc::new(NodeView::default()));
    let task = tokio::spawn(run(kv, layout, options, tx, cancel));
    (rx, task)
}

/// A node's binding as last parsed: the binding, or why its value does not parse.
type Parsed = Result<Arc<Binding>, String>;

struct Follower {
    layout: Layout,
    /// `P/nodes/`, computed once: every event needs it.
    nodes_prefix: String,
    view: NodeView,
    /// Keys already logged as invalid, so a bad value is logged once, not per resync.
    logged_invalid: HashSet<Arc<str>>,
    /// The departures in `view.departed`, oldest first, numbered; an id may leave
    /// again later, and only its last departure's number is in `departed_seq`.
    departed_order: std::collections::VecDeque<(u64, Arc<str>)>,
    departed_seq: std::collections::HashMap<Arc<str>, u64>,
    departures: u64,
    /// The most nodes seen at once: `departed` keeps at least that many.
    peak_nodes: usize,
    require_bindings: bool,
    /// The bindings as last seen (raw values by node id).
    bindings: Arc<MapView>,
    /// The bindings of `bindings`, parsed once per change rather than per report.
    parsed: HashMap<Arc<str>, Parsed>,
    /// The last well-formed record of each node its binding rejected: a change of the
    /// binding judges it again without waiting for the node's next report.
    rejected: HashMap<Arc<str>, Arc<NodeRecord>>,
}

/// The fewest departures [`NodeView::departed`] remembers.
const DEPARTED_KEPT: usize = 4096;

impl crate::follow_map::Applies for Follower {
    fn apply_put(&mut self, kv: &KeyValue) {
        Follower::apply_put(self, kv);
    }
    fn apply_delete(&mut self, key: &str) {
        Follower::apply_delete(self, key);
    }
    fn revision(&mut self) -> &mut i64 {
        &mut self.view.revision
    }
}

impl Follower {
    /// The id part of a key (the whole key when it is not below the prefix).
    fn id_of<'a>(&self, key: &'a str) -> &'a str {
        key.strip_prefix(self.nodes_prefix.as_str()).unwrap_or(key)
    }

    fn apply_put(&mut self, kv: &KeyValue) {
        let key = kv.key.as_str();
        let parsed = self
            .layout
            .node_id(key)
            .and_then(|id| NodeRecord::parse(id, &kv.value).map(|r| (id, r)));
        match parsed {
            Ok((id, record)) => {
                let id: Arc<str> = Arc::from(id);
                let record = Arc::new(record);
                if let Err(reason) = self.judge(&id, &record) {
                    self.reject(id, record, reason, key, kv.mod_revision);
                    return;
                }
                self.rejected.remove(&id);
                self.admit(id, record);
            }
            Err(e) => {
                let id: Arc<str> = Arc::from(self.id_of(key));
                self.rejected.remove(&id);
                self.view.nodes.remove(&id);
                self.view.invalid_seen_total += 1;
                if self.logged_invalid.insert(id.clone()) {
                    warn!(key = %key, revision = kv.mod_revision, error = %e, "invalid node record skipped");
                }
                self.view.invalid.insert(id, e.to_string());
            }
        }
    }

    /// Puts a valid record, inside its binding, into the view.
    fn admit(&mut self, id: Arc<str>, record: Arc<NodeRecord>) {
        self.view.invalid.remove(&id);
        self.logged_invalid.remove(&id);
        if self.view.departed.remove(&id).is_some() {
            self.departed_seq.remove(&id);
        }
        self.view.nodes.insert(id, record);
        self.peak_nodes = self.peak_nodes.max(self.view.nodes.len());
    }

    /// Marks a well-formed record invalid because of its binding, keeping it to judge
    /// again when the binding changes.
    fn reject(
        &mut self,
        id: Arc<str>,
        record: Arc<NodeRecord>,
        reason: String,
        key: &str,
        revision: i64,
    ) {
        self.view.nodes.remove(&id);
        self.view.invalid_seen_total += 1;
        if self.logged_invalid.insert(id.clone()) {
            warn!(key = %key, revision, error = %reason, "node record outside its binding skipped");
        }
        self.view.invalid.insert(id.clone(), reason);
        self.rejected.insert(id, record);
    }

    /// Whether `record` is inside its node's binding; the reason it is not.
    fn judge(&self, id: &str, record: &NodeRecord) -> Result<(), String> {
        match self.parsed.get(id) {
            None if self.require_bindings => Err(binding::UNBOUND_REFUSAL.to_string()),
            None => Ok(()),
            Some(Err(e)) => Err(binding::broken_refusal(&self.layout.binding_key(id), e)),
            Some(Ok(b)) => b.check(record).map_err(|v| binding::refusal(&v)),
        }
    }

    /// Takes a new view of the bindings and judges again the nodes whose binding
    /// changed. True when the node view changed.
    fn set_bindings(&mut self, bindings: Arc<MapView>) -> bool {
        let old = std::mem::replace(&mut self.bindings, bindings);
        let changed: Vec<Arc<str>> = old
            .entries
            .diff(&self.bindings.entries)
            .map(|d| match d {
                imbl::ordmap::DiffItem::Add(k, _)
                | imbl::ordmap::DiffItem::Remove(k, _)
                | imbl::ordmap::DiffItem::Update { new: (k, _), .. } => k.clone(),
            })
            .collect();
        let mut view_changed = false;
        for id in changed {
            match self.bindings.get(&id) {
                Some(raw) => {
                    let parsed = Binding::parse(raw).map(Arc::new).map_err(|e| e.to_string());
                    if let Err(e) = &parsed {
                        warn!(key = %self.layout.binding_key(&id), error = %e, "binding does not parse; its node's records are refused");
                    }
                    self.parsed.insert(id.clone(), parsed);
                }
                None => {
                    self.parsed.remove(&id);
                }
            }
            view_changed |= self.rejudge(&id);
        }
        view_changed
    }

    /// Judges a node's last record again after its binding changed. True when the
    /// view changed.
    fn rejudge(&mut self, id: &Arc<str>) -> bool {
        let key = self.layout.node_key(id);
        if let Some(record) = self.view.nodes.get(id).cloned() {
            if let Err(reason) = self.judge(id, &record) {
                self.reject(id.clone(), record, reason, &key, self.view.revision);
                return true;
            }
            return false;
        }
        let Some(record) = self.rejected.get(id).cloned() else {
            return false;
        };
        match self.judge(id, &record) {
            Ok(()) => {
                info!(key = %key, "node record inside its binding again; admitted");
                self.rejected.remove(id);
                self.admit(id.clone(), record);
                true
            }
            Err(reason) => {
                // Still outside, perhaps for another reason: the listing says which.
                if self.view.invalid.get(id) != Some(&reason) {
                    self.view.invalid.insert(id.clone(), reason);
                    return true;
                }
                false
            }
        }
    }

    fn apply_delete(&mut self, key: &str) {
        let id = self.id_of(key);
        if let Some((id, last)) = self.view.nodes.remove_with_key(id) {
            self.departures += 1;
            self.view.departed.insert(id.clone(), last);
            self.departed_seq.insert(id.clone(), self.departures);
            self.departed_order.push_back((self.departures, id));
            while self.departed_order.len() > DEPARTED_KEPT.max(self.peak_nodes) {
                let Some((seq, old)) = self.departed_order.pop_front() else {
                    break;
                };
                // Only an id's last departure forgets it.
                if self.departed_seq.get(&old) == Some(&seq) {
                    self.departed_seq.remove(&old);
                    self.view.departed.remove(&old);
                }
            }
        }
        self.view.invalid.remove(id);
        self.logged_invalid.remove(id);
        self.rejected.remove(id);
    }

    fn load(&mut self, kvs: &[KeyValue], revision: i64) {
        self.view.nodes.clear();
        self.view.invalid.clear();
        // A listing says nothing of how nodes left: forget what the watch saw.
        self.view.departed.clear();
        self.departed_order.clear();
        self.departed_seq.clear();
        self.rejected.clear();
        let before: HashSet<Arc<str>> = std::mem::take(&mut self.logged_invalid);
        for kv in kvs {
            let id = self.id_of(&kv.key);
            // Keep the "already logged" mark across resyncs for values still invalid.
            if let Some(k) = before.get(id) {
                self.logged_invalid.insert(k.clone());
            }
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
        }
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

#[cfg(test)]
mod tests {
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
}
