//! What `/metrics` exports: each metric's name and help text, registered by subsystem
//! in the order the exposition lists them.

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
        self.register_http(registry);
        self.register_fleet(registry);
        self.register_edge(registry);
        self.register_admin(registry);
        self.register_herd(registry);
        self.register_connections(registry);
        self.register_registries(registry);
        self.register_dns(registry);
    }

    /// HTTP requests: counts and latency by route.
    fn register_http(&self, registry: &mut Registry) {
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            self.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            self.latency.clone(),
        );
    }

    /// The fleet as followed: nodes by region and state, region loads, migrate signals,
    /// invalid records, the served snapshot, the protect threshold.
    fn register_fleet(&self, registry: &mut Registry) {
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

    /// The edge and the guard: rate limit, block list, herd budget, and answers with no gateway.
    fn register_edge(&self, registry: &mut Registry) {
        registry.register(
            "rate_limited",
            "Requests refused by the per-IP rate limit",
            self.rate_limited.clone(),
        );
        registry.register(
            "no_gateways",
            "Answers with no eligible gateway",
            self.no_gateways.clone(),
        );
        registry.register(
            "blocked",
            "Requests and DNS queries refused because the client's network is blocked",
            self.blocked.clone(),
        );
        registry.register(
            "auto_blocks",
            "Client networks blocked automatically for exceeding their budget repeatedly",
            self.auto_blocks.clone(),
        );
        registry.register(
            "blocklist_entries",
            "Block-list entries in force (static, from etcd, automatic)",
            self.blocklist_entries.clone(),
        );
        registry.register(
            "herd_uncounted",
            "Answers left out of the herd accounting: their client network had used its share",
            self.herd_uncounted.clone(),
        );
        registry.register(
            "forwarded_untrusted",
            "Requests with X-Forwarded-For from a peer trusted_proxies does not list (the header is ignored): a load balancer missing from trusted_proxies, or a client forging it",
            self.forwarded_untrusted.clone(),
        );
    }

    /// The admin API.
    fn register_admin(&self, registry: &mut Registry) {
        registry.register(
            "admin_actions",
            "Admin API actions by route and status",
            self.admin_actions.clone(),
        );
        registry.register(
        "admin_throttled",
        "Admin requests refused (429) because their network (/24, /56) failed the token too often",
        self.admin_throttled.clone(),
    );
    }

    /// The herd accounting: snapshot builds and the live routers its counts are scaled by.
    fn register_herd(&self, registry: &mut Registry) {
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
            "Live routers sharing the registry; herd counts are scaled by it",
            self.routers_live.clone(),
        );
    }

    /// Client connections: open, the cap, closed by the server.
    fn register_connections(&self, registry: &mut Registry) {
        registry.register(
            "connections_open",
            "Client connections open now",
            self.connections_open.clone(),
        );
        registry.register(
            "connections_max",
            "The cap on client connections in force",
            self.connections_max.clone(),
        );
        registry.register(
            "connections_closed_by_server",
            "Client connections the server closed or refused, by reason",
            self.connections_closed.clone(),
        );
        registry.register(
            "tls_cert_expiry_timestamp_seconds",
            "When the TLS certificate served on --listen expires (Unix time; 0 without TLS); follows renewals",
            self.tls_cert_expiry.clone(),
        );
    }

    /// Per registry (data centre): its watch, nodes, demotion, lag and etcd alarms.
    fn register_registries(&self, registry: &mut Registry) {
        registry.register(
            "registry_up",
            "1 while the registry's (DC's) watch is live",
            self.registry_up.clone(),
        );
        registry.register(
            "registry_nodes",
            "Valid node records in the registry (DC)",
            self.registry_nodes.clone(),
        );
        registry.register(
        "registry_demoted",
        "1 while the registry (DC) is out of reach and its nodes are offered last, 2 once they are dropped",
        self.registry_demoted.clone(),
    );
        registry.register(
        "registry_lag_seconds",
        "How far behind etcd this router's view of the registry (DC) is: the round trip of its heartbeat through etcd, on its own clock",
        self.registry_lag.clone(),
    );
        registry.register(
        "etcd_alarm",
        "1 while the registry's etcd has the alarm raised (nospace: out of its space quota, writes refused; corrupt: a member's data is corrupt)",
        self.etcd_alarm.clone(),
    );
    }

    /// DNS: queries, the response-rate limit, DNS-over-TCP connections.
    fn register_dns(&self, registry: &mut Registry) {
        registry.register(
            "dns_queries",
            "DNS queries by transport, query type and response code",
            self.dns_queries.clone(),
        );
        registry.register(
            "dns_rrl",
            "DNS answers over the response-rate limit, dropped or sent truncated",
            self.dns_rrl.clone(),
        );
        registry.register(
            "dns_tcp_closed_by_server",
            "DNS-over-TCP connections the server closed or refused, by reason",
            self.dns_tcp_closed.clone(),
        );
    }
}
