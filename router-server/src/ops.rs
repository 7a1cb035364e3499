//! Fleet operations shared by the admin API and `ctl`: issuing commands, listing nodes,
//! and planning a rebalance.

use std::collections::BTreeMap;

use registry::kv::KvError;
use registry::record::validate_id;
use registry::{now_ms, Command, CommandAction, Kv, Layout, NodeRecord, NodeState};
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

/// Writes a command for `node` after checking the node exists. Nothing is written
/// when a check fails.
pub async fn issue(
    kv: &dyn Kv,
    layout: &Layout,
    node: &str,
    action: CommandAction,
    percent: Option<i64>,
) -> Result<Command, OpsError> {
    validate_id(node).map_err(|e| OpsError::BadId(e.to_string()))?;
    let percent = match (action, percent) {
        (CommandAction::Migrate, Some(p @ 1..=100)) => Some(p as u8),
        (CommandAction::Migrate, Some(p)) => return Err(OpsError::BadPercent(p)),
        (CommandAction::Migrate, None) => return Err(OpsError::BadPercent(0)),
        _ => None,
    };
    if kv.get(&layout.node_key(node)).await?.is_none() {
        return Err(OpsError::UnknownNode(node.to_string()));
    }
    let cmd = Command {
        id: new_command_id(),
        action,
        percent,
        issued_ms: Some(now_ms()),
    };
    kv.put(&layout.command_key(node), cmd.to_json(), None)
        .await?;
    Ok(cmd)
}

/// Every registered node (valid records) and the invalid keys with reasons.
pub async fn list_nodes(
    kv: &dyn Kv,
    layout: &Layout,
) -> Result<(Vec<NodeRecord>, Vec<(String, String)>), KvError> {
    let listing = kv.list(&layout.nodes_prefix()).await?;
    let mut nodes = Vec::new();
    let mut invalid = Vec::new();
    for e in listing.kvs {
        match layout
            .node_id(&e.key)
            .and_then(|id| NodeRecord::parse(id, &e.value))
        {
            Ok(r) => nodes.push(r),
            Err(err) => invalid.push((e.key, err.to_string())),
        }
    }
    sort_for_display(&mut nodes);
    Ok((nodes, invalid))
}

/// Region, then load (highest first), then id.
pub fn sort_for_display(nodes: &mut [NodeRecord]) {
    nodes.sort_by(|a, b| {
        a.region
            .cmp(&b.region)
            .then(b.load().total_cmp(&a.load()))
            .then(a.id.cmp(&b.id))
    });
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
    /// The region's mean load (capacity-weighted).
    pub region_mean: f64,
    /// Clients to move.
    pub move_connections: u64,
    /// The migrate percentage that moves them.
    pub percent: u8,
}

/// Default tolerance: nodes within 5 load points of their region's mean are left alone.
pub const DEFAULT_TOLERANCE: f64 = 0.05;

/// Per region, the serving and healthy nodes more than `tolerance` above the region's
/// mean load, with the share of their clients that must move for the region to even
/// out. Moved clients reconnect through normal scheduling, which sends them to the
/// least loaded nodes, so new empty nodes fill up.
pub fn rebalance_plan(nodes: &[NodeRecord], tolerance: f64) -> Vec<PlanStep> {
    let mut regions: BTreeMap<&str, Vec<&NodeRecord>> = BTreeMap::new();
    for n in nodes
        .iter()
        .filter(|n| n.state == NodeState::Serving && n.healthy)
    {
        regions.entry(n.region.as_str()).or_default().push(n);
    }
    let mut plan = Vec::new();
    for (region, members) in regions {
        let conns: u128 = members.iter().map(|n| n.connections as u128).sum();
        let cap: u128 = members.iter().map(|n| n.capacity as u128).sum();
        let mean = conns as f64 / cap as f64;
        for n in members {
            let load = n.load();
            if load <= mean + tolerance || n.connections == 0 {
                continue;
            }
            let target = (mean * n.capacity as f64).floor() as u64;
            let excess = n.connections.saturating_sub(target);
            let percent = ((excess as f64 / n.connections as f64) * 100.0)
                .ceil()
                .clamp(1.0, 100.0) as u8;
            plan.push(PlanStep {
                node: n.id.clone(),
                region: region.to_string(),
                load,
                region_mean: mean,
                move_connections: excess,
                percent,
            });
        }
    }
    plan
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
        let plan = rebalance_plan(&fleet, DEFAULT_TOLERANCE);
        assert_eq!(plan.len(), 4);
        for s in &plan {
            assert!((s.region_mean - 0.6).abs() < 1e-9);
            assert_eq!(s.move_connections, 300);
            assert_eq!(s.percent, 34, "300 of 900, rounded up");
        }
        assert!(
            rebalance_plan(&fleet[..4], DEFAULT_TOLERANCE).is_empty(),
            "an even region needs nothing"
        );
    }

    proptest! {
        #[test]
        fn plans_move_hot_nodes_toward_the_mean(loads in proptest::collection::vec((0u64..1000, 1u64..1000), 1..20),
                                                tol in 0.0f64..0.2) {
            let fleet: Vec<NodeRecord> = loads.iter().enumerate()
                .map(|(i, (c, cap))| node(&format!("n{i}"), "r", (*c).min(*cap), *cap)).collect();
            let plan = rebalance_plan(&fleet, tol);
            for s in &plan {
                let n = fleet.iter().find(|n| n.id == s.node).unwrap();
                prop_assert!(n.load() > s.region_mean + tol);
                prop_assert!((1..=100).contains(&s.percent));
                let after = n.connections - (n.connections * s.percent as u64).div_ceil(100).min(n.connections);
                // Moving `percent` lands the node at or just below the mean.
                prop_assert!(after as f64 / n.capacity as f64 <= s.region_mean + 1e-9 + 1.0 / n.capacity as f64);
            }
        }
    }
}
