//! What `/metrics` exports, in the order the exposition lists it: the build, then each
//! subsystem's metrics, registered by the subsystem's own struct (names and help texts
//! are beside the fields, in `http.rs`, `fleet.rs`, `edge.rs`, `admin.rs`, `herd.rs`,
//! `connections.rs`, `registries.rs`, `dns.rs`, `config.rs`).

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Metrics;

/// What this router was built from: `router_build_info{version,commit} 1`.
fn register_build_info(registry: &mut Registry) {
    let build = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
    build
        .get_or_create(&registry::build_info!().labels())
        .set(1);
    registry.register(
        "build_info",
        "1, labelled with the version and git commit this router was built from",
        build,
    );
}

impl Metrics {
    /// Registers every metric in `registry` (the order is the exposition's).
    pub(super) fn register(&self, registry: &mut Registry) {
        register_build_info(registry);
        self.http.register(registry);
        self.fleet.register(registry);
        self.edge.register(registry);
        self.admin.register(registry);
        self.herd.register(registry);
        self.connections.register(registry);
        self.registries.register(registry);
        self.dns.register(registry);
        self.config.register(registry);
        self.feedback.register(registry);
    }
}
