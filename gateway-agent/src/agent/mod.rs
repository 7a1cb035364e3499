//! The agent: its configuration, the handle an embedding gateway drives it through, and
//! [`Agent::run`], a `RunState` loop (`run.rs`) that reports under a lease (`lease.rs`),
//! applies commands (`commands.rs`) and on stop leaves or keeps the lease (`shutdown.rs`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use registry::{now_ms, Kv, Layout, LeaseId, NodeRecord, Ports};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::health::HealthProbe;
use crate::hook::Hook;
use crate::load::LoadSource;
use crate::report::{Dynamic, ReportPolicy};

mod commands;
mod lease;
mod run;
mod samplers;
mod shutdown;

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

    async fn run_inner(self, cancel: CancellationToken) {
        let Some(mut run) = run::RunState::start(self, cancel).await else {
            return;
        };
        while run.step().await.is_some() {}
        run.shutdown().await;
    }
}

#[cfg(test)]
mod tests;
