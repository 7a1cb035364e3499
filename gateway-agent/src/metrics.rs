//! The agent's own metrics and health endpoint (`--metrics-listen ADDR`, off by
//! default): `GET /metrics` (prometheus-client; OpenMetrics when asked for, the
//! Prometheus text format otherwise), `GET /healthz` (200 while the process runs) and
//! `GET /readyz` (200 while the node's record is registered under a live lease, 503
//! before and after, e.g. once etcd has been out of reach for a whole TTL).

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Every metric the agent exports (names prefixed `agent_`).
pub struct AgentMetrics {
    registry: Registry,
    /// Samples of the load source that failed.
    pub load_source_failures: Counter,
    /// 1 while the last call to etcd was answered, 0 after one that was not.
    pub etcd_connected: Gauge,
    /// 1 while the record is registered under a live lease.
    pub registered: Gauge,
    /// Record writes (registrations and reports).
    pub reports: Counter,
    /// Lease keep-alives that etcd answered.
    pub lease_renewals: Counter,
    /// Registrations: the first, and each after a lost lease.
    pub registrations: Counter,
    /// Connections as last sampled.
    pub connections: Gauge,
    last_report_age: Gauge<f64, AtomicU64>,
    started: Instant,
    last_report: Mutex<Option<Instant>>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("agent");
        let m = AgentMetrics {
            registry: Registry::default(),
            load_source_failures: Counter::default(),
            etcd_connected: Gauge::default(),
            registered: Gauge::default(),
            reports: Counter::default(),
            lease_renewals: Counter::default(),
            registrations: Counter::default(),
            connections: Gauge::default(),
            last_report_age: Gauge::default(),
            started: Instant::now(),
            last_report: Mutex::new(None),
        };
        let build = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
        build
            .get_or_create(&registry::build_info!().labels())
            .set(1);
        registry.register(
            "build_info",
            "1, labelled with the version and git commit this agent was built from",
            build,
        );
        registry.register(
            "load_source_failures",
            "Samples of the load source (--load) that failed",
            m.load_source_failures.clone(),
        );
        registry.register(
            "etcd_connected",
            "1 while the agent's last call to etcd was answered, 0 after one that was not",
            m.etcd_connected.clone(),
        );
        registry.register(
            "registered",
            "1 while the node's record is registered under a live lease",
            m.registered.clone(),
        );
        registry.register(
            "last_report_age_seconds",
            "Seconds since the record was last written (since start before the first write)",
            m.last_report_age.clone(),
        );
        registry.register(
            "reports",
            "Writes of the node's record (registrations and load reports)",
            m.reports.clone(),
        );
        registry.register(
            "lease_renewals",
            "Lease keep-alives answered by etcd",
            m.lease_renewals.clone(),
        );
        registry.register(
            "registrations",
            "Registrations of the node's record: the first, and each after a lost lease",
            m.registrations.clone(),
        );
        registry.register(
            "connections",
            "The gateway's connections as last sampled",
            m.connections.clone(),
        );
        AgentMetrics { registry, ..m }
    }
}

impl AgentMetrics {
    /// A record write went through.
    pub fn reported(&self) {
        self.reports.inc();
        self.etcd_connected.set(1);
        *self.last_report.lock().expect("last report lock") = Some(Instant::now());
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let since = self
            .last_report
            .lock()
            .expect("last report lock")
            .unwrap_or(self.started);
        self.last_report_age.set(since.elapsed().as_secs_f64());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// True while the record is registered.
    pub fn ready(&self) -> bool {
        self.registered.get() == 1
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `cancel`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<AgentMetrics>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
}

async fn render(State(m): State<Arc<AgentMetrics>>, headers: HeaderMap) -> Response {
    use registry::metrics_text::{
        openmetrics_to_prometheus, wants_openmetrics, OPENMETRICS, PROMETHEUS,
    };
    let accept = headers.get_all(header::ACCEPT);
    if wants_openmetrics(accept.iter().filter_map(|v| v.to_str().ok())) {
        ([(header::CONTENT_TYPE, OPENMETRICS)], m.render()).into_response()
    } else {
        let text = openmetrics_to_prometheus(&m.render());
        ([(header::CONTENT_TYPE, PROMETHEUS)], text).into_response()
    }
}

async fn ready(State(m): State<Arc<AgentMetrics>>) -> Response {
    if m.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not registered: etcd out of reach or the lease not (yet) held\n",
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_every_metric_with_build_info() {
        let m = AgentMetrics::default();
        m.connections.set(42);
        m.reported();
        let text = registry::metrics_text::openmetrics_to_prometheus(&m.render());
        let build = registry::build_info!();
        for line in [
            format!(
                "agent_build_info{{version=\"{}\",commit=\"{}\"}} 1",
                build.version, build.commit
            ),
            "agent_connections 42".into(),
            "agent_reports_total 1".into(),
            "agent_etcd_connected 1".into(),
            "agent_load_source_failures_total 0".into(),
            "agent_lease_renewals_total 0".into(),
            "agent_registered 0".into(),
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(text.contains("# TYPE agent_last_report_age_seconds gauge"));
        assert!(!m.ready());
        m.registered.set(1);
        assert!(m.ready());
    }
}
