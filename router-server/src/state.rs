//! Shared router state and the task that turns registry views into snapshots.
//!
//! Request handlers read the current [`Snapshot`] through an `ArcSwapOption`: one
//! atomic load, no lock. The updater is the only writer. It applies the **protect
//! threshold**: when a view would remove more than `protect_threshold` of the live
//! nodes at once (a lost etcd session, a mass lease expiry), it keeps serving the
//! previous membership with `stale: true` and an alarm, until the registry recovers
//! or `protect_max_secs` pass.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use registry::follow::NodeView;
use registry::imbl;
use registry::{HookState, NodeRecord, NodeState};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::FileConfig;
use crate::metrics::{Metrics, NodeLabels};
use crate::schedule::Snapshot;

/// What every handler shares.
pub struct AppState {
    /// The served snapshot; `None` until the first full load. In an `Arc` so that
    /// request threads can keep a cache of it (see `http::gateways`).
    pub snapshot: Arc<ArcSwapOption<Snapshot>>,
    /// The validated configuration.
    pub config: FileConfig,
    /// Metrics.
    pub metrics: Metrics,
    /// When the snapshot last followed the registry (for the age metric).
    pub last_sync: std::sync::Mutex<Option<Instant>>,
    /// The constant part of every answer, serialized once (see [`crate::answer::answer_tail`]).
    pub answer_tail: String,
    /// Live routers sharing the registry (this one included), from `P/routers/`.
    pub routers: std::sync::atomic::AtomicU64,
    /// This router's order among equally loaded nodes (see `Snapshot::build_seeded`).
    pub tie_seed: u64,
    /// The registry's invalid keys with their reasons, as of the last view (for the
    /// fleet page).
    pub invalid: std::sync::Mutex<imbl::OrdMap<Arc<str>, String>>,
    /// True while the protect threshold holds departed nodes.
    pub protecting: std::sync::atomic::AtomicBool,
    /// `P/nodes/`, to name invalid records by their keys.
    pub nodes_prefix: String,
}

impl AppState {
    /// Fresh state with no snapshot.
    pub fn new(config: FileConfig) -> AppState {
        AppState {
            answer_tail: crate::answer::answer_tail(&config),
            snapshot: Arc::new(ArcSwapOption::empty()),
            config,
            metrics: Metrics::default(),
            last_sync: std::sync::Mutex::new(None),
            routers: std::sync::atomic::AtomicU64::new(1),
            tie_seed: rand::random::<u64>() | 1,
            invalid: std::sync::Mutex::new(imbl::OrdMap::new()),
            protecting: std::sync::atomic::AtomicBool::new(false),
            nodes_prefix: registry::Layout::default().nodes_prefix(),
        }
    }

    /// The same state for a registry under `layout`'s prefix.
    pub fn with_layout(self, layout: &registry::Layout) -> AppState {
        AppState {
            nodes_prefix: layout.nodes_prefix(),
            ..self
        }
    }

    /// The herd counts as a request sees them now.
    pub fn herd_view(&self) -> crate::herd::HerdView {
        crate::herd::HerdView::now(
            self.config.herd_window_secs * 1000,
            self.routers.load(std::sync::atomic::Ordering::Relaxed),
        )
    }
}

/// The protect threshold's memory.
///
/// An etcd session loss or a mass lease expiry does not arrive as one update: leases
/// expire one by one over a second or two, and a watch delivers them in several
/// batches. Judging each batch against the set accepted just before lets every batch
/// slip under the threshold. So removals are judged over a **window** (at least twice
/// the agents' lease TTL): the nodes that left without being drained during the window
/// ("unplanned departures") against the highest live count seen during it. A node that
/// was `draining` when it left is a planned departure (drain, then stop) and does not
/// count, so a fast planned scale-in never trips the alarm. A node that comes back is
/// no longer missing.
#[derive(Debug)]
pub struct Protect {
    threshold: f64,
    max_hold: Duration,
    min_nodes: usize,
    window: Duration,
    holding_since: Option<Instant>,
    /// Live-count samples, oldest first; the first one may predate the window (it is
    /// the count in force when the window began).
    samples: VecDeque<(Instant, usize)>,
    /// Unplanned departures in the window: when each left, and its last record (served
    /// again while holding).
    departed: HashMap<Arc<str>, (Instant, Arc<NodeRecord>)>,
}

/// What to do with a registry view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Follow the registry.
    Follow,
    /// Keep serving the nodes that left, beside the registry's.
    Hold,
}

impl Protect {
    /// From the configuration.
    pub fn new(cfg: &FileConfig) -> Protect {
        Protect {
            threshold: cfg.protect_threshold,
            max_hold: Duration::from_secs(cfg.protect_max_secs),
            min_nodes: cfg.protect_min_nodes,
            window: Duration::from_secs(cfg.protect_window_secs),
            holding_since: None,
            samples: VecDeque::new(),
            departed: HashMap::new(),
        }
    }

    /// When a hold ends by itself, if one is active.
    pub fn deadline(&self) -> Option<Instant> {
        self.holding_since.map(|t| t + self.max_hold)
    }

    /// True while holding.
    pub fn holding(&self) -> bool {
        self.holding_since.is_some()
    }

    /// The last records of the nodes missing without a drain (served while holding).
    pub fn missing(&self) -> impl Iterator<Item = &Arc<NodeRecord>> {
        self.departed.values().map(|(_, r)| r)
    }

    /// The highest live count in the window.
    pub fn peak(&self) -> usize {
        self.samples.iter().map(|(_, n)| *n).max().unwrap_or(0)
    }

    /// Takes an update: `left` are the records of nodes gone since the previous view,
    /// `arrived` the ids of nodes new in it, `live` the count now. Returns the verdict.
    pub fn update<'a>(
        &mut self,
        now: Instant,
        live: usize,
        left: impl IntoIterator<Item = &'a Arc<NodeRecord>>,
        arrived: impl IntoIterator<Item = &'a str>,
    ) -> Verdict {
        for r in left {
            if r.state != NodeState::Draining {
                self.departed
                    .insert(Arc::from(r.id.as_str()), (now, r.clone()));
            }
        }
        for id in arrived {
            self.departed.remove(id);
        }
        self.samples.push_back((now, live));
        self.judge(now)
    }

    /// Judges the state as of `now` (also called when a hold's time is up).
    pub fn judge(&mut self, now: Instant) -> Verdict {
        let window_start = now.checked_sub(self.window);
        while self.samples.len() > 1 && window_start.is_some_and(|ws| self.samples[1].0 <= ws) {
            self.samples.pop_front();
        }
        if !self.holding() {
            // While holding, departures stay counted until they return or time is up.
            if let Some(ws) = window_start {
                self.departed.retain(|_, (at, _)| *at > ws);
            }
        }
        let peak = self.peak();
        let missing = self.departed.len();
        let mass_loss =
            peak >= self.min_nodes.max(1) && missing as f64 > self.threshold * peak as f64;
        match (mass_loss, self.holding_since) {
            (false, None) => Verdict::Follow,
            (false, Some(_)) => {
                info!(
                    missing,
                    peak, "registry recovered, protect threshold released"
                );
                self.holding_since = None;
                Verdict::Follow
            }
            (true, None) => {
                error!(peak, missing, threshold = self.threshold, window_secs = self.window.as_secs(),
                       "ALARM: more than the protect threshold of live nodes left without a drain; serving them still");
                self.holding_since = Some(now);
                Verdict::Hold
            }
            (true, Some(since)) if now.duration_since(since) >= self.max_hold => {
                error!(
                    peak,
                    missing,
                    held_secs = self.max_hold.as_secs(),
                    "ALARM: protect threshold held for its maximum; following the registry"
                );
                self.holding_since = None;
                // The registry's set is the truth now: start counting afresh from it.
                self.departed.clear();
                let live = self.samples.back().map(|(_, n)| *n).unwrap_or(0);
                self.samples.clear();
                self.samples.push_back((now, live));
                Verdict::Follow
            }
            (true, Some(_)) => Verdict::Hold,
        }
    }
}

/// Follows `views` until `cancel`, storing each resulting snapshot in `state`.
///
/// The membership pipeline: the follower applies watch batches to a persistent map
/// and publishes each view (sharing everything unchanged); this loop takes the latest
/// view, finds what left and arrived by diffing only the changed parts, judges it
/// (protect threshold), and builds the next snapshot, at most once per
/// `snapshot_min_interval_ms`: a burst of reports costs one build, and a lone report is
/// visible at once. Run it on its own thread ([`spawn_updater`]): a build over a large
/// fleet takes milliseconds that request threads should not lose.
pub async fn run_updater(
    state: Arc<AppState>,
    mut views: watch::Receiver<Arc<NodeView>>,
    cancel: CancellationToken,
) {
    let mut protect = Protect::new(&state.config);
    // The last view judged, to see who left and who arrived since.
    let mut previous: Option<Arc<NodeView>> = None;
    let mut seen_invalid = 0u64;
    let min_interval = Duration::from_millis(state.config.snapshot_min_interval_ms);
    let mut last_build: Option<Instant> = None;
    // True when the served snapshot is the registry's view `previous` exactly (not a
    // protect hold): the next view's reports can then patch it.
    let mut patchable = false;
    let mut counts = NodeCounts::default();
    loop {
        let deadline = protect.deadline();
        let timed_out = tokio::select! {
            _ = cancel.cancelled() => return,
            r = views.changed() => { if r.is_err() { return } false }
            _ = sleep_until_opt(deadline) => true,
        };
        // When the reports arrived: their sample ages count back from here. (What
        // arrives during the wait below is placed a little early, which counts a few
        // answers twice rather than none.)
        let received = registry::now_ms();
        // Coalesce: wait out the rest of the interval; whatever arrives meanwhile is
        // folded into this build.
        if let Some(t) = last_build {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(t + min_interval) => {}
            }
        }
        let view = views.borrow_and_update().clone();
        if !view.loaded {
            continue;
        }
        let now = Instant::now();
        let cpu_start = std::time::Instant::now();
        let mut updated: Vec<(Arc<NodeRecord>, Arc<NodeRecord>)> = Vec::new();
        let mut membership_changed = previous.is_none();
        let verdict = match (&previous, timed_out) {
            (Some(prev), false) if !Arc::ptr_eq(prev, &view) => {
                let mut left = Vec::new();
                let mut arrived = Vec::new();
                for d in prev.nodes.diff(&view.nodes) {
                    match d {
                        // How it left: its last record the watch saw (a `draining`
                        // mark just before the lease's revocation may fall between
                        // the two views), else its record in the previous view.
                        imbl::ordmap::DiffItem::Remove(id, r) => {
                            left.push(view.departed.get(id).unwrap_or(r).clone())
                        }
                        imbl::ordmap::DiffItem::Add(id, _) => arrived.push(id.clone()),
                        imbl::ordmap::DiffItem::Update { old, new } => {
                            updated.push((old.1.clone(), new.1.clone()))
                        }
                    }
                }
                membership_changed = !left.is_empty() || !arrived.is_empty();
                protect.update(now, view.nodes.len(), &left, arrived.iter().map(|a| &**a))
            }
            (None, _) => protect.update(now, view.nodes.len(), [], []),
            _ => protect.judge(now),
        };
        previous = Some(view.clone());
        let stale = !view.connected || protect.holding();
        let previous_snap = state.snapshot.load_full();
        // Reports of known nodes (the steady state of a fleet) patch the served
        // snapshot; arrivals, departures and protect holds rebuild it.
        let patched = match (&previous_snap, verdict) {
            (Some(prev), Verdict::Follow) if patchable && !membership_changed => prev
                .patch_at(
                    updated.iter().map(|(_, new)| new),
                    view.revision,
                    stale,
                    received,
                )
                .inspect(|_| {
                    for (old, new) in &updated {
                        counts.replace(old, new);
                    }
                }),
            _ => None,
        };
        let snap = patched.unwrap_or_else(|| {
            // While holding, the nodes that left without a drain are served too, after
            // every live one.
            let held: Vec<Arc<NodeRecord>> = match verdict {
                Verdict::Follow => Vec::new(),
                Verdict::Hold => protect.missing().cloned().collect(),
            };
            let snap = Snapshot::build_holding(
                view.nodes.values().cloned(),
                held,
                previous_snap.as_deref(),
                view.revision,
                stale,
                state.tie_seed,
                received,
            );
            counts = NodeCounts::of(snap.nodes.iter().map(|e| &*e.record));
            snap
        });
        patchable = verdict == Verdict::Follow;
        let m = &state.metrics;
        // The answers change first, then what the metrics say about them: a scrape that
        // sees the alarm (or a new revision) is never followed by an older answer.
        drop(state.snapshot.swap(Some(Arc::new(snap))));
        if counts.take_changed() {
            m.replace_node_counts(counts.labelled(), &counts.region_loads());
            m.set_hook_counts(&counts.hook_counts());
        }
        m.invalid_records.set(view.invalid.len() as i64);
        *state.invalid.lock().expect("invalid lock") = view.invalid.clone();
        state
            .protecting
            .store(protect.holding(), std::sync::atomic::Ordering::Relaxed);
        m.invalid_seen
            .inc_by(view.invalid_seen_total.saturating_sub(seen_invalid));
        seen_invalid = view.invalid_seen_total;
        m.revision.set(view.revision);
        m.registry_connected.set(view.connected as i64);
        if protect.holding() && m.protect_active.get() == 0 {
            m.protect_engaged.inc();
        }
        m.protect_active.set(protect.holding() as i64);
        if view.connected {
            *state.last_sync.lock().expect("last_sync lock") = Some(Instant::now());
        }
        drop(previous_snap);
        m.snapshot_builds.inc();
        m.snapshot_build_seconds
            .inc_by(cpu_start.elapsed().as_secs_f64());
        last_build = Some(Instant::now());
    }
}

/// Live nodes by region and state, as the `router_nodes` gauge shows them, kept up
/// to date by each report's change (a fleet's count is not recounted per report).
/// The gauge family is replaced whole, under the metrics lock, and only when a count
/// changed: a scrape never sees a half-filled family.
#[derive(Debug, Default)]
struct NodeCounts {
    /// Per region.
    counts: HashMap<Arc<str>, RegionCounts, foldhash::fast::RandomState>,
    /// Per hook state, in the order of [`HookState::ALL`].
    hooks: [i64; 5],
    changed: bool,
}

/// One region's counts.
#[derive(Debug, Default)]
struct RegionCounts {
    /// Nodes per class of [`NodeCounts::CLASSES`].
    nodes: [i64; 3],
    /// Connections and capacity of its serving, healthy nodes.
    connections: i64,
    capacity: i64,
}

impl NodeCounts {
    const CLASSES: [&'static str; 3] = ["serving", "draining", "unhealthy"];

    fn of<'a>(records: impl Iterator<Item = &'a NodeRecord>) -> NodeCounts {
        let mut c = NodeCounts {
            changed: true,
            ..NodeCounts::default()
        };
        for r in records {
            c.add(r, 1);
        }
        c
    }

    fn class(r: &NodeRecord) -> usize {
        if !r.healthy {
            2
        } else if r.state == NodeState::Draining {
            1
        } else {
            0
        }
    }

    fn add(&mut self, r: &NodeRecord, n: i64) {
        let region = match self.counts.get_mut(r.region.as_str()) {
            Some(c) => c,
            None => self.counts.entry(Arc::from(r.region.as_str())).or_default(),
        };
        region.nodes[NodeCounts::class(r)] += n;
        if NodeCounts::class(r) == 0 {
            region.connections += n * r.connections as i64;
            region.capacity += n * r.capacity as i64;
        }
        if let Some(h) = &r.hook {
            let i = HookState::ALL
                .iter()
                .position(|s| *s == h.state)
                .unwrap_or(0);
            self.hooks[i] += n;
        }
        self.changed = true;
    }

    fn replace(&mut self, old: &NodeRecord, new: &NodeRecord) {
        let hook = |r: &NodeRecord| r.hook.as_ref().map(|h| h.state);
        if old.region != new.region
            || NodeCounts::class(old) != NodeCounts::class(new)
            || hook(old) != hook(new)
            || old.capacity != new.capacity
        {
            self.add(old, -1);
            self.add(new, 1);
        } else if old.connections != new.connections && NodeCounts::class(new) == 0 {
            if let Some(region) = self.counts.get_mut(new.region.as_str()) {
                region.connections += new.connections as i64 - old.connections as i64;
                self.changed = true;
            }
        }
    }

    /// Per region: connections and capacity of its serving, healthy nodes.
    fn region_loads(&self) -> Vec<(String, i64, i64)> {
        self.counts
            .iter()
            .filter(|(_, c)| c.capacity > 0)
            .map(|(r, c)| (r.to_string(), c.connections, c.capacity))
            .collect()
    }

    fn hook_counts(&self) -> [(HookState, i64); 5] {
        std::array::from_fn(|i| (HookState::ALL[i], self.hooks[i]))
    }

    fn take_changed(&mut self) -> bool {
        self.counts.retain(|_, c| c.nodes.iter().any(|&n| n != 0));
        std::mem::take(&mut self.changed)
    }

    fn labelled(&self) -> HashMap<NodeLabels, i64> {
        let mut out = HashMap::new();
        for (region, counts) in &self.counts {
            for (class, &n) in NodeCounts::CLASSES.iter().zip(&counts.nodes) {
                if n != 0 {
                    let labels = NodeLabels {
                        region: region.to_string(),
                        state: class.to_string(),
                    };
                    out.insert(labels, n);
                }
            }
        }
        out
    }
}

/// Runs [`run_updater`] on a thread of its own (a single-threaded runtime on the
/// blocking pool), off the threads that answer requests; the returned future ends
/// when it does.
pub async fn spawn_updater(
    state: Arc<AppState>,
    views: watch::Receiver<Arc<NodeView>>,
    cancel: CancellationToken,
) {
    let handle = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a single-threaded runtime for the snapshot updater");
        rt.block_on(run_updater(state, views, cancel));
    });
    if let Err(e) = handle.await {
        tracing::error!(error = %e, "snapshot updater ended abnormally");
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use registry::Ports;

    fn node(id: &str, state: NodeState) -> Arc<NodeRecord> {
        let mut r = NodeRecord::new(
            id,
            "192.0.2.1".parse().unwrap(),
            Ports {
                tcp: Some(1),
                ws: None,
                wss: None,
            },
            "r",
            100,
            0,
        );
        r.state = state;
        Arc::new(r)
    }

    fn fleet(n: usize) -> Vec<Arc<NodeRecord>> {
        (0..n)
            .map(|i| node(&format!("n{i}"), NodeState::Serving))
            .collect()
    }

    fn protect(max_secs: u64, window_secs: u64) -> Protect {
        Protect::new(&FileConfig {
            protect_max_secs: max_secs,
            protect_window_secs: window_secs,
            ..FileConfig::default()
        })
    }

    const NONE: [&str; 0] = [];

    #[test]
    fn a_mass_loss_is_held_then_released_by_time_or_recovery() {
        let mut p = protect(60, 30);
        let t0 = Instant::now();
        let all = fleet(10);
        assert_eq!(p.update(t0, 10, [], NONE), Verdict::Follow);
        assert_eq!(
            p.update(t0, 5, &all[..5], NONE),
            Verdict::Follow,
            "exactly half"
        );
        assert_eq!(p.update(t0, 4, &all[5..6], NONE), Verdict::Hold);
        assert_eq!(p.missing().count(), 6);
        assert_eq!(p.judge(t0 + Duration::from_secs(30)), Verdict::Hold);
        assert_eq!(
            p.judge(t0 + Duration::from_secs(60)),
            Verdict::Follow,
            "bounded"
        );
        assert!(!p.holding());
        assert_eq!(
            p.missing().count(),
            0,
            "the registry's set is the truth now"
        );
        // Recovery: 4 live, 3 leave (held), 2 come back.
        let t1 = t0 + Duration::from_secs(61);
        assert_eq!(p.update(t1, 1, &all[6..9], NONE), Verdict::Hold);
        assert_eq!(p.update(t1, 3, [], ["n6", "n7"]), Verdict::Follow);
    }

    #[test]
    fn staggered_departures_are_judged_together_within_the_window() {
        let mut p = protect(300, 6);
        let t0 = Instant::now();
        let all = fleet(10);
        p.update(t0, 10, [], NONE);
        // One node every 400 ms: each alone is small.
        let mut verdicts = Vec::new();
        for i in 0..8 {
            let t = t0 + Duration::from_millis(400 * (i as u64 + 1));
            verdicts.push(p.update(t, 9 - i, &all[i..i + 1], NONE));
        }
        assert_eq!(&verdicts[..5], &[Verdict::Follow; 5]);
        assert_eq!(verdicts[5], Verdict::Hold, "the sixth of ten");
        assert_eq!(p.missing().count(), 8);
        // Far apart (beyond the window), the same departures are ordinary churn.
        let mut q = protect(300, 6);
        q.update(t0, 10, [], NONE);
        for i in 0..8 {
            let t = t0 + Duration::from_secs(7 * (i as u64 + 1));
            assert_eq!(
                q.update(t, 9 - i, &all[i..i + 1], NONE),
                Verdict::Follow,
                "{i}"
            );
        }
    }

    #[test]
    fn drained_nodes_leaving_are_planned() {
        let mut p = protect(300, 30);
        let t0 = Instant::now();
        p.update(t0, 10, [], NONE);
        let drained: Vec<_> = (0..8)
            .map(|i| node(&format!("n{i}"), NodeState::Draining))
            .collect();
        assert_eq!(p.update(t0, 2, &drained, NONE), Verdict::Follow);
        assert_eq!(p.missing().count(), 0);
    }

    #[test]
    fn small_fleets_are_not_protected() {
        let mut p = protect(300, 30);
        let t0 = Instant::now();
        let all = fleet(1);
        p.update(t0, 1, [], NONE);
        assert_eq!(p.update(t0, 0, &all, NONE), Verdict::Follow);
    }

    proptest! {
        /// The same removal, delivered in k batches within the window, gets the same
        /// verdict as in one batch.
        #[test]
        fn a_removal_split_into_batches_is_judged_as_one(
            n in 2usize..60, removed_frac in 0.0f64..1.0, k in 1usize..10, gap_ms in 0u64..500,
        ) {
            let all = fleet(n);
            let removed = ((n as f64) * removed_frac) as usize;
            let t0 = Instant::now();
            let mut once = protect(300, 20);
            once.update(t0, n, [], NONE);
            let want = once.update(t0, n - removed, &all[..removed], NONE);
            let mut split = protect(300, 20);
            split.update(t0, n, [], NONE);
            let mut live = n;
            let mut last = Verdict::Follow;
            let per = removed.div_ceil(k).max(1);
            for (b, chunk) in all[..removed].chunks(per).enumerate() {
                live -= chunk.len();
                let t = t0 + Duration::from_millis(gap_ms * (b as u64 + 1));
                last = split.update(t, live, chunk, NONE);
            }
            prop_assert_eq!(last, want);
            prop_assert_eq!(want == Verdict::Hold, removed as f64 > 0.5 * n as f64);
        }
    }
}
