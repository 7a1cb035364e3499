//! Asking routers: the order a client tries the router's addresses in, one request
//! to one router, what a refusal means. What the answer may say is in
//! [`crate::answer`].

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use gateway_api::{ErrorBody, ErrorCode};
use tokio::time::Instant;
use tracing::info;

use crate::answer::{to_gateways, AnswerExt, Gateways, RouterAnswer, Source};
use crate::config::Config;
use crate::dns::HttpDns;
use crate::error::{Error, Failure, FailureKind};
use crate::http::{Endpoint, Http, Request};

/// Why no router gave candidates.
pub(crate) enum RouterOutcome {
    /// A live router refused (overload, rate limit): ask it again later; no fallback.
    Refused(Error),
    /// None could be reached or gave a usable answer: the fallbacks apply.
    Unreachable(Vec<Failure>),
}

/// What asking routers needs from the client: its settings, its resolver, its HTTP
/// connections and its starting point among the router's addresses.
pub(crate) struct Routers<'a> {
    pub(crate) config: &'a Config,
    pub(crate) dns: &'a Arc<HttpDns>,
    pub(crate) http: &'a Http,
    pub(crate) spread: usize,
}

impl Routers<'_> {
    /// The router's addresses in the order this client tries them: IPv6 and IPv4
    /// interleaved (RFC 8305), each family rotated by this client's random offset.
    pub(crate) fn order(&self, ips: &[IpAddr]) -> Vec<IpAddr> {
        let rotate = |mut v: Vec<IpAddr>| {
            if !v.is_empty() {
                let k = self.spread % v.len();
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

    /// Asks the router's addresses in turn until one answers or refuses, within
    /// `budget_end`; `keep` sees each answer taken (the client writes it to its cache
    /// file).
    pub(crate) async fn ask(
        &self,
        budget_end: Instant,
        keep: impl Fn(&RouterAnswer),
    ) -> Result<Gateways, RouterOutcome> {
        let c = self.config;
        let resolved = self
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
            .order(&resolved.ips)
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
                    keep(&answer);
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

    /// The router at `addr`: the Host header and TLS name are the router's domain; the
    /// address is the one HTTPDNS gave, so a hijacked local resolver is never
    /// consulted.
    pub(crate) fn endpoint(&self, addr: SocketAddr) -> Endpoint {
        Endpoint {
            addr,
            name: self.config.router_domain.clone(),
            https: self.config.router_https,
        }
    }

    async fn ask_router(&self, addr: SocketAddr) -> Result<RouterAnswer, RouterOutcome> {
        let c = self.config;
        let target = format!("router {addr}");
        let unreachable =
            |kind| RouterOutcome::Unreachable(vec![Failure::new(target.clone(), kind)]);
        let endpoint = self.endpoint(addr);
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
mod tests {
    use super::*;
    use crate::Client;

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
            let order = c.routers().order(&ips);
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
