//! Response-rate limiting: a budget of UDP answers per client network (/24, /56), so
//! the router cannot be used to amplify an attack on a spoofed address. Over the
//! budget, every `slip`-th answer goes out truncated and empty (a real client then
//! retries over TCP, which cannot be spoofed); the rest are dropped.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::clock::LimiterClock;
use crate::config::dns::DnsConfig;
use crate::identity::network_key;

/// What to do with one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within budget.
    Answer,
    /// Over budget: send it truncated and empty.
    Slip,
    /// Over budget: send nothing.
    Drop,
}

/// The per-network budgets.
pub struct Rrl {
    limiter: crate::clock::KeyedLimiter,
    prefixes: (u8, u8),
    slip: u64,
    over: AtomicU64,
}

impl Rrl {
    /// The limit `cfg` asks for, or `None` when it is off.
    pub fn new(cfg: &DnsConfig) -> Option<Rrl> {
        Rrl::with_clock(cfg, LimiterClock::default())
    }

    /// [`Rrl::new`] on `clock` (tests pass a fake one).
    pub fn with_clock(cfg: &DnsConfig, clock: LimiterClock) -> Option<Rrl> {
        let rate = NonZeroU32::new(cfg.rrl_per_sec)?;
        let burst = NonZeroU32::new(cfg.rrl_burst).unwrap_or(rate);
        Some(Rrl {
            limiter: RateLimiter::new(
                Quota::per_second(rate).allow_burst(burst),
                DefaultKeyedStateStore::default(),
                clock,
            ),
            prefixes: (cfg.rrl_ipv4_prefix_len, cfg.rrl_ipv6_prefix_len),
            slip: u64::from(cfg.rrl_slip),
            over: AtomicU64::new(0),
        })
    }

    /// Takes one answer to `client` from its network's budget.
    pub fn check(&self, client: IpAddr) -> Verdict {
        if self
            .limiter
            .check_key(&network_key(client, self.prefixes))
            .is_ok()
        {
            return Verdict::Answer;
        }
        let n = self.over.fetch_add(1, Ordering::Relaxed);
        if self.slip > 0 && n % self.slip == 0 {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }

    /// Forgets networks that have been quiet (bounds the limiter's memory).
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::time::Duration;

    #[test]
    fn a_network_shares_one_budget_and_slips_every_second_answer_over_it() {
        let cfg = DnsConfig {
            rrl_per_sec: 1,
            rrl_burst: 3,
            rrl_slip: 2,
            ..DnsConfig::default()
        };
        let clock = FakeRelativeClock::default();
        let rrl = Rrl::with_clock(&cfg, LimiterClock::Fake(clock.clone())).unwrap();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.200".parse().unwrap();
        let other: IpAddr = "198.51.100.1".parse().unwrap();
        let verdicts = [a, b, a, b, a, b].map(|ip| rrl.check(ip));
        use Verdict::*;
        assert_eq!(
            verdicts,
            [Answer, Answer, Answer, Slip, Drop, Slip],
            "one /24 has one budget"
        );
        assert_eq!(rrl.check(other), Answer, "another network");
        clock.advance(Duration::from_secs(1));
        assert_eq!(rrl.check(b), Answer, "the rate refills the budget");
        assert_ne!(rrl.check(a), Answer);
        let v6a: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8:0:ff::1".parse().unwrap();
        let v6c: IpAddr = "2001:db8:0:100::1".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(rrl.check(v6a), Answer);
        }
        assert_ne!(rrl.check(v6b), Answer, "one /56");
        assert_eq!(rrl.check(v6c), Answer, "the next /56");
        assert!(Rrl::new(&DnsConfig {
            rrl_per_sec: 0,
            ..cfg
        })
        .is_none());
    }
}
