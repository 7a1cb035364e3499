//! Asking routers: what the SDK checks in the answer's wire format (the
//! `gateway-api` crate's [`RouterAnswer`], [`Gateway`], [`BackoffParams`]), the order a client tries the router's addresses in, one request
//! to one router, and what a refusal means.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use gateway_api::{ErrorBody, ErrorCode};
use tokio::time::Instant;
use tracing::info;

use crate::client::{to_gateways, Client, Gateways, Source};
use crate::error::{Failure, FailureKind};
use crate::http::{Endpoint, Request};
use crate::Error;

pub use gateway_api::{Backoff as BackoffParams, Gateway, GatewaysAnswer as RouterAnswer};

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

/// Why no router gave candidates.
pub(crate) enum RouterOutcome {
    /// A live router refused (overload, rate limit): ask it again later; no fallback.
    Refused(Error),
    /// None could be reached or gave a usable answer: the fallbacks apply.
    Unreachable(Vec<Failure>),
}

impl Client {
    /// The router's addresses in the order this client tries them: IPv6 and IPv4
    /// interleaved (RFC 8305), each family rotated by this client's random offset.
    pub(crate) fn router_order(&self, ips: &[IpAddr]) -> Vec<IpAddr> {
        let rotate = |mut v: Vec<IpAddr>| {
            if !v.is_empty() {
                let k = self.inner.spread % v.len();
                v.rotate_left(k);
            }
            v
        };
        let v6 = rotate(ips.iter().copied().filter(IpAddr::is_ipv6).collect());
        let v4 = rotate(ips.iter().copied().filter(IpAddr::is_ipv4).collect());
        let mut out = Vec::with_capacity(ips.len());
        for i in 0..v6.len().max(v4.len()) {
            out.extend(v6.get(i));
            out.extend(v4.get(i));
        }
        out
    }

    pub(crate) async fn ask_routers(&self, budget_end: Instant) -> Result<Gateways, RouterOutcome> {
        let c = &self.inner.config;
        let resolved = self
            .inner
            .dns
            .resolve_by(&c.router_domain, budget_end)
            .await
            .map_err(|e| match e {
                Error::Resolve { failures, .. } => RouterOutcome::Unreachable(failures.0),
                other => RouterOutcome::Unreachable(vec![Failure::new(
                    c.router_domain.clone(),
                    FailureKind::Other(other.to_string()),
                )]),
            })?;
        let mut failures = Vec::new();
        for ip in self
            .router_order(&resolved.ips)
            .into_iter()
            .take(c.max_routers.max(1))
        {
            let addr = SocketAddr::new(ip, c.router_port);
            let left = budget_end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                failures.push(Failure::new(
                    format!("router {addr}"),
                    FailureKind::Unavailable("not tried: router budget used up".into()),
                ));
                break;
            }
            match tokio::time::timeout(c.router_attempt_timeout.min(left), self.ask_router(addr))
                .await
            {
                Ok(Ok(answer)) => {
                    info!(router = %addr, candidates = answer.gateways.len(), "router answered");
                    self.persist(&answer);
                    let ttl = crate::limits::ttl_secs(answer.ttl_secs);
                    return Ok(to_gateways(
                        answer,
                        Source::Router {
                            addr,
                            dns: resolved.source,
                        },
                        ttl,
                    ));
                }
                Ok(Err(RouterOutcome::Refused(e))) => {
                    info!(router = %addr, error = %e, "router refused");
                    return Err(RouterOutcome::Refused(e));
                }
                Ok(Err(RouterOutcome::Unreachable(f))) => failures.extend(f),
                Err(_) => failures.push(Failure::new(
                    format!("router {addr}"),
                    FailureKind::TimedOut,
                )),
            }
        }
        Err(RouterOutcome::Unreachable(failures))
    }

    async fn ask_router(&self, addr: SocketAddr) -> Result<RouterAnswer, RouterOutcome> {
        let c = &self.inner.config;
        let target = format!("router {addr}");
        let unreachable =
            |kind| RouterOutcome::Unreachable(vec![Failure::new(target.clone(), kind)]);
        // Host header and TLS name are the router's domain; the address is the one
        // HTTPDNS gave, so a hijacked local resolver is never consulted.
        let endpoint = Endpoint {
            addr,
            name: c.router_domain.clone(),
            https: c.router_https,
        };
        let mut params: Vec<(&str, String)> = vec![
            ("proto", c.proto.as_str().to_string()),
            ("count", c.count.to_string()),
        ];
        if let Some(r) = &c.region {
            params.push(("region", r.clone()));
        }
        if let Some(v) = c.ip_version {
            params.push(("ip_version", v.to_string()));
        }
        let query = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&params)
            .finish();
        let resp = self
            .inner
            .http
            .send(
                &endpoint,
                &Request::get(format!("/gateways?{query}")),
                &target,
            )
            .await
            .map_err(|f| RouterOutcome::Unreachable(vec![f]))?;
        let (status, retry_after, body) = (resp.status, resp.retry_after, resp.body);
        if !(200..300).contains(&status) {
            let detail = serde_json::from_slice::<ErrorBody>(&body)
                .ok()
                .map(|b| b.error);
            let code = detail.as_ref().map(|d| d.code.as_str()).unwrap_or("");
            let no_gateways =
                detail.as_ref().and_then(|d| d.known_code()) == Some(ErrorCode::NoGateways);
            // A live router that says the fleet is full or this client asks too often:
            // the answer stands. One not ready yet (or failing): try the next.
            if status == 429 || (status == 503 && no_gateways) {
                return Err(RouterOutcome::Refused(Error::Refused {
                    addr,
                    status,
                    code: code.to_string(),
                    message: detail.map(|d| d.message).unwrap_or_default(),
                    retry_after,
                }));
            }
            return Err(unreachable(FailureKind::Status {
                status,
                body: String::from_utf8_lossy(&body).chars().take(200).collect(),
            }));
        }
        let answer: RouterAnswer = serde_json::from_slice(&body)
            .map_err(|e| unreachable(FailureKind::Malformed(e.to_string())))?;
        answer
            .validate()
            .map_err(|e| unreachable(FailureKind::Malformed(e.to_string())))?;
        let mut answer = answer.clamped();
        // No more candidates than asked for: a router cannot have the client dial a
        // list of its choosing.
        answer.gateways.truncate(usize::from(c.count));
        Ok(answer)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Config;

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

    #[test]
    fn router_addresses_interleave_families_and_spread_clients() {
        let ips: Vec<IpAddr> = [
            "192.0.2.1",
            "192.0.2.2",
            "192.0.2.3",
            "2001:db8::1",
            "2001:db8::2",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..40 {
            let c = Client::new(Config::new("r.example")).unwrap();
            let order = c.router_order(&ips);
            assert_eq!(order.len(), 5);
            assert!(
                order[0].is_ipv6()
                    && order[1].is_ipv4()
                    && order[2].is_ipv6()
                    && order[3].is_ipv4()
            );
            firsts.insert(order[1]);
        }
        assert_eq!(firsts.len(), 3, "clients start at different IPv4 routers");
    }
}
