//! The edge's metrics: what the guard refuses (rate limit, block list), what it leaves
//! out of the herd accounting, forwarded headers it ignores, answers with no gateway.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Counted by the guard (`guard::Guard` holds a clone) and by the routes that answer
/// clients.
#[derive(Clone, Default)]
pub struct EdgeMetrics {
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
}

impl EdgeMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
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
}
