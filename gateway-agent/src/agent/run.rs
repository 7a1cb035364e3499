//! The run loop as a state: [`RunState::start`] spawns the agent's tasks and reads what
//! the node applied before; [`RunState::step`] is one turn of the loop. Its writes under
//! the lease are in `lease.rs`, and [`RunState::shutdown`] in `shutdown.rs`.

use std::time::Duration;

use registry::lease::Lease;
use registry::{Applied, HookStatus, LeaseId, NodeState};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Interval};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, Instrument};

use super::commands::{apply_command, resume_applied, take_hook_status, watch_command};
use super::samplers::{probe_health, sample_load};
use super::{Agent, AgentConfig};
use crate::faults::WriteFaults;
use crate::hook::{deliver_latest, MigrateSignal};
use crate::report::Dynamic;

/// Awaits `fut` unless `cancel` fires first.
pub(super) async fn or_cancel<T>(
    cancel: &CancellationToken,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        _ = cancel.cancelled() => None,
        v = fut => Some(v),
    }
}

/// The node's keys in etcd.
pub(super) struct Keys {
    /// `P/nodes/{id}`: the record, under the lease.
    pub(super) node: String,
    /// `P/commands/{id}`: the command for this node.
    pub(super) command: String,
    /// `P/applied/{id}`: what the node applied last, whatever the lease.
    pub(super) applied: String,
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
pub(super) struct Tasks {
    /// Stops the samplers, the prober and the command watcher (a child of `cancel`).
    pub(super) stop: CancellationToken,
    /// The samplers, the prober and the command watcher.
    pub(super) tracker: TaskTracker,
    /// The hook worker, which shutdown does not cut (see [`Tasks::spawn`]).
    pub(super) hooks: TaskTracker,
    /// Stops the hook worker once the shutdown grace is over.
    pub(super) hooks_stop: CancellationToken,
}

/// The loop's ends of the channels to and from its tasks.
pub(super) struct Links {
    /// Migrate signals for the hook worker (the latest replaces one undelivered).
    pub(super) signals: watch::Sender<Option<MigrateSignal>>,
    /// Delivery statuses from the hook worker.
    pub(super) hook_status: mpsc::UnboundedReceiver<HookStatus>,
    /// The command key's values from its watcher (`None`: deleted).
    pub(super) commands: mpsc::Receiver<Option<Vec<u8>>>,
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
    pub(super) agent: Agent,
    pub(super) cancel: CancellationToken,
    pub(super) http: reqwest::Client,
    pub(super) keys: Keys,
    pub(super) tasks: Tasks,
    pub(super) links: Links,
    pub(super) has_hook: bool,
    /// The record's values as they stand.
    pub(super) d: Dynamic,
    /// The command applied last, and the copy of it `P/applied/{id}` holds.
    pub(super) applied: Option<Applied>,
    pub(super) applied_written: Option<Applied>,
    /// When a failed write of `applied` may be tried again.
    pub(super) next_applied_write: Instant,
    pub(super) lease: Lease,
    /// The lease the previous run left (`--state-file`), taken up instead of a grant.
    pub(super) resume: Option<LeaseId>,
    /// The previous run's lease of another TTL, revoked once the record moved off it.
    pub(super) superseded: Option<LeaseId>,
    /// The values last written, and when.
    pub(super) last_written: Option<(Dynamic, Instant)>,
    /// Drives keep-alives, re-registration and the report policy.
    pub(super) tick: Interval,
    /// Why writes fail, named once per change (see `crate::faults`).
    pub(super) faults: WriteFaults,
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
                let (key, signals) = (&self.keys.command, &self.links.signals);
                if let Some(a) = apply_command(key, value, &mut self.d, self.has_hook, signals) {
                    self.applied = Some(a);
                }
            }
            Some(st) = self.links.hook_status.recv() => {
                take_hook_status(&mut self.d, &mut self.applied, st);
            }
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
}
