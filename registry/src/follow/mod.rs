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

mod apply;
mod sync;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};

use imbl::OrdMap;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::binding::{Binding, BindingError};
use crate::follow_map::MapView;
use crate::keys::Layout;
use crate::kv::Kv;
use crate::record::NodeRecord;
use sync::run;

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

/// How a follower judges records beyond the contract's own rules, and what tells it
/// the store is back.
#[derive(Debug, Clone, Default)]
pub struct FollowOptions {
    /// A node without a binding is invalid (the router's `require_bindings`).
    pub require_bindings: bool,
    /// Notified when the store has just taken a write of its owner's (a router's
    /// heartbeat): a follower waiting out its backoff after a failure tries again at
    /// once. Without it, a follower that failed through a long election (every retry
    /// refused, the backoff grown to 2 s) would see the store's first leader only at
    /// its next retry, up to 2.4 s later, and a drain written meanwhile with it.
    pub wake: Option<Arc<tokio::sync::Notify>>,
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
type Parsed = Result<Arc<Binding>, BindingError>;

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
