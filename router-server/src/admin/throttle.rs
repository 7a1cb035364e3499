//! The admin API's brake on guessing: failed token attempts are counted per client
//! network (/24 for IPv4, /56 for IPv6); a network over the limit is refused with 429
//! before any token it sends is compared, until its budget refills.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::Clock;
use governor::nanos::Nanos;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::clock::LimiterClock;
use crate::identity::{network_key, NETWORK_PREFIX};

/// Failed attempts a network may make in a row: the 11th within a minute is refused.
pub const FAILURES_ALLOWED: u32 = 10;

/// One more failed attempt is allowed each `FAILURE_REFILL` (10 a minute).
pub const FAILURE_REFILL: Duration = Duration::from_secs(6);

/// Networks remembered before idle ones are forgotten.
const TABLE_TIDY_AT: usize = 4096;

use crate::clock::KeyedLimiter as Limiter;

/// Failed attempts by network, and the networks refused until a moment.
pub struct Throttle {
    failures: Limiter,
    /// Network → when it may try again (on the limiter's clock).
    refused: Mutex<HashMap<IpAddr, Nanos>>,
}

impl Throttle {
    /// [`FAILURES_ALLOWED`] failures, then one per [`FAILURE_REFILL`], on `clock`.
    pub fn new(clock: LimiterClock) -> Throttle {
        let quota = Quota::with_period(FAILURE_REFILL)
            .expect("a non-zero period")
            .allow_burst(NonZeroU32::new(FAILURES_ALLOWED).expect("non-zero"));
        Throttle {
            failures: RateLimiter::new(quota, DefaultKeyedStateStore::default(), clock),
            refused: Mutex::new(HashMap::new()),
        }
    }

    /// How long `ip`'s network must still wait, when it is refused now.
    pub fn refused(&self, ip: IpAddr) -> Option<Duration> {
        let key = network_key(ip, NETWORK_PREFIX);
        let now = self.failures.clock().now();
        let mut refused = self.refused.lock().expect("throttle lock");
        let until = *refused.get(&key)?;
        if until > now {
            Some(Duration::from_nanos(until.saturating_sub(now).as_u64()))
        } else {
            refused.remove(&key);
            None
        }
    }

    /// Counts a failed attempt from `ip`; when it is one too many, the network is
    /// refused from now on and the wait is returned.
    pub fn failed(&self, ip: IpAddr) -> Option<Duration> {
        let key = network_key(ip, NETWORK_PREFIX);
        let clock = self.failures.clock();
        if self.failures.len() > TABLE_TIDY_AT {
            self.failures.retain_recent();
        }
        let not_until = self.failures.check_key(&key).err()?;
        let now = clock.now();
        let wait = not_until.wait_time_from(now);
        let mut refused = self.refused.lock().expect("throttle lock");
        if refused.len() > TABLE_TIDY_AT {
            refused.retain(|_, until| *until > now);
        }
        refused.insert(key, now + Nanos::from(wait));
        Some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn throttle() -> (Throttle, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (Throttle::new(LimiterClock::Fake(clock.clone())), clock)
    }

    #[test]
    fn the_eleventh_failure_in_a_minute_closes_the_network() {
        let (t, clock) = throttle();
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        for i in 0..FAILURES_ALLOWED {
            assert_eq!(t.refused(ip), None, "attempt {i}");
            assert_eq!(t.failed(ip), None, "failure {i} is allowed");
        }
        let wait = t.failed(ip).expect("the 11th failure is refused");
        assert!(wait > Duration::ZERO && wait <= FAILURE_REFILL, "{wait:?}");
        // Every address of the /24 is refused, before any token is looked at.
        let neighbour: IpAddr = "198.51.100.200".parse().unwrap();
        assert!(t.refused(neighbour).is_some());
        assert!(t.refused(ip).is_some());
        // Another network is not.
        assert_eq!(t.refused("198.51.101.7".parse().unwrap()), None);
        // Once the wait is over, one more attempt is allowed, and one only.
        clock.advance(wait);
        assert_eq!(t.refused(ip), None);
        assert_eq!(t.failed(ip), None);
        assert!(t.failed(ip).is_some());
        // A minute without failures gives the whole budget back.
        clock.advance(Duration::from_secs(60));
        for _ in 0..FAILURES_ALLOWED {
            assert_eq!(t.failed(ip), None);
        }
        assert!(t.failed(ip).is_some());
    }

    #[test]
    fn ipv6_networks_are_counted_by_their_56() {
        let (t, _clock) = throttle();
        for i in 0..=FAILURES_ALLOWED {
            // A different address, and a different /64, every time: still one /56.
            let ip: IpAddr = format!("2001:db8:0:{:x}::{i}", i % 256).parse().unwrap();
            let over = t.failed(ip);
            assert_eq!(over.is_some(), i == FAILURES_ALLOWED, "failure {i}");
        }
        assert!(t.refused("2001:db8:0:ff::1".parse().unwrap()).is_some());
        assert_eq!(t.refused("2001:db8:0:100::1".parse().unwrap()), None);
    }
}
