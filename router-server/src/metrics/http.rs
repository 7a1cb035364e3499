//! The HTTP server's own metrics: requests by route and status, and their latency.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::{AtomicHistogram, RequestLabels, RouteLabels};

/// Requests by route: what the HTTP edge (`http::routes`) counts.
#[derive(Clone, Default)]
pub struct HttpMetrics {
    /// Requests by route and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Request latency by route.
    pub latency: Family<RouteLabels, AtomicHistogram>,
}

impl HttpMetrics {
    /// `router_http_requests_total`, `router_http_request_duration_seconds`.
    pub(super) fn register(&self, registry: &mut Registry) {
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
}
