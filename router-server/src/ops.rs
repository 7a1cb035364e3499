//! Fleet operations shared by the admin API and `ctl`: issuing commands, listing nodes,
//! and planning a rebalance.

use std::collections::BTreeMap;

use registry::audit::{self, Author};
use registry::binding::{self, Binding};
use registry::kv::KvError;
use registry::record::{validate_id, IpFamily};
use registry::{
    now_ms, Command, CommandAction, HookState, Kv, Layout, NodeRecord, NodeState, Proto,
};
use serde::Serialize;

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpsError {
    /// The node id is malformed.
    #[error("invalid node id: {0}")]
    BadId(String),
    /// No such node is registered.
    #[error("node {0:?} is not registered")]
    UnknownNode(String),
    /// `percent` out of 1-100.
    #[error("percent {0} is not 1-100")]
    BadPercent(i64),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] KvError),
    /// An operation that waits gave up before its goal was reached.
    #[error("{0}")]
    GaveUp(String),
}

/// A fresh, unique command id: `c-{ms}-{random}`.
pub fn new_command_id() -> String {
    format!("c-{}-{:06x}", now_ms(), rand::random::<u32>() & 0xff_ffff)
}

/// Writes a command for `node` after checking the node exists, and records it in the
/// audit trail as `who`'s. Nothing is written when a check fails.
pub async fn issue(
    kv: &dyn Kv,
    layout: &Layout,
    node: &str,
    action: CommandAction,
    percent: Option<i64>,
    who: &Author,
) -> Result<Command, OpsError> {
    validate_id(node).map_err(|e| OpsError::BadId(e.to_string()))?;
    let percent = match (action, percent) {
        (CommandAction::Migrate, Some(p @ 1..=100)) => Some(p as u8),
        (CommandAction::Migrate, Some(p)) => return Err(OpsError::BadPercent(p)),
        (CommandAction::Migrate, None) => return Err(OpsError::BadPercent(0)),
        _ => None,
    };
    let Some(record) = kv.get(&layout.node_key(node)).await? else {
        return Err(OpsError::UnknownNode(node.to_string()));
    };
    let cmd = Command {
        id: new_command_id(),
        action,
        percent,
        issued_ms: Some(now_ms()),
        // What the node reported when asked to move clients: `rebalance` projects the
        // move from it until the node's reports show it.
        from_connections: NodeRecord::parse(node, &record.value)
            .ok()
            .filter(|_| action != CommandAction::Serve)
            .map(|r| r.connections),
    };
    let key = layout.command_key(node);
    let before = kv.get(&key).await?.map(|kv| kv.value);
    let after = cmd.to_json();
    kv.put(&key, after.clone(), None).await?;
    audit::record(
        kv,
        layout,
        who,
        action.as_str(),
        &key,
        before.as_deref(),
        Some(&after),
    )
    .await?;
    Ok(cmd)
}

/// Every registered node (valid records inside their bindings) and the invalid keys
/// with reasons, as routers judge them (except `require_bindings`, a router's setting:
/// an unbound node is listed as valid here).
pub async fn list_nodes(
    kv: &dyn Kv,
    layout: &Layout,
) -> Result<(Vec<NodeRecord>, Vec<(String, String)>), KvError> {
    let listing = kv.list(&layout.nodes_prefix()).await?;
    let bindings_prefix = layout.bindings_prefix();
    let bindings: std::collections::HashMap<String, Result<Binding, String>> = kv
        .list(&bindings_prefix)
        .await?
        .kvs
        .into_iter()
        .map(|e| {
            let id = e
                .key
                .strip_prefix(&bindings_prefix)
                .unwrap_or(&e.key)
                .to_string();
            let parsed = Binding::parse(&e.value).map_err(|err| err.to_string());
            (id, parsed)
        })
        .collect();
    let mut nodes = Vec::new();
    let mut invalid = Vec::new();
    for e in listing.kvs {
        match layout
            .node_id(&e.key)
            .and_then(|id| NodeRecord::parse(id, &e.value))
        {
            Ok(r) => match bindings.get(&r.id) {
                None => nodes.push(r),
                Some(Ok(b)) => match b.check(&r) {
                    Ok(()) => nodes.push(r),
                    Err(v) => invalid.push((e.key, binding::refusal(&v))),
                },
                Some(Err(err)) => {
                    let reason = binding::broken_refusal(&layout.binding_key(&r.id), err);
                    invalid.push((e.key, reason));
                }
            },
            Err(err) => invalid.push((e.key, err.to_string())),
        }
    }
    sort_for_display(&mut nodes);
    Ok((nodes, invalid))
}

/// Region, then load (highest first), then id.
pub fn sort_for_display(nodes: &mut [NodeRecord]) {
    nodes.sort_by(display_order);
}

/// The order of [`sort_for_display`]: by region, then most loaded first, then id.
pub fn display_order(a: &NodeRecord, b: &NodeRecord) -> std::cmp::Ordering {
    a.region
        .cmp(&b.region)
        .then(b.load().total_cmp(&a.load()))
        .then(a.id.cmp(&b.id))
}

/// One step of a rebalance plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanStep {
    /// The hot node.
    pub node: String,
    /// Its region.
    pub region: String,
    /// Its load now.
    pub load: f64,
    /// The mean load (capacity-weighted) of the nodes that can take its clients: the
    /// serving, healthy nodes of its region that serve every protocol and address
    /// family it serves (its pool), itself included.
    pub region_mean: f64,
    /// Nodes in that pool.
    pub pool: usize,
    /// Clients to move.
    pub move_connections: u64,
    /// The migrate percentage that moves them.
    pub percent: u8,
}

/// A migrate or drain issued earlier whose effect the node's reports do not show yet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pending {
    /// The node.
    pub node: String,
    /// Its region.
    pub region: String,
    /// The command id.
    pub command: String,
    /// `migrate` or `drain`.
    pub action: CommandAction,
    /// Clients it asks the node to move, in percent.
    pub percent: u8,
    /// When it was issued (wall-clock ms).
    pub issued_ms: Option<u64>,
    /// `not_applied` until the agent applies it, then its hook delivery state.
    pub state: String,
    /// Connections the node reports now.
    pub connections: u64,
    /// Connections once the move is done, as projected from the count when issued.
    pub projected_connections: u64,
}

/// A rebalance plan: the new steps, and the commands still in flight that it counted
/// and does not issue again.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Plan {
    /// Migrates to issue.
    pub steps: Vec<PlanStep>,
    /// Commands issued before whose effect is not in the reports yet.
    pub pending: Vec<Pending>,
}

/// Default tolerance: nodes within 5 load points of their pool's mean are left alone.
pub const DEFAULT_TOLERANCE: f64 = 0.05;

/// How long after a migrate signal reached the gateway its clients are assumed to be
/// still moving (reconnecting through the routers with their backoff): until then
/// the node's reports may not show the move, and the command stays pending.
pub const SETTLE_MS: u64 = 60_000;

/// Every (protocol, family) a node serves.
fn capabilities(n: &NodeRecord) -> impl Iterator<Item = (Proto, IpFamily)> + '_ {
    Proto::ALL.into_iter().flat_map(move |p| {
        [IpFamily::V4, IpFamily::V6]
            .into_iter()
            .filter(move |&f| n.ports.get(p).is_some() && n.addr_for(Some(f)).is_some())
            .map(move |f| (p, f))
    })
}

/// True when `m` can take every client `n` has: same region, and every protocol and
/// address family of `n`.
fn can_take(m: &NodeRecord, n: &NodeRecord) -> bool {
    m.region == n.region
        && capabilities(n).all(|(p, f)| m.ports.get(p).is_some() && m.addr_for(Some(f)).is_some())
}

/// The command in flight for `node`, if `current` (its `P/commands/{id}`) is a
/// migrate or drain whose effect its reports cannot show yet: not applied, its signal
/// not delivered, or delivered less than [`SETTLE_MS`] ago.
fn pending_of(node: &NodeRecord, current: &Command, now: u64) -> Option<Pending> {
    if current.move_percent() == 0 {
        return None;
    }
    let applied = node.applied_command.as_deref() == Some(current.id.as_str());
    let hook = node.hook.as_ref().filter(|h| h.command == current.id);
    let state = match (applied, hook) {
        (false, _) => "not_applied".to_string(),
        (true, Some(h)) => h.state.as_str().to_string(),
        (true, None) => "applied".to_string(),
    };
    let in_flight = match (applied, hook) {
        (false, _) => true,
        (true, Some(h)) => match h.state {
            HookState::Delivering | HookState::Retrying => true,
            HookState::Delivered => now.saturating_sub(h.since_ms) < SETTLE_MS,
            // Nothing moves: no gateway was told.
            HookState::Superseded | HookState::NoHook => false,
        },
        (true, None) => now.saturating_sub(current.issued_ms.unwrap_or(0)) < SETTLE_MS,
    };
    if !in_flight {
        return None;
    }
    let percent = current.move_percent();
    let from = current.from_connections.unwrap_or(node.connections);
    let after = from - (from * percent as u64).div_ceil(100).min(from);
    Some(Pending {
        node: node.id.clone(),
        region: node.region.clone(),
        command: current.id.clone(),
        action: current.action,
        percent,
        issued_ms: current.issued_ms,
        state,
        connections: node.connections,
        projected_connections: after.min(node.connections),
    })
}

/// The serving and healthy nodes more than `tolerance` above the mean load of their
/// pool (the nodes that can take their clients: see [`PlanStep::region_mean`]), with
/// the share of their clients that must move for the pool to even out. Moved clients
/// reconnect through normal scheduling, which sends them to the least loaded nodes, so
/// new empty nodes fill up.
///
/// `commands` are the current commands by node. A node with a migrate or drain still
/// in flight ([`Pending`]) gets no new step: moves only shift clients within a pool,
/// so the pool's mean is the same before and after them, and the node's projected
/// count is already at it. Running the plan again right after issuing it issues
/// nothing.
pub fn rebalance_plan(
    nodes: &[NodeRecord],
    commands: &BTreeMap<String, Command>,
    now: u64,
    tolerance: f64,
) -> Plan {
    let mut plan = Plan::default();
    let mut draining = std::collections::HashSet::new();
    for n in nodes {
        if let Some(p) = commands.get(&n.id).and_then(|c| pending_of(n, c, now)) {
            if p.action == CommandAction::Drain {
                draining.insert(n.id.as_str());
            }
            plan.pending.push(p);
        }
    }
    let live: Vec<&NodeRecord> = nodes
        .iter()
        .filter(|n| n.state == NodeState::Serving && n.healthy && !draining.contains(n.id.as_str()))
        .collect();
    for n in &live {
        if n.connections == 0 || plan.pending.iter().any(|p| p.node == n.id) {
            continue;
        }
        let pool: Vec<&&NodeRecord> = live
            .iter()
            .filter(|m| m.id == n.id || can_take(m, n))
            .collect();
        let conns: u128 = pool.iter().map(|m| m.connections as u128).sum();
        let cap: u128 = pool.iter().map(|m| m.capacity as u128).sum();
        let mean = conns as f64 / cap as f64;
        let load = n.load();
        if load <= mean + tolerance {
            continue;
        }
        let target = (mean * n.capacity as f64).floor() as u64;
        let excess = n.connections.saturating_sub(target);
        let percent = ((excess as f64 / n.connections as f64) * 100.0)
            .ceil()
            .clamp(1.0, 100.0) as u8;
        plan.steps.push(PlanStep {
            node: n.id.clone(),
            region: n.region.clone(),
            load,
            region_mean: mean,
            pool: pool.len(),
            move_connections: excess,
            percent,
        });
    }
    plan.steps
        .sort_by(|a, b| a.region.cmp(&b.region).then(a.node.cmp(&b.node)));
    plan
}

/// The current command of every node that has one (`P/commands/`); unreadable ones
/// are skipped (the agent ignores them too).
pub async fn list_commands(
    kv: &dyn Kv,
    layout: &Layout,
) -> Result<BTreeMap<String, Command>, KvError> {
    let prefix = layout.commands_prefix();
    let listing = kv.list(&prefix).await?;
    Ok(listing
        .kvs
        .into_iter()
        .filter_map(|e| {
            let node = e.key.strip_prefix(&prefix)?.to_string();
            Some((node, Command::parse(&e.value).ok()?))
        })
        .collect())
}

/// Plans a rebalance from the registry and, unless `dry_run`, issues its steps.
/// Returns the plan and the commands issued (node, command).
pub async fn rebalance(
    kv: &dyn Kv,
    layout: &Layout,
    tolerance: f64,
    dry_run: bool,
    who: &Author,
) -> Result<(Plan, Vec<(String, Command)>), OpsError> {
    let (nodes, _) = list_nodes(kv, layout).await?;
    let commands = list_commands(kv, layout).await?;
    let plan = rebalance_plan(&nodes, &commands, now_ms(), tolerance);
    let mut issued = Vec::new();
    if !dry_run {
        for step in &plan.steps {
            let cmd = issue(
                kv,
                layout,
                &step.node,
                CommandAction::Migrate,
                Some(step.percent as i64),
                who,
            )
            .await?;
            issued.push((step.node.clone(), cmd));
        }
    }
    Ok((plan, issued))
}

#[cfg(test)]
mod tests;
