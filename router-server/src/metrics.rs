//! Prometheus metrics (`prometheus-client`), rendered at `GET /metrics`.

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
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let h = &self.inner;
        let mut cumulative = 0;
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(&h.buckets)
            .map(|(bound, n)| {
                cumulative += n.load(Ordering::Relaxed);
                (bound, cumulative)
            })
            .collect();
        let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, cumulative, &buckets, None)
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
    /// Nodes by region and state.
    pub nodes: Family<NodeLabels, Gauge>,
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
    /// Admin actions by outcome.
    pub admin_actions: Family<RequestLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("router");
        let m = Metrics {
            requests: Family::default(),
            latency: Family::default(),
            nodes: Family::default(),
            invalid_records: Gauge::default(),
            invalid_seen: Counter::default(),
            revision: Gauge::default(),
            snapshot_age: Gauge::default(),
            registry_connected: Gauge::default(),
            protect_active: Gauge::default(),
            protect_engaged: Counter::default(),
            rate_limited: Counter::default(),
            no_gateways: Counter::default(),
            admin_actions: Family::default(),
            registry: Registry::default(),
        };
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
            "admin_actions",
            "Admin API actions by route and status",
            m.admin_actions.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
