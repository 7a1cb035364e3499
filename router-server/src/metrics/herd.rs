//! The herd accounting's metrics: snapshot builds, the live routers, and what this
//! router's answers are scaled by.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Written by the snapshot updater (builds) and the router registration (`peers`: the
/// live routers).
#[derive(Clone, Default)]
pub struct HerdMetrics {
    /// Snapshots built since start.
    pub snapshot_builds: Counter,
    /// Seconds spent building snapshots (judging, building, publishing) since start.
    pub snapshot_build_seconds: Counter<f64, AtomicU64>,
    /// Live routers sharing the registry.
    pub routers_live: Gauge,
    /// Clients each of this router's answers counts for in the herd estimate: the live
    /// routers that are answering (see `crate::herd::share`).
    pub scale: Gauge<f64, AtomicU64>,
}

impl HerdMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "snapshot_builds",
            "Snapshots built from registry updates",
            self.snapshot_builds.clone(),
        );
        registry.register(
            "snapshot_build_seconds",
            "Seconds spent turning registry updates into snapshots",
            self.snapshot_build_seconds.clone(),
        );
        registry.register(
            "routers_live",
            "Live routers sharing the registry",
            self.routers_live.clone(),
        );
        registry.register(
            "herd_scale",
            "Clients each of this router's answers counts for in the herd estimate: the live routers less those whose heartbeats show no answers for two listings",
            self.scale.clone(),
        );
    }
}
