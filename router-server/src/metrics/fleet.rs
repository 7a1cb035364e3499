//! The fleet as the membership pipeline publishes it: nodes by region and state,
//! region loads, migrate signals, invalid records, the served snapshot, the protect
//! threshold.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{HookLabels, NodeLabels, RegionLabels};

/// What the snapshot updater (`membership`) writes about the fleet it serves.
#[derive(Clone, Default)]
pub struct FleetMetrics {
    /// Nodes by region and state (replaced whole: [`FleetMetrics::replace_node_counts`]).
    pub nodes: Family<NodeLabels, Gauge>,
    /// Nodes by the delivery state of their last migrate signal.
    pub hooks: Family<HookLabels, Gauge>,
    /// Per region, the connections of its serving, healthy nodes.
    pub region_connections: Family<RegionLabels, Gauge>,
    /// Per region, the capacity of its serving, healthy nodes.
    pub region_capacity: Family<RegionLabels, Gauge>,
    /// Held while the node counts are replaced and while rendering.
    pub(super) swap: Arc<Mutex<()>>,
    /// Invalid records currently in the registry.
    pub invalid_records: Gauge,
    /// Invalid record values seen since start.
    pub invalid_seen: Counter,
    /// Registry revision of the served snapshot.
    pub revision: Gauge,
    /// Seconds since the snapshot last followed the registry.
    pub snapshot_age: Gauge<f64, AtomicU64>,
    /// 1 while the registry watch is live.
    pub registry_connected: Gauge,
    /// 1 while the protect threshold holds back an update.
    pub protect_active: Gauge,
    /// Times the protect threshold engaged.
    pub protect_engaged: Counter,
}

impl FleetMetrics {
    /// Replaces the node counts in one step, as a scrape sees them.
    pub fn replace_node_counts(
        &self,
        counts: std::collections::HashMap<NodeLabels, i64>,
        region_loads: &[(String, i64, i64)],
    ) {
        let _swap = self.swap.lock().expect("metrics swap lock");
        self.nodes.clear();
        for (labels, n) in counts {
            self.nodes.get_or_create(&labels).set(n);
        }
        self.region_connections.clear();
        self.region_capacity.clear();
        for (region, conns, cap) in region_loads {
            let labels = RegionLabels {
                region: region.clone(),
            };
            self.region_connections.get_or_create(&labels).set(*conns);
            self.region_capacity.get_or_create(&labels).set(*cap);
        }
    }

    /// Sets the hook gauge: nodes per delivery state (every state, zeros included).
    pub fn set_hook_counts(&self, counts: &[(registry::HookState, i64)]) {
        for (state, n) in counts {
            self.hooks
                .get_or_create(&HookLabels {
                    state: state.as_str(),
                })
                .set(*n);
        }
    }

    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "nodes",
            "Gateway nodes by region and state",
            self.nodes.clone(),
        );
        registry.register(
        "region_connections",
        "Connections of the serving, healthy nodes of a region (divide by router_region_capacity for its mean load)",
        self.region_connections.clone(),
    );
        registry.register(
            "region_capacity",
            "Capacity of the serving, healthy nodes of a region",
            self.region_capacity.clone(),
        );
        registry.register(
        "node_hooks",
        "Nodes by the delivery state of their last migrate signal (retrying: the gateway has not acknowledged it yet)",
        self.hooks.clone(),
    );
        registry.register(
            "invalid_records",
            "Invalid node records currently in the registry",
            self.invalid_records.clone(),
        );
        registry.register(
            "invalid_records_seen",
            "Invalid node record values seen since start",
            self.invalid_seen.clone(),
        );
        registry.register(
            "snapshot_revision",
            "Registry revision of the served snapshot",
            self.revision.clone(),
        );
        registry.register(
            "snapshot_age_seconds",
            "Seconds since the snapshot last followed the registry",
            self.snapshot_age.clone(),
        );
        registry.register(
            "registry_connected",
            "1 while the registry watch is live",
            self.registry_connected.clone(),
        );
        registry.register(
            "protect_active",
            "1 while the protect threshold holds back a registry update",
            self.protect_active.clone(),
        );
        registry.register(
            "protect_engaged",
            "Times the protect threshold engaged",
            self.protect_engaged.clone(),
        );
    }
}
