//! The updater: every registry's views in, one snapshot out.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use registry::follow::NodeView;
use registry::imbl;
use registry::NodeRecord;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::error;

use super::counts::NodeCounts;
use super::member::{Input, Member, Report};
use super::protect::Verdict;
use super::{Outputs, RegistryStatus};
use crate::config::FileConfig;
use crate::schedule::{Arrival, Snapshot};

/// Invalid records (or duplicate ids) by key, with the reason.
type Invalid = imbl::OrdMap<Arc<str>, String>;

/// `r` as served: tagged with the DC that holds it.
fn tagged(r: &Arc<NodeRecord>, dc: &Arc<str>) -> Arc<NodeRecord> {
    if r.dc.as_ref() == Some(dc) {
        return r.clone();
    }
    let mut t = (**r).clone();
    t.dc = Some(dc.clone());
    Arc::new(t)
}

/// Follows every registry's views until `cancel`, serving each resulting snapshot
/// through `out` (and the fleet's status and metrics with it), under `config`.
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
pub async fn run_updater(
    config: &FileConfig,
    out: Outputs,
    inputs: Vec<Input>,
    cancel: CancellationToken,
) {
    let Some(updater) = Updater::new(config, out, inputs) else {
        error!("no registry to follow");
        return;
    };
    updater.run(&cancel).await
}

/// What one look at every registry found.
struct Observed {
    /// Reports of known nodes, which can patch the served snapshot.
    updated: Vec<Report>,
    /// A node arrived or left, a registry was first loaded, demoted or dropped: the
    /// snapshot must be rebuilt.
    membership_changed: bool,
}

/// The snapshot to serve next, and what it was decided from.
struct Decision {
    snap: Snapshot,
    /// A protect threshold holds in some registry.
    holding: bool,
    /// The snapshot served until now, released only once everything is published (its
    /// release counts in the build's time).
    previous: Option<Arc<Snapshot>>,
}

/// The updater's state from one round to the next.
struct Updater {
    /// Where it publishes.
    out: Outputs,
    members: Vec<Member>,
    /// The router's own registry (else the first).
    local: usize,
    stale_after: Duration,
    max_hold: Duration,
    min_interval: Duration,
    /// More than one registry: invalid records are named by registry.
    several: bool,
    /// When the last build started.
    last_build: Option<Instant>,
    /// True when the served snapshot is the registries' views exactly (no hold, no
    /// demotion change): the next reports can patch it.
    patchable: bool,
    /// Which registry each served node id comes from.
    owner: HashMap<Arc<str>, usize>,
    counts: NodeCounts,
    /// Ids served from one registry and found in another, as of the last build.
    duplicates: Invalid,
    /// The invalid maps (each registry's, and the duplicates) the published list was
    /// made from.
    invalid_shown: Option<(Vec<Option<Invalid>>, Invalid)>,
}

impl Updater {
    /// `None` when there is no registry to follow.
    fn new(cfg: &FileConfig, out: Outputs, inputs: Vec<Input>) -> Option<Updater> {
        let several = inputs.len() > 1;
        let members: Vec<Member> = inputs
            .into_iter()
            .map(|input| Member::new(input, cfg))
            .collect();
        if members.is_empty() {
            return None;
        }
        Some(Updater {
            local: members.iter().position(|m| m.input.local).unwrap_or(0),
            stale_after: Duration::from_secs(cfg.registry_stale_secs),
            max_hold: Duration::from_secs(cfg.protect_max_secs),
            min_interval: Duration::from_millis(cfg.snapshot_min_interval_ms),
            several,
            members,
            last_build: None,
            patchable: false,
            owner: HashMap::new(),
            counts: NodeCounts::default(),
            duplicates: imbl::OrdMap::new(),
            invalid_shown: None,
            out,
        })
    }

    /// Round after round: wait for news, observe every registry, decide the snapshot,
    /// publish it. Ends with `cancel`, or when a follower is gone.
    async fn run(mut self, cancel: &CancellationToken) {
        loop {
            if !self.wait_for_news(cancel).await {
                return;
            }
            let received = self.arrival();
            if !self.coalesce(cancel).await {
                return;
            }
            let now = Instant::now();
            let cpu_start = std::time::Instant::now();
            let observed = self.observe(now);
            // Nothing to serve before the router's own registry is loaded; its health
            // (and the other registries') is shown meanwhile.
            let Some(local_view) = self.members[self.local].previous.clone() else {
                self.publish_statuses(now);
                continue;
            };
            let decision = self.decide(observed, &local_view, received);
            self.publish(decision, &local_view, now);
            let m = &self.out.herd;
            m.snapshot_builds.inc();
            m.snapshot_build_seconds
                .inc_by(cpu_start.elapsed().as_secs_f64());
            // When this build started: the interval counts from it.
            self.last_build = Some(now);
        }
    }

    /// Waits for a registry's next view, or for the next deadline (a hold ending, a
    /// registry due for demotion or drop). False: stop (`cancel`, or a follower gone).
    async fn wait_for_news(&mut self, cancel: &CancellationToken) -> bool {
        let (stale_after, max_hold) = (self.stale_after, self.max_hold);
        let deadline = self
            .members
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
        let changed = futures::future::select_all(
            self.members
                .iter_mut()
                .map(|m| Box::pin(m.input.views.changed())),
        );
        tokio::select! {
            _ = cancel.cancelled() => false,
            (r, _, _) = changed => r.is_ok(),
            _ = sleep_until_opt(deadline) => true,
        }
    }

    /// When the reports arrived: their sample ages count back from here. (What arrives
    /// during the wait of [`Updater::coalesce`] is placed a little early, which counts
    /// a few answers twice rather than none.) Less each registry's steady lag: when
    /// etcd had them (see `schedule::Arrival`).
    fn arrival(&self) -> Arrival {
        Arrival {
            at_ms: registry::now_ms(),
            lag_ms: self
                .members
                .iter()
                .filter_map(|m| {
                    let lag = m.input.lag.as_ref()?.measured()?;
                    Some((m.input.name.clone(), lag.as_millis() as u64))
                })
                .collect(),
            default_lag_ms: 0,
        }
    }

    /// Coalesce: waits out the rest of the interval since the last build started (a
    /// build that took longer than the interval is followed at once); whatever arrives
    /// meanwhile is folded into this build. False: `cancel` fired.
    async fn coalesce(&self, cancel: &CancellationToken) -> bool {
        let Some(t) = self.last_build else {
            return true;
        };
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep_until(t + self.min_interval) => true,
        }
    }

    /// Observe: takes every registry's latest view, tracks its reachability and judges
    /// it with its protect threshold.
    fn observe(&mut self, now: Instant) -> Observed {
        let mut observed = Observed {
            updated: Vec::new(),
            membership_changed: false,
        };
        for (i, m) in self.members.iter_mut().enumerate() {
            observed.membership_changed |= m.observe(
                i,
                now,
                (self.stale_after, self.max_hold),
                &mut observed.updated,
            );
        }
        observed
    }

    /// Decide: the snapshot to serve, patched from the reports when only known nodes
    /// reported (and nothing is held), else rebuilt from every registry's view.
    fn decide(&mut self, observed: Observed, local_view: &NodeView, received: Arrival) -> Decision {
        let holding = self.members.iter().any(|m| m.verdict == Verdict::Hold);
        let stale = !local_view.connected || self.members[self.local].verdict == Verdict::Hold;
        let previous = self.out.serving.snapshot.load_full();
        let patched = match &previous {
            Some(prev) if self.patchable && !observed.membership_changed && !holding => self.patch(
                prev,
                &observed.updated,
                local_view.revision,
                stale,
                received.clone(),
            ),
            _ => None,
        };
        let snap = match patched {
            Some(snap) => snap,
            None => self.rebuild(previous.as_deref(), local_view.revision, stale, received),
        };
        self.patchable = !holding;
        Decision {
            snap,
            holding,
            previous,
        }
    }

    /// `prev` patched with the reports of the nodes each registry owns; `None` when a
    /// report cannot patch it.
    fn patch(
        &mut self,
        prev: &Snapshot,
        updated: &[Report],
        revision: i64,
        stale: bool,
        received: Arrival,
    ) -> Option<Snapshot> {
        // A report from a registry that does not own the id (a duplicate) is not
        // served.
        let reports: Vec<(Arc<NodeRecord>, Arc<NodeRecord>)> = updated
            .iter()
            .filter(|(i, _, new)| self.owner.get(new.id.as_str()) == Some(i))
            .map(|(i, old, new)| {
                let dc = &self.members[*i].input.name;
                (tagged(old, dc), tagged(new, dc))
            })
            .collect();
        prev.patch_at(
            reports.iter().map(|(_, new)| new),
            revision,
            stale,
            received,
        )
        .inspect(|_| {
            for (old, new) in &reports {
                self.counts.replace(old, new);
            }
        })
    }

    /// A snapshot of every registry's view, merged: live nodes first, then the demoted
    /// and held ones; records the owner of each id and the duplicates.
    fn rebuild(
        &mut self,
        previous: Option<&Snapshot>,
        revision: i64,
        stale: bool,
        received: Arrival,
    ) -> Snapshot {
        self.owner.clear();
        let mut live: BTreeMap<Arc<str>, Arc<NodeRecord>> = BTreeMap::new();
        let mut held: Vec<Arc<NodeRecord>> = Vec::new();
        self.duplicates = imbl::OrdMap::new();
        for (i, m) in self.members.iter().enumerate() {
            let Some(view) = &m.previous else { continue };
            if m.dropped {
                continue;
            }
            let dc = &m.input.name;
            for (id, r) in view.nodes.iter() {
                if let Some(&first) = self.owner.get(id) {
                    let key = format!("{}:{}{id}", dc, m.input.nodes_prefix);
                    self.duplicates.insert(
                        Arc::from(key),
                        format!(
                            "duplicate node id {id}: registry {} has it too (that one is served)",
                            self.members[first].input.name
                        ),
                    );
                    continue;
                }
                self.owner.insert(id.clone(), i);
                if m.demoted {
                    held.push(tagged(r, dc));
                } else {
                    live.insert(id.clone(), tagged(r, dc));
                }
            }
            // While holding, the nodes that left without a drain are served too, after
            // every live one.
            if m.verdict == Verdict::Hold {
                for r in m.protect.missing() {
                    if !self.owner.contains_key(r.id.as_str()) {
                        self.owner.insert(Arc::from(r.id.as_str()), i);
                        held.push(tagged(r, dc));
                    }
                }
            }
        }
        let snap = Snapshot::build_holding(
            live.into_values(),
            held,
            previous,
            revision,
            stale,
            self.out.serving.tie_seed,
            received,
        );
        self.counts = NodeCounts::of(snap.nodes.iter().map(|e| &*e.record));
        snap
    }

    /// Publish: the answers change first, then what the metrics say about them: a
    /// scrape that sees the alarm (or a new revision) is never followed by an older
    /// answer.
    fn publish(&mut self, decision: Decision, local_view: &NodeView, now: Instant) {
        let Decision {
            snap,
            holding,
            previous,
        } = decision;
        self.publish_snapshot(snap);
        self.publish_invalid();
        self.count_invalid_seen();
        self.publish_protection(holding, local_view);
        self.publish_statuses(now);
        drop(previous);
    }

    /// Serves `snap`, then updates the node-count gauges when the counts changed.
    fn publish_snapshot(&mut self, snap: Snapshot) {
        drop(self.out.serving.snapshot.swap(Some(Arc::new(snap))));
        if self.counts.take_changed() {
            let m = &self.out.fleet;
            m.replace_node_counts(self.counts.labelled(), &self.counts.region_loads());
            m.set_hook_counts(&self.counts.hook_counts());
        }
    }

    /// Invalid records of every registry by key (named by registry when there are
    /// several), and the duplicates: listed again only when one of those changed, not
    /// for every report.
    fn publish_invalid(&mut self) {
        let sources: Vec<Option<Invalid>> = self
            .members
            .iter()
            .map(|mem| mem.previous.as_ref().map(|v| v.invalid.clone()))
            .collect();
        let unchanged = self.invalid_shown.as_ref().is_some_and(|(shown, dups)| {
            dups.ptr_eq(&self.duplicates)
                && shown.iter().zip(&sources).all(|(a, b)| match (a, b) {
                    (Some(a), Some(b)) => a.ptr_eq(b),
                    (None, None) => true,
                    _ => false,
                })
        });
        if unchanged {
            return;
        }
        let mut invalid = self.duplicates.clone();
        for mem in &self.members {
            let Some(view) = &mem.previous else { continue };
            for (id, why) in view.invalid.iter() {
                let key = if self.several {
                    format!("{}:{}{id}", mem.input.name, mem.input.nodes_prefix)
                } else {
                    format!("{}{id}", mem.input.nodes_prefix)
                };
                invalid.insert(Arc::from(key), why.clone());
            }
        }
        self.out.fleet.invalid_records.set(invalid.len() as i64);
        *self.out.status.invalid.lock().expect("invalid lock") = invalid;
        self.invalid_shown = Some((sources, self.duplicates.clone()));
    }

    /// Counts the invalid records each registry's follower saw since the last round.
    fn count_invalid_seen(&mut self) {
        let m = &self.out.fleet;
        for mem in self.members.iter_mut() {
            if let Some(view) = &mem.previous {
                m.invalid_seen
                    .inc_by(view.invalid_seen_total.saturating_sub(mem.seen_invalid));
                mem.seen_invalid = view.invalid_seen_total;
            }
        }
    }

    /// Whether a protect threshold holds, the local registry's revision and
    /// connection, and when it was last in sync.
    fn publish_protection(&self, holding: bool, local_view: &NodeView) {
        let (m, status) = (&self.out.fleet, &self.out.status);
        status
            .protecting
            .store(holding, std::sync::atomic::Ordering::Relaxed);
        m.revision.set(local_view.revision);
        m.registry_connected.set(local_view.connected as i64);
        if holding && m.protect_active.get() == 0 {
            m.protect_engaged.inc();
        }
        m.protect_active.set(holding as i64);
        if local_view.connected {
            *status.last_sync.lock().expect("last_sync lock") = Some(Instant::now());
        }
    }

    /// Each registry's health as of `now`, in the metrics and in the fleet's status.
    fn publish_statuses(&self, now: Instant) {
        let statuses = statuses(&self.members, self.local, now);
        super::publish_statuses(&self.out.registries, &statuses);
        *self.out.status.registries.lock().expect("registries lock") = statuses;
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
pub async fn spawn_updater(
    config: Arc<FileConfig>,
    out: Outputs,
    inputs: Vec<Input>,
    cancel: CancellationToken,
) {
    let handle = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a single-threaded runtime for the snapshot updater");
        rt.block_on(run_updater(&config, out, inputs, cancel));
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
