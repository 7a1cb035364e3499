//! Prometheus metrics (`prometheus-client`), rendered at `GET /metrics`.
//!
//! [`Metrics`] holds every metric the router updates; their names and help texts are in
//! `register`, their label sets in `labels`, the latency histogram in `histogram`.

pub mod dns;
mod histogram;
mod labels;
mod register;

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use histogram::AtomicHistogram;
pub use labels::{
    AlarmLabels, ConnLabels, DnsLabels, DnsRrlLabels, DnsTcpLabels, HookLabels, NodeLabels,
    RegionLabels, RegistryLabels, RequestLabels, RouteLabels,
};

type HistogramFamily = Family<RouteLabels, AtomicHistogram>;

/// Every metric the router exports.
pub struct Metrics {
    registry: Registry,
    /// Requests by route and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Request latency by route.
    pub latency: HistogramFamily,
    /// Nodes by region and state (replaced whole: [`Metrics::replace_node_counts`]).
    pub nodes: Family<NodeLabels, Gauge>,
    /// Nodes by the delivery state of their last migrate signal.
    pub hooks: Family<HookLabels, Gauge>,
    /// Per region, the connections of its serving, healthy nodes.
    pub region_connections: Family<RegionLabels, Gauge>,
    /// Per region, the capacity of its serving, healthy nodes.
    pub region_capacity: Family<RegionLabels, Gauge>,
    /// Held while the node counts are replaced and while rendering.
    swap: std::sync::Mutex<()>,
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
    /// Requests refused by the rate limit.
    pub rate_limited: Counter,
    /// Answers with no eligible gateway.
    pub no_gateways: Counter,
    /// Requests and DNS queries refused because the client's network is blocked.
    pub blocked: Counter,
    /// Networks the router blocked by itself for exceeding their budget again and again.
    pub auto_blocks: Counter,
    /// Block-list entries in force (static, from etcd, automatic).
    pub blocklist_entries: Gauge,
    /// Answers not counted in the herd accounting because their client network had
    /// used its share of the window (`edge.herd_budget`).
    pub herd_uncounted: Counter,
    /// Requests carrying X-Forwarded-For from a peer `trusted_proxies` does not list.
    pub forwarded_untrusted: Counter,
    /// Admin actions by outcome.
    pub admin_actions: Family<RequestLabels, Counter>,
    /// Admin requests refused (429) because their network failed the token too often.
    pub admin_throttled: Counter,
    /// Live routers sharing the registry (herd counts are scaled by it).
    pub routers_live: Gauge,
    /// When the served TLS certificate expires (Unix seconds); 0 without TLS.
    pub tls_cert_expiry: Gauge,
    /// Snapshots built since start.
    pub snapshot_builds: Counter,
    /// Seconds spent building snapshots (judging, building, publishing) since start.
    pub snapshot_build_seconds: Counter<f64, AtomicU64>,
    /// Client connections open now.
    pub connections_open: Gauge,
    /// The connection cap in force.
    pub connections_max: Gauge,
    /// Connections the server closed or refused, by reason.
    pub connections_closed: Family<ConnLabels, Counter>,
    /// Per registry: 1 while its watch is live.
    pub registry_up: Family<RegistryLabels, Gauge>,
    /// Per registry: its valid node records.
    pub registry_nodes: Family<RegistryLabels, Gauge>,
    /// Per registry: 1 while its nodes are demoted (out of reach), 2 once dropped.
    pub registry_demoted: Family<RegistryLabels, Gauge>,
    /// Per registry: how far behind etcd this router's view is (its heartbeat's round
    /// trip, or the wait of one not delivered yet), seconds.
    pub registry_lag: Family<RegistryLabels, Gauge<f64, AtomicU64>>,
    /// Per registry and alarm: 1 while etcd has the alarm raised.
    pub etcd_alarm: Family<AlarmLabels, Gauge>,
    /// DNS queries by transport, type and response code.
    pub dns_queries: Family<DnsLabels, Counter>,
    /// DNS answers held back by the response-rate limit.
    pub dns_rrl: Family<DnsRrlLabels, Counter>,
    /// DNS-over-TCP connections the server closed or refused, by reason.
    pub dns_tcp_closed: Family<DnsTcpLabels, Counter>,
    /// The same DNS counts as totals, for the fleet page.
    pub dns_totals: dns::DnsTotals,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("router");
        let m = Metrics {
            requests: Family::default(),
            latency: Family::default(),
            nodes: Family::default(),
            hooks: Family::default(),
            region_connections: Family::default(),
            region_capacity: Family::default(),
            swap: std::sync::Mutex::new(()),
            invalid_records: Gauge::default(),
            invalid_seen: Counter::default(),
            revision: Gauge::default(),
            snapshot_age: Gauge::default(),
            registry_connected: Gauge::default(),
            protect_active: Gauge::default(),
            protect_engaged: Counter::default(),
            rate_limited: Counter::default(),
            no_gateways: Counter::default(),
            blocked: Counter::default(),
            auto_blocks: Counter::default(),
            blocklist_entries: Gauge::default(),
            herd_uncounted: Counter::default(),
            forwarded_untrusted: Counter::default(),
            admin_actions: Family::default(),
            admin_throttled: Counter::default(),
            routers_live: Gauge::default(),
            tls_cert_expiry: Gauge::default(),
            snapshot_builds: Counter::default(),
            snapshot_build_seconds: Counter::default(),
            connections_open: Gauge::default(),
            connections_max: Gauge::default(),
            connections_closed: Family::default(),
            registry_up: Family::default(),
            registry_nodes: Family::default(),
            registry_demoted: Family::default(),
            registry_lag: Family::default(),
            etcd_alarm: Family::default(),
            dns_queries: Family::default(),
            dns_rrl: Family::default(),
            dns_tcp_closed: Family::default(),
            dns_totals: Default::default(),
            registry: Registry::default(),
        };
        m.register(&mut registry);
        Metrics { registry, ..m }
    }
}

impl Metrics {
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

    /// A registry's lag.
    pub fn set_registry_lag(&self, registry: &str, lag: std::time::Duration) {
        self.registry_lag
            .get_or_create(&RegistryLabels {
                registry: registry.to_string(),
            })
            .set(lag.as_secs_f64());
    }

    /// A registry's etcd alarms: every known alarm is set, 0 or 1.
    pub fn set_etcd_alarms(&self, registry: &str, raised: &[registry::Alarm]) {
        for alarm in registry::Alarm::ALL {
            self.etcd_alarm
                .get_or_create(&AlarmLabels {
                    registry: registry.to_string(),
                    alarm: alarm.as_str(),
                })
                .set(raised.contains(&alarm) as i64);
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let _swap = self.swap.lock().expect("metrics swap lock");
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
        m.rate_limited.inc();
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
}
