//! Per-network herd budgets: how many clients one client network's answers may add to
//! the herd estimate per window.
//!
//! An answer costs its asker nothing, and each one adds a client to a node's projected
//! load until a report shows otherwise. Unbounded, one network asking fast enough
//! would fill a region on paper. So each network (`[edge] network_prefix_v4` /
//! `_v6`: a /24, a /56) has `herd_budget` clients per `herd_window_secs`; answers
//! beyond it are still given, but not counted. Phantom load then takes many networks,
//! and it fades with the window (or sooner, with the next report sampled after it).
//! With the selection's rule that the estimate only reorders (see
//! [`crate::schedule`]), it can never turn into a refusal.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::clock::LimiterClock;
use crate::identity::network_key;

use crate::clock::KeyedLimiter as Limiter;

/// The budgets of every client network.
pub struct HerdBudget {
    limiter: Option<Limiter>,
    /// A network's whole share: the most one charge takes.
    share: u32,
    prefix: (u8, u8),
}

impl HerdBudget {
    /// `per_window` clients per `window_ms` for each network of `prefix` leading bits
    /// (IPv4, IPv6); 0: no bound.
    pub fn new(per_window: u32, window_ms: u64, prefix: (u8, u8), clock: LimiterClock) -> Self {
        let limiter = NonZeroU32::new(per_window).map(|n| {
            let period = Duration::from_millis(window_ms.max(1)) / n.get();
            let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
                .expect("a period above zero")
                .allow_burst(n);
            RateLimiter::new(quota, DefaultKeyedStateStore::default(), clock)
        });
        HerdBudget {
            limiter,
            share: per_window,
            prefix,
        }
    }

    /// Charges `clients` to `ip`'s network: true when they fit in what is left of its
    /// share (and are to be counted), false when they do not (and nothing is
    /// charged). One answer worth more than a whole share (a DNS answer of a large
    /// `dns.weight`) takes the whole share: a network then adds at most the larger of
    /// its share and one answer per window.
    pub fn charge(&self, ip: IpAddr, clients: u64) -> bool {
        let n = clients.min(u64::from(self.share)) as u32;
        let (Some(limiter), Some(n)) = (&self.limiter, NonZeroU32::new(n)) else {
            return true;
        };
        matches!(
            limiter.check_key_n(&network_key(ip, self.prefix), n),
            Ok(Ok(()))
        )
    }

    /// Forgets networks idle for a whole window.
    pub fn retain_recent(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    #[test]
    fn each_network_has_its_share_per_window() {
        let clock = FakeRelativeClock::default();
        let b = HerdBudget::new(10, 5000, (24, 56), LimiterClock::Fake(clock.clone()));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let fits = (0..30)
            .filter(|i| b.charge(ip(&format!("192.0.2.{i}")), 1))
            .count();
        assert_eq!(fits, 10, "one /24");
        assert!(b.charge(ip("192.0.3.1"), 10), "the next /24 has its own");
        assert!(!b.charge(ip("192.0.3.1"), 1));
        assert!(
            b.charge(ip("2001:db8:0:1::1"), 150),
            "one heavy answer takes the whole share"
        );
        assert!(!b.charge(ip("2001:db8:0:1::1"), 1));
        assert!(!b.charge(ip("2001:db8:0:ff::1"), 1), "the same /56");
        assert!(b.charge(ip("192.0.2.1"), 0), "nothing to count");
        // A window later the share is back.
        clock.advance(Duration::from_millis(5000));
        assert!(b.charge(ip("192.0.2.1"), 10));
        let off = HerdBudget::new(0, 5000, (24, 56), LimiterClock::default());
        assert!(off.charge(ip("192.0.2.1"), u64::MAX));
    }
}
