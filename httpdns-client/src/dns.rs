//! HTTPDNS resolution with local-DNS and bootstrap fallbacks, a bounded per-host TTL
//! cache with one lookup in flight per host, serve-stale with background refresh, and a
//! `reqwest::dns::Resolve` implementation.
//!
//! Provider kinds ([`ProviderKind`]):
//!
//! * Alibaba-style: `GET /{account}/d?host=H` answers `{"host","ips","ipsv6","ttl"}`;
//!   signed: `GET /{account}/sign_d?host=H&t=EXPIRY&s=S` with
//!   `S = md5("{host}-{secret}-{EXPIRY}")`. `&query=4,6` asks for IPv6 addresses too.
//! * Tencent DNSPod: `GET /d?dn=H&ttl=1` answers `IP;IP,TTL` in plain text.
//! * DNS-over-HTTPS (RFC 8484): `application/dns-message` by GET (`?dns=` base64url)
//!   or POST, A and AAAA queries.
//!
//! Only IP literals are accepted from an answer: anything else is logged and dropped,
//! and an answer left with no address counts as a failure (a hijacked or broken
//! provider), so the next source is tried. Sources are raced with a short stagger
//! (each provider address, then local DNS, then bootstrap IPs), all within the caller's
//! deadline: a blackholed provider costs one stagger, not its whole timeout.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use md5::{Digest, Md5};
use serde::Deserialize;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::error::{Failure, FailureKind};
use crate::Error;

/// What a provider speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProviderKind {
    /// Alibaba-style JSON (`/{account}/d?host=`), signed with a secret when one is set.
    Alibaba,
    /// Tencent DNSPod's plain-text `/d?dn=` answer (`IP;IP,TTL`).
    DnsPod,
    /// DNS-over-HTTPS (RFC 8484) at `path` (usually `/dns-query`), by GET or POST.
    Doh {
        /// The query path.
        path: String,
        /// POST the message instead of GET `?dns=`.
        post: bool,
    },
}

/// One HTTPDNS service: the provider IPs to try, and how to talk to them. Build one
/// with [`Provider::alibaba`], [`Provider::dnspod`] or [`Provider::doh`], then the
/// `with_*` methods.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Provider {
    /// Account id, the first path segment (Alibaba-style only).
    pub account: String,
    /// Provider addresses (IP and port).
    pub addrs: Vec<SocketAddr>,
    /// Secret for signed requests (`sign_d`); plain `d` when absent.
    pub secret: Option<String>,
    /// Talk HTTPS to the provider. `tls_name` is the certificate name to expect.
    pub https: bool,
    /// Name the provider's certificate carries (HTTPS only); the IP when absent.
    pub tls_name: Option<String>,
    /// The protocol.
    pub kind: ProviderKind,
}

impl Provider {
    /// An Alibaba-style provider for `account` at `addrs` (plain HTTP, unsigned).
    pub fn alibaba(account: impl Into<String>, addrs: Vec<SocketAddr>) -> Provider {
        Provider {
            account: account.into(),
            addrs,
            secret: None,
            https: false,
            tls_name: None,
            kind: ProviderKind::Alibaba,
        }
    }

    /// A DNSPod provider at `addrs` (plain HTTP).
    pub fn dnspod(addrs: Vec<SocketAddr>) -> Provider {
        Provider {
            kind: ProviderKind::DnsPod,
            ..Provider::alibaba("", addrs)
        }
    }

    /// A DNS-over-HTTPS resolver at `addrs`, `/dns-query` by GET, whose certificate
    /// names `tls_name` (the IP when `None`).
    pub fn doh(addrs: Vec<SocketAddr>, tls_name: Option<String>) -> Provider {
        Provider {
            kind: ProviderKind::Doh {
                path: "/dns-query".into(),
                post: false,
            },
            ..Provider::alibaba("", addrs).with_https(tls_name)
        }
    }

    /// Signs requests with `secret`.
    pub fn with_secret(mut self, secret: impl Into<String>) -> Provider {
        self.secret = Some(secret.into());
        self
    }

    /// HTTPS, expecting a certificate for `tls_name` (the IP when `None`).
    pub fn with_https(mut self, tls_name: Option<String>) -> Provider {
        self.https = true;
        self.tls_name = tls_name;
        self
    }

    /// For DoH: the query path and method.
    pub fn with_doh(mut self, path: impl Into<String>, post: bool) -> Provider {
        self.kind = ProviderKind::Doh {
            path: path.into(),
            post,
        };
        self
    }
}

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

/// Whether to ask providers for IPv6 addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ipv6Mode {
    /// When this host has an IPv6 route (checked at start and on network change).
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// Resolver settings; [`DnsConfig::default`] then set what differs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DnsConfig {
    /// HTTPDNS services; their addresses are raced in order, `stagger` apart.
    pub providers: Vec<Provider>,
    /// Deadline of one provider request.
    pub attempt_timeout: Duration,
    /// How long a source has before the next one starts alongside it.
    pub stagger: Duration,
    /// Fall back to the system resolver when HTTPDNS fails.
    pub local_fallback: bool,
    /// Last-resort addresses per host (e.g. the router's domain).
    pub bootstrap: HashMap<String, Vec<IpAddr>>,
    /// Return an expired entry at once and refresh it in the background.
    pub serve_stale: bool,
    /// How long an expired entry may still be served.
    pub max_stale: Duration,
    /// TTL for answers without one (local DNS).
    pub default_ttl: Duration,
    /// Answers' TTLs are clamped to `min_ttl..=max_ttl`: a provider cannot make the
    /// SDK ask on every call, nor keep an address for days.
    pub min_ttl: Duration,
    /// See `min_ttl`.
    pub max_ttl: Duration,
    /// Hosts kept in the cache at most.
    pub max_entries: u64,
    /// Validity of a signature (`t` = now + this).
    pub sign_ttl: Duration,
    /// Ask for IPv6 addresses.
    pub ipv6: Ipv6Mode,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            providers: Vec::new(),
            attempt_timeout: Duration::from_millis(800),
            stagger: Duration::from_millis(150),
            local_fallback: true,
            bootstrap: HashMap::new(),
            serve_stale: true,
            max_stale: Duration::from_secs(24 * 3600),
            default_ttl: Duration::from_secs(60),
            min_ttl: Duration::from_secs(10),
            max_ttl: Duration::from_secs(3600),
            max_entries: 1024,
            sign_ttl: Duration::from_secs(600),
            ipv6: Ipv6Mode::Auto,
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    ips: Vec<IpAddr>,
    source: DnsSource,
    expires: Instant,
}

/// The HTTPDNS resolver. Share it behind an `Arc`.
pub struct HttpDns {
    config: DnsConfig,
    http: reqwest::Client,
    /// Per-provider-address HTTPS clients (certificate name pinned to `tls_name`).
    tls_clients: Mutex<HashMap<SocketAddr, reqwest::Client>>,
    /// Bounded; an entry outlives its TTL by `max_stale` for serve-stale.
    cache: moka::future::Cache<String, Entry>,
    refreshing: Mutex<HashSet<String>>,
    /// Per host, the turn to look it up (see [`HttpDns::resolve_by`]).
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    tls: rustls::ClientConfig,
    ipv6: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for HttpDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpDns")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// `md5("{host}-{secret}-{expiry}")` in lower-case hex: the `s` of a signed request.
pub fn sign(host: &str, secret: &str, expiry: u64) -> String {
    let digest = Md5::digest(format!("{host}-{secret}-{expiry}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Percent-encodes a query value.
fn esc(v: &str) -> String {
    reqwest::Url::parse_with_params("x:/", [("v", v)])
        .map(|u| u.query().unwrap_or("v=")[2..].to_string())
        .unwrap_or_default()
}

/// The path and query of an Alibaba-style or DNSPod request for `host` (signed when
/// the provider has a secret; `&query=4,6` when IPv6 is wanted).
pub fn request_path(
    provider: &Provider,
    host: &str,
    now_unix: u64,
    sign_ttl: Duration,
    ipv6: bool,
) -> String {
    let h = esc(host);
    let families = if ipv6 { "&query=4,6" } else { "" };
    match (&provider.kind, &provider.secret) {
        (ProviderKind::DnsPod, _) => format!("/d?dn={h}&ttl=1"),
        (_, Some(secret)) => {
            let t = now_unix + sign_ttl.as_secs();
            format!(
                "/{}/sign_d?host={h}&t={t}&s={}{families}",
                provider.account,
                sign(host, secret, t)
            )
        }
        (_, None) => format!("/{}/d?host={h}{families}", provider.account),
    }
}

#[derive(Debug, Deserialize)]
struct Answer {
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    ips: Vec<serde_json::Value>,
    #[serde(default)]
    ipsv6: Vec<serde_json::Value>,
    #[serde(default)]
    ttl: Option<u64>,
}

fn usable(ip: IpAddr) -> bool {
    !ip.is_unspecified() && !ip.is_multicast()
}

/// Validates a provider answer for `host`: keeps only IP literals of the right family.
/// Returns the addresses (IPv4 first) and the TTL, or why the answer is unusable.
pub fn parse_answer(host: &str, body: &[u8]) -> Result<(Vec<IpAddr>, Option<Duration>), String> {
    let a: Answer =
        serde_json::from_slice(body).map_err(|e| format!("answer is not HTTPDNS JSON: {e}"))?;
    if let Some(h) = &a.host {
        if !h.eq_ignore_ascii_case(host) {
            return Err(format!("answer is for {h:?}, not {host:?}"));
        }
    }
    let mut ips = Vec::new();
    for (values, v6) in [(&a.ips, false), (&a.ipsv6, true)] {
        for v in values {
            let parsed = v.as_str().and_then(|s| {
                if v6 {
                    s.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
                } else {
                    s.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
                }
            });
            match parsed {
                Some(ip) if usable(ip) => ips.push(ip),
                _ => warn!(host, value = %v, "HTTPDNS answer entry is not an IP literal; dropped"),
            }
        }
    }
    if ips.is_empty() {
        return Err("answer holds no usable IP address".into());
    }
    Ok((ips, a.ttl.filter(|t| *t > 0).map(Duration::from_secs)))
}

/// Parses DNSPod's plain-text answer: `IP;IP;...,TTL` (an empty body: no record).
pub fn parse_dnspod(body: &[u8]) -> Result<(Vec<IpAddr>, Option<Duration>), String> {
    let text = std::str::from_utf8(body).map_err(|_| "answer is not text".to_string())?;
    let text = text.trim();
    let (list, ttl) = match text.rsplit_once(',') {
        Some((l, t)) => (l, t.trim().parse::<u64>().ok()),
        None => (text, None),
    };
    let ips: Vec<IpAddr> = list
        .split(';')
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .filter(|ip| usable(*ip))
        .collect();
    if ips.is_empty() {
        return Err(format!(
            "answer holds no usable IP address: {:?}",
            text.chars().take(100).collect::<String>()
        ));
    }
    Ok((ips, ttl.filter(|t| *t > 0).map(Duration::from_secs)))
}

/// A DNS query message for `host` and `rtype` (id 0, recursion desired), as RFC 8484
/// recommends for cacheable GETs.
pub fn dns_query(host: &str, v6: bool) -> Result<Vec<u8>, String> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};
    let name = Name::from_ascii(host).map_err(|e| format!("{host:?}: {e}"))?;
    let rtype = if v6 { RecordType::AAAA } else { RecordType::A };
    let mut m = Message::new();
    m.set_id(0)
        .set_recursion_desired(true)
        .add_query(Query::query(name, rtype));
    m.to_vec().map_err(|e| e.to_string())
}

/// The addresses and the smallest TTL of a DNS answer message.
pub fn parse_dns_message(body: &[u8]) -> Result<(Vec<IpAddr>, Option<Duration>), String> {
    use hickory_proto::op::{Message, ResponseCode};
    use hickory_proto::rr::RData;
    let m = Message::from_vec(body).map_err(|e| format!("not a DNS message: {e}"))?;
    if m.response_code() != ResponseCode::NoError {
        return Err(format!("DNS {}", m.response_code()));
    }
    let mut ips = Vec::new();
    let mut ttl: Option<u32> = None;
    for r in m.answers() {
        let ip = match r.data() {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        if usable(ip) {
            ips.push(ip);
            ttl = Some(ttl.map_or(r.ttl(), |t| t.min(r.ttl())));
        }
    }
    Ok((ips, ttl.map(|t| Duration::from_secs(u64::from(t)))))
}

/// True when this host has a route to the IPv6 internet (no packet is sent).
fn has_ipv6_route() -> bool {
    std::net::UdpSocket::bind("[::]:0")
        .and_then(|s| s.connect("[2001:4860:4860::8888]:53"))
        .is_ok()
}

/// A TLS configuration trusting the platform's store (system and user-installed
/// CAs; Android's and iOS's own on those platforms) plus `extra_roots`.
pub(crate) fn platform_tls(
    extra_roots: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<rustls::ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(
        extra_roots.iter().cloned(),
        provider.clone(),
    )
    .map_err(|e| Error::Config(format!("platform trust store: {e}")))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// What one source answers: addresses, TTL, which source.
type Found = Result<(Vec<IpAddr>, Option<Duration>, DnsSource), Failure>;
type Attempt = Pin<Box<dyn Future<Output = Found> + Send>>;

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
        let http = reqwest::Client::builder()
            .timeout(config.attempt_timeout)
            .connect_timeout(config.attempt_timeout)
            .no_proxy()
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        let cache = moka::future::Cache::builder()
            .max_capacity(config.max_entries.max(1))
            .time_to_live(config.max_ttl + config.max_stale)
            .build();
        let ipv6 = match config.ipv6 {
            Ipv6Mode::Always => true,
            Ipv6Mode::Never => false,
            Ipv6Mode::Auto => has_ipv6_route(),
        };
        Ok(HttpDns {
            tls: platform_tls(&extra_roots)?,
            config,
            http,
            tls_clients: Mutex::new(HashMap::new()),
            cache,
            refreshing: Mutex::new(HashSet::new()),
            inflight: Mutex::new(HashMap::new()),
            ipv6: std::sync::atomic::AtomicBool::new(ipv6),
        })
    }

    /// Drops every cached answer and checks IPv6 connectivity again (call it when the
    /// network changes: new Wi-Fi, VPN, cellular).
    pub fn clear(&self) {
        self.cache.invalidate_all();
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
        self.resolve_by(host, Instant::now() + self.config.attempt_timeout * 4)
            .await
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
        if let Some(e) = self.cache.get(host).await {
            if e.expires > now {
                return Ok(Resolved {
                    ips: e.ips,
                    source: e.source,
                    stale: false,
                });
            }
            if self.config.serve_stale && now.duration_since(e.expires) <= self.config.max_stale {
                self.refresh_in_background(host);
                return Ok(Resolved {
                    ips: e.ips,
                    source: e.source,
                    stale: true,
                });
            }
            self.cache.invalidate(host).await;
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
            match self
                .cache
                .get(host)
                .await
                .filter(|e| e.expires > Instant::now())
            {
                Some(e) => Ok(e),
                None => match self.lookup(host, deadline).await {
                    Ok(e) => {
                        self.cache.insert(host.to_string(), e.clone()).await;
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
            let deadline = Instant::now() + me.config.attempt_timeout * 4;
            match me.lookup(&host, deadline).await {
                Ok(entry) => me.cache.insert(host.clone(), entry).await,
                Err(e) => {
                    debug!(host = %host, error = %e, "background refresh failed; keeping the stale answer")
                }
            }
            me.refreshing.lock().expect("refreshing").remove(&host);
        });
    }

    /// The sources, in order: each provider address, then local DNS.
    fn attempts(&self, host: &str) -> Vec<(String, Attempt)> {
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let ipv6 = self.wants_ipv6();
        let mut out: Vec<(String, Attempt)> = Vec::new();
        for p in &self.config.providers {
            for addr in &p.addrs {
                let target = format!("HTTPDNS {addr}");
                let (client, base) = match self.client_for(p, *addr) {
                    Ok(c) => c,
                    Err(f) => {
                        out.push((target, Box::pin(std::future::ready(Err(f)))));
                        continue;
                    }
                };
                let (p, host, t) = (p.clone(), host.to_string(), target.clone());
                let sign_ttl = self.config.sign_ttl;
                let timeout = self.config.attempt_timeout;
                let fut = async move {
                    let ask = ask_provider(&client, &base, &p, &host, now_unix, sign_ttl, ipv6, &t);
                    match tokio::time::timeout(timeout, ask).await {
                        Ok(r) => r.map(|(ips, ttl)| (ips, ttl, DnsSource::HttpDns)),
                        Err(_) => Err(Failure::new(t, FailureKind::TimedOut)),
                    }
                };
                out.push((target, Box::pin(fut)));
            }
        }
        if self.config.local_fallback {
            let host = host.to_string();
            let timeout = self.config.attempt_timeout * 2;
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
        let mut pending = self.attempts(host).into_iter();
        let mut running: JoinSet<Found> = JoinSet::new();
        if let Some((_, a)) = pending.next() {
            running.spawn(a);
        }
        let bootstrap = self.config.bootstrap.get(host).filter(|v| !v.is_empty());
        // Keep a little time for the bootstrap answer and the caller's next step.
        let give_up = deadline
            .checked_sub(self.config.stagger)
            .unwrap_or(deadline);
        let found = loop {
            if running.is_empty() && pending.len() == 0 {
                break None;
            }
            let stagger = tokio::time::sleep(self.config.stagger);
            tokio::select! {
                joined = running.join_next(), if !running.is_empty() => match joined {
                    Some(Ok(Ok(answer))) => break Some(answer),
                    Some(Ok(Err(f))) => {
                        warn!(host, failure = %f, "resolution source failed");
                        failures.push(f);
                        if let Some((_, a)) = pending.next() {
                            running.spawn(a);
                        }
                    }
                    Some(Err(join)) => failures.push(Failure::new("resolver task", FailureKind::Other(join.to_string()))),
                    None => {}
                },
                _ = stagger, if pending.len() > 0 => {
                    if let Some((_, a)) = pending.next() {
                        running.spawn(a);
                    }
                }
                _ = tokio::time::sleep_until(give_up) => {
                    for (target, _) in pending.by_ref() {
                        failures.push(Failure::new(target, FailureKind::Unavailable("not tried: deadline".into())));
                    }
                    failures.push(Failure::new("resolution", FailureKind::TimedOut));
                    break None;
                }
            }
        };
        running.abort_all();
        if let Some((ips, ttl, source)) = found {
            let ttl = ttl
                .unwrap_or(self.config.default_ttl)
                .clamp(self.config.min_ttl, self.config.max_ttl);
            return Ok(Entry {
                ips,
                source,
                expires: Instant::now() + ttl,
            });
        }
        if let Some(ips) = bootstrap {
            // Not kept for long: the next call tries HTTPDNS again.
            return Ok(Entry {
                ips: ips.clone(),
                source: DnsSource::Bootstrap,
                expires: Instant::now(),
            });
        }
        Err(Error::Resolve {
            host: host.to_string(),
            failures: failures.into(),
        })
    }

    #[cfg(test)]
    async fn store(&self, host: &str, ips: Vec<IpAddr>, ttl: Duration, source: DnsSource) {
        let entry = Entry {
            ips,
            source,
            expires: Instant::now() + ttl,
        };
        self.cache.insert(host.to_string(), entry).await;
    }

    fn client_for(
        &self,
        p: &Provider,
        addr: SocketAddr,
    ) -> Result<(reqwest::Client, String), Failure> {
        if !p.https {
            return Ok((self.http.clone(), format!("http://{addr}")));
        }
        // An IPv6 literal goes in brackets in a URL.
        let name = match &p.tls_name {
            Some(n) => n.clone(),
            None => addr.ip().to_string(),
        };
        let host = match addr.ip() {
            IpAddr::V6(_) if p.tls_name.is_none() => format!("[{name}]"),
            _ => name.clone(),
        };
        let base = format!("https://{host}:{}", addr.port());
        let mut clients = self.tls_clients.lock().expect("tls clients");
        if let Some(c) = clients.get(&addr) {
            return Ok((c.clone(), base));
        }
        let mut b = reqwest::Client::builder()
            .timeout(self.config.attempt_timeout)
            .connect_timeout(self.config.attempt_timeout)
            .no_proxy()
            .use_preconfigured_tls(self.tls.clone());
        if p.tls_name.is_some() {
            b = b.resolve(&name, addr);
        }
        let c = b
            .build()
            .map_err(|e| Failure::request(format!("HTTPDNS {addr}"), e))?;
        clients.insert(addr, c.clone());
        Ok((c, base))
    }
}

/// One request to one provider address.
#[allow(clippy::too_many_arguments)]
async fn ask_provider(
    client: &reqwest::Client,
    base: &str,
    p: &Provider,
    host: &str,
    now_unix: u64,
    sign_ttl: Duration,
    ipv6: bool,
    target: &str,
) -> Result<(Vec<IpAddr>, Option<Duration>), Failure> {
    let malformed = |e: String| Failure::new(target, FailureKind::Malformed(e));
    match &p.kind {
        ProviderKind::Doh { path, post } => {
            let families: &[bool] = if ipv6 { &[false, true] } else { &[false] };
            let mut ips = Vec::new();
            let mut ttl: Option<Duration> = None;
            let mut last_err = None;
            for &v6 in families {
                let msg = dns_query(host, v6).map_err(malformed)?;
                let req = if *post {
                    client
                        .post(format!("{base}{path}"))
                        .header("content-type", "application/dns-message")
                        .body(msg)
                } else {
                    use base64::Engine;
                    let q = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&msg);
                    client.get(format!("{base}{path}?dns={q}"))
                };
                let body = send(req.header("accept", "application/dns-message"), target).await?;
                match parse_dns_message(&body) {
                    Ok((found, t)) => {
                        ips.extend(found);
                        ttl = match (ttl, t) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                    }
                    Err(e) => last_err = Some(e),
                }
            }
            if ips.is_empty() {
                return Err(malformed(
                    last_err.unwrap_or_else(|| "no A or AAAA record".into()),
                ));
            }
            ips.sort_by_key(|ip| ip.is_ipv6());
            Ok((ips, ttl))
        }
        ProviderKind::DnsPod => {
            let path = request_path(p, host, now_unix, sign_ttl, ipv6);
            let body = send(client.get(format!("{base}{path}")), target).await?;
            parse_dnspod(&body).map_err(malformed)
        }
        ProviderKind::Alibaba => {
            let path = request_path(p, host, now_unix, sign_ttl, ipv6);
            let body = send(client.get(format!("{base}{path}")), target).await?;
            parse_answer(host, &body).map_err(malformed)
        }
    }
}

/// Sends a request; a non-2xx answer is a failure that keeps the body's start (a
/// provider's `InvalidSignature` or `SignatureExpired`).
async fn send(req: reqwest::RequestBuilder, target: &str) -> Result<Vec<u8>, Failure> {
    let resp = req.send().await.map_err(|e| Failure::request(target, e))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| Failure::request(target, e))?;
    if !status.is_success() {
        return Err(Failure::new(
            target,
            FailureKind::Status {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body).chars().take(200).collect(),
            },
        ));
    }
    Ok(body.to_vec())
}

/// Lets any reqwest client resolve through HTTPDNS (with local-DNS fallback):
/// `reqwest::Client::builder().dns_resolver(Arc::new(HttpDnsResolver::new(dns)))`.
#[derive(Debug, Clone)]
pub struct HttpDnsResolver {
    dns: Arc<HttpDns>,
}

impl HttpDnsResolver {
    /// Wraps a shared resolver.
    pub fn new(dns: Arc<HttpDns>) -> HttpDnsResolver {
        HttpDnsResolver { dns }
    }
}

impl reqwest::dns::Resolve for HttpDnsResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let dns = self.dns.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let r = dns
                .resolve(&host)
                .await
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            let addrs: reqwest::dns::Addrs =
                Box::new(r.ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_fixed_vector() {
        // md5("gw.example.com-s3cr3t-1700000000"), computed independently.
        assert_eq!(
            sign("gw.example.com", "s3cr3t", 1_700_000_000),
            "e58bd1a72b3c68dc666946ea97a82609"
        );
        let p =
            Provider::alibaba("139450", vec!["127.0.0.1:1".parse().unwrap()]).with_secret("s3cr3t");
        assert_eq!(
            request_path(
                &p,
                "gw.example.com",
                1_699_999_400,
                Duration::from_secs(600),
                false
            ),
            "/139450/sign_d?host=gw.example.com&t=1700000000&s=e58bd1a72b3c68dc666946ea97a82609"
        );
        let unsigned = Provider::alibaba("139450", p.addrs.clone());
        assert_eq!(
            request_path(&unsigned, "h", 0, Duration::ZERO, false),
            "/139450/d?host=h"
        );
        assert_eq!(
            request_path(&unsigned, "h", 0, Duration::ZERO, true),
            "/139450/d?host=h&query=4,6",
            "IPv6 asked for"
        );
        assert_eq!(
            request_path(&unsigned, "a&b=c d", 0, Duration::ZERO, false),
            "/139450/d?host=a%26b%3Dc+d",
            "escaped"
        );
        let pod = Provider::dnspod(p.addrs.clone());
        assert_eq!(
            request_path(&pod, "h.example", 0, Duration::ZERO, false),
            "/d?dn=h.example&ttl=1"
        );
    }

    #[test]
    fn dnspod_and_dns_messages_parse() {
        let (ips, ttl) = parse_dnspod(b"192.0.2.1;192.0.2.2,600").unwrap();
        assert_eq!(ips.len(), 2);
        assert_eq!(ttl, Some(Duration::from_secs(600)));
        assert_eq!(parse_dnspod(b"192.0.2.1").unwrap().1, None);
        for bad in [&b""[..], b"evil.example,60", b"<html>", b"0.0.0.0,60"] {
            assert!(parse_dnspod(bad).is_err(), "{bad:?}");
        }
        // A query is a well-formed DNS message asking one question.
        let q = dns_query("router.test", true).unwrap();
        let m = hickory_proto::op::Message::from_vec(&q).unwrap();
        assert_eq!(m.queries().len(), 1);
        assert_eq!(
            m.queries()[0].query_type(),
            hickory_proto::rr::RecordType::AAAA
        );
        assert_eq!(m.id(), 0, "id 0 for cacheable GETs (RFC 8484 4.1)");
        assert!(parse_dns_message(b"garbage").is_err());
    }

    #[test]
    fn only_ip_literals_are_accepted() {
        let (ips, ttl) = parse_answer(
            "h.example",
            br#"{"host":"h.example","ips":["192.0.2.1","evil.example","::1","300.1.1.1"],"ipsv6":["2001:db8::1","192.0.2.9"],"ttl":60}"#,
        )
        .unwrap();
        assert_eq!(
            ips,
            vec![
                "192.0.2.1".parse::<IpAddr>().unwrap(),
                "2001:db8::1".parse().unwrap()
            ]
        );
        assert_eq!(ttl, Some(Duration::from_secs(60)));
        for bad in [
            &br#"{"host":"h.example","ips":[],"ipsv6":[],"ttl":60}"#[..],
            br#"{"host":"h.example","ips":["login.hijack.example"],"ttl":60}"#,
            br#"{"host":"other.example","ips":["192.0.2.1"]}"#,
            br#"<html>portal</html>"#,
            br#"{"host":"h.example","ips":["0.0.0.0"]}"#,
        ] {
            assert!(
                parse_answer("h.example", bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

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
