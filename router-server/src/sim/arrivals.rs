//! When clients arrive: how many during each virtual millisecond, along the
//! configured [`Curve`], the failed region's apart.

use super::{Curve, SimConfig};

/// How many clients have arrived before each virtual ms.
pub(super) struct Arrivals {
    curve: Curve,
    /// The failed region's clients (a share 1/regions), back within `span_failed`.
    failed_clients: u64,
    span_failed: u64,
    /// The other clients, arriving over `span`.
    others: u64,
    span: u64,
}

impl Arrivals {
    pub(super) fn new(c: &SimConfig, regions: usize) -> Arrivals {
        // The failed region's clients (a share 1/regions) come back within `ms`.
        let (failed_clients, span_failed) = match c.curve {
            Curve::Failover { ms } => (c.clients / regions as u64, ms),
            _ => (0, 0),
        };
        let span = match c.curve {
            Curve::Burst { ms } => ms,
            _ => c.duration_ms,
        };
        Arrivals {
            curve: c.curve,
            failed_clients,
            span_failed,
            others: c.clients - failed_clients,
            span,
        }
    }

    /// The clients arriving during `ms`, and how many of them are the failed
    /// region's.
    pub(super) fn during(&self, ms: u64) -> (u64, u64) {
        let before = |ms: u64, total: u64, span: u64| -> u64 {
            if span == 0 {
                return if ms > 0 { total } else { 0 };
            }
            (total as f64 * self.curve.cdf(ms as f64 / span as f64)).round() as u64
        };
        let others = before(ms + 1, self.others, self.span) - before(ms, self.others, self.span);
        let failed = before(ms + 1, self.failed_clients, self.span_failed)
            - before(ms, self.failed_clients, self.span_failed);
        (others + failed, failed)
    }
}
