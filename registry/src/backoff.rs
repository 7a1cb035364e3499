//! Jittered exponential backoff for every retry loop (store reconnects, hooks).

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with multiplicative jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    factor: f64,
    jitter: f64,
    attempt: u32,
}

impl Backoff {
    /// Starts at `base`, multiplies by `factor` per failure, caps at `max`, and spreads
    /// each delay by ±`jitter` (0.0-1.0) so a fleet does not retry in lockstep.
    pub fn new(base: Duration, max: Duration, factor: f64, jitter: f64) -> Backoff {
        Backoff {
            base,
            max,
            factor: factor.max(1.0),
            jitter: jitter.clamp(0.0, 1.0),
            attempt: 0,
        }
    }

    /// The store-retry default: 200 ms doubling to 5 s, ±20 %.
    pub fn for_store() -> Backoff {
        Backoff::new(Duration::from_millis(200), Duration::from_secs(5), 2.0, 0.2)
    }

    /// The delay before the next attempt, drawing jitter from `rng`.
    pub fn next_with(&mut self, rng: &mut impl Rng) -> Duration {
        let nominal = self.nominal(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        let spread = if self.jitter > 0.0 {
            rng.random_range(-self.jitter..=self.jitter)
        } else {
            0.0
        };
        nominal.mul_f64(1.0 + spread)
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.next_with(&mut rand::rng())
    }

    /// The un-jittered delay for attempt `n` (0-based).
    pub fn nominal(&self, n: u32) -> Duration {
        let scaled = self.base.as_secs_f64() * self.factor.powi(n.min(64) as i32);
        Duration::from_secs_f64(scaled.min(self.max.as_secs_f64()))
    }

    /// Call after a success: the next failure starts from `base` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn delays_stay_within_bounds(base in 1u64..5_000, max in 1u64..120_000,
                                     factor in 1.0f64..4.0, jitter in 0.0f64..1.0,
                                     n in 0usize..40, seed in any::<u64>()) {
            use rand::SeedableRng;
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let base = Duration::from_millis(base);
            let max = Duration::from_millis(max);
            let mut b = Backoff::new(base, max, factor, jitter);
            let mut last_nominal = Duration::ZERO;
            for i in 0..n {
                let nominal = b.nominal(i as u32);
                prop_assert!(nominal >= last_nominal, "monotone");
                prop_assert!(nominal <= max.max(base.min(max)));
                let d = b.next_with(&mut rng);
                prop_assert!(d.as_secs_f64() <= nominal.as_secs_f64() * (1.0 + jitter) + 1e-9);
                prop_assert!(d.as_secs_f64() >= nominal.as_secs_f64() * (1.0 - jitter) - 1e-9);
                last_nominal = nominal;
            }
        }
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 2.0, 0.0);
        assert_eq!(b.next_delay(), Duration::from_millis(100));
        assert_eq!(b.next_delay(), Duration::from_millis(200));
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
        for _ in 0..10 {
            b.next_delay();
        }
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }
}
