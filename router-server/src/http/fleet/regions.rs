//! `GET /ops/fleet.json`: every node the router serves, by region, each as the page
//! shows it (its page state, load, projected load, ports and report age).

use std::collections::BTreeMap;

use registry::{NodeState, Proto};
use serde::Serialize;

use super::status::{router_status, RouterStatus};
use crate::http::gateways::Api;
use crate::schedule::NodeEntry;

/// `GET /ops/fleet.json`.
#[derive(Debug, Serialize)]
pub struct Fleet {
    /// Wall-clock ms when this was taken.
    pub now_ms: u64,
    /// The router's own status.
    pub router: RouterStatus,
    /// Regions by name, each with its nodes by id.
    pub regions: Vec<Region>,
}

/// One region.
#[derive(Debug, Serialize)]
pub struct Region {
    /// Its name.
    pub region: String,
    /// Its nodes.
    pub nodes: Vec<Node>,
}

/// One node as the page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    /// Node id.
    pub id: String,
    /// The data centre (registry) holding it.
    pub dc: Option<String>,
    /// `serving`, `draining`, `unhealthy` or `overloaded` (projected load at or above
    /// `max_load`): the colour of its bar.
    pub state: &'static str,
    /// Reported connections.
    pub connections: u64,
    /// Capacity.
    pub capacity: u64,
    /// Reported load.
    pub load: f64,
    /// Reported load plus the clients the routers sent since the report.
    pub projected_load: f64,
    /// Ports by protocol.
    pub ports: BTreeMap<&'static str, u16>,
    /// The node's address.
    pub ip: String,
    /// Ms since its last report, when it says when.
    pub report_age_ms: Option<u64>,
    /// The last command applied.
    pub applied_command: Option<String>,
    /// Where its last migrate signal's delivery stands.
    pub hook: Option<&'static str>,
}

/// A node's state as the page colours it, and its projected load.
pub(super) fn page_state(
    e: &NodeEntry,
    herd: &crate::herd::HerdView,
    max_load: f64,
) -> (&'static str, f64) {
    let r = &e.record;
    let projected = e.projected_load(herd);
    let state = if r.state == NodeState::Draining {
        "draining"
    } else if !r.healthy {
        "unhealthy"
    } else if projected >= max_load {
        "overloaded"
    } else {
        "serving"
    };
    (state, projected)
}

/// One node as the page shows it, at `herd`.
fn node(e: &NodeEntry, herd: &crate::herd::HerdView, max_load: f64, now: u64) -> Node {
    let (state, projected) = page_state(e, herd, max_load);
    line(e, state, projected, now)
}

/// One node as the page shows it, in page state `node_state` at `projected` load.
pub(super) fn line(e: &NodeEntry, node_state: &'static str, projected: f64, now: u64) -> Node {
    let r = &e.record;
    Node {
        id: r.id.clone(),
        dc: r.dc.as_deref().map(str::to_string),
        state: node_state,
        connections: r.connections,
        capacity: r.capacity,
        load: r.load(),
        projected_load: projected,
        ports: Proto::ALL
            .into_iter()
            .filter_map(|p| Some((p.as_str(), r.ports.get(p)?)))
            .collect(),
        ip: r.ip.to_string(),
        report_age_ms: r.updated_ms.map(|u| now.saturating_sub(u)),
        applied_command: r.applied_command.clone(),
        hook: r.hook.as_ref().map(|h| h.state.as_str()),
    }
}

/// The fleet as this router serves it now.
pub fn fleet(api: &Api, admin: bool) -> Fleet {
    let snap = api.serving.snapshot.load_full();
    let herd = api.serving.herd_view();
    let now = registry::now_ms();
    let max_load = api.config.load().max_load;
    let mut regions: BTreeMap<&str, Vec<Node>> = BTreeMap::new();
    if let Some(s) = &snap {
        for e in s.nodes.iter() {
            regions
                .entry(&e.record.region)
                .or_default()
                .push(node(e, &herd, max_load, now));
        }
    }
    Fleet {
        now_ms: now,
        router: router_status(api, admin, snap.as_deref()),
        regions: regions
            .into_iter()
            .map(|(region, nodes)| Region {
                region: region.to_string(),
                nodes,
            })
            .collect(),
    }
}
