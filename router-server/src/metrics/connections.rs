//! The HTTP server's connections: open, the cap, closed by the server, and the
//! certificate it serves.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::ConnLabels;

/// What the server (`http::server`) and the certificate reload count.
#[derive(Clone, Default)]
pub struct ConnMetrics {
    /// Client connections open now.
    pub open: Gauge,
    /// The connection cap in force.
    pub max: Gauge,
    /// Connections the server closed or refused, by reason.
    pub closed: Family<ConnLabels, Counter>,
    /// When the served TLS certificate expires (Unix seconds); 0 without TLS.
    pub tls_cert_expiry: Gauge,
}

impl ConnMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "connections_open",
            "Client connections open now",
            self.open.clone(),
        );
        registry.register(
            "connections_max",
            "The cap on client connections in force",
            self.max.clone(),
        );
        registry.register(
            "connections_closed_by_server",
            "Client connections the server closed or refused, by reason",
            self.closed.clone(),
        );
        registry.register(
            "tls_cert_expiry_timestamp_seconds",
            "When the TLS certificate served on --listen expires (Unix time; 0 without TLS); follows renewals",
            self.tls_cert_expiry.clone(),
        );
    }
}
