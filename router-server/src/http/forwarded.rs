//! A router behind a load balancer that `trusted_proxies` does not list sees every
//! client as the balancer: region lookup fails and the per-network budgets treat a
//! storm as one client. It cannot tell that apart from a client forging
//! X-Forwarded-For, so it counts such requests and says so in its log, at most once a
//! minute, naming the peer.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::HeaderMap;
use tracing::warn;

use crate::config::FileConfig;
use crate::metrics::EdgeMetrics;

/// Milliseconds since the epoch of the last warning (process-wide: it only spaces out
/// log lines).
static LAST_WARNED_MS: AtomicU64 = AtomicU64::new(0);
/// At most one warning per this many milliseconds.
const WARN_EVERY_MS: u64 = 60_000;

/// Counts, and now and then logs, a request whose X-Forwarded-For is ignored because
/// `peer` is not a trusted proxy. Costs one header lookup when there is no such header.
pub(crate) fn note(config: &FileConfig, edge: &EdgeMetrics, peer: IpAddr, headers: &HeaderMap) {
    if !crate::identity::forwarded_untrusted(peer, headers, &config.trusted_proxies) {
        return;
    }
    edge.forwarded_untrusted.inc();
    let now = registry::now_ms();
    let last = LAST_WARNED_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= WARN_EVERY_MS
        && LAST_WARNED_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        warn!(
            %peer,
            "X-Forwarded-For from a peer trusted_proxies does not list: ignored, so every client behind it counts as {peer} (region, budgets); list your load balancers in trusted_proxies (router_forwarded_untrusted_total counts these)"
        );
    }
}
