//! Prometheus metrics (`prometheus-client`), rendered at `GET /metrics`.

pub mod dns;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// Labels of request counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The matched route, e.g. `/gateways` (static: no allocation per request).
    pub route: &'static str,
    /// HTTP status code.
    pub status: u16,
}

/// Labels of the latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The matched route.
    pub route: &'static str,
}

/// Labels of the node gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    /// Region.
    pub region: String,
    /// `serving`, `draining` or `unhealthy`.
    pub state: String,
    /// The registry (data centre) holding the nodes.
    pub registry: String,
}

/// Labels of the per-registry gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryLabels {
    /// The registry's (DC's) name.
    pub registry: String,
}

/// Labels of the etcd alarm gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlarmLabels {
    /// The registry's (DC's) name.
    pub registry: String,
    /// `nospace` or `corrupt`.
    pub alarm: &'static str,
}

/// Labels of the DNS query counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    /// `udp`, `tcp` or `https`.
    pub transport: &'static str,
    /// `A`, `AAAA`, `SOA`, `NS`, `ANY`, `other`; `malformed` for packets that do not
    /// parse, `response` for responses sent to the server.
    pub qtype: &'static str,
    /// The response code answered, or `dropped`.
    pub rcode: &'static str,
}

/// Labels of the DNS rate-limit counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsRrlLabels {
    /// `drop` (nothing sent) or `slip` (sent truncated and empty).
    pub action: &'static str,
}

/// Labels of the DNS-over-TCP connection counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsTcpLabels {
    /// Why the server closed or refused a connection: `per_network_cap`, `shed_idle`,
    /// `refused_full`, `write_timeout`.
    pub reason: &'static str,
}

/// Labels of the per-region gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegionLabels {
    /// Region.
    pub region: String,
}

/// Labels of the hook gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabels {
    /// `delivering`, `retrying`, `delivered`, `superseded` or `no_hook`.
    pub state: &'static str,
}

/// Labels of the connection counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    /// Why the server closed a connection: `first_byte_timeout`, `tls_handshake`,
    /// `head_timeout`, `idle_timeout`, `body_timeout`, `stalled`, `shed_silent`,
    /// `shed_idle`, `shed_overdue`, `refused_full`, `per_network_cap`.
    pub reason: &'static str,
}

/// Upper bounds of the latency buckets: 50 µs doubling to ~1.6 s.
const LATENCY_BOUNDS: [f64; 16] = {
    let mut b = [0.0; 16];
    let mut i = 0;
    let mut v = 0.00005;
    while i < 16 {
        b[i] = v;
        v *= 2.0;
        i += 1;
    }
    b
};

/// A latency histogram whose `observe` is a few relaxed atomic adds.
///
/// prometheus-client's own `Histogram` takes a mutex per observation; on the request
/// path of every worker thread that lock is contended and parks threads, which cost
/// this server half its throughput in `scripts/bench-http.sh`.
#[derive(Debug, Clone, Default)]
pub struct AtomicHistogram {
    inner: Arc<HistogramInner>,
}

#[derive(Debug, Default)]
struct HistogramInner {
    /// Per-bucket (not cumulative) counts; the last one is +Inf.
    buckets: [AtomicU64; 17],
    count: AtomicU64,
    /// Sum of observations in nanoseconds.
    sum_nanos: AtomicU64,
}

impl AtomicHistogram {
    /// Records one duration in seconds.
    pub fn observe(&self, secs: f64) {
        let i = LATENCY_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BOUNDS.len());
        let h = &self.inner;
        h.buckets[i].fetch_add(1, Ordering::Relaxed);
        h.count.fetch_add(1, Ordering::Relaxed);
        h.sum_nanos
            .fetch_add((secs * 1e9) as u64, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.inner.count.load(Ordering::Relaxed)
    }

    /// `(sum, count, buckets)` as the encoder takes them: each bucket's own count (the
    /// encoder accumulates), the last bound `+Inf`, and `count` the total of the buckets
    /// read, so `_count` equals the `+Inf` bucket even while requests are observed.
    fn buckets(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let h = &self.inner;
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(&h.buckets)
            .map(|(bound, n)| (bound, n.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (sum, count, buckets)
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.buckets();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

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
    /// Admin actions by outcome.
    pub admin_actions: Family<RequestLabels, Counter>,
    /// Admin requests refused (429) because their network failed the token too often.
    pub admin_throttled: Counter,
    /// Live routers sharing the registry (herd counts are scaled by it).
    pub routers_live: Gauge,
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
            admin_actions: Family::default(),
            admin_throttled: Counter::default(),
            routers_live: Gauge::default(),
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
        // What this router was built from: `router_build_info{version,commit} 1`.
        let build = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
        build
            .get_or_create(&registry::build_info!().labels())
            .set(1);
        registry.register(
            "build_info",
            "1, labelled with the version and git commit this router was built from",
            build,
        );
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            m.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            m.latency.clone(),
        );
        registry.register(
            "nodes",
            "Gateway nodes by region and state",
            m.nodes.clone(),
        );
        registry.register(
            "region_connections",
            "Connections of the serving, healthy nodes of a region (divide by router_region_capacity for its mean load)",
            m.region_connections.clone(),
        );
        registry.register(
            "region_capacity",
            "Capacity of the serving, healthy nodes of a region",
            m.region_capacity.clone(),
        );
        registry.register(
            "node_hooks",
            "Nodes by the delivery state of their last migrate signal (retrying: the gateway has not acknowledged it yet)",
            m.hooks.clone(),
        );
        registry.register(
            "invalid_records",
            "Invalid node records currently in the registry",
            m.invalid_records.clone(),
        );
        registry.register(
            "invalid_records_seen",
            "Invalid node record values seen since start",
            m.invalid_seen.clone(),
        );
        registry.register(
            "snapshot_revision",
            "Registry revision of the served snapshot",
            m.revision.clone(),
        );
        registry.register(
            "snapshot_age_seconds",
            "Seconds since the snapshot last followed the registry",
            m.snapshot_age.clone(),
        );
        registry.register(
            "registry_connected",
            "1 while the registry watch is live",
            m.registry_connected.clone(),
        );
        registry.register(
            "protect_active",
            "1 while the protect threshold holds back a registry update",
            m.protect_active.clone(),
        );
        registry.register(
            "protect_engaged",
            "Times the protect threshold engaged",
            m.protect_engaged.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused by the per-IP rate limit",
            m.rate_limited.clone(),
        );
        registry.register(
            "no_gateways",
            "Answers with no eligible gateway",
            m.no_gateways.clone(),
        );
        registry.register(
            "blocked",
            "Requests and DNS queries refused because the client's network is blocked",
            m.blocked.clone(),
        );
        registry.register(
            "auto_blocks",
            "Client networks blocked automatically for exceeding their budget repeatedly",
            m.auto_blocks.clone(),
        );
        registry.register(
            "blocklist_entries",
            "Block-list entries in force (static, from etcd, automatic)",
            m.blocklist_entries.clone(),
        );
        registry.register(
            "herd_uncounted",
            "Answers left out of the herd accounting: their client network had used its share",
            m.herd_uncounted.clone(),
        );
        registry.register(
            "admin_actions",
            "Admin API actions by route and status",
            m.admin_actions.clone(),
        );
        registry.register(
            "admin_throttled",
            "Admin requests refused (429) because their network (/24, /56) failed the token too often",
            m.admin_throttled.clone(),
        );
        registry.register(
            "snapshot_builds",
            "Snapshots built from registry updates",
            m.snapshot_builds.clone(),
        );
        registry.register(
            "snapshot_build_seconds",
            "Seconds spent turning registry updates into snapshots",
            m.snapshot_build_seconds.clone(),
        );
        registry.register(
            "routers_live",
            "Live routers sharing the registry; herd counts are scaled by it",
            m.routers_live.clone(),
        );
        registry.register(
            "connections_open",
            "Client connections open now",
            m.connections_open.clone(),
        );
        registry.register(
            "connections_max",
            "The cap on client connections in force",
            m.connections_max.clone(),
        );
        registry.register(
            "connections_closed_by_server",
            "Client connections the server closed or refused, by reason",
            m.connections_closed.clone(),
        );
        registry.register(
            "registry_up",
            "1 while the registry's (DC's) watch is live",
            m.registry_up.clone(),
        );
        registry.register(
            "registry_nodes",
            "Valid node records in the registry (DC)",
            m.registry_nodes.clone(),
        );
        registry.register(
            "registry_demoted",
            "1 while the registry (DC) is out of reach and its nodes are offered last, 2 once they are dropped",
            m.registry_demoted.clone(),
        );
        registry.register(
            "registry_lag_seconds",
            "How far behind etcd this router's view of the registry (DC) is: the round trip of its heartbeat through etcd, on its own clock",
            m.registry_lag.clone(),
        );
        registry.register(
            "etcd_alarm",
            "1 while the registry's etcd has the alarm raised (nospace: out of its space quota, writes refused; corrupt: a member's data is corrupt)",
            m.etcd_alarm.clone(),
        );
        registry.register(
            "dns_queries",
            "DNS queries by transport, query type and response code",
            m.dns_queries.clone(),
        );
        registry.register(
            "dns_rrl",
            "DNS answers over the response-rate limit, dropped or sent truncated",
            m.dns_rrl.clone(),
        );
        registry.register(
            "dns_tcp_closed_by_server",
            "DNS-over-TCP connections the server closed or refused, by reason",
            m.dns_tcp_closed.clone(),
        );
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

    /// Parses `name_bucket{...le="B"} N` lines of one histogram: (bound text, count).
    fn buckets_of(text: &str, name: &str) -> Vec<(String, u64)> {
        let prefix = format!("{name}_bucket{{");
        text.lines()
            .filter(|l| l.starts_with(&prefix))
            .map(|l| {
                let le = l.split("le=\"").nth(1).unwrap().split('"').next().unwrap();
                let n = l.rsplit(' ').next().unwrap().parse().unwrap();
                (le.to_string(), n)
            })
            .collect()
    }

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

    #[test]
    fn histogram_buckets_are_cumulative_once_and_end_at_inf() {
        let m = Metrics::default();
        let h = m.latency.get_or_create(&RouteLabels { route: "/gateways" });
        for secs in [0.00001, 0.00001, 0.0003, 0.002, 0.5, 100.0] {
            h.observe(secs);
        }
        let text = m.render();
        let b = buckets_of(&text, "router_http_request_duration_seconds");
        assert_eq!(b.len(), LATENCY_BOUNDS.len() + 1, "{text}");
        assert_eq!(b[0], ("0.00005".to_string(), 2), "{text}");
        assert!(
            b.windows(2).all(|w| w[0].1 <= w[1].1),
            "non-decreasing: {b:?}"
        );
        assert_eq!(b.last().unwrap(), &("+Inf".to_string(), 6), "{text}");
        assert!(
            text.contains("router_http_request_duration_seconds_count{route=\"/gateways\"} 6"),
            "{text}"
        );
        let below_1s = b.iter().rev().nth(1).unwrap();
        assert_eq!(
            below_1s.1, 5,
            "the 100 s observation is only in +Inf: {b:?}"
        );
    }
}
