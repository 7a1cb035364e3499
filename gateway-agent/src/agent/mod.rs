//! The agent's run loop: lease, record writes, keep-alive, commands, shutdown.
//!
//! One task owns all mutable state (lease, what was last written, the applied command)
//! and reacts to four inputs: the connection count, the health verdict, commands from
//! etcd, and a 100 ms tick that drives keep-alives, re-registration and the report
//! policy. Samplers, probes and the command watcher are separate tasks that only send
//! values in, so a slow gateway endpoint never delays a keep-alive.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use registry::lease::{Lease, Renewal};
use registry::{now_ms, HookState, Kv, KvError, Layout, LeaseId, NodeRecord, NodeState, Ports};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::health::HealthProbe;
use crate::hook::{deliver_latest, Hook, MigrateSignal};
use crate::load::LoadSource;
use crate::report::{Dynamic, ReportPolicy};

mod commands;
mod samplers;

use commands::{apply_command, take_hook_status, watch_command};
use samplers::{probe_health, sample_load};

/// On shutdown, how long pending migrate signals and the agent's tasks may take.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The parts of the record that do not change while the agent runs.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpec {
    /// Node id, `[A-Za-z0-9._-]{1,64}`.
    pub id: String,
    /// Address clients connect to.
    pub ip: IpAddr,
    /// Listening ports.
    pub ports: Ports,
    /// Region.
    pub region: String,
    /// Connections the node is sized for.
    pub capacity: u64,
    /// Optional IPv6 address.
    pub ipv6: Option<Ipv6Addr>,
    /// Optional DNS name.
    pub domain: Option<String>,
    /// Optional zone.
    pub zone: Option<String>,
    /// Optional carrier.
    pub isp: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

impl NodeSpec {
    /// Checks the spec as routers will check the records made from it (names, sizes,
    /// the domain), so a bad value fails at start instead of making every report
    /// invalid.
    pub fn validate(&self) -> Result<(), registry::RecordError> {
        let mut r = NodeRecord::new(
            self.id.clone(),
            self.ip,
            self.ports,
            self.region.clone(),
            self.capacity,
            0,
        );
        r.ipv6 = self.ipv6;
        r.domain = self.domain.clone();
        r.zone = self.zone.clone();
        r.isp = self.isp.clone();
        r.labels = self.labels.clone();
        r.validate()
    }
}

/// Everything the agent needs to run.
#[derive(Clone)]
pub struct AgentConfig {
    /// Key layout (prefix).
    pub layout: Layout,
    /// The node's static description.
    pub node: NodeSpec,
    /// Lease TTL (default 10 s).
    pub ttl: Duration,
    /// When to write reports.
    pub policy: ReportPolicy,
    /// Where connection counts come from; `None` when the embedding gateway sets them.
    pub load: Option<LoadSource>,
    /// How often to sample `load`.
    pub sample_interval: Duration,
    /// Optional health probe.
    pub health: Option<HealthProbe>,
    /// How often to probe.
    pub health_interval: Duration,
    /// Who receives migrate signals.
    pub hook: Option<Arc<dyn Hook>>,
    /// On shutdown, how long the record stays marked `draining` before the lease is
    /// revoked: time for every router to see the mark and stop answering the node
    /// while it still runs (default 500 ms; routers follow etcd within tens of ms).
    pub leave_grace: Duration,
    /// Where the agent leaves its lease for its next start when it stops while the
    /// gateway serves (`--state-file`); `None` revokes on every stop. See
    /// [`crate::restart`].
    pub state_file: Option<std::path::PathBuf>,
    /// The agent's metrics (served by [`crate::metrics::serve`] when asked to).
    pub metrics: Arc<crate::metrics::AgentMetrics>,
}

impl AgentConfig {
    /// A configuration with the contract's defaults for `node`.
    pub fn new(node: NodeSpec) -> AgentConfig {
        AgentConfig {
            layout: Layout::default(),
            node,
            ttl: Duration::from_secs(10),
            policy: ReportPolicy::default(),
            load: None,
            sample_interval: Duration::from_millis(250),
            health: None,
            health_interval: Duration::from_secs(1),
            hook: None,
            leave_grace: Duration::from_millis(500),
            state_file: None,
            metrics: Arc::default(),
        }
    }
}

/// What the agent is doing, for embedding gateways, the demo and tests.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentStatus {
    /// The lease the record lives under, while registered.
    pub lease: Option<LeaseId>,
    /// The values last written to etcd.
    pub written: Option<Dynamic>,
    /// Record writes so far.
    pub writes: u64,
    /// Registrations so far (1 + re-registrations after lost leases).
    pub registrations: u64,
}

/// Controls a running agent from the embedding gateway.
#[derive(Clone)]
pub struct AgentHandle {
    connections: Arc<watch::Sender<u64>>,
    /// Wall-clock ms of the latest count, changed or not: reports say how fresh their
    /// count is, so routers know which of their answers it already includes.
    sampled_ms: Arc<std::sync::atomic::AtomicU64>,
    healthy: Arc<watch::Sender<bool>>,
    status: watch::Receiver<AgentStatus>,
    /// Set when the next stop must revoke the lease even with a state file.
    leave: Arc<std::sync::atomic::AtomicBool>,
    metrics: Arc<crate::metrics::AgentMetrics>,
}

impl AgentHandle {
    /// Sets the live connection count (for gateways that embed the agent).
    pub fn set_connections(&self, n: u64) {
        self.set_connections_sampled(n, now_ms());
    }

    /// Sets the live connection count as counted at wall-clock `sampled_ms` (taken
    /// before counting: a router then counts the clients it sent while the count was
    /// being taken twice, never zero times).
    pub fn set_connections_sampled(&self, n: u64, sampled_ms: u64) {
        self.sampled_ms
            .store(sampled_ms, std::sync::atomic::Ordering::Relaxed);
        self.metrics.connections.set(n.min(i64::MAX as u64) as i64);
        self.connections
            .send_if_modified(|c| std::mem::replace(c, n) != n);
    }

    /// Sets health directly (instead of, or on top of, a probe).
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy
            .send_if_modified(|h| std::mem::replace(h, healthy) != healthy);
    }

    /// Makes the next stop a departure: the lease is revoked even with a state file and
    /// a gateway that serves (`SIGUSR1` to the binary).
    pub fn leave_on_stop(&self) {
        self.leave.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Follows the agent's status.
    pub fn status(&self) -> watch::Receiver<AgentStatus> {
        self.status.clone()
    }
}

/// A gateway agent, ready to [`run`](Agent::run).
pub struct Agent {
    kv: Arc<dyn Kv>,
    config: AgentConfig,
    connections: watch::Receiver<u64>,
    healthy: watch::Receiver<bool>,
    handle: AgentHandle,
    status: watch::Sender<AgentStatus>,
}

/// Awaits `fut` unless `cancel` fires first.
async fn or_cancel<T>(
    cancel: &CancellationToken,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        _ = cancel.cancelled() => None,
        v = fut => Some(v),
    }
}

impl Agent {
    /// Builds an agent over `kv`; the handle controls it once it runs.
    pub fn new(kv: Arc<dyn Kv>, config: AgentConfig) -> (Agent, AgentHandle) {
        let initial = match config.load {
            Some(LoadSource::Static(n)) => n,
            _ => 0,
        };
        let (conn_tx, conn_rx) = watch::channel(initial);
        let (health_tx, health_rx) = watch::channel(true);
        let (status_tx, status_rx) = watch::channel(AgentStatus {
            lease: None,
            written: None,
            writes: 0,
            registrations: 0,
        });
        let handle = AgentHandle {
            connections: Arc::new(conn_tx),
            sampled_ms: Arc::new(std::sync::atomic::AtomicU64::new(now_ms())),
            healthy: Arc::new(health_tx),
            status: status_rx,
            leave: Arc::default(),
            metrics: config.metrics.clone(),
        };
        let agent = Agent {
            kv,
            config,
            connections: conn_rx,
            healthy: health_rx,
            handle: handle.clone(),
            status: status_tx,
        };
        (agent, handle)
    }

    fn record(&self, d: &Dynamic) -> NodeRecord {
        let n = &self.config.node;
        let now = now_ms();
        let sampled = self
            .handle
            .sampled_ms
            .load(std::sync::atomic::Ordering::Relaxed)
            .min(now);
        NodeRecord {
            id: n.id.clone(),
            ip: n.ip,
            ports: n.ports,
            region: n.region.clone(),
            capacity: n.capacity,
            connections: d.connections,
            ipv6: n.ipv6,
            domain: n.domain.clone(),
            zone: n.zone.clone(),
            isp: n.isp.clone(),
            state: d.state,
            healthy: d.healthy,
            updated_ms: Some(now),
            sampled_ms: Some(sampled),
            // Both times are this host's: the age is right whatever its clock's offset.
            sample_age_ms: Some(now.saturating_sub(sampled)),
            applied_command: d.applied_command.clone(),
            hook: d.hook.clone(),
            labels: n.labels.clone(),
            dc: None,
        }
    }

    /// Runs until `cancel` fires, then revokes the lease so the node vanishes at once
    /// (or, with a state file and a gateway that serves, keeps it for the next start).
    /// Every line it logs carries the node's id (a `node_id` span).
    pub async fn run(self, cancel: CancellationToken) {
        let span = tracing::info_span!("agent", node_id = %self.config.node.id);
        self.run_inner(cancel).instrument(span).await
    }

    async fn run_inner(mut self, cancel: CancellationToken) {
        let http = reqwest::Client::new();
        // One tree: every task below stops with `tasks` and is joined before returning.
        let tasks = cancel.child_token();
        let tracker = TaskTracker::new();
        // The hook worker is not cut by shutdown: a migrate signal already due is
        // delivered within the grace below (or left for the next start, which resumes
        // it from `P/applied/{id}`).
        let hooks = TaskTracker::new();
        let hooks_stop = CancellationToken::new();
        let (signal_tx, signal_rx) = watch::channel(None::<MigrateSignal>);
        let (hook_status_tx, mut hook_status) = mpsc::unbounded_channel();
        if let Some(hook) = self.config.hook.clone() {
            hooks.spawn(Instrument::in_current_span(deliver_latest(
                hook,
                signal_rx,
                hook_status_tx,
                hooks_stop.clone(),
            )));
        }
        if let Some(source) = self.config.load.clone() {
            tracker.spawn(Instrument::in_current_span(sample_load(
                source,
                self.config.sample_interval,
                self.handle.clone(),
                http.clone(),
                tasks.clone(),
            )));
        }
        if let Some(probe) = self.config.health.clone() {
            tracker.spawn(Instrument::in_current_span(probe_health(
                probe,
                self.config.health_interval,
                self.handle.clone(),
                http.clone(),
                tasks.clone(),
            )));
        }
        let (cmd_tx, mut cmd_rx) = mpsc::channel(16);
        let command_key = self.config.layout.command_key(&self.config.node.id);
        tracker.spawn(Instrument::in_current_span(watch_command(
            self.kv.clone(),
            command_key.clone(),
            cmd_tx,
            tasks.clone(),
        )));

        let node_key = self.config.layout.node_key(&self.config.node.id);
        let ttl = self.config.ttl;
        let mut d = Dynamic {
            connections: *self.connections.borrow(),
            healthy: *self.healthy.borrow(),
            state: NodeState::Serving,
            applied_command: None,
            hook: None,
        };
        // What this node applied before, whatever the lease: no command is looked at
        // before this is known, so a restart never applies one twice.
        let applied_key = self.config.layout.applied_key(&self.config.node.id);
        let Some(mut applied) = or_cancel(&cancel, self.previous(&node_key, &applied_key)).await
        else {
            return;
        };
        if let Some(a) = &applied {
            d.state = a.state;
            d.applied_command = Some(a.command.clone());
            d.hook = a.hook.clone();
            info!(command = %a.command, state = d.state.as_str(), hook = a.hook.as_ref().map(|h| h.state.as_str()), "resuming after the last applied command");
            // A delivery the previous run did not finish goes on.
            if let Some(h) = a
                .hook
                .as_ref()
                .filter(|h| matches!(h.state, HookState::Delivering | HookState::Retrying))
            {
                info!(command = %h.command, percent = h.percent, "resuming an undelivered migrate signal");
                signal_tx.send_replace(Some(MigrateSignal {
                    action: "migrate",
                    percent: h.percent,
                    command: h.command.clone(),
                }));
            }
        }
        let mut applied_written = applied.clone();
        let mut next_applied_write = Instant::now();

        let mut lease = Lease::new(ttl);
        // The lease the previous run left (`--state-file`), taken up instead of a grant;
        // one of another TTL is replaced (and revoked once the record moved off it).
        let (mut resume, mut superseded) = match self.restart_state(&node_key) {
            Some(s) if s.ttl_secs == ttl.as_secs() => (Some(s.lease), None),
            Some(s) => {
                info!(
                    lease = format_args!("{:x}", s.lease),
                    "the previous run's lease has another TTL; granting a new one"
                );
                (None, Some(s.lease))
            }
            None => (None, None),
        };
        let mut last_written: Option<(Dynamic, Instant)> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let has_hook = self.config.hook.is_some();
        // Why writes fail, named once per change (see `crate::faults`).
        let mut faults = crate::faults::WriteFaults::default();
        let node_id = self.config.node.id.clone();

        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
                Ok(()) = self.connections.changed() => {}
                Ok(()) = self.healthy.changed() => {}
                Some(value) = cmd_rx.recv() => {
                    if let Some(a) = apply_command(&command_key, value, &mut d, has_hook, &signal_tx) {
                        applied = Some(a);
                    }
                }
                Some(st) = hook_status.recv() => take_hook_status(&mut d, &mut applied, st),
            }
            if let Some(a) = applied
                .as_ref()
                .filter(|a| Some(*a) != applied_written.as_ref())
            {
                if Instant::now() >= next_applied_write {
                    match or_cancel(&cancel, self.kv.put(&applied_key, a.to_json(), None)).await {
                        None => break,
                        Some(Ok(_)) => {
                            applied_written = Some(a.clone());
                            faults.succeeded(&node_id);
                        }
                        Some(Err(e)) => {
                            faults.failed(&node_id, &applied_key, "applied record write", &e);
                            next_applied_write = Instant::now() + Duration::from_millis(500);
                        }
                    }
                }
            }
            d.connections = *self.connections.borrow_and_update();
            d.healthy = *self.healthy.borrow_and_update();

            if lease.id().is_none() {
                if !lease.grant_due() {
                    continue;
                }
                let value = self.record(&d).to_json();
                let taking_up = resume.is_some();
                let attempt = async {
                    if let Some(old) = resume {
                        match lease.resume(&*self.kv, old, &node_key, value.clone()).await {
                            Err(KvError::LeaseNotFound(_)) => {
                                info!(
                                    lease = format_args!("{old:x}"),
                                    "the previous run's lease expired; granting a new one"
                                );
                                resume = None;
                            }
                            other => return other,
                        }
                    }
                    lease.register(&*self.kv, &node_key, value).await
                };
                let Some(result) = or_cancel(&cancel, attempt).await else {
                    break;
                };
                let m = &self.config.metrics;
                match result {
                    Ok(id) => {
                        faults.succeeded(&node_id);
                        m.reported();
                        m.registrations.inc();
                        m.registered.set(1);
                        last_written = Some((d.clone(), Instant::now()));
                        self.status.send_modify(|s| {
                            s.registrations += 1;
                            s.writes += 1;
                            s.lease = Some(id);
                            s.written = Some(d.clone());
                        });
                        if taking_up && resume == Some(id) {
                            info!(node_id = %self.config.node.id, lease = format_args!("{id:x}"), ttl_secs = ttl.as_secs(), "registered: took up the lease of the previous run");
                        } else {
                            info!(node_id = %self.config.node.id, lease = format_args!("{id:x}"), ttl_secs = ttl.as_secs(), "registered");
                        }
                        resume = None;
                        if let Some(old) = superseded.take() {
                            // The record lives under the new lease now; the old one holds
                            // nothing of ours.
                            if let Err(e) = lease_revoke(&*self.kv, old).await {
                                debug!(error = %e, "revoking the previous run's lease failed; it expires with its TTL");
                            }
                        }
                    }
                    Err(e) => {
                        m.etcd_connected.set(0);
                        let retry_in_ms = lease
                            .next_grant()
                            .saturating_duration_since(Instant::now())
                            .as_millis() as u64;
                        if !faults.failed(&node_id, &node_key, "registration", &e) {
                            debug!(retry_in_ms, "registering again later");
                        }
                    }
                }
                continue;
            }
            let Some(renewal) = or_cancel(&cancel, lease.renew(&*self.kv)).await else {
                break;
            };
            let m = &self.config.metrics;
            match renewal {
                Renewal::NotDue => {}
                Renewal::Renewed => {
                    m.lease_renewals.inc();
                    m.etcd_connected.set(1);
                }
                Renewal::Lost(why) => {
                    m.registered.set(0);
                    warn!(node_id = %self.config.node.id, "lease lost ({why}), registering again");
                    self.status.send_modify(|s| s.lease = None);
                    continue;
                }
                Renewal::Failed(e) => {
                    m.etcd_connected.set(0);
                    faults.failed(&node_id, &node_key, "keep-alive", &e);
                }
            }

            let Some(id) = lease.id() else { continue };
            let last = last_written.as_ref().map(|(w, at)| (w, *at));
            if self
                .config
                .policy
                .should_write(last, &d, self.config.node.capacity, Instant::now())
            {
                let value = self.record(&d).to_json();
                let Some(result) =
                    or_cancel(&cancel, self.kv.put(&node_key, value, Some(id))).await
                else {
                    break;
                };
                match result {
                    Ok(_) => {
                        faults.succeeded(&node_id);
                        m.reported();
                        last_written = Some((d.clone(), Instant::now()));
                        self.status.send_modify(|s| {
                            s.writes += 1;
                            s.written = Some(d.clone());
                        });
                        debug!(
                            connections = d.connections,
                            healthy = d.healthy,
                            state = d.state.as_str(),
                            "reported"
                        );
                    }
                    Err(KvError::LeaseNotFound(_)) => {
                        m.registered.set(0);
                        warn!(node_id = %self.config.node.id, "lease expired, registering again");
                        lease.lost();
                        self.status.send_modify(|s| s.lease = None);
                    }
                    Err(e) => {
                        m.etcd_connected.set(0);
                        faults.failed(&node_id, &node_key, "report", &e);
                    }
                }
            }
        }

        tasks.cancel();
        tracker.close();
        hooks.close();
        self.config.metrics.registered.set(0);
        // With a state file, a stop while the gateway serves is a restart of the agent
        // alone: the record stays under its lease for the next start to take up.
        let restart = self.stays_for_restart(lease.id(), &d, &http).await;
        // A planned departure, said before anything else: `draining` takes the node
        // out of every answer while it still runs, and routers count a node that left
        // draining as planned (a rolling restart is not a crash: it never trips their
        // protect threshold, nor is the node served again while they hold).
        let marked = match lease.id() {
            Some(id) if restart.is_none() => self.mark_leaving(&node_key, id, &d).await,
            _ => None,
        };
        // The hook worker ends once the signal due is delivered (or replaced), or when
        // the grace is over.
        let pending = |d: &Dynamic| {
            d.hook
                .as_ref()
                .is_some_and(|h| matches!(h.state, HookState::Delivering | HookState::Retrying))
        };
        if has_hook && pending(&d) {
            info!(node_id = %self.config.node.id, "delivering the pending migrate signal before exit");
        }
        let grace = tokio::time::sleep(SHUTDOWN_GRACE);
        tokio::pin!(grace);
        while has_hook && pending(&d) {
            tokio::select! {
                _ = &mut grace => {
                    warn!(node_id = %self.config.node.id, "migrate signal still undelivered after the shutdown grace; the next start resumes it");
                    break;
                }
                st = hook_status.recv() => match st {
                    Some(st) => take_hook_status(&mut d, &mut applied, st),
                    None => break,
                },
            }
        }
        hooks_stop.cancel();
        if tokio::time::timeout(Duration::from_secs(1), async {
            tracker.wait().await;
            hooks.wait().await;
        })
        .await
        .is_err()
        {
            warn!(node_id = %self.config.node.id, "tasks still running after the shutdown grace");
        }
        while let Ok(st) = hook_status.try_recv() {
            take_hook_status(&mut d, &mut applied, st);
        }
        // The outcome as it stands, for the next start.
        if let Some(a) = applied
            .as_ref()
            .filter(|a| Some(*a) != applied_written.as_ref())
        {
            match tokio::time::timeout(
                Duration::from_secs(2),
                self.kv.put(&applied_key, a.to_json(), None),
            )
            .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    warn!(node_id = %self.config.node.id, error = %e, "could not record the applied command's outcome")
                }
                Err(_) => {
                    warn!(node_id = %self.config.node.id, "recording the applied command's outcome timed out")
                }
            }
        }
        if let (Some(state), Some(path)) = (restart, &self.config.state_file) {
            match state.save(path) {
                Ok(()) => {
                    info!(node_id = %self.config.node.id, lease = format_args!("{:x}", state.lease), ttl_secs = state.ttl_secs, file = %path.display(), "stopped for a restart: lease kept, the record stays until the next start takes it up or its TTL runs out")
                }
                Err(e) => {
                    warn!(node_id = %self.config.node.id, error = %e, "could not keep the lease for the next start; the record stays until its TTL runs out")
                }
            }
            return;
        }
        if let Some(path) = &self.config.state_file {
            if let Err(e) = crate::restart::RestartState::remove(path) {
                warn!(node_id = %self.config.node.id, error = %e, "could not remove the state file");
            }
        }
        if lease.id().is_some() {
            // Every router has had the grace to see the `draining` mark.
            if let Some(at) = marked {
                tokio::time::sleep_until(at + self.config.leave_grace).await;
            }
            match lease.revoke(&*self.kv, Duration::from_secs(2)).await {
                Ok(()) => {
                    info!(node_id = %self.config.node.id, "lease revoked, node deregistered")
                }
                Err(e) => {
                    warn!(node_id = %self.config.node.id, error = %e, "lease revoke failed; the key expires with its TTL")
                }
            }
        }
    }

    /// The lease the previous run left in the state file for this node, if any.
    fn restart_state(&self, node_key: &str) -> Option<crate::restart::RestartState> {
        let path = self.config.state_file.as_ref()?;
        match crate::restart::RestartState::load(path, node_key) {
            Ok(Some(s)) => {
                info!(
                    lease = format_args!("{:x}", s.lease),
                    stopped_ms_ago = now_ms().saturating_sub(s.stopped_ms),
                    "found the lease of the previous run; taking it up"
                );
                Some(s)
            }
            Ok(None) => None,
            Err(e) => {
                warn!(error = %e, "state file set aside; registering under a new lease");
                None
            }
        }
    }

    /// On a stop with a state file: the record to leave for the next start when this
    /// stop is a restart, or `None` when the node leaves. It leaves when it holds no
    /// lease, was asked to (`leave_on_stop`, a drain command), or its gateway is down:
    /// the health verdict is unhealthy or one last probe fails (an operator who stops
    /// the gateway and then the agent means the node to go).
    async fn stays_for_restart(
        &self,
        lease: Option<LeaseId>,
        d: &Dynamic,
        http: &reqwest::Client,
    ) -> Option<crate::restart::RestartState> {
        self.config.state_file.as_ref()?;
        let lease = lease?;
        let leave = |why: &str| {
            info!(node_id = %self.config.node.id, why, "leaving: the lease is revoked");
            None
        };
        if self.handle.leave.load(std::sync::atomic::Ordering::SeqCst) {
            return leave("asked to leave on stop");
        }
        if d.state == NodeState::Draining {
            return leave("the node was drained");
        }
        if !d.healthy {
            return leave("the gateway is unhealthy");
        }
        if let Some(probe) = &self.config.health {
            if let Err(e) = probe.check(http, Duration::from_secs(1)).await {
                return leave(&format!("the gateway is down ({e})"));
            }
        }
        Some(crate::restart::RestartState {
            node_id: self.config.node.id.clone(),
            node_key: self.config.layout.node_key(&self.config.node.id),
            lease,
            ttl_secs: self.config.ttl.as_secs(),
            stopped_ms: now_ms(),
        })
    }

    /// Writes the record as `draining` under `lease`; returns when, if it was written.
    async fn mark_leaving(&self, node_key: &str, lease: LeaseId, d: &Dynamic) -> Option<Instant> {
        let mut leaving = d.clone();
        leaving.state = NodeState::Draining;
        let value = self.record(&leaving).to_json();
        let put = self.kv.put(node_key, value, Some(lease));
        match tokio::time::timeout(Duration::from_secs(2), put).await {
            Ok(Ok(_)) => {
                info!(node_id = %self.config.node.id, grace_ms = self.config.leave_grace.as_millis() as u64, "marked draining before leaving");
                Some(Instant::now())
            }
            Ok(Err(e)) => {
                warn!(node_id = %self.config.node.id, error = %e, "could not mark the node draining before leaving");
                None
            }
            Err(_) => {
                warn!(node_id = %self.config.node.id, "marking the node draining before leaving timed out");
                None
            }
        }
    }
}

/// Revokes `lease` within 2 s.
async fn lease_revoke(kv: &dyn Kv, lease: LeaseId) -> Result<(), KvError> {
    tokio::time::timeout(Duration::from_secs(2), kv.revoke(lease))
        .await
        .unwrap_or_else(|_| Err(KvError::Unavailable("revoke: no answer within 2 s".into())))
}

#[cfg(test)]
mod tests;
