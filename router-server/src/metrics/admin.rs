//! The admin API's metrics: actions by outcome, requests refused by the token throttle.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::RequestLabels;

/// What the admin API (`admin`) counts.
#[derive(Clone, Default)]
pub struct AdminMetrics {
    /// Admin actions by outcome.
    pub actions: Family<RequestLabels, Counter>,
    /// Admin requests refused (429) because their network failed the token too often.
    pub throttled: Counter,
}

impl AdminMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "admin_actions",
            "Admin API actions by route and status",
            self.actions.clone(),
        );
        registry.register(
        "admin_throttled",
        "Admin requests refused (429) because their network (/24, /56) failed the token too often",
        self.throttled.clone(),
    );
    }
}
