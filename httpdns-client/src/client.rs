//! The client: candidates from a router, with fallbacks (the cache file, the fallback
//! domain), and which answer a call may use.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;
use tracing::{info, warn};

use crate::answer::to_gateways;
pub use crate::answer::{
    BackoffExt, BackoffParams, Gateway, Gateways, InvalidAnswer, RouterAnswer, Source,
};
pub use crate::cache_file::{parse_cache_file, CacheFileError};
use crate::cache_file::{read_cache, CacheFile};
pub use crate::config::{Config, Proto};
pub use crate::connect::{race, Connection};
use crate::dns::HttpDns;
use crate::error::Error;
use crate::error::{Failure, FailureKind};
use crate::files::{now_ms, write_atomically};
use crate::http::Http;
use crate::limits::later;
use crate::outcomes::Outcomes;
use crate::router::{RouterOutcome, Routers};

/// The SDK's entry point. Cheap to clone; share one per app.
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) dns: Arc<HttpDns>,
    /// Requests to routers.
    pub(crate) http: Http,
    pub(crate) current: Mutex<Option<Arc<Gateways>>>,
    /// True once this client has connected: a later `connect()` is a reconnect, which
    /// asks a router again instead of reusing the answer of the first connection.
    pub(crate) connected: AtomicBool,
    /// The same trust for gateways, offering `tls_alpn`.
    pub(crate) gateway_tls: Arc<rustls::ClientConfig>,
    /// `gateway_domain_suffixes`, normalised: a TLS candidate's domain must match one
    /// (when there are any).
    pub(crate) domain_pins: Arc<[crate::config::DomainPin]>,
    /// This client's starting point among the router's addresses, so that clients
    /// spread over them instead of all asking the first.
    pub(crate) spread: usize,
    /// The backoff of the last answer obtained, kept after the answer itself is
    /// dropped (a failed round drops it), so retries follow the router's settings.
    pub(crate) backoff: Mutex<BackoffParams>,
    /// Connect outcomes waiting for the next router that answers (at most
    /// `gateway_api::MAX_OUTCOMES`; newer ones are dropped while it is full).
    pub(crate) outcomes: Outcomes,
}

/// Which answer a call may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// The last answer while its TTL lasts (`gateways()`, a first connection).
    Cached,
    /// A router's answer; the last one only when no router can be reached (a
    /// reconnect after a lost connection).
    Fresh,
    /// A router's answer, never the last one (a migration): when no router can be
    /// reached, the cache file and the fallback domain, as for a cold start.
    FreshOnly,
}

impl Client {
    /// Builds a client; checks the configuration.
    pub fn new(config: Config) -> Result<Client, Error> {
        if config.router_domain.is_empty()
            || config.router_domain.contains(['/', ':', '?', '#', ' '])
        {
            return Err(Error::Config(format!(
                "router domain {:?} is not a host name",
                config.router_domain
            )));
        }
        if !(1..=10).contains(&config.count) {
            return Err(Error::Config(format!("count {} is not 1-10", config.count)));
        }
        if config.ip_version.is_some_and(|v| v != 4 && v != 6) {
            return Err(Error::Config("ip_version must be 4 or 6".into()));
        }
        let domain_pins = config.domain_pins()?.into();
        let dns = Arc::new(HttpDns::new(
            config.dns.clone(),
            config.extra_roots.clone(),
        )?);
        let tls = crate::trust::platform_tls(&config.extra_roots)?;
        let mut gateway_tls = tls.clone();
        gateway_tls.alpn_protocols = config.tls_alpn.clone();
        let http = Http::new(tls, config.router_attempt_timeout);
        let client = Client {
            inner: Arc::new(Inner {
                gateway_tls: Arc::new(gateway_tls),
                domain_pins,
                spread: rand::random::<u32>() as usize,
                config,
                dns,
                http,
                current: Mutex::new(None),
                connected: AtomicBool::new(false),
                backoff: Mutex::new(BackoffParams::default()),
                outcomes: Outcomes::default(),
            }),
        };
        // Pre-resolve the router's domain, so the first call finds its address ready
        // (inside a Tokio runtime; elsewhere the first call resolves it).
        if client.inner.config.prefetch_router {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let dns = client.inner.dns.clone();
                let domain = client.inner.config.router_domain.clone();
                rt.spawn(async move { dns.prefetch(&[&domain]).await });
            }
        }
        Ok(client)
    }

    /// The resolver, for pre-resolution or for other reqwest clients
    /// (see `HttpDnsResolver`, feature `reqwest`).
    pub fn dns(&self) -> &Arc<HttpDns> {
        &self.inner.dns
    }

    /// Forget cached addresses and candidates: call it when the network changes.
    pub fn network_changed(&self) {
        self.inner.dns.clear();
        self.inner.http.close_idle();
        *self.inner.current.lock().expect("current") = None;
    }

    /// Resolves `hosts` ahead of need (the router's domain is a good one).
    pub async fn prefetch(&self, hosts: &[&str]) {
        self.inner.dns.prefetch(hosts).await;
    }

    /// Candidates: the last answer while its TTL lasts, else a router's. When no
    /// router can be reached: the cache file's last good answer, else the fallback
    /// domain's addresses. When a router refuses (503 `no_gateways`, 429), that
    /// refusal ([`Error::Refused`], with `Retry-After`): the fleet is full or this client
    /// asks too often, and old candidates would defeat the router's protection. The
    /// whole call, name resolution included, ends within `deadline`.
    pub async fn gateways(&self) -> Result<Arc<Gateways>, Error> {
        self.candidates(Want::Cached, None).await
    }

    /// Candidates as `want` allows, without the gateway `avoid` (the one a migration
    /// leaves: never offered again, whatever the source).
    pub(crate) async fn candidates(
        &self,
        want: Want,
        avoid: Option<&Gateway>,
    ) -> Result<Arc<Gateways>, Error> {
        let last = self
            .inner
            .current
            .lock()
            .expect("current")
            .clone()
            .filter(|g| g.expires > Instant::now());
        if want == Want::Cached {
            if let Some(g) = last {
                return without(g, avoid);
            }
        }
        let c = &self.inner.config;
        let start = Instant::now();
        let fresh = tokio::time::timeout(c.deadline, async {
            let routers = self.routers();
            match routers
                .ask(later(start, c.router_budget), |a| self.persist(a))
                .await
            {
                Ok(g) => {
                    if let Source::Router { addr, .. } = g.source {
                        self.report_outcomes(addr);
                    }
                    Ok(g)
                }
                Err(RouterOutcome::Refused(e)) => Err(e),
                Err(RouterOutcome::Unreachable(routers)) => {
                    if let (Want::Fresh, Some(g)) = (want, &last) {
                        warn!(
                            failures = routers.len(),
                            "no router answered; reconnecting with the last answer"
                        );
                        return Ok((**g).clone());
                    }
                    warn!(
                        failures = routers.len(),
                        "no router answered; using fallbacks"
                    );
                    self.fallback(later(start, c.deadline))
                        .await
                        .map_err(|fallbacks| Error::NoCandidates {
                            routers: routers.into(),
                            fallbacks: fallbacks.into(),
                        })
                }
            }
        })
        .await
        .map_err(|_| Error::Deadline(c.deadline))??;
        let fresh = Arc::new(fresh);
        *self.inner.backoff.lock().expect("backoff") = fresh.backoff;
        *self.inner.current.lock().expect("current") = Some(fresh.clone());
        without(fresh, avoid)
    }

    pub(crate) fn persist(&self, answer: &RouterAnswer) {
        let Some(path) = self.inner.config.cache_file.clone() else {
            return;
        };
        let file = CacheFile {
            version: 1,
            router_domain: self.inner.config.router_domain.clone(),
            saved_ms: now_ms(),
            answer: answer.clone(),
        };
        let bytes = serde_json::to_vec(&file).expect("cache file serializes");
        // Off the caller's path; a failure only costs the next cold start its fallback.
        tokio::task::spawn_blocking(move || {
            if let Err(e) = write_atomically(&path, &bytes) {
                warn!(path = %path.display(), error = %e, "could not write the gateway cache file");
            }
        });
    }

    async fn fallback(&self, deadline: Instant) -> Result<Gateways, Vec<Failure>> {
        let c = &self.inner.config;
        let mut why = Vec::new();
        if let Some(path) = &c.cache_file {
            match read_cache(path, &c.router_domain, c.proto, c.cache_max_age) {
                Ok(answer) => {
                    info!(path = %path.display(), "using the last good candidates from the cache file");
                    return Ok(to_gateways(answer, Source::CacheFile, c.fallback_ttl));
                }
                Err(e) => why.push(Failure::new(
                    format!("cache file {}", path.display()),
                    FailureKind::Unavailable(e.to_string()),
                )),
            }
        }
        if let Some(domain) = &c.fallback_domain {
            match self.inner.dns.resolve_by(domain, deadline).await {
                Ok(r) => {
                    let gateways = r
                        .ips
                        .iter()
                        .take(c.count as usize)
                        .map(|ip| Gateway {
                            id: format!("{domain}/{ip}"),
                            ip: *ip,
                            port: c.fallback_port,
                            proto: c.proto,
                            region: String::new(),
                            domain: Some(domain.clone()),
                            dc: None,
                            isp: None,
                            load: 0.0,
                        })
                        .collect();
                    let answer = RouterAnswer {
                        gateways,
                        region: None,
                        ttl_secs: c.fallback_ttl.as_secs(),
                        heartbeat_secs: 240,
                        backoff: BackoffParams::default(),
                        revision: 0,
                        stale: true,
                    };
                    return Ok(to_gateways(
                        answer,
                        Source::FallbackDomain { dns: r.source },
                        c.fallback_ttl,
                    ));
                }
                Err(e) => why.push(Failure {
                    target: format!("fallback domain {domain}"),
                    kind: FailureKind::Other(e.to_string()),
                    source: Some(Box::new(e)),
                }),
            }
        }
        if why.is_empty() {
            why.push(Failure::new(
                "fallbacks",
                FailureKind::Unavailable("no cache file or fallback domain configured".into()),
            ));
        }
        Err(why)
    }
}

/// `g` without the gateway `avoid` (by id or by address): the one a client leaves.
fn without(g: Arc<Gateways>, avoid: Option<&Gateway>) -> Result<Arc<Gateways>, Error> {
    let Some(left) = avoid else { return Ok(g) };
    let is_left = |c: &Gateway| c.id == left.id || c.addr() == left.addr();
    if !g.gateways.iter().any(is_left) {
        return Ok(g);
    }
    let mut rest = (*g).clone();
    rest.gateways.retain(|c| !is_left(c));
    if rest.gateways.is_empty() {
        return Err(Error::NoOtherGateway {
            left: left.id.clone(),
            from: rest.source,
        });
    }
    Ok(Arc::new(rest))
}

impl Client {
    /// What asking routers needs from this client.
    pub(crate) fn routers(&self) -> Routers<'_> {
        Routers {
            config: &self.inner.config,
            dns: &self.inner.dns,
            http: &self.inner.http,
            spread: self.inner.spread,
        }
    }
}
