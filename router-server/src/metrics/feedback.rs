//! Clients' connect outcomes (`POST /outcomes`) and the demotions they cause: what was
//! taken or dropped, and per client network how many gateways are demoted.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// What became of one reported outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `accepted`, `unknown_gateway` (not a node of the router's view) or
    /// `over_bound` (its network's share of the window, or the pairs kept, was used).
    pub result: &'static str,
}

/// A client network: its region and ISP as the router identifies them (empty: none).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NetworkLabels {
    /// The client's region.
    pub region: String,
    /// The client's ISP.
    pub isp: String,
}

/// Counted by `POST /outcomes` and the feedback's judging (`crate::feedback`).
#[derive(Clone, Default)]
pub struct FeedbackMetrics {
    /// Outcomes reported to this router, by what became of them.
    pub outcomes: Family<OutcomeLabels, Counter>,
    /// Demotions decided by this router.
    pub demotions: Counter,
    /// Gateways demoted now, per client network (set at each judging; networks with
    /// none are not listed).
    pub demoted: Family<NetworkLabels, Gauge>,
}

impl FeedbackMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        // Every result shown from the start, at 0.
        for result in ["accepted", "unknown_gateway", "over_bound"] {
            drop(self.outcomes.get_or_create(&OutcomeLabels { result }));
        }
        registry.register(
            "outcomes",
            "Connect outcomes clients reported to this router, by what became of them (accepted, unknown_gateway, over_bound)",
            self.outcomes.clone(),
        );
        registry.register(
            "demotions",
            "Gateways demoted for a client network because its clients' connects to them failed",
            self.demotions.clone(),
        );
        registry.register(
            "demoted_gateways",
            "Gateways demoted now, per client network (region, isp)",
            self.demoted.clone(),
        );
    }
}
