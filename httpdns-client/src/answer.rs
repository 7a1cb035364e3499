//! What the SDK takes from a router's answer: the wire types of the `gateway-api`
//! crate ([`RouterAnswer`], [`Gateway`], [`BackoffParams`]), the bounds the SDK puts
//! on them whatever their source, and the candidates a call returns ([`Gateways`],
//! with their [`Source`]).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::limits::later;

pub use gateway_api::{Backoff as BackoffParams, Gateway, GatewaysAnswer as RouterAnswer};

/// Where an address came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DnsSource {
    /// An HTTPDNS provider (any kind).
    HttpDns,
    /// The system resolver.
    LocalDns,
    /// Configured bootstrap IPs.
    Bootstrap,
    /// The name was an IP literal: nothing was resolved.
    Literal,
}

/// Delays from a router's backoff, always computed from the
/// [clamped](BackoffExt::clamped) parameters.
pub trait BackoffExt {
    /// These parameters within the SDK's bounds (see [`crate::limits`]): `max_ms` in
    /// 1 ms ..= 10 min, `base_ms` in 1 ms ..= `max_ms`, `factor` in 1 ..= 10 and
    /// `jitter` in 0 ..= 1; a NaN factor or jitter takes the default. Every delay is
    /// computed from the clamped values, whatever a router or a file said.
    fn clamped(&self) -> BackoffParams;

    /// The un-jittered delay before retry `n` (0-based): `base * factor^n`, capped at
    /// `max` (of the clamped parameters).
    fn nominal(&self, n: u32) -> Duration;

    /// The delay before retry `n` with jitter; `unit` in [0, 1) picks the spread
    /// (NaN counts as 0). At most `max * 2`, so at most 20 minutes.
    fn delay(&self, n: u32, unit: f64) -> Duration;
}

impl BackoffExt for BackoffParams {
    fn clamped(&self) -> BackoffParams {
        let cap = crate::limits::MAX_BACKOFF.as_millis() as u64;
        let max_ms = self.max_ms.clamp(1, cap);
        let d = BackoffParams::default();
        BackoffParams {
            base_ms: self.base_ms.clamp(1, max_ms),
            max_ms,
            factor: if self.factor.is_nan() {
                d.factor
            } else {
                self.factor.clamp(1.0, crate::limits::MAX_BACKOFF_FACTOR)
            },
            jitter: if self.jitter.is_nan() {
                d.jitter
            } else {
                self.jitter.clamp(0.0, 1.0)
            },
        }
    }

    fn nominal(&self, n: u32) -> Duration {
        let p = self.clamped();
        let ms = p.base_ms as f64 * p.factor.powi(n.min(64) as i32);
        Duration::from_millis(ms.min(p.max_ms as f64) as u64)
    }

    fn delay(&self, n: u32, unit: f64) -> Duration {
        let j = self.clamped().jitter;
        let unit = if unit.is_nan() {
            0.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        self.nominal(n).mul_f64(1.0 - j + 2.0 * j * unit)
    }
}

/// What the SDK checks and bounds in a router's answer, wherever it came from.
pub(crate) trait AnswerExt: Sized {
    /// This answer with `ttl_secs`, `heartbeat_secs` and `backoff` within the SDK's
    /// bounds (see [`crate::limits`]): what a router or the cache file sends is
    /// clamped before any time is computed from it.
    fn clamped(self) -> Self;

    /// At least one candidate, each with a usable address.
    fn validate(&self) -> Result<(), InvalidAnswer>;
}

/// Why a router's answer (or the cache file's copy of one) gives nothing to dial.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidAnswer {
    /// No candidate at all.
    #[error("no gateways in the answer")]
    NoGateways,
    /// A candidate with port 0 or an unspecified address; its id.
    #[error("gateway {0} has an unusable address")]
    UnusableAddress(String),
}

impl AnswerExt for RouterAnswer {
    fn clamped(mut self) -> RouterAnswer {
        self.ttl_secs = crate::limits::ttl_secs(self.ttl_secs).as_secs();
        self.heartbeat_secs = crate::limits::heartbeat_secs(self.heartbeat_secs).as_secs();
        self.backoff = self.backoff.clamped();
        self
    }

    fn validate(&self) -> Result<(), InvalidAnswer> {
        if self.gateways.is_empty() {
            return Err(InvalidAnswer::NoGateways);
        }
        if let Some(g) = self
            .gateways
            .iter()
            .find(|g| g.port == 0 || g.ip.is_unspecified())
        {
            return Err(InvalidAnswer::UnusableAddress(g.id.clone()));
        }
        Ok(())
    }
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// A router, reached at `addr`, whose address came from `dns`.
    Router {
        /// The router address used.
        addr: SocketAddr,
        /// How that address was found.
        dns: DnsSource,
    },
    /// The persistent cache file (no router answered).
    CacheFile,
    /// The fallback gateway domain, resolved through `dns`.
    FallbackDomain {
        /// HTTPDNS or local DNS.
        dns: DnsSource,
    },
}

/// Candidates and the connection settings that came with them.
#[derive(Debug, Clone)]
pub struct Gateways {
    /// Candidates, best first.
    pub gateways: Vec<Gateway>,
    /// The region the router used, if it said.
    pub region: Option<String>,
    /// How long the router allows reuse (1 s ..= 1 day, whatever the router said).
    pub ttl: Duration,
    /// Heartbeat interval for the gateway connection (1 s ..= 1 h).
    pub heartbeat: Duration,
    /// Reconnect backoff, [clamped](BackoffParams::clamped).
    pub backoff: BackoffParams,
    /// Registry revision.
    pub revision: i64,
    /// The router answered from an old snapshot, or this is a fallback answer.
    pub stale: bool,
    /// Where it came from.
    pub source: Source,
    pub(crate) expires: Instant,
}

/// `a` as the client keeps it, reused for `ttl` (at most [`crate::limits::MAX_TTL`]);
/// the answer's times are clamped (see [`crate::limits`]) whatever its source.
pub(crate) fn to_gateways(a: RouterAnswer, source: Source, ttl: Duration) -> Gateways {
    let ttl = ttl.min(crate::limits::MAX_TTL);
    Gateways {
        gateways: a.gateways,
        region: a.region,
        ttl,
        heartbeat: crate::limits::heartbeat_secs(a.heartbeat_secs),
        backoff: a.backoff.clamped(),
        revision: a.revision,
        stale: a.stale || !matches!(source, Source::Router { .. }),
        source,
        expires: later(Instant::now(), ttl),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn backoff_follows_the_server_parameters() {
        let p = BackoffParams {
            base_ms: 1000,
            max_ms: 5000,
            factor: 2.0,
            jitter: 0.2,
        };
        assert_eq!(p.nominal(0), Duration::from_secs(1));
        assert_eq!(p.nominal(2), Duration::from_secs(4));
        assert_eq!(p.nominal(10), Duration::from_secs(5), "capped");
        assert_eq!(p.delay(1, 0.0), Duration::from_millis(1600));
        assert_eq!(p.delay(1, 1.0), Duration::from_millis(2400));
    }

    /// Any f64, the special values often: NaN, both infinities, zeros, extremes.
    pub(crate) fn any_f64() -> impl proptest::strategy::Strategy<Value = f64> {
        use proptest::prelude::*;
        prop_oneof![
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(0.0),
            Just(-0.0),
            Just(f64::MAX),
            Just(f64::MIN),
            Just(f64::MIN_POSITIVE),
            Just(f64::EPSILON),
            proptest::num::f64::ANY,
        ]
    }

    pub(crate) fn any_backoff() -> impl proptest::strategy::Strategy<Value = BackoffParams> {
        use proptest::prelude::*;
        (any::<u64>(), any::<u64>(), any_f64(), any_f64()).prop_map(
            |(base_ms, max_ms, factor, jitter)| BackoffParams {
                base_ms,
                max_ms,
                factor,
                jitter,
            },
        )
    }

    #[test]
    fn extreme_backoff_parameters_are_clamped() {
        let p = BackoffParams {
            base_ms: u64::MAX,
            max_ms: u64::MAX,
            factor: f64::NAN,
            jitter: f64::INFINITY,
        }
        .clamped();
        assert_eq!(
            p,
            BackoffParams {
                base_ms: 600_000,
                max_ms: 600_000,
                factor: 1.6,
                jitter: 1.0
            }
        );
        let p = BackoffParams {
            base_ms: 0,
            max_ms: 0,
            factor: f64::NEG_INFINITY,
            jitter: f64::NAN,
        };
        assert_eq!(
            p.clamped(),
            BackoffParams {
                base_ms: 1,
                max_ms: 1,
                factor: 1.0,
                jitter: 0.2
            }
        );
        assert_eq!(p.nominal(u32::MAX), Duration::from_millis(1));
        let p = BackoffParams {
            base_ms: 5000,
            max_ms: 1000,
            factor: f64::INFINITY,
            jitter: -3.0,
        };
        assert_eq!(p.clamped().base_ms, 1000, "base within max");
        assert_eq!(p.clamped().factor, 10.0);
        assert_eq!(p.delay(3, f64::NAN), Duration::from_secs(1));
        let answer = RouterAnswer {
            gateways: Vec::new(),
            region: None,
            ttl_secs: u64::MAX,
            heartbeat_secs: 0,
            backoff: BackoffParams::default(),
            revision: 0,
            stale: false,
        }
        .clamped();
        assert_eq!((answer.ttl_secs, answer.heartbeat_secs), (86_400, 1));
    }

    proptest::proptest! {
        #[test]
        fn any_backoff_gives_bounded_delays(
            p in any_backoff(),
            n in proptest::prelude::any::<u32>(),
            unit in any_f64(),
        ) {
            let c = p.clamped();
            proptest::prop_assert!((1..=600_000).contains(&c.max_ms));
            proptest::prop_assert!((1..=c.max_ms).contains(&c.base_ms));
            proptest::prop_assert!((1.0..=10.0).contains(&c.factor));
            proptest::prop_assert!((0.0..=1.0).contains(&c.jitter));
            proptest::prop_assert_eq!(c.clamped(), c, "clamping is idempotent");
            let nominal = p.nominal(n);
            proptest::prop_assert!(nominal <= crate::limits::MAX_BACKOFF);
            proptest::prop_assert!(nominal >= Duration::from_millis(1));
            let d = p.delay(n, unit);
            proptest::prop_assert!(d <= crate::limits::MAX_BACKOFF * 2);
            // The sleep then taken cannot overflow the clock.
            let now = Instant::now();
            proptest::prop_assert!(now + d >= now);
        }

        #[test]
        fn any_router_answer_times_are_clamped(
            ttl in proptest::prelude::any::<u64>(),
            heartbeat in proptest::prelude::any::<u64>(),
            backoff in any_backoff(),
        ) {
            let a = RouterAnswer {
                gateways: Vec::new(),
                region: None,
                ttl_secs: ttl,
                heartbeat_secs: heartbeat,
                backoff,
                revision: 0,
                stale: false,
            }
            .clamped();
            proptest::prop_assert!((1..=86_400).contains(&a.ttl_secs));
            proptest::prop_assert!((1..=3600).contains(&a.heartbeat_secs));
            proptest::prop_assert_eq!(a.backoff, backoff.clamped());
        }
    }
}
