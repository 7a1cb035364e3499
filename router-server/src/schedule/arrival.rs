//! When a node's count was sampled, on this router's clock: each agent's clock offset
//! estimated from when its reports arrived, less the registries' watch lag.

use std::sync::Arc;

use registry::NodeRecord;

/// The least `received − updated_ms` of a node's reports: the agent's clock offset plus
/// the fastest delivery seen (etcd's commit, the watch, this router's batching).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Delivery {
    least_ms: i64,
    /// When it was seen (router clock).
    at: u64,
}

/// A delivery minimum ages by this much per second, so a drifting clock is followed.
const DELIVERY_AGING_MS_PER_SEC: u64 = 1;
/// A report this much slower than the minimum means the agent's clock jumped (or the
/// agent restarted on another host): the minimum starts again.
const DELIVERY_RESET_MS: i64 = 2_000;

/// When a report's count was sampled, on this router's clock, and the node's delivery
/// minimum after it.
///
/// A report carries `sampled_ms` and `updated_ms` on the agent's clock, which may be off
/// by seconds. `received − updated_ms` is that offset plus how long this report took to
/// arrive; its least value over the node's reports is the offset plus the fastest
/// delivery. The sample time is `sampled_ms` plus that least value: right to within the
/// fastest delivery, whatever the clock offset, and not moved later by a report that
/// was slow to arrive (etcd under load), which would hide the answers given meanwhile.
/// An agent that sends only `sample_age_ms`: receipt minus age. One that sends only
/// `sampled_ms`: trusted, but never later than the receipt.
pub(super) fn sample_time(
    record: &NodeRecord,
    prev: Option<Delivery>,
    received: u64,
) -> (u64, Option<Delivery>) {
    match (record.updated_ms, record.sampled_ms, record.sample_age_ms) {
        (Some(written), Some(sampled), _) if sampled <= written => {
            let d = received as i64 - written as i64;
            let least = match prev {
                Some(p) => {
                    let aged = p.least_ms.saturating_add(
                        (received.saturating_sub(p.at) / 1000 * DELIVERY_AGING_MS_PER_SEC) as i64,
                    );
                    if d <= aged || d - aged > DELIVERY_RESET_MS {
                        Delivery {
                            least_ms: d,
                            at: received,
                        }
                    } else {
                        // Kept as it was seen: it goes on ageing from then.
                        p
                    }
                }
                None => Delivery {
                    least_ms: d,
                    at: received,
                },
            };
            let offset = least.least_ms.saturating_add(
                (received.saturating_sub(least.at) / 1000 * DELIVERY_AGING_MS_PER_SEC) as i64,
            );
            let at = (sampled as i64).saturating_add(offset).max(0) as u64;
            (at.min(received), Some(least))
        }
        (_, _, Some(age)) => (received.saturating_sub(age), None),
        (_, Some(at), None) => (at.min(received), None),
        _ => (received, None),
    }
}

/// When reports arrived (this router's wall-clock ms), and how far behind etcd each
/// registry's view was then (its watch lag, see `crate::lag`).
///
/// A report reached the router `lag` after etcd had it. Left in, a steady lag reads
/// as a clock offset: the least `received − updated_ms` grows by it, every sample is
/// placed that much later, and the answers given between the true sample and its
/// late arrival are taken for counted. Subtracting the lag places a report at the
/// moment etcd had it, which is what the delivery minimum of [`sample_time`] assumes.
#[derive(Debug, Clone, Default)]
pub struct Arrival {
    /// When the reports arrived.
    pub at_ms: u64,
    /// Each registry's lag, ms, by name (the records' `dc`).
    pub lag_ms: Vec<(Arc<str>, u64)>,
    /// The lag of a record whose registry is not in `lag_ms` (or that has no `dc`).
    pub default_lag_ms: u64,
}

impl Arrival {
    /// Reports arrived at `at_ms` over a view `lag_ms` behind etcd.
    pub fn lagged(at_ms: u64, lag_ms: u64) -> Arrival {
        Arrival {
            at_ms,
            lag_ms: Vec::new(),
            default_lag_ms: lag_ms,
        }
    }

    /// When etcd had `record`, on this router's clock: the arrival less its
    /// registry's lag.
    pub(super) fn of(&self, record: &NodeRecord) -> u64 {
        let lag = record
            .dc
            .as_ref()
            .and_then(|dc| self.lag_ms.iter().find(|(n, _)| n == dc))
            .map_or(self.default_lag_ms, |(_, l)| *l);
        self.at_ms.saturating_sub(lag)
    }
}

impl From<u64> for Arrival {
    fn from(at_ms: u64) -> Arrival {
        Arrival::lagged(at_ms, 0)
    }
}
