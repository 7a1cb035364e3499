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
mod tests {
    use super::*;
    use proptest::prelude::*;
    use registry::Ports;

    fn node(id: &str, region: &str, conns: u64, cap: u64) -> NodeRecord {
        NodeRecord::new(
            id,
            "10.0.0.1".parse().unwrap(),
            Ports {
                tcp: Some(1),
                ws: None,
                wss: None,
            },
            region,
            cap,
            conns,
        )
    }

    #[test]
    fn scale_out_plan() {
        let mut fleet: Vec<NodeRecord> = (0..4)
            .map(|i| node(&format!("hot{i}"), "r", 900, 1000))
            .collect();
        fleet.push(node("new0", "r", 0, 1000));
        fleet.push(node("new1", "r", 0, 1000));
        fleet.push(node("other", "x", 10, 1000));
        let none = BTreeMap::new();
        let plan = rebalance_plan(&fleet, &none, 0, DEFAULT_TOLERANCE);
        assert_eq!(plan.steps.len(), 4);
        for s in &plan.steps {
            assert!((s.region_mean - 0.6).abs() < 1e-9);
            assert_eq!(s.move_connections, 300);
            assert_eq!(s.percent, 34, "300 of 900, rounded up");
            assert_eq!(s.pool, 6);
        }
        assert!(
            rebalance_plan(&fleet[..4], &none, 0, DEFAULT_TOLERANCE)
                .steps
                .is_empty(),
            "an even region needs nothing"
        );
    }

    fn migrate(id: &str, percent: u8, from: u64, issued_ms: u64) -> Command {
        Command {
            id: id.into(),
            action: CommandAction::Migrate,
            percent: Some(percent),
            issued_ms: Some(issued_ms),
            from_connections: Some(from),
        }
    }

    #[test]
    fn a_plan_in_flight_is_not_issued_again() {
        let mut fleet: Vec<NodeRecord> = (0..3)
            .map(|i| node(&format!("hot{i}"), "r", 900, 1000))
            .collect();
        fleet.push(node("new", "r", 0, 1000));
        let t0 = 1_000_000;
        let first = rebalance_plan(&fleet, &BTreeMap::new(), t0, DEFAULT_TOLERANCE);
        assert_eq!(first.steps.len(), 3);
        assert!(first.steps.iter().all(|s| s.percent == 25), "{first:?}");
        // Issued; nothing applied yet, or applied and delivered a second ago.
        let commands: BTreeMap<String, Command> = first
            .steps
            .iter()
            .map(|s| {
                (
                    s.node.clone(),
                    migrate(&format!("c-{}", s.node), s.percent, 900, t0),
                )
            })
            .collect();
        let again = rebalance_plan(&fleet, &commands, t0 + 1000, DEFAULT_TOLERANCE);
        assert!(again.steps.is_empty(), "{again:?}");
        assert_eq!(again.pending.len(), 3);
        assert!(again
            .pending
            .iter()
            .all(|p| p.state == "not_applied" && p.projected_connections == 675));
        for n in &mut fleet[..3] {
            n.applied_command = Some(format!("c-{}", n.id));
            n.hook = Some(registry::HookStatus {
                command: format!("c-{}", n.id),
                percent: 25,
                state: HookState::Delivered,
                since_ms: t0 + 500,
                attempts: 1,
                error: None,
            });
        }
        let delivered = rebalance_plan(&fleet, &commands, t0 + 2000, DEFAULT_TOLERANCE);
        assert!(delivered.steps.is_empty());
        assert!(delivered.pending.iter().all(|p| p.state == "delivered"));
        // Settled: reports are the truth again (still 900: the clients did not move).
        let settled = rebalance_plan(&fleet, &commands, t0 + 500 + SETTLE_MS, DEFAULT_TOLERANCE);
        assert!(settled.pending.is_empty());
        assert_eq!(settled.steps.len(), 3);
        // A hook still failing keeps its command in flight however old.
        for n in &mut fleet[..3] {
            let h = n.hook.as_mut().unwrap();
            h.state = HookState::Retrying;
        }
        let retrying = rebalance_plan(&fleet, &commands, t0 + 10 * SETTLE_MS, DEFAULT_TOLERANCE);
        assert!(retrying.steps.is_empty());
        assert!(retrying.pending.iter().all(|p| p.state == "retrying"));
    }

    #[test]
    fn pools_follow_protocol_and_family() {
        let v6 = |id: &str, conns: u64| {
            let mut n = node(id, "r", conns, 1000);
            n.ip = "2001:db8::1".parse().unwrap();
            n.ports = Ports {
                tcp: None,
                ws: None,
                wss: Some(443),
            };
            n
        };
        // Two wss-over-IPv6 nodes at 900 and 800 among tcp-only IPv4 nodes at 0: the
        // wss nodes' clients cannot go to the tcp nodes.
        let mut fleet = vec![v6("wss-a", 900), v6("wss-b", 800)];
        fleet.extend((0..4).map(|i| node(&format!("tcp{i}"), "r", 0, 1000)));
        let plan = rebalance_plan(&fleet, &BTreeMap::new(), 0, DEFAULT_TOLERANCE);
        assert!(
            plan.steps.is_empty(),
            "850 mean, both within tolerance: {plan:?}"
        );
        fleet[1].connections = 100;
        let plan = rebalance_plan(&fleet, &BTreeMap::new(), 0, DEFAULT_TOLERANCE);
        assert_eq!(plan.steps.len(), 1);
        let s = &plan.steps[0];
        assert_eq!(
            (s.node.as_str(), s.pool, s.move_connections),
            ("wss-a", 2, 400)
        );
        // A dual-stack node serving tcp and wss can take them.
        let mut dual = node("dual", "r", 0, 1000);
        dual.ipv6 = Some("2001:db8::2".parse().unwrap());
        dual.ports.wss = Some(443);
        fleet.push(dual);
        let plan = rebalance_plan(&fleet, &BTreeMap::new(), 0, DEFAULT_TOLERANCE);
        assert_eq!(plan.steps[0].pool, 3);
    }

    proptest! {
        #[test]
        fn plans_move_hot_nodes_toward_the_mean(loads in proptest::collection::vec((0u64..1000, 1u64..1000), 1..20),
                                                tol in 0.0f64..0.2) {
            let fleet: Vec<NodeRecord> = loads.iter().enumerate()
                .map(|(i, (c, cap))| node(&format!("n{i}"), "r", (*c).min(*cap), *cap)).collect();
            let plan = rebalance_plan(&fleet, &BTreeMap::new(), 0, tol);
            for s in &plan.steps {
                let n = fleet.iter().find(|n| n.id == s.node).unwrap();
                prop_assert!(n.load() > s.region_mean + tol);
                prop_assert!((1..=100).contains(&s.percent));
                let after = n.connections - (n.connections * s.percent as u64).div_ceil(100).min(n.connections);
                // Moving `percent` lands the node at or just below the mean.
                prop_assert!(after as f64 / n.capacity as f64 <= s.region_mean + 1e-9 + 1.0 / n.capacity as f64);
            }
        }
    }

    #[tokio::test]
    async fn listed_nodes_are_judged_against_their_bindings() {
        let kv = registry::memory::MemoryKv::new();
        let layout = Layout::new("/t");
        for (id, cap) in [("a", 100), ("b", 100), ("c", 100), ("d", 100)] {
            kv.put(&layout.node_key(id), node(id, "r", 1, cap).to_json(), None)
                .await
                .unwrap();
        }
        kv.put(
            &layout.binding_key("b"),
            br#"{"max_capacity": 10}"#.to_vec(),
            None,
        )
        .await
        .unwrap();
        kv.put(
            &layout.binding_key("c"),
            br#"{"ips": ["nope"]}"#.to_vec(),
            None,
        )
        .await
        .unwrap();
        kv.put(
            &layout.binding_key("d"),
            br#"{"regions": ["r"]}"#.to_vec(),
            None,
        )
        .await
        .unwrap();
        let (nodes, invalid) = list_nodes(&*kv, &layout).await.unwrap();
        let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["a", "d"]);
        assert_eq!(
            invalid[0],
            (
                "/t/nodes/b".to_string(),
                "binding: capacity 100 is above max_capacity 10".to_string()
            )
        );
        assert_eq!(invalid[1].0, "/t/nodes/c");
        assert!(
            invalid[1].1.starts_with("binding: /t/bindings/c is broken"),
            "{}",
            invalid[1].1
        );
    }
}
