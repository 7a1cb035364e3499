//! Time sources a test can drive: the per-client limiters (request budgets, DNS
//! response-rate limiting, herd budgets) run on [`LimiterClock`], so a test of a limit
//! holds at any machine speed.

use governor::clock::{Clock, FakeRelativeClock};
use governor::nanos::Nanos;

/// The rate limiter's time source: the monotonic clock, or a fake one that a test
/// advances by hand, so a test of the limit holds at any machine speed.
#[derive(Debug, Clone)]
pub enum LimiterClock {
    /// Monotonic time since the router started.
    Real(std::time::Instant),
    /// Time that moves only when the test advances it.
    Fake(FakeRelativeClock),
}

impl Default for LimiterClock {
    fn default() -> Self {
        LimiterClock::Real(std::time::Instant::now())
    }
}

impl Clock for LimiterClock {
    type Instant = Nanos;
    fn now(&self) -> Nanos {
        match self {
            LimiterClock::Real(start) => Nanos::from(start.elapsed()),
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
