//! HTTPDNS resolution with local-DNS and bootstrap fallbacks, a bounded per-host TTL
//! cache with one lookup in flight per host, serve-stale with background refresh, and
//! (feature `reqwest`) a `reqwest::dns::Resolve` implementation.
//!
//! Layout: [`config`] (providers, bounds), [`providers`] (the wire formats, one file
//! each), [`cache`] (the per-host cache and the answers file kept across restarts),
//! `resolver` (feature `reqwest`: a `reqwest` resolver). Sources are raced with a short stagger (each
//! provider address, then local DNS, then bootstrap IPs), all within the caller's
//! deadline: a blackholed provider costs one stagger, not its whole timeout
//! (one race helper, shared with connecting).

pub mod cache;
pub mod config;
pub mod providers;
#[cfg(feature = "reqwest")]
pub mod resolver;

pub use config::{DnsConfig, Ipv6Mode, Provider, ProviderKind};
pub use providers::alibaba::{parse_answer, request_path, sign};
pub use providers::dnspod::parse_dnspod;
pub use providers::doh::{dns_query, parse_dns_message};
pub use providers::AnswerError;
#[cfg(feature = "reqwest")]
pub use resolver::HttpDnsResolver;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use tracing::{debug, warn};

use self::cache::{Cache, Entry};
use self::providers::Ask;
use crate::error::Error;
use crate::error::{Failure, FailureKind};
use crate::http::{Endpoint, Http};
use crate::race::{staggered, Attempt};

pub use crate::answer::DnsSource;

/// A resolution result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The addresses, IPv4 first.
    pub ips: Vec<IpAddr>,
    /// Where they came from.
    pub source: DnsSource,
    /// True when served from an expired cache entry (a refresh runs in the background).
    pub stale: bool,
}

/// The HTTPDNS resolver. Share it behind an `Arc`.
pub struct HttpDns {
    config: DnsConfig,
    /// Requests to providers (HTTPS with the platform's trust plus extra roots).
    http: Arc<Http>,
    /// Bounded; an entry outlives its TTL by `max_stale` for serve-stale.
    cache: Cache,
    refreshing: Mutex<HashSet<String>>,
    /// Per host, the turn to look it up (see [`HttpDns::resolve_by`]).
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    ipv6: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for HttpDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpDns")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// True when this host has a route to the IPv6 internet (no packet is sent).
fn has_ipv6_route() -> bool {
    std::net::UdpSocket::bind("[::]:0")
        .and_then(|s| s.connect("[2001:4860:4860::8888]:53"))
        .is_ok()
}

/// What one source answers: addresses, TTL, which source.
type Found = (Vec<IpAddr>, Option<Duration>, DnsSource);

impl HttpDns {
    /// A resolver; `extra_roots` (PEM or DER certificates) are trusted for HTTPS
    /// providers besides the platform's store.
    pub fn new(
        config: DnsConfig,
        extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    ) -> Result<HttpDns, Error> {
        for p in &config.providers {
            if p.kind == ProviderKind::Alibaba
                && (p.account.is_empty() || p.account.contains(['/', '?', '#']))
            {
                return Err(Error::Config(format!(
                    "HTTPDNS account {:?} is not a path segment",
                    p.account
                )));
            }
            if p.addrs.is_empty() {
                return Err(Error::Config(format!(
                    "HTTPDNS provider {:?} has no address",
                    p.account
                )));
            }
            if matches!(p.kind, ProviderKind::Doh { .. }) && !p.https {
                return Err(Error::Config("DNS-over-HTTPS needs https".into()));
            }
        }
        if config.min_ttl > config.max_ttl {
            return Err(Error::Config("min_ttl is above max_ttl".into()));
        }
        let http = Arc::new(Http::new(
            crate::trust::platform_tls(&extra_roots)?,
            config.attempt_timeout,
        ));
        let cache = Cache::new(
            config.max_entries,
            config.max_stale,
            config.answers_file.clone(),
        );
        let ipv6 = match config.ipv6 {
            Ipv6Mode::Always => true,
            Ipv6Mode::Never => false,
            Ipv6Mode::Auto => has_ipv6_route(),
        };
        Ok(HttpDns {
            config,
            http,
            cache,
            refreshing: Mutex::new(HashSet::new()),
            inflight: Mutex::new(HashMap::new()),
            ipv6: std::sync::atomic::AtomicBool::new(ipv6),
        })
    }

    /// Drops every cached answer and checks IPv6 connectivity again (call it when the
    /// network changes: new Wi-Fi, VPN, cellular).
    pub fn clear(&self) {
        self.cache.clear();
        self.http.close_idle();
        if self.config.ipv6 == Ipv6Mode::Auto {
            self.ipv6
                .store(has_ipv6_route(), std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn wants_ipv6(&self) -> bool {
        self.ipv6.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Resolves `hosts` ahead of need, concurrently; failures are logged.
    pub async fn prefetch(self: &Arc<Self>, hosts: &[&str]) {
        let tasks: Vec<_> = hosts
            .iter()
            .map(|h| {
                let me = self.clone();
                let h = h.to_string();
                tokio::spawn(async move {
                    if let Err(e) = me.resolve(&h).await {
                        warn!(host = %h, error = %e, "prefetch failed");
                    }
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }

    /// [`HttpDns::resolve_by`] with a deadline of 4 provider timeouts.
    pub async fn resolve(self: &Arc<Self>, host: &str) -> Result<Resolved, Error> {
        self.resolve_by(host, self.lookup_deadline()).await
    }

    /// Resolves `host` by `deadline`: fresh cache, else (serve-stale) the expired entry
    /// plus a background refresh, else the sources raced. Concurrent calls for one host
    /// share one lookup.
    pub async fn resolve_by(
        self: &Arc<Self>,
        host: &str,
        deadline: Instant,
    ) -> Result<Resolved, Error> {
        if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return Ok(Resolved {
                ips: vec![ip],
                source: DnsSource::Literal,
                stale: false,
            });
        }
        let now = Instant::now();
        if let Some(e) = self.cache.get(host) {
            if e.expires > now {
                return Ok(Resolved {
                    ips: e.ips,
                    source: e.source,
                    stale: false,
                });
            }
            if self.config.serve_stale && now <= e.stale_until {
                self.refresh_in_background(host);
                return Ok(Resolved {
                    ips: e.ips,
                    source: e.source,
                    stale: true,
                });
            }
            self.cache.invalidate(host);
        }
        // One lookup in flight per host: later callers wait for it, then find its
        // answer in the cache (or, when it failed, look up themselves).
        let gate = self
            .inflight
            .lock()
            .expect("inflight")
            .entry(host.to_string())
            .or_default()
            .clone();
        let result = {
            let _turn = gate.lock().await;
            match self.cache.get(host).filter(|e| e.expires > Instant::now()) {
                Some(e) => Ok(e),
                None => match self.lookup(host, deadline).await {
                    Ok(e) => {
                        self.cache.insert(host, e.clone());
                        Ok(e)
                    }
                    Err(e) => Err(e),
                },
            }
        };
        {
            let mut inflight = self.inflight.lock().expect("inflight");
            if Arc::strong_count(&gate) <= 2 {
                inflight.remove(host);
            }
        }
        let entry = result?;
        Ok(Resolved {
            ips: entry.ips,
            source: entry.source,
            stale: false,
        })
    }

    fn refresh_in_background(self: &Arc<Self>, host: &str) {
        if !self
            .refreshing
            .lock()
            .expect("refreshing")
            .insert(host.to_string())
        {
            return;
        }
        let me = self.clone();
        let host = host.to_string();
        tokio::spawn(async move {
            let deadline = me.lookup_deadline();
            match me.lookup(&host, deadline).await {
                Ok(entry) => me.cache.insert(&host, entry),
                Err(e) => {
                    debug!(host = %host, error = %e, "background refresh failed; keeping the stale answer")
                }
            }
            me.refreshing.lock().expect("refreshing").remove(&host);
        });
    }

    /// A lookup's deadline when the caller gives none: 4 provider timeouts from now.
    fn lookup_deadline(&self) -> Instant {
        crate::limits::later(
            Instant::now(),
            self.config.attempt_timeout.saturating_mul(4),
        )
    }

    /// The sources, in order: each provider address, then local DNS.
    fn attempts(&self, host: &str) -> Vec<(String, Attempt<Found, Failure>)> {
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let ipv6 = self.wants_ipv6();
        let mut out: Vec<(String, Attempt<Found, Failure>)> = Vec::new();
        for p in &self.config.providers {
            for addr in &p.addrs {
                let target = format!("HTTPDNS {addr}");
                let endpoint = Endpoint {
                    addr: *addr,
                    name: match &p.tls_name {
                        Some(n) if p.https => n.clone(),
                        _ => addr.ip().to_string(),
                    },
                    https: p.https,
                };
                let (p, host, t) = (p.clone(), host.to_string(), target.clone());
                let http = self.http.clone();
                let sign_ttl = self.config.sign_ttl;
                let timeout = self.config.attempt_timeout;
                let fut = async move {
                    let ask = Ask {
                        http: &http,
                        endpoint: &endpoint,
                        host: &host,
                        now_unix,
                        sign_ttl,
                        ipv6,
                        target: &t,
                    };
                    match tokio::time::timeout(timeout, ask.run(&p)).await {
                        Ok(r) => r.map(|(ips, ttl)| (ips, ttl, DnsSource::HttpDns)),
                        Err(_) => Err(Failure::new(t, FailureKind::TimedOut)),
                    }
                };
                out.push((target, Box::pin(fut)));
            }
        }
        if self.config.local_fallback {
            let host = host.to_string();
            let timeout = self.config.attempt_timeout.saturating_mul(2);
            out.push((
                "local DNS".into(),
                Box::pin(async move {
                    let f = |kind| Failure::new("local DNS", kind);
                    match tokio::time::timeout(timeout, tokio::net::lookup_host((host.as_str(), 0)))
                        .await
                    {
                        Ok(Ok(addrs)) => {
                            let mut ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
                            ips.sort_by_key(|ip| ip.is_ipv6());
                            ips.dedup();
                            if ips.is_empty() {
                                Err(f(FailureKind::Malformed("no address".into())))
                            } else {
                                Ok((ips, None, DnsSource::LocalDns))
                            }
                        }
                        Ok(Err(e)) => Err(Failure {
                            target: "local DNS".into(),
                            kind: FailureKind::Other(e.to_string()),
                            source: Some(Box::new(e)),
                        }),
                        Err(_) => Err(f(FailureKind::TimedOut)),
                    }
                }),
            ));
        }
        out
    }

    /// Races the sources: each starts `stagger` after the previous one, or at once when
    /// the previous one failed; the first usable answer wins and is cached. Bootstrap
    /// IPs answer when every source failed or the deadline is near.
    async fn lookup(&self, host: &str, deadline: Instant) -> Result<Entry, Error> {
        let mut failures = Vec::new();
        if self.config.providers.is_empty() {
            failures.push(Failure::new(
                "HTTPDNS",
                FailureKind::Unavailable("no HTTPDNS provider configured".into()),
            ));
        }
        let bootstrap = self.config.bootstrap.get(host).filter(|v| !v.is_empty());
        // Keep a little time for the bootstrap answer and the caller's next step.
        let give_up = deadline
            .checked_sub(self.config.stagger)
            .unwrap_or(deadline);
        let (targets, attempts): (Vec<String>, Vec<_>) = self.attempts(host).into_iter().unzip();
        let found = match staggered(attempts, self.config.stagger, Some(give_up)).await {
            Ok(won) => Some(won.value),
            Err(lost) => {
                for (_, f, _) in lost.failures {
                    warn!(host, failure = %f, "resolution source failed");
                    failures.push(f);
                }
                for i in lost.untried {
                    failures.push(Failure::new(
                        targets[i].clone(),
                        FailureKind::Unavailable("not tried: deadline".into()),
                    ));
                }
                if lost.timed_out {
                    failures.push(Failure::new("resolution", FailureKind::TimedOut));
                }
                None
            }
        };
        if let Some((ips, ttl, source)) = found {
            let ttl = ttl
                .unwrap_or(self.config.default_ttl)
                .clamp(self.config.min_ttl, self.config.max_ttl)
                .min(crate::limits::MAX_TTL);
            return Ok(Entry::new(ips, source, ttl, self.config.max_stale));
        }
        if let Some(ips) = bootstrap {
            // Not kept for long: the next call tries HTTPDNS again.
            return Ok(Entry::new(
                ips.clone(),
                DnsSource::Bootstrap,
                Duration::ZERO,
                self.config.max_stale,
            ));
        }
        Err(Error::Resolve {
            host: host.to_string(),
            failures: failures.into(),
        })
    }

    #[cfg(test)]
    async fn store(&self, host: &str, ips: Vec<IpAddr>, ttl: Duration, source: DnsSource) {
        let entry = Entry::new(ips, source, ttl, self.config.max_stale);
        self.cache.insert(host, entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns_with(bootstrap: &[(&str, &str)]) -> Arc<HttpDns> {
        let config = DnsConfig {
            local_fallback: false,
            default_ttl: Duration::from_secs(10),
            bootstrap: bootstrap
                .iter()
                .map(|(h, ip)| (h.to_string(), vec![ip.parse().unwrap()]))
                .collect(),
            ..DnsConfig::default()
        };
        Arc::new(HttpDns::new(config, Vec::new()).unwrap())
    }

    #[tokio::test]
    async fn falls_back_to_bootstrap_and_reports_the_source() {
        let dns = dns_with(&[("router.example", "192.0.2.7")]);
        let r = dns.resolve("router.example").await.unwrap();
        assert_eq!(r.source, DnsSource::Bootstrap);
        let e = dns.resolve("unknown.example").await.unwrap_err();
        assert!(e.is_retryable());
        assert!(e.to_string().contains("no HTTPDNS provider"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn serve_stale_returns_at_once_then_refreshes() {
        let dns = dns_with(&[]);
        dns.store(
            "h.example",
            vec!["192.0.2.1".parse().unwrap()],
            Duration::from_secs(5),
            DnsSource::HttpDns,
        )
        .await;
        assert!(!dns.resolve("h.example").await.unwrap().stale);
        tokio::time::advance(Duration::from_secs(6)).await;
        let r = dns.resolve("h.example").await.unwrap();
        assert!(r.stale, "expired entry served at once");
        assert_eq!(r.ips, vec!["192.0.2.1".parse::<IpAddr>().unwrap()]);
        dns.clear();
        assert!(
            dns.resolve("h.example").await.is_err(),
            "cleared; nothing else to ask"
        );
    }
}
