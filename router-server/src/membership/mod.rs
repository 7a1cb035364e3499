//! The membership pipeline: the registries a router follows, one per data centre,
//! merged into the one snapshot requests read.
//!
//! * [`protect`]: one registry's protect threshold (a mass departure without drains
//!   is held, bounded in time).
//! * [`merge`]: the updater: each registry's views diffed and judged, then merged
//!   (duplicates reported, out-of-reach registries demoted), patching the served
//!   snapshot report by report where it can.
//! * `member`: one registry as the updater holds it (last view, verdict, reach), and
//!   how each round observes its latest view.
//! * [`counts`]: the node-count gauges, kept up to date report by report.
//!
//! The updater writes through [`Outputs`]: the snapshot ([`crate::state::Serving`]),
//! the fleet's status ([`crate::state::FleetStatus`]: the registries' health, the
//! invalid records, protect, the last sync) and its own metrics.

pub mod counts;
mod member;
pub mod merge;
pub mod protect;

use std::sync::Arc;

use registry::{Kv, Layout};

use crate::metrics::{FleetMetrics, HerdMetrics, RegistryMetrics};
use crate::state::{AppState, FleetStatus, Serving};

pub use crate::state::RegistryStatus;
pub use member::Input;
pub use merge::{run_updater, spawn_updater};
pub use protect::{Protect, Verdict};

/// One registry to follow: a data centre's etcd.
#[derive(Clone)]
pub struct Registry {
    /// The DC's name (`default` for `--etcd`), in answers as each gateway's `dc`.
    pub name: Arc<str>,
    /// The store.
    pub kv: Arc<dyn Kv>,
    /// Its key layout.
    pub layout: Layout,
    /// This router's own DC: its health decides `/readyz` and the answers' `stale`.
    pub local: bool,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("name", &self.name)
            .field("prefix", &self.layout.prefix())
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// The one registry of a router started with `--etcd`: `default`, local.
    pub fn single(kv: Arc<dyn Kv>, layout: Layout) -> Registry {
        Registry {
            name: Arc::from("default"),
            kv,
            layout,
            local: true,
        }
    }
}

/// What the snapshot updater writes, and nothing else of the router's.
pub struct Outputs {
    /// The snapshot it serves (and the tie order it builds it with).
    pub serving: Arc<Serving>,
    /// The registries' health, the invalid records, protect, the last sync.
    pub status: Arc<FleetStatus>,
    /// Nodes, region loads, invalid records, the snapshot's revision, protect.
    pub fleet: FleetMetrics,
    /// Each registry's watch, nodes and demotion.
    pub registries: RegistryMetrics,
    /// Snapshot builds.
    pub herd: HerdMetrics,
}

impl Outputs {
    /// The updater's share of the router's handles.
    pub fn of(state: &AppState) -> Outputs {
        Outputs {
            serving: state.serving.clone(),
            status: state.status.clone(),
            fleet: state.metrics.fleet.clone(),
            registries: state.metrics.registries.clone(),
            herd: state.metrics.herd.clone(),
        }
    }
}

/// Publishes each registry's health in the metrics (`router_registry_up`,
/// `router_registry_nodes`, `router_registry_demoted`).
pub fn publish_statuses(metrics: &crate::metrics::RegistryMetrics, statuses: &[RegistryStatus]) {
    for st in statuses {
        let labels = crate::metrics::RegistryLabels {
            registry: st.name.clone(),
        };
        metrics.up.get_or_create(&labels).set(st.connected as i64);
        metrics.nodes.get_or_create(&labels).set(st.nodes as i64);
        metrics
            .demoted
            .get_or_create(&labels)
            .set(if st.dropped { 2 } else { st.demoted as i64 });
    }
}
