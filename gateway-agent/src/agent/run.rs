//! The run loop as a state: [`RunState::start`] spawns the agent's tasks and reads what
//! the node applied before, [`RunState::step`] is one turn of the loop, and
//! [`RunState::shutdown`] leaves or keeps the lease for the next start.

use std::time::Duration;

use registry::lease::{Lease, Renewal};
use registry::{Applied, HookState, HookStatus, KvError, LeaseId, NodeState};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Interval};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use super::commands::{apply_command, resume_applied, take_hook_status, watch_command};
use super::samplers::{probe_health, sample_load};
use super::{Agent, AgentConfig};
use crate::faults::WriteFaults;
use crate::hook::{deliver_latest, MigrateSignal};
use crate::report::Dynamic;

/// On shutdown, how long pending migrate signals and the agent's tasks may take.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

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

/// The node's keys in etcd.
struct Keys {
    /// `P/nodes/{id}`: the record, under the lease.
    node: String,
    /// `P/commands/{id}`: the command for this node.
    command: String,
    /// `P/applied/{id}`: what the node applied last, whatever the lease.
    applied: String,
}

impl Keys {
    fn new(config: &AgentConfig) -> Keys {
        let id = &config.node.id;
        Keys {
            node: config.layout.node_key(id),
            command: config.layout.command_key(id),
            applied: config.layout.applied_key(id),
        }
    }
}

/// The tasks the agent spawns, in two groups that stop differently.
struct Tasks {
    /// Stops the samplers, the prober and the command watcher (a child of `cancel`).
    stop: CancellationToken,
    /// The samplers, the prober and the command watcher.
    tracker: TaskTracker,
    /// The hook worker, which shutdown does not cut (see [`Tasks::spawn`]).
    hooks: TaskTracker,
    /// Stops the hook worker once the shutdown grace is over.
    hooks_stop: CancellationToken,
}

/// The loop's ends of the channels to and from its tasks.
struct Links {
    /// Migrate signals for the hook worker (the latest replaces one undelivered).
    signals: watch::Sender<Option<MigrateSignal>>,
    /// Delivery statuses from the hook worker.
    hook_status: mpsc::UnboundedReceiver<HookStatus>,
    /// The command key's values from its watcher (`None`: deleted).
    commands: mpsc::Receiver<Option<Vec<u8>>>,
}

impl Tasks {
    /// Spawns the hook worker, the load sampler, the health prober and the command
    /// watcher (each only when configured, the watcher always).
    fn spawn(
        agent: &Agent,
        cancel: &CancellationToken,
        http: &reqwest::Client,
        command_key: &str,
    ) -> (Tasks, Links) {
        // One tree: every task below stops with `stop` and is joined before the run ends.
        let stop = cancel.child_token();
        let tracker = TaskTracker::new();
        // The hook worker is not cut by shutdown: a migrate signal already due is
        // delivered within the shutdown grace (or left for the next start, which resumes
        // it from `P/applied/{id}`).
        let hooks = TaskTracker::new();
        let hooks_stop = CancellationToken::new();
        let (signal_tx, signal_rx) = watch::channel(None::<MigrateSignal>);
        let (hook_status_tx, hook_status) = mpsc::unbounded_channel();
        if let Some(hook) = agent.config.hook.clone() {
            hooks.spawn(Instrument::in_current_span(deliver_latest(
                hook,
                signal_rx,
                hook_status_tx,
                hooks_stop.clone(),
            )));
        }
        if let Some(source) = agent.config.load.clone() {
            tracker.spawn(Instrument::in_current_span(sample_load(
                source,
                agent.config.sample_interval,
                agent.handle.clone(),
                http.clone(),
                stop.clone(),
            )));
        }
        if let Some(probe) = agent.config.health.clone() {
            tracker.spawn(Instrument::in_current_span(probe_health(
                probe,
                agent.config.health_interval,
                agent.handle.clone(),
                http.clone(),
                stop.clone(),
            )));
        }
        let (cmd_tx, commands) = mpsc::channel(16);
        tracker.spawn(Instrument::in_current_span(watch_command(
            agent.kv.clone(),
            command_key.to_string(),
            cmd_tx,
            stop.clone(),
        )));
        let tasks = Tasks {
            stop,
            tracker,
            hooks,
            hooks_stop,
        };
        let links = Links {
            signals: signal_tx,
            hook_status,
            commands,
        };
        (tasks, links)
    }
}

/// What the run loop keeps from one turn to the next.
///
/// One task owns all mutable state (lease, what was last written, the applied command)
/// and reacts to four inputs: the connection count, the health verdict, commands from
/// etcd, and a 100 ms tick that drives keep-alives, re-registration and the report
/// policy. Samplers, probes and the command watcher are separate tasks that only send
/// values in, so a slow gateway endpoint never delays a keep-alive.
pub(super) struct RunState {
    agent: Agent,
    cancel: CancellationToken,
    http: reqwest::Client,
    keys: Keys,
    tasks: Tasks,
    links: Links,
    has_hook: bool,
    /// The record's values as they stand.
    d: Dynamic,
    /// The command applied last, and the copy of it `P/applied/{id}` holds.
    applied: Option<Applied>,
    applied_written: Option<Applied>,
    /// When a failed write of `applied` may be tried again.
    next_applied_write: Instant,
    lease: Lease,
    /// The lease the previous run left (`--state-file`), taken up instead of a grant.
    resume: Option<LeaseId>,
    /// The previous run's lease of another TTL, revoked once the record moved off it.
    superseded: Option<LeaseId>,
    /// The values last written, and when.
    last_written: Option<(Dynamic, Instant)>,
    /// Drives keep-alives, re-registration and the report policy.
    tick: Interval,
    /// Why writes fail, named once per change (see `crate::faults`).
    faults: WriteFaults,
}

impl RunState {
    /// Spawns the agent's tasks, reads what the node applied before and finds the
    /// previous run's lease. `None` when `cancel` fires before etcd answered.
    pub(super) async fn start(agent: Agent, cancel: CancellationToken) -> Option<RunState> {
        let http = reqwest::Client::new();
        let keys = Keys::new(&agent.config);
        let (tasks, links) = Tasks::spawn(&agent, &cancel, &http, &keys.command);

        let ttl = agent.config.ttl;
        let mut d = Dynamic {
            connections: *agent.connections.borrow(),
            healthy: *agent.healthy.borrow(),
            state: NodeState::Serving,
            applied_command: None,
            hook: None,
        };
        // What this node applied before, whatever the lease: no command is looked at
        // before this is known, so a restart never applies one twice.
        let applied = or_cancel(&cancel, agent.previous(&keys.node, &keys.applied)).await?;
        if let Some(a) = &applied {
            resume_applied(a, &mut d, &links.signals);
        }
        let applied_written = applied.clone();
        let next_applied_write = Instant::now();

        let lease = Lease::new(ttl);
        // The lease the previous run left (`--state-file`), taken up instead of a grant;
        // one of another TTL is replaced (and revoked once the record moved off it).
        let (resume, superseded) = match agent.restart_state(&keys.node) {
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
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let has_hook = agent.config.hook.is_some();
        Some(RunState {
            agent,
            cancel,
            http,
            keys,
            tasks,
            links,
            has_hook,
            d,
            applied,
            applied_written,
            next_applied_write,
            lease,
            resume,
            superseded,
            last_written: None,
            tick,
            faults: WriteFaults::default(),
        })
    }

    /// One turn of the loop: waits for an input, records a newly applied command, takes
    /// in the latest count and verdict, then registers, or keeps the lease alive and
    /// reports. `None` once `cancel` fired: the loop is over.
    pub(super) async fn step(&mut self) -> Option<()> {
        self.wait_for_input().await?;
        self.write_applied().await?;
        self.observe();
        if self.lease.id().is_none() {
            return self.register().await;
        }
        if !self.keep_alive().await? {
            return Some(());
        }
        self.report().await
    }

    /// Waits for the tick, a new count or verdict, a command (applied here) or a status
    /// from the hook worker. `None` when `cancel` fires.
    async fn wait_for_input(&mut self) -> Option<()> {
        tokio::select! {
            _ = self.cancel.cancelled() => return None,
            _ = self.tick.tick() => {}
            Ok(()) = self.agent.connections.changed() => {}
            Ok(()) = self.agent.healthy.changed() => {}
            Some(value) = self.links.commands.recv() => {
                if let Some(a) = apply_command(&self.keys.command, value, &mut self.d, self.has_hook, &self.links.signals) {
                    self.applied = Some(a);
                }
            }
            Some(st) = self.links.hook_status.recv() => take_hook_status(&mut self.d, &mut self.applied, st),
        }
        Some(())
    }

    /// Writes the applied command to `P/applied/{id}` when it changed (no sooner than
    /// 500 ms after a failed write). `None` when `cancel` fires meanwhile.
    async fn write_applied(&mut self) -> Option<()> {
        if let Some(a) = self
            .applied
            .as_ref()
            .filter(|a| Some(*a) != self.applied_written.as_ref())
        {
            if Instant::now() >= self.next_applied_write {
                let put = self.agent.kv.put(&self.keys.applied, a.to_json(), None);
                match or_cancel(&self.cancel, put).await {
                    None => return None,
                    Some(Ok(_)) => {
                        self.applied_written = Some(a.clone());
                        self.faults.succeeded(&self.agent.config.node.id);
                    }
                    Some(Err(e)) => {
                        let node_id = &self.agent.config.node.id;
                        let key = &self.keys.applied;
                        self.faults.failed(node_id, key, "applied record write", &e);
                        self.next_applied_write = Instant::now() + Duration::from_millis(500);
                    }
                }
            }
        }
        Some(())
    }

    /// Takes the latest connection count and health verdict into the record's values.
    fn observe(&mut self) {
        self.d.connections = *self.agent.connections.borrow_and_update();
        self.d.healthy = *self.agent.healthy.borrow_and_update();
    }

    /// Without a lease, once a grant is due: writes the record under the previous
    /// run's lease if it is still alive, else under a new one. `None` when `cancel`
    /// fires meanwhile.
    async fn register(&mut self) -> Option<()> {
        if !self.lease.grant_due() {
            return Some(());
        }
        let value = self.agent.record(&self.d).to_json();
        let taking_up = self.resume.is_some();
        let (lease, resume) = (&mut self.lease, &mut self.resume);
        let (kv, node_key) = (&*self.agent.kv, &self.keys.node);
        let attempt = async {
            if let Some(old) = *resume {
                match lease.resume(kv, old, node_key, value.clone()).await {
                    Err(KvError::LeaseNotFound(_)) => {
                        info!(
                            lease = format_args!("{old:x}"),
                            "the previous run's lease expired; granting a new one"
                        );
                        *resume = None;
                    }
                    other => return other,
                }
            }
            lease.register(kv, node_key, value).await
        };
        match or_cancel(&self.cancel, attempt).await? {
            Ok(id) => self.registered(id, taking_up).await,
            Err(e) => {
                self.agent.config.metrics.etcd_connected.set(0);
                let retry_in_ms = self
                    .lease
                    .next_grant()
                    .saturating_duration_since(Instant::now())
                    .as_millis() as u64;
                let node_id = &self.agent.config.node.id;
                if !self
                    .faults
                    .failed(node_id, &self.keys.node, "registration", &e)
                {
                    debug!(retry_in_ms, "registering again later");
                }
            }
        }
        Some(())
    }

    /// The record is written under lease `id`: counts and says so, and revokes the
    /// previous run's lease when this one replaced it.
    async fn registered(&mut self, id: LeaseId, taking_up: bool) {
        let m = &self.agent.config.metrics;
        self.faults.succeeded(&self.agent.config.node.id);
        m.reported();
        m.registrations.inc();
        m.registered.set(1);
        self.last_written = Some((self.d.clone(), Instant::now()));
        self.agent.status.send_modify(|s| {
            s.registrations += 1;
            s.writes += 1;
            s.lease = Some(id);
            s.written = Some(self.d.clone());
        });
        let ttl = self.agent.config.ttl;
        if taking_up && self.resume == Some(id) {
            info!(node_id = %self.agent.config.node.id, lease = format_args!("{id:x}"), ttl_secs = ttl.as_secs(), "registered: took up the lease of the previous run");
        } else {
            info!(node_id = %self.agent.config.node.id, lease = format_args!("{id:x}"), ttl_secs = ttl.as_secs(), "registered");
        }
        self.resume = None;
        if let Some(old) = self.superseded.take() {
            // The record lives under the new lease now; the old one holds
            // nothing of ours.
            if let Err(e) = lease_revoke(&*self.agent.kv, old).await {
                debug!(error = %e, "revoking the previous run's lease failed; it expires with its TTL");
            }
        }
    }

    /// Renews the lease when a renewal is due. `Some(false)` when the lease was lost
    /// (the next turn registers again), `None` when `cancel` fires meanwhile.
    async fn keep_alive(&mut self) -> Option<bool> {
        let renewal = or_cancel(&self.cancel, self.lease.renew(&*self.agent.kv)).await?;
        let m = &self.agent.config.metrics;
        match renewal {
            Renewal::NotDue => {}
            Renewal::Renewed => {
                m.lease_renewals.inc();
                m.etcd_connected.set(1);
            }
            Renewal::Lost(why) => {
                m.registered.set(0);
                warn!(node_id = %self.agent.config.node.id, "lease lost ({why}), registering again");
                self.agent.status.send_modify(|s| s.lease = None);
                return Some(false);
            }
            Renewal::Failed(e) => {
                m.etcd_connected.set(0);
                let node_id = &self.agent.config.node.id;
                self.faults
                    .failed(node_id, &self.keys.node, "keep-alive", &e);
            }
        }
        Some(true)
    }

    /// Writes the record under the lease when the report policy asks for it. `None`
    /// when `cancel` fires meanwhile.
    async fn report(&mut self) -> Option<()> {
        let Some(id) = self.lease.id() else {
            return Some(());
        };
        let last = self.last_written.as_ref().map(|(w, at)| (w, *at));
        let config = &self.agent.config;
        if config
            .policy
            .should_write(last, &self.d, config.node.capacity, Instant::now())
        {
            let value = self.agent.record(&self.d).to_json();
            let put = self.agent.kv.put(&self.keys.node, value, Some(id));
            let result = or_cancel(&self.cancel, put).await?;
            let m = &self.agent.config.metrics;
            match result {
                Ok(_) => {
                    self.faults.succeeded(&self.agent.config.node.id);
                    m.reported();
                    self.last_written = Some((self.d.clone(), Instant::now()));
                    self.agent.status.send_modify(|s| {
                        s.writes += 1;
                        s.written = Some(self.d.clone());
                    });
                    debug!(
                        connections = self.d.connections,
                        healthy = self.d.healthy,
                        state = self.d.state.as_str(),
                        "reported"
                    );
                }
                Err(KvError::LeaseNotFound(_)) => {
                    m.registered.set(0);
                    warn!(node_id = %self.agent.config.node.id, "lease expired, registering again");
                    self.lease.lost();
                    self.agent.status.send_modify(|s| s.lease = None);
                }
                Err(e) => {
                    m.etcd_connected.set(0);
                    let node_id = &self.agent.config.node.id;
                    self.faults.failed(node_id, &self.keys.node, "report", &e);
                }
            }
        }
        Some(())
    }

    /// Stops the tasks, gives a migrate signal still due the grace to go out, records
    /// the applied command's outcome, then leaves: marks the node draining and revokes
    /// the lease, or (with a state file and a gateway that serves) keeps it for the
    /// next start.
    pub(super) async fn shutdown(mut self) {
        self.tasks.stop.cancel();
        self.tasks.tracker.close();
        self.tasks.hooks.close();
        self.agent.config.metrics.registered.set(0);
        // With a state file, a stop while the gateway serves is a restart of the agent
        // alone: the record stays under its lease for the next start to take up.
        let restart = self
            .agent
            .stays_for_restart(self.lease.id(), &self.d, &self.http)
            .await;
        // A planned departure, said before anything else: `draining` takes the node
        // out of every answer while it still runs, and routers count a node that left
        // draining as planned (a rolling restart is not a crash: it never trips their
        // protect threshold, nor is the node served again while they hold).
        let marked = match self.lease.id() {
            Some(id) if restart.is_none() => {
                self.agent.mark_leaving(&self.keys.node, id, &self.d).await
            }
            _ => None,
        };
        self.deliver_pending_signal().await;
        self.join_tasks().await;
        self.save_applied().await;
        if let (Some(state), Some(path)) = (restart, &self.agent.config.state_file) {
            let node_id = &self.agent.config.node.id;
            match state.save(path) {
                Ok(()) => {
                    info!(node_id = %node_id, lease = format_args!("{:x}", state.lease), ttl_secs = state.ttl_secs, file = %path.display(), "stopped for a restart: lease kept, the record stays until the next start takes it up or its TTL runs out")
                }
                Err(e) => {
                    warn!(node_id = %node_id, error = %e, "could not keep the lease for the next start; the record stays until its TTL runs out")
                }
            }
            return;
        }
        self.leave(marked).await;
    }

    /// Waits, up to [`SHUTDOWN_GRACE`], for a migrate signal still due: the hook worker
    /// ends once it is delivered (or replaced), or when the grace is over.
    async fn deliver_pending_signal(&mut self) {
        let pending = |d: &Dynamic| {
            d.hook
                .as_ref()
                .is_some_and(|h| matches!(h.state, HookState::Delivering | HookState::Retrying))
        };
        if self.has_hook && pending(&self.d) {
            info!(node_id = %self.agent.config.node.id, "delivering the pending migrate signal before exit");
        }
        let grace = tokio::time::sleep(SHUTDOWN_GRACE);
        tokio::pin!(grace);
        while self.has_hook && pending(&self.d) {
            tokio::select! {
                _ = &mut grace => {
                    warn!(node_id = %self.agent.config.node.id, "migrate signal still undelivered after the shutdown grace; the next start resumes it");
                    break;
                }
                st = self.links.hook_status.recv() => match st {
                    Some(st) => take_hook_status(&mut self.d, &mut self.applied, st),
                    None => break,
                },
            }
        }
    }

    /// Stops the hook worker, waits up to a second for every task, and takes the hook
    /// statuses still queued.
    async fn join_tasks(&mut self) {
        self.tasks.hooks_stop.cancel();
        if tokio::time::timeout(Duration::from_secs(1), async {
            self.tasks.tracker.wait().await;
            self.tasks.hooks.wait().await;
        })
        .await
        .is_err()
        {
            warn!(node_id = %self.agent.config.node.id, "tasks still running after the shutdown grace");
        }
        while let Ok(st) = self.links.hook_status.try_recv() {
            take_hook_status(&mut self.d, &mut self.applied, st);
        }
    }

    /// Writes the applied command's outcome as it stands, for the next start.
    async fn save_applied(&self) {
        if let Some(a) = self
            .applied
            .as_ref()
            .filter(|a| Some(*a) != self.applied_written.as_ref())
        {
            match tokio::time::timeout(
                Duration::from_secs(2),
                self.agent.kv.put(&self.keys.applied, a.to_json(), None),
            )
            .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    warn!(node_id = %self.agent.config.node.id, error = %e, "could not record the applied command's outcome")
                }
                Err(_) => {
                    warn!(node_id = %self.agent.config.node.id, "recording the applied command's outcome timed out")
                }
            }
        }
    }

    /// The node leaves: the state file goes, and once every router has had the grace
    /// to see the `draining` mark (written at `marked`), the lease is revoked.
    async fn leave(&mut self, marked: Option<Instant>) {
        let node_id = &self.agent.config.node.id;
        if let Some(path) = &self.agent.config.state_file {
            if let Err(e) = crate::restart::RestartState::remove(path) {
                warn!(node_id = %node_id, error = %e, "could not remove the state file");
            }
        }
        if self.lease.id().is_some() {
            // Every router has had the grace to see the `draining` mark.
            if let Some(at) = marked {
                tokio::time::sleep_until(at + self.agent.config.leave_grace).await;
            }
            match self
                .lease
                .revoke(&*self.agent.kv, Duration::from_secs(2))
                .await
            {
                Ok(()) => {
                    info!(node_id = %node_id, "lease revoked, node deregistered")
                }
                Err(e) => {
                    warn!(node_id = %node_id, error = %e, "lease revoke failed; the key expires with its TTL")
                }
            }
        }
    }
}

/// Revokes `lease` within 2 s.
async fn lease_revoke(kv: &dyn registry::Kv, lease: LeaseId) -> Result<(), KvError> {
    tokio::time::timeout(Duration::from_secs(2), kv.revoke(lease))
        .await
        .unwrap_or_else(|_| Err(KvError::Unavailable("revoke: no answer within 2 s".into())))
}
