//! The client: candidates from the router, with fallbacks, and a connection to one.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{info, warn};

pub use crate::cache_file::parse_cache_file;
use crate::cache_file::{now_ms, read_cache, write_atomically, CacheFile};
pub use crate::connect::race;
use crate::dns::{DnsConfig, DnsSource, HttpDns};
use crate::error::{Failure, FailureKind};
use crate::Error;

/// A protocol a client speaks to gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// Raw TCP.
    Tcp,
    /// WebSocket.
    Ws,
    /// WebSocket over TLS.
    Wss,
}

impl Proto {
    /// Its name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Ws => "ws",
            Proto::Wss => "wss",
        }
    }
}

/// Everything the client needs; [`Config::new`] gives the defaults, then set what
/// differs (new settings arrive with defaults, so this never breaks a build).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// The router's domain: resolved through HTTPDNS, and the Host / TLS name.
    pub router_domain: String,
    /// The router's port (443).
    pub router_port: u16,
    /// HTTPS to the router (true). Plain HTTP only for development.
    pub router_https: bool,
    /// Protocol to ask candidates for.
    pub proto: Proto,
    /// Candidates to ask for (1-10, default 3).
    pub count: u8,
    /// The client's region, when it knows better than the router's address lookup.
    pub region: Option<String>,
    /// Only candidates reachable over IPv4 (4) or IPv6 (6).
    pub ip_version: Option<u8>,
    /// Resolver settings (HTTPDNS providers, bootstrap IPs, serve-stale).
    pub dns: DnsConfig,
    /// Deadline of one router request.
    pub router_attempt_timeout: Duration,
    /// Time from the start of a call (name resolution included) after which no router
    /// is asked any more and the fallbacks are used.
    pub router_budget: Duration,
    /// Deadline of a whole [`Client::gateways`] call: resolution, routers, fallbacks.
    pub deadline: Duration,
    /// How many router addresses one call tries.
    pub max_routers: usize,
    /// Where the last good answer is kept across restarts.
    pub cache_file: Option<PathBuf>,
    /// A cache file older than this is not used.
    pub cache_max_age: Duration,
    /// Last resort: a domain whose addresses are gateways (resolved via HTTPDNS, then
    /// local DNS), on `fallback_port`.
    pub fallback_domain: Option<String>,
    /// Port of the fallback domain's gateways.
    pub fallback_port: u16,
    /// How long a fallback answer is reused before the router is asked again.
    pub fallback_ttl: Duration,
    /// Happy eyeballs: start the next candidate after this long without success.
    pub connect_delay: Duration,
    /// Deadline of one TCP connect.
    pub connect_timeout: Duration,
    /// Roots trusted for the router and HTTPS providers besides the platform's store
    /// (system, enterprise and user-installed CAs): a private CA, say.
    pub extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl Config {
    /// Defaults for `router_domain`.
    pub fn new(router_domain: impl Into<String>) -> Config {
        Config {
            router_domain: router_domain.into(),
            router_port: 443,
            router_https: true,
            proto: Proto::Tcp,
            count: 3,
            region: None,
            ip_version: None,
            dns: DnsConfig::default(),
            router_attempt_timeout: Duration::from_millis(700),
            router_budget: Duration::from_millis(1000),
            deadline: Duration::from_millis(1400),
            max_routers: 3,
            cache_file: None,
            cache_max_age: Duration::from_secs(7 * 24 * 3600),
            fallback_domain: None,
            fallback_port: 443,
            fallback_ttl: Duration::from_secs(30),
            connect_delay: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(3),
            extra_roots: Vec::new(),
        }
    }

    /// Trusts the certificates of a PEM bundle (besides the platform's store).
    pub fn add_roots_pem(&mut self, pem: &[u8]) -> Result<(), Error> {
        use rustls::pki_types::pem::PemObject;
        let mut n = 0;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| Error::Config(format!("extra root: {e}")))?;
            self.extra_roots.push(cert);
            n += 1;
        }
        if n == 0 {
            return Err(Error::Config(
                "extra root: no certificate in the PEM".into(),
            ));
        }
        Ok(())
    }
}

/// One candidate gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gateway {
    /// Node id.
    pub id: String,
    /// Address to connect to.
    pub ip: IpAddr,
    /// Port for the protocol asked.
    pub port: u16,
    /// That protocol.
    pub proto: Proto,
    /// The node's region.
    pub region: String,
    /// The node's DNS name (WebSocket / TLS callers use it as Host / SNI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The data centre holding the node, as the router names it (routers that follow
    /// several DCs; `None` from older routers and fallbacks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dc: Option<String>,
    /// Load as the router estimates it.
    pub load: f64,
}

impl Gateway {
    /// The socket address to dial.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }
}

/// Reconnect backoff as the router configures it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BackoffParams {
    /// First delay.
    pub base_ms: u64,
    /// Largest delay.
    pub max_ms: u64,
    /// Growth per attempt.
    pub factor: f64,
    /// ± fraction of random spread.
    pub jitter: f64,
}

impl Default for BackoffParams {
    fn default() -> Self {
        BackoffParams {
            base_ms: 1000,
            max_ms: 60_000,
            factor: 1.6,
            jitter: 0.2,
        }
    }
}

impl BackoffParams {
    /// The un-jittered delay before retry `n` (0-based): `base * factor^n`, capped.
    pub fn nominal(&self, n: u32) -> Duration {
        let ms = self.base_ms as f64 * self.factor.max(1.0).powi(n.min(64) as i32);
        Duration::from_secs_f64(ms.min(self.max_ms as f64) / 1000.0)
    }

    /// The delay before retry `n` with jitter; `unit` in [0, 1) picks the spread.
    pub fn delay(&self, n: u32, unit: f64) -> Duration {
        let j = self.jitter.clamp(0.0, 1.0);
        self.nominal(n)
            .mul_f64(1.0 - j + 2.0 * j * unit.clamp(0.0, 1.0))
    }
}

/// The router's answer, as it arrives and as the cache file keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouterAnswer {
    /// Candidates, best first.
    pub gateways: Vec<Gateway>,
    /// The region the router used.
    #[serde(default)]
    pub region: Option<String>,
    /// How long the answer may be reused.
    pub ttl_secs: u64,
    /// Heartbeat interval for the gateway connection.
    pub heartbeat_secs: u64,
    /// Reconnect backoff.
    pub backoff: BackoffParams,
    /// Registry revision.
    #[serde(default)]
    pub revision: i64,
    /// True when the router answered from an old snapshot.
    #[serde(default)]
    pub stale: bool,
}

impl RouterAnswer {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.gateways.is_empty() {
            return Err("no gateways in the answer".into());
        }
        if let Some(g) = self
            .gateways
            .iter()
            .find(|g| g.port == 0 || g.ip.is_unspecified())
        {
            return Err(format!("gateway {} has an unusable address", g.id));
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
    /// How long the router allows reuse.
    pub ttl: Duration,
    /// Heartbeat interval for the gateway connection.
    pub heartbeat: Duration,
    /// Reconnect backoff.
    pub backoff: BackoffParams,
    /// Registry revision.
    pub revision: i64,
    /// The router answered from an old snapshot, or this is a fallback answer.
    pub stale: bool,
    /// Where it came from.
    pub source: Source,
    expires: Instant,
}

/// A connected gateway.
#[derive(Debug)]
pub struct Connection {
    /// The connected socket.
    pub stream: TcpStream,
    /// The candidate reached.
    pub gateway: Gateway,
    /// Where the candidate list came from.
    pub source: Source,
    /// Heartbeat interval to use on this connection.
    pub heartbeat: Duration,
}

/// Why no router gave candidates.
enum RouterOutcome {
    /// A live router refused (overload, rate limit): ask it again later; no fallback.
    Refused(Error),
    /// None could be reached or gave a usable answer: the fallbacks apply.
    Unreachable(Vec<Failure>),
}

/// The contract's error body.
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    #[serde(default)]
    message: String,
}

/// The SDK's entry point. Cheap to clone; share one per app.
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: Config,
    dns: Arc<HttpDns>,
    routers: Mutex<HashMap<SocketAddr, reqwest::Client>>,
    pub(crate) current: Mutex<Option<Arc<Gateways>>>,
    /// True once this client has connected: a later `connect()` is a reconnect, which
    /// asks a router again instead of reusing the answer of the first connection.
    pub(crate) connected: AtomicBool,
    /// TLS trusting the platform's store plus `extra_roots`.
    tls: rustls::ClientConfig,
    /// This client's starting point among the router's addresses, so that clients
    /// spread over them instead of all asking the first.
    spread: usize,
    /// The backoff of the last answer obtained, kept after the answer itself is
    /// dropped (a failed round drops it), so retries follow the router's settings.
    pub(crate) backoff: Mutex<BackoffParams>,
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
        let dns = Arc::new(HttpDns::new(
            config.dns.clone(),
            config.extra_roots.clone(),
        )?);
        let tls = crate::dns::platform_tls(&config.extra_roots)?;
        Ok(Client {
            inner: Arc::new(Inner {
                tls,
                spread: rand::random::<u32>() as usize,
                config,
                dns,
                routers: Mutex::new(HashMap::new()),
                current: Mutex::new(None),
                connected: AtomicBool::new(false),
                backoff: Mutex::new(BackoffParams::default()),
            }),
        })
    }

    /// The resolver, for pre-resolution or for other reqwest clients
    /// (see [`crate::HttpDnsResolver`]).
    pub fn dns(&self) -> &Arc<HttpDns> {
        &self.inner.dns
    }

    /// Forget cached addresses and candidates: call it when the network changes.
    pub fn network_changed(&self) {
        self.inner.dns.clear();
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
            match self.ask_routers(start + c.router_budget).await {
                Ok(g) => Ok(g),
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
                    self.fallback(start + c.deadline)
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

    /// The router's addresses in the order this client tries them: IPv6 and IPv4
    /// interleaved (RFC 8305), each family rotated by this client's random offset.
    fn router_order(&self, ips: &[IpAddr]) -> Vec<IpAddr> {
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

    async fn ask_routers(&self, budget_end: Instant) -> Result<Gateways, RouterOutcome> {
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
                    let ttl = Duration::from_secs(answer.ttl_secs.max(1));
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
        let client = self
            .router_client(addr)
            .map_err(|e| RouterOutcome::Unreachable(vec![e]))?;
        let scheme = if c.router_https { "https" } else { "http" };
        let base = format!("{scheme}://{}:{}/gateways", c.router_domain, c.router_port);
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
        let url = reqwest::Url::parse_with_params(&base, &params)
            .map_err(|e| unreachable(FailureKind::Other(format!("bad URL: {e}"))))?;
        let resp =
            client.get(url).send().await.map_err(|e| {
                RouterOutcome::Unreachable(vec![Failure::request(target.clone(), e)])
            })?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = resp
            .bytes()
            .await
            .map_err(|e| RouterOutcome::Unreachable(vec![Failure::request(target.clone(), e)]))?;
        if !status.is_success() {
            let detail = serde_json::from_slice::<ErrorBody>(&body)
                .ok()
                .map(|b| b.error);
            let code = detail.as_ref().map(|d| d.code.as_str()).unwrap_or("");
            // A live router that says the fleet is full or this client asks too often:
            // the answer stands. One not ready yet (or failing): try the next.
            if status.as_u16() == 429 || (status.as_u16() == 503 && code == "no_gateways") {
                return Err(RouterOutcome::Refused(Error::Refused {
                    addr,
                    status: status.as_u16(),
                    code: code.to_string(),
                    message: detail.map(|d| d.message).unwrap_or_default(),
                    retry_after,
                }));
            }
            return Err(unreachable(FailureKind::Status {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body).chars().take(200).collect(),
            }));
        }
        let answer: RouterAnswer = serde_json::from_slice(&body)
            .map_err(|e| unreachable(FailureKind::Malformed(e.to_string())))?;
        answer
            .validate()
            .map_err(|e| unreachable(FailureKind::Malformed(e)))?;
        Ok(answer)
    }

    fn router_client(&self, addr: SocketAddr) -> Result<reqwest::Client, Failure> {
        let c = &self.inner.config;
        let mut clients = self.inner.routers.lock().expect("router clients");
        if let Some(client) = clients.get(&addr) {
            return Ok(client.clone());
        }
        // Host header and TLS name are the router's domain; the address is the one
        // HTTPDNS gave, so a hijacked local resolver is never consulted.
        let client = reqwest::Client::builder()
            .resolve(&c.router_domain, addr)
            .connect_timeout(c.router_attempt_timeout)
            .no_proxy()
            .use_preconfigured_tls(self.inner.tls.clone())
            .build()
            .map_err(|e| Failure::request(format!("router {addr}"), e))?;
        clients.insert(addr, client.clone());
        Ok(client)
    }

    fn persist(&self, answer: &RouterAnswer) {
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
                    FailureKind::Unavailable(e),
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

fn to_gateways(a: RouterAnswer, source: Source, ttl: Duration) -> Gateways {
    Gateways {
        gateways: a.gateways,
        region: a.region,
        ttl,
        heartbeat: Duration::from_secs(a.heartbeat_secs),
        backoff: a.backoff,
        revision: a.revision,
        stale: a.stale || !matches!(source, Source::Router { .. }),
        source,
        expires: Instant::now() + ttl,
    }
}

#[cfg(test)]
mod tests {
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
