//! Time sources a test can drive: the per-client limiters (request budgets, DNS
//! response-rate limiting, herd budgets) run on [`LimiterClock`], so a test of a limit
//! holds at any machine speed.

use governor::clock::{Clock, FakeRelativeClock, QuantaClock, QuantaInstant, Reference};
use governor::nanos::Nanos;

/// The rate limiter's time source: the monotonic clock, or a fake one that a test
/// advances by hand, so a test of the limit holds at any machine speed.
#[derive(Debug, Clone)]
pub enum LimiterClock {
    /// Monotonic time since the router started, read as governor's own default clock
    /// reads it (quanta: the processor's time-stamp counter where it is invariant, the
    /// OS clock elsewhere). Every request reads it twice (its budget and its herd
    /// share); the counter costs about 9 ns a read where `Instant::elapsed` costs 23.
    Real(Real),
    /// Time that moves only when the test advances it.
    Fake(FakeRelativeClock),
}

/// [`LimiterClock::Real`]: the clock, and when it started.
#[derive(Debug, Clone)]
pub struct Real {
    clock: QuantaClock,
    start: QuantaInstant,
}

impl Default for LimiterClock {
    fn default() -> Self {
        let clock = QuantaClock::default();
        let start = clock.now();
        LimiterClock::Real(Real { clock, start })
    }
}

impl Clock for LimiterClock {
    type Instant = Nanos;
    fn now(&self) -> Nanos {
        match self {
            LimiterClock::Real(r) => r.clock.now().duration_since(r.start),
            LimiterClock::Fake(fake) => fake.now(),
        }
    }
}

/// A limiter keyed by client network, on [`LimiterClock`]: every per-network budget of
/// the router (requests, herd counts, DNS response rate, failed admin tokens) is one.
pub type KeyedLimiter = governor::RateLimiter<
    std::net::IpAddr,
    governor::state::keyed::DefaultKeyedStateStore<std::net::IpAddr>,
    LimiterClock,
    governor::middleware::NoOpMiddleware<Nanos>,
>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// The real limiter clock keeps time with the monotonic clock: what it measures
    /// over a stretch lies within what the monotonic clock measured around it.
    #[test]
    fn the_real_limiter_clock_keeps_time_with_the_monotonic_clock() {
        let clock = LimiterClock::default();
        let outer = Instant::now();
        let from = clock.now();
        let inner = Instant::now();
        while inner.elapsed() < Duration::from_millis(30) {
            std::hint::spin_loop();
        }
        let inner = inner.elapsed();
        let measured = Duration::from(clock.now().duration_since(from));
        let outer = outer.elapsed();
        // The counter's calibration against the monotonic clock is good to far better
        // than one part in a thousand.
        let slack = Duration::from_micros(30);
        assert!(
            measured + slack >= inner && measured <= outer + slack,
            "measured {measured:?}, between {inner:?} and {outer:?}"
        );
    }
}
