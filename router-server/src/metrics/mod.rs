//! Prometheus metrics (`prometheus-client`), rendered at `GET /metrics`.
//!
//! Each subsystem owns its metrics, a struct of its own with the names and help texts
//! beside the fields: [`HttpMetrics`], [`FleetMetrics`], [`EdgeMetrics`],
//! [`AdminMetrics`], [`HerdMetrics`], [`ConnMetrics`], [`RegistryMetrics`],
//! [`DnsMetrics`], [`ConfigMetrics`]. A clone of one counts into the same series, so a subsystem holds a
//! clone of its own and nothing else. [`Metrics`] registers them all, in `register`'s
//! order, into the one registry `/metrics` renders (one registry with the `router`
//! prefix: the names are exactly what they were). Their label sets are in `labels`,
//! the latency histogram in `histogram`.

mod admin;
mod config;
mod connections;
mod edge;
mod feedback;
mod fleet;
mod herd;
mod histogram;
mod http;
mod labels;
mod register;
mod registries;

pub mod dns;

use prometheus_client::registry::Registry;

pub use admin::AdminMetrics;
pub use config::ConfigMetrics;
pub use connections::ConnMetrics;
pub use dns::DnsMetrics;
pub use edge::EdgeMetrics;
pub use feedback::{FeedbackMetrics, NetworkLabels, OutcomeLabels};
pub use fleet::FleetMetrics;
pub use herd::HerdMetrics;
pub use histogram::AtomicHistogram;
pub use http::HttpMetrics;
pub use labels::{
    AlarmLabels, ConnLabels, DnsLabels, DnsRrlLabels, DnsTcpLabels, HookLabels, NodeLabels,
    RegionLabels, RegistryLabels, ReloadLabels, RequestLabels, RouteLabels,
};
pub use registries::RegistryMetrics;

/// Every metric the router exports, by subsystem.
pub struct Metrics {
    registry: Registry,
    /// HTTP requests by route: counts and latency.
    pub http: HttpMetrics,
    /// The fleet as followed: nodes, region loads, invalid records, the snapshot,
    /// the protect threshold.
    pub fleet: FleetMetrics,
    /// The edge and the guard: rate limit, block list, herd budget, forwarded headers,
    /// answers with no gateway.
    pub edge: EdgeMetrics,
    /// The admin API.
    pub admin: AdminMetrics,
    /// Snapshot builds and the live routers herd counts are scaled by.
    pub herd: HerdMetrics,
    /// Client connections and the served certificate.
    pub connections: ConnMetrics,
    /// Per registry (data centre): watch, nodes, demotion, lag, etcd alarms.
    pub registries: RegistryMetrics,
    /// DNS queries, the response-rate limit, DNS-over-TCP connections.
    pub dns: DnsMetrics,
    /// Configuration reloads.
    pub config: ConfigMetrics,
    /// Clients' connect outcomes and the demotions they cause.
    pub feedback: FeedbackMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("router");
        let m = Metrics {
            registry: Registry::default(),
            http: HttpMetrics::default(),
            fleet: FleetMetrics::default(),
            edge: EdgeMetrics::default(),
            admin: AdminMetrics::default(),
            herd: HerdMetrics::default(),
            connections: ConnMetrics::default(),
            registries: RegistryMetrics::default(),
            dns: DnsMetrics::default(),
            config: ConfigMetrics::default(),
            feedback: FeedbackMetrics::default(),
        };
        m.register(&mut registry);
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let _swap = self.fleet.swap.lock().expect("metrics swap lock");
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The Prometheus text format (0.0.4), for scrapers and tools (`promtool check
    /// metrics`) that do not ask for OpenMetrics.
    pub fn render_prometheus(&self) -> String {
        openmetrics_to_prometheus(&self.render())
    }
}

pub use registry::metrics_text::openmetrics_to_prometheus;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_counter_families_by_their_samples() {
        let m = Metrics::default();
        m.edge.rate_limited.inc();
        let text = m.render_prometheus();
        assert!(
            text.contains("# HELP router_rate_limited_total Requests"),
            "{text}"
        );
        assert!(
            text.contains(
                "# TYPE router_rate_limited_total counter\nrouter_rate_limited_total 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE router_registry_connected gauge"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
    }

    /// The exposition names every family, in the order `register` gives, under the
    /// names dashboards and the alert rules in `deploy/` use.
    #[test]
    fn the_exposition_lists_every_family_in_order() {
        let m = Metrics::default();
        // A family shows once it has a series.
        let route = "/gateways";
        m.http
            .requests
            .get_or_create(&RequestLabels { route, status: 200 })
            .inc();
        m.http
            .latency
            .get_or_create(&RouteLabels { route })
            .observe(0.0);
        m.fleet.replace_node_counts(
            [(
                NodeLabels {
                    region: "r".into(),
                    state: "serving".into(),
                    registry: "default".into(),
                },
                1,
            )]
            .into(),
            &[("r".into(), 1, 10)],
        );
        m.fleet.set_hook_counts(&[(registry::HookState::ALL[0], 0)]);
        m.admin
            .actions
            .get_or_create(&RequestLabels { route, status: 200 })
            .inc();
        m.connections
            .closed
            .get_or_create(&ConnLabels { reason: "x" })
            .inc();
        let registry = || RegistryLabels {
            registry: "default".into(),
        };
        m.registries.up.get_or_create(&registry()).set(1);
        m.registries.nodes.get_or_create(&registry()).set(1);
        m.registries.demoted.get_or_create(&registry()).set(0);
        m.registries.set_lag("default", std::time::Duration::ZERO);
        m.registries.set_etcd_alarms("default", &[]);
        m.dns
            .queries
            .get_or_create(&DnsLabels {
                transport: "udp",
                qtype: "A",
                rcode: "NOERROR",
            })
            .inc();
        m.dns
            .rrl
            .get_or_create(&DnsRrlLabels { action: "drop" })
            .inc();
        m.dns
            .tcp_closed
            .get_or_create(&DnsTcpLabels { reason: "x" })
            .inc();
        m.feedback
            .outcomes
            .get_or_create(&OutcomeLabels { result: "accepted" })
            .inc();
        m.feedback
            .demoted
            .get_or_create(&NetworkLabels {
                region: "r".into(),
                isp: String::new(),
            })
            .set(1);
        let text = m.render();
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# HELP "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let expected = [
            "router_build_info",
            "router_http_requests",
            "router_http_request_duration_seconds",
            "router_nodes",
            "router_region_connections",
            "router_region_capacity",
            "router_node_hooks",
            "router_invalid_records",
            "router_invalid_records_seen",
            "router_snapshot_revision",
            "router_snapshot_age_seconds",
            "router_registry_connected",
            "router_protect_active",
            "router_protect_engaged",
            "router_rate_limited",
            "router_no_gateways",
            "router_blocked",
            "router_auto_blocks",
            "router_blocklist_entries",
            "router_herd_uncounted",
            "router_forwarded_untrusted",
            "router_admin_actions",
            "router_admin_throttled",
            "router_snapshot_builds",
            "router_snapshot_build_seconds",
            "router_routers_live",
            "router_herd_scale",
            "router_connections_open",
            "router_connections_max",
            "router_connections_closed_by_server",
            "router_tls_cert_expiry_timestamp_seconds",
            "router_registry_up",
            "router_registry_nodes",
            "router_registry_demoted",
            "router_registry_lag_seconds",
            "router_etcd_alarm",
            "router_dns_queries",
            "router_dns_rrl",
            "router_dns_tcp_closed_by_server",
            "router_config_reloads",
            "router_config_restart_needed",
            "router_isp_db_loads",
            "router_outcomes",
            "router_demotions",
            "router_demoted_gateways",
        ];
        assert_eq!(families, expected);
    }
}
