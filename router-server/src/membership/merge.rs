//! The updater: every registry's views in, one snapshot out.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use registry::follow::NodeView;
use registry::imbl;
use registry::NodeRecord;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::counts::NodeCounts;
use super::protect::{Protect, Verdict};
use super::RegistryStatus;
use crate::schedule::{Arrival, Snapshot};
use crate::state::AppState;

/// Invalid records (or duplicate ids) by key, with the reason.
type Invalid = imbl::OrdMap<Arc<str>, String>;

/// One registry's views, as the updater takes them.
pub struct Input {
    /// The registry's (DC's) name.
    pub name: Arc<str>,
    /// This router's own DC.
    pub local: bool,
    /// `P/nodes/` of this registry, to name its invalid records.
    pub nodes_prefix: String,
    /// The follower's views.
    pub views: watch::Receiver<Arc<NodeView>>,
    /// How far behind etcd the views are (see [`crate::lag`]): reports are placed at
    /// the moment etcd had them. `None`: not measured, taken as none.
    pub lag: Option<Arc<crate::lag::Lag>>,
}

/// One registry's state in the updater: its last view, its protect threshold, and how
/// long it has been out of reach.
struct Member {
    input: Input,
    protect: Protect,
    previous: Option<Arc<NodeView>>,
    verdict: Verdict,
    /// Since when the registry cannot be reached (its follower says so).
    unreachable_since: Option<Instant>,
    seen_invalid: u64,
    /// Demoted (out of reach for `registry_stale_secs`) as of the served snapshot.
    demoted: bool,
    /// Dropped (out of reach for `protect_max_secs`) as of the served snapshot.
    dropped: bool,
}

impl Member {
    fn demote_at(&self, stale: Duration) -> Option<Instant> {
        (!self.input.local).then_some(self.unreachable_since? + stale)
    }

    fn drop_at(&self, max: Duration) -> Option<Instant> {
        (!self.input.local).then_some(self.unreachable_since? + max)
    }
}

/// `r` as served: tagged with the DC that holds it.
fn tagged(r: &Arc<NodeRecord>, dc: &Arc<str>) -> Arc<NodeRecord> {
    if r.dc.as_ref() == Some(dc) {
        return r.clone();
    }
    let mut t = (**r).clone();
    t.dc = Some(dc.clone());
    Arc::new(t)
}

/// Follows every registry's views until `cancel`, storing each resulting snapshot in
/// `state`.
///
/// For each registry: its follower applies watch batches to a persistent map and
/// publishes each view (sharing everything unchanged); this loop takes the latest view,
/// finds what left and arrived by diffing only the changed parts, and judges it with
/// that registry's own protect threshold. Then the registries are merged:
///
/// * a node id is served from the first registry (in configured order) that has it;
///   the same id in another one is reported as an invalid record naming both;
/// * a registry out of reach for `registry_stale_secs` (not the router's own) has its
///   nodes **demoted**: offered only after every node of a live registry, in answers
///   marked stale; after `protect_max_secs` they are dropped;
/// * nodes a protect threshold holds are offered after every live node the same way.
///
/// Reports of known nodes (the steady state of a fleet) patch the served snapshot, one
/// node each; arrivals, departures, holds and demotions rebuild it, at most once per
/// `snapshot_min_interval_ms`: a burst of reports costs one build, and a lone report is
/// visible at once. Run it on its own thread ([`spawn_updater`]): a build over a large
/// fleet takes milliseconds that request threads should not lose.
pub async fn run_updater(state: Arc<AppState>, inputs: Vec<Input>, cancel: CancellationToken) {
    let cfg = &state.config;
    let stale_after = Duration::from_secs(cfg.registry_stale_secs);
    let max_hold = Duration::from_secs(cfg.protect_max_secs);
    let min_interval = Duration::from_millis(cfg.snapshot_min_interval_ms);
    let several = inputs.len() > 1;
    let mut members: Vec<Member> = inputs
        .into_iter()
        .map(|input| Member {
            input,
            protect: Protect::new(cfg),
            previous: None,
            verdict: Verdict::Follow,
            unreachable_since: None,
            seen_invalid: 0,
            demoted: false,
            dropped: false,
        })
        .collect();
    if members.is_empty() {
        error!("no registry to follow");
        return;
    }
    let local = members.iter().position(|m| m.input.local).unwrap_or(0);
    let mut last_build: Option<Instant> = None;
    // True when the served snapshot is the registries' views exactly (no hold, no
    // demotion change): the next reports can patch it.
    let mut patchable = false;
    // Which registry each served node id comes from.
    let mut owner: HashMap<Arc<str>, usize> = HashMap::new();
    let mut counts = NodeCounts::default();
    // Ids served from one registry and found in another, as of the last build.
    let mut duplicates: Invalid = imbl::OrdMap::new();
    // The invalid maps (each registry's, and the duplicates) the published list was
    // made from.
    let mut invalid_shown: Option<(Vec<Option<Invalid>>, Invalid)> = None;
    loop {
        let deadline = members
            .iter()
            .flat_map(|m| {
                [
                    m.protect.deadline(),
                    m.demote_at(stale_after).filter(|_| !m.demoted),
                    m.drop_at(max_hold).filter(|_| !m.dropped),
                ]
            })
            .flatten()
            .min();
        {
            let changed = futures::future::select_all(
                members
                    .iter_mut()
                    .map(|m| Box::pin(m.input.views.changed())),
            );
            tokio::select! {
                _ = cancel.cancelled() => return,
                (r, _, _) = changed => { if r.is_err() { return } }
                _ = sleep_until_opt(deadline) => {}
            }
        }
        // When the reports arrived: their sample ages count back from here. (What
        // arrives during the wait below is placed a little early, which counts a few
        // answers twice rather than none.)
        // Less each registry's steady lag: when etcd had them (see `schedule::Arrival`).
        let received = Arrival {
            at_ms: registry::now_ms(),
            lag_ms: members
                .iter()
                .filter_map(|m| {
                    let lag = m.input.lag.as_ref()?.measured()?;
                    Some((m.input.name.clone(), lag.as_millis() as u64))
                })
                .collect(),
            default_lag_ms: 0,
        };
        // Coalesce: wait out the rest of the interval since the last build started
        // (a build that took longer than the interval is followed at once); whatever
        // arrives meanwhile is folded into this build.
        if let Some(t) = last_build {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(t + min_interval) => {}
            }
        }
        let now = Instant::now();
        let cpu_start = std::time::Instant::now();
        let mut updated: Vec<(usize, Arc<NodeRecord>, Arc<NodeRecord>)> = Vec::new();
        let mut membership_changed = false;
        for (i, m) in members.iter_mut().enumerate() {
            let view = m.input.views.borrow_and_update().clone();
            if !view.loaded {
                continue;
            }
            if view.connected {
                if m.unreachable_since.take().is_some() && m.demoted {
                    info!(registry = %m.input.name, "registry reachable again; its nodes are served as usual");
                }
            } else if m.unreachable_since.is_none() {
                m.unreachable_since = Some(now);
            }
            let demoted = m.demote_at(stale_after).is_some_and(|t| now >= t);
            let dropped = m.drop_at(max_hold).is_some_and(|t| now >= t);
            if demoted != m.demoted || dropped != m.dropped {
                if demoted && !m.demoted {
                    warn!(registry = %m.input.name, secs = stale_after.as_secs(), "registry out of reach: its nodes are offered only after every live one");
                }
                if dropped && !m.dropped {
                    error!(registry = %m.input.name, secs = max_hold.as_secs(), "registry out of reach for protect_max_secs: its nodes are no longer offered");
                }
                m.demoted = demoted;
                m.dropped = dropped;
                membership_changed = true;
            }
            m.verdict = match &m.previous {
                Some(prev) if !Arc::ptr_eq(prev, &view) => {
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
                                updated.push((i, old.1.clone(), new.1.clone()))
                            }
                        }
                    }
                    membership_changed |= !left.is_empty() || !arrived.is_empty();
                    m.protect
                        .update(now, view.nodes.len(), &left, arrived.iter().map(|a| &**a))
                }
                Some(_) => m.protect.judge(now),
                None => {
                    membership_changed = true;
                    m.protect.update(now, view.nodes.len(), [], [])
                }
            };
            m.previous = Some(view);
        }
        // Nothing to serve before the router's own registry is loaded; its health
        // (and the other registries') is shown meanwhile.
        let Some(local_view) = members[local].previous.clone() else {
            let statuses = statuses(&members, local, now);
            super::publish_statuses(&state.metrics, &statuses);
            *state.registries.lock().expect("registries lock") = statuses;
            continue;
        };
        let holding = members.iter().any(|m| m.verdict == Verdict::Hold);
        let stale = !local_view.connected || members[local].verdict == Verdict::Hold;
        let previous_snap = state.snapshot.load_full();
        let patched = match &previous_snap {
            Some(prev) if patchable && !membership_changed && !holding => {
                // A report from a registry that does not own the id (a duplicate) is
                // not served.
                let reports: Vec<(Arc<NodeRecord>, Arc<NodeRecord>)> = updated
                    .iter()
                    .filter(|(i, _, new)| owner.get(new.id.as_str()) == Some(i))
                    .map(|(i, old, new)| {
                        let dc = &members[*i].input.name;
                        (tagged(old, dc), tagged(new, dc))
                    })
                    .collect();
                prev.patch_at(
                    reports.iter().map(|(_, new)| new),
                    local_view.revision,
                    stale,
                    received.clone(),
                )
                .inspect(|_| {
                    for (old, new) in &reports {
                        counts.replace(old, new);
                    }
                })
            }
            _ => None,
        };
        let snap = patched.unwrap_or_else(|| {
            owner.clear();
            let mut live: BTreeMap<Arc<str>, Arc<NodeRecord>> = BTreeMap::new();
            let mut held: Vec<Arc<NodeRecord>> = Vec::new();
            duplicates = imbl::OrdMap::new();
            for (i, m) in members.iter().enumerate() {
                let Some(view) = &m.previous else { continue };
                if m.dropped {
                    continue;
                }
                let dc = &m.input.name;
                for (id, r) in view.nodes.iter() {
                    if let Some(&first) = owner.get(id) {
                        let key = format!("{}:{}{id}", dc, m.input.nodes_prefix);
                        duplicates.insert(
                            Arc::from(key),
                            format!(
                                "duplicate node id {id}: registry {} has it too (that one is served)",
                                members[first].input.name
                            ),
                        );
                        continue;
                    }
                    owner.insert(id.clone(), i);
                    if m.demoted {
                        held.push(tagged(r, dc));
                    } else {
                        live.insert(id.clone(), tagged(r, dc));
                    }
                }
                // While holding, the nodes that left without a drain are served too,
                // after every live one.
                if m.verdict == Verdict::Hold {
                    for r in m.protect.missing() {
                        if !owner.contains_key(r.id.as_str()) {
                            owner.insert(Arc::from(r.id.as_str()), i);
                            held.push(tagged(r, dc));
                        }
                    }
                }
            }
            let snap = Snapshot::build_holding(
                live.into_values(),
                held,
                previous_snap.as_deref(),
                local_view.revision,
                stale,
                state.tie_seed,
                received,
            );
            counts = NodeCounts::of(snap.nodes.iter().map(|e| &*e.record));
            snap
        });
        patchable = !holding;
        let m = &state.metrics;
        // The answers change first, then what the metrics say about them: a scrape that
        // sees the alarm (or a new revision) is never followed by an older answer.
        drop(state.snapshot.swap(Some(Arc::new(snap))));
        if counts.take_changed() {
            m.replace_node_counts(counts.labelled(), &counts.region_loads());
            m.set_hook_counts(&counts.hook_counts());
        }
        // Invalid records of every registry by key (named by registry when there are
        // several), and the duplicates: listed again only when one of those changed,
        // not for every report.
        let sources: Vec<Option<Invalid>> = members
            .iter()
            .map(|mem| mem.previous.as_ref().map(|v| v.invalid.clone()))
            .collect();
        let unchanged = invalid_shown.as_ref().is_some_and(|(shown, dups)| {
            dups.ptr_eq(&duplicates)
                && shown.iter().zip(&sources).all(|(a, b)| match (a, b) {
                    (Some(a), Some(b)) => a.ptr_eq(b),
                    (None, None) => true,
                    _ => false,
                })
        });
        if !unchanged {
            let mut invalid = duplicates.clone();
            for mem in &members {
                let Some(view) = &mem.previous else { continue };
                for (id, why) in view.invalid.iter() {
                    let key = if several {
                        format!("{}:{}{id}", mem.input.name, mem.input.nodes_prefix)
                    } else {
                        format!("{}{id}", mem.input.nodes_prefix)
                    };
                    invalid.insert(Arc::from(key), why.clone());
                }
            }
            m.invalid_records.set(invalid.len() as i64);
            *state.invalid.lock().expect("invalid lock") = invalid;
            invalid_shown = Some((sources, duplicates.clone()));
        }
        for mem in members.iter_mut() {
            if let Some(view) = &mem.previous {
                m.invalid_seen
                    .inc_by(view.invalid_seen_total.saturating_sub(mem.seen_invalid));
                mem.seen_invalid = view.invalid_seen_total;
            }
        }
        state
            .protecting
            .store(holding, std::sync::atomic::Ordering::Relaxed);
        m.revision.set(local_view.revision);
        m.registry_connected.set(local_view.connected as i64);
        if holding && m.protect_active.get() == 0 {
            m.protect_engaged.inc();
        }
        m.protect_active.set(holding as i64);
        if local_view.connected {
            *state.last_sync.lock().expect("last_sync lock") = Some(Instant::now());
        }
        let statuses = statuses(&members, local, now);
        super::publish_statuses(m, &statuses);
        *state.registries.lock().expect("registries lock") = statuses;
        drop(previous_snap);
        m.snapshot_builds.inc();
        m.snapshot_build_seconds
            .inc_by(cpu_start.elapsed().as_secs_f64());
        // When this build started: the interval counts from it.
        last_build = Some(now);
    }
}

/// Each registry's health as of `now`.
fn statuses(members: &[Member], local: usize, now: Instant) -> Vec<RegistryStatus> {
    members
        .iter()
        .enumerate()
        .map(|(i, mem)| {
            let view = mem.previous.as_deref();
            RegistryStatus {
                name: mem.input.name.to_string(),
                local: i == local,
                loaded: view.is_some(),
                connected: view.is_some_and(|v| v.connected),
                revision: view.map_or(0, |v| v.revision),
                nodes: view.map_or(0, |v| v.nodes.len()),
                unreachable_secs: mem.unreachable_since.map(|t| (now - t).as_secs()),
                demoted: mem.demoted,
                dropped: mem.dropped,
                protecting: mem.verdict == Verdict::Hold,
                lag_ms: None,
                alarms: Vec::new(),
            }
        })
        .collect()
}

/// Runs [`run_updater`] on a thread of its own (a single-threaded runtime on the
/// blocking pool), off the threads that answer requests; the returned future ends
/// when it does.
pub async fn spawn_updater(state: Arc<AppState>, inputs: Vec<Input>, cancel: CancellationToken) {
    let handle = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a single-threaded runtime for the snapshot updater");
        rt.block_on(run_updater(state, inputs, cancel));
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
