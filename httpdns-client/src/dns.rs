//! HTTPDNS resolution with local-DNS and bootstrap fallbacks, a per-host TTL cache,
//! serve-stale with background refresh, and a `reqwest::dns::Resolve` implementation.
//!
//! Providers speak the Alibaba-style API: `GET /{account}/d?host=H` answers
//! `{"host","ips","ipsv6","ttl"}`; signed: `GET /{account}/sign_d?host=H&t=EXPIRY&s=S`
//! with `S = md5("{host}-{secret}-{EXPIRY}")`. Only IP literals are accepted from an
//! answer: anything else is logged and dropped, and an answer left with no address
//! counts as a failure (a hijacked or broken provider), so the next source is tried.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use md5::{Digest, Md5};
use serde::Deserialize;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::Error;

/// One HTTPDNS service: an account and the provider IPs to try, in order.
#[derive(Debug, Clone)]
pub struct Provider {
    /// Account id, the first path segment.
    pub account: String,
    /// Provider addresses (IP and port), tried in order.
    pub addrs: Vec<SocketAddr>,
    /// Secret for signed requests (`sign_d`); plain `d` when absent.
    pub secret: Option<String>,
    /// Talk HTTPS to the provider. `tls_name` is the certificate name to expect.
    pub https: bool,
    /// Name the provider's certificate carries (HTTPS only); the IP when absent.
    pub tls_name: Option<String>,
}

/// Where an address came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DnsSource {
    /// An HTTPDNS provider.
    HttpDns,
    /// The system resolver.
    LocalDns,
    /// Configured bootstrap IPs.
    Bootstrap,
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

/// Resolver settings.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// HTTPDNS services, tried in order.
    pub providers: Vec<Provider>,
    /// Deadline of one provider request.
    pub attempt_timeout: Duration,
    /// Fall back to the system resolver when HTTPDNS fails.
    pub local_fallback: bool,
    /// Last-resort addresses per host (e.g. the router's domain).
    pub bootstrap: HashMap<String, Vec<IpAddr>>,
    /// Return an expired entry at once and refresh it in the background.
    pub serve_stale: bool,
    /// How long an expired entry may still be served.
    pub max_stale: Duration,
    /// TTL for answers without one (local DNS, bootstrap).
    pub default_ttl: Duration,
    /// Validity of a signature (`t` = now + this).
    pub sign_ttl: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            providers: Vec::new(),
            attempt_timeout: Duration::from_millis(800),
            local_fallback: true,
            bootstrap: HashMap::new(),
            serve_stale: true,
            max_stale: Duration::from_secs(24 * 3600),
            default_ttl: Duration::from_secs(60),
            sign_ttl: Duration::from_secs(600),
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
#[derive(Debug)]
pub struct HttpDns {
    config: DnsConfig,
    http: reqwest::Client,
    /// Per-provider-address HTTPS clients (certificate name pinned to `tls_name`).
    tls_clients: Mutex<HashMap<SocketAddr, reqwest::Client>>,
    cache: Mutex<HashMap<String, Entry>>,
    refreshing: Mutex<HashSet<String>>,
    extra_roots: Vec<reqwest::Certificate>,
}

/// `md5("{host}-{secret}-{expiry}")` in lower-case hex: the `s` of a signed request.
pub fn sign(host: &str, secret: &str, expiry: u64) -> String {
    let digest = Md5::digest(format!("{host}-{secret}-{expiry}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The path and query of a request for `host` (signed when the provider has a secret).
pub fn request_path(provider: &Provider, host: &str, now_unix: u64, sign_ttl: Duration) -> String {
    match &provider.secret {
        Some(secret) => {
            let t = now_unix + sign_ttl.as_secs();
            format!(
                "/{}/sign_d?host={host}&t={t}&s={}",
                provider.account,
                sign(host, secret, t)
            )
        }
        None => format!("/{}/d?host={host}", provider.account),
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
                Some(ip) if !ip.is_unspecified() && !ip.is_multicast() => ips.push(ip),
                _ => warn!(host, value = %v, "HTTPDNS answer entry is not an IP literal; dropped"),
            }
        }
    }
    if ips.is_empty() {
        return Err("answer holds no usable IP address".into());
    }
    Ok((ips, a.ttl.filter(|t| *t > 0).map(Duration::from_secs)))
}

impl HttpDns {
    /// A resolver; `extra_roots` are trusted for HTTPS providers besides the system's.
    pub fn new(
        config: DnsConfig,
        extra_roots: Vec<reqwest::Certificate>,
    ) -> Result<HttpDns, Error> {
        for p in &config.providers {
            if p.account.is_empty() || p.account.contains(['/', '?', '#']) {
                return Err(Error::Config(format!(
                    "HTTPDNS account {:?} is not a path segment",
                    p.account
                )));
            }
            if p.addrs.is_empty() {
                return Err(Error::Config(format!(
                    "HTTPDNS account {} has no provider address",
                    p.account
                )));
            }
        }
        let http = reqwest::Client::builder()
            .timeout(config.attempt_timeout)
            .connect_timeout(config.attempt_timeout)
            .no_proxy()
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(HttpDns {
            config,
            http,
            tls_clients: Mutex::new(HashMap::new()),
            cache: Mutex::new(HashMap::new()),
            refreshing: Mutex::new(HashSet::new()),
            extra_roots,
        })
    }

    /// Drops every cached answer (call it when the network changes: new Wi-Fi, VPN).
    pub fn clear(&self) {
        self.cache.lock().expect("dns cache").clear();
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

    /// Resolves `host`: fresh cache, else (serve-stale) expired cache plus a background
    /// refresh, else HTTPDNS → local DNS → bootstrap IPs.
    pub async fn resolve(self: &Arc<Self>, host: &str) -> Result<Resolved, Error> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Resolved {
                ips: vec![ip],
                source: DnsSource::Bootstrap,
                stale: false,
            });
        }
        let now = Instant::now();
        let cached = self.cache.lock().expect("dns cache").get(host).cloned();
        if let Some(e) = cached {
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
        }
        self.lookup(host).await
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
            if let Err(e) = me.lookup(&host).await {
                debug!(host = %host, error = %e, "background refresh failed; keeping the stale answer");
            }
            me.refreshing.lock().expect("refreshing").remove(&host);
        });
    }

    /// Asks every source in order, caches and returns the first usable answer.
    async fn lookup(&self, host: &str) -> Result<Resolved, Error> {
        let mut failures = Vec::new();
        match self.ask_providers(host, &mut failures).await {
            Some((ips, ttl)) => return Ok(self.store(host, ips, ttl, DnsSource::HttpDns)),
            None if self.config.providers.is_empty() => {
                failures.push("no HTTPDNS provider configured".into())
            }
            None => {}
        }
        if self.config.local_fallback {
            match tokio::time::timeout(
                self.config.attempt_timeout * 2,
                tokio::net::lookup_host((host, 0)),
            )
            .await
            {
                Ok(Ok(addrs)) => {
                    let mut ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
                    ips.sort_by_key(|ip| ip.is_ipv6());
                    ips.dedup();
                    if !ips.is_empty() {
                        return Ok(self.store(host, ips, None, DnsSource::LocalDns));
                    }
                    failures.push("local DNS: no address".into());
                }
                Ok(Err(e)) => failures.push(format!("local DNS: {e}")),
                Err(_) => failures.push("local DNS: timed out".into()),
            }
        }
        if let Some(ips) = self.config.bootstrap.get(host).filter(|v| !v.is_empty()) {
            return Ok(Resolved {
                ips: ips.clone(),
                source: DnsSource::Bootstrap,
                stale: false,
            });
        }
        Err(Error::Resolve {
            host: host.to_string(),
            detail: failures.join("; "),
        })
    }

    fn store(
        &self,
        host: &str,
        ips: Vec<IpAddr>,
        ttl: Option<Duration>,
        source: DnsSource,
    ) -> Resolved {
        let ttl = ttl.unwrap_or(self.config.default_ttl);
        let entry = Entry {
            ips: ips.clone(),
            source,
            expires: Instant::now() + ttl,
        };
        self.cache
            .lock()
            .expect("dns cache")
            .insert(host.to_string(), entry);
        Resolved {
            ips,
            source,
            stale: false,
        }
    }

    async fn ask_providers(
        &self,
        host: &str,
        failures: &mut Vec<String>,
    ) -> Option<(Vec<IpAddr>, Option<Duration>)> {
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        for p in &self.config.providers {
            let path = request_path(p, host, now_unix, self.config.sign_ttl);
            for addr in &p.addrs {
                let (client, url) = match self.client_for(p, *addr) {
                    Ok(c) => c,
                    Err(e) => {
                        failures.push(format!("{addr}: {e}"));
                        continue;
                    }
                };
                let url = format!("{url}{path}");
                let result = async {
                    let resp = client.get(&url).send().await.map_err(|e| e.to_string())?;
                    if !resp.status().is_success() {
                        return Err(format!("status {}", resp.status()));
                    }
                    let body = resp.bytes().await.map_err(|e| e.to_string())?;
                    parse_answer(host, &body)
                };
                match tokio::time::timeout(self.config.attempt_timeout, result).await {
                    Ok(Ok(answer)) => return Some(answer),
                    Ok(Err(e)) => {
                        warn!(provider = %addr, host, error = %e, "HTTPDNS provider failed; trying the next");
                        failures.push(format!("HTTPDNS {addr}: {e}"));
                    }
                    Err(_) => {
                        warn!(provider = %addr, host, "HTTPDNS provider timed out; trying the next");
                        failures.push(format!("HTTPDNS {addr}: timed out"));
                    }
                }
            }
        }
        None
    }

    fn client_for(
        &self,
        p: &Provider,
        addr: SocketAddr,
    ) -> Result<(reqwest::Client, String), String> {
        if !p.https {
            return Ok((self.http.clone(), format!("http://{addr}")));
        }
        let name = p.tls_name.clone().unwrap_or_else(|| addr.ip().to_string());
        let mut clients = self.tls_clients.lock().expect("tls clients");
        if let Some(c) = clients.get(&addr) {
            return Ok((c.clone(), format!("https://{name}:{}", addr.port())));
        }
        let mut b = reqwest::Client::builder()
            .timeout(self.config.attempt_timeout)
            .connect_timeout(self.config.attempt_timeout)
            .no_proxy()
            .resolve(&name, addr);
        for root in &self.extra_roots {
            b = b.add_root_certificate(root.clone());
        }
        let c = b.build().map_err(|e| e.to_string())?;
        clients.insert(addr, c.clone());
        Ok((c, format!("https://{name}:{}", addr.port())))
    }
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
        let p = Provider {
            account: "139450".into(),
            addrs: vec!["127.0.0.1:1".parse().unwrap()],
            secret: Some("s3cr3t".into()),
            https: false,
            tls_name: None,
        };
        assert_eq!(
            request_path(
                &p,
                "gw.example.com",
                1_699_999_400,
                Duration::from_secs(600)
            ),
            "/139450/sign_d?host=gw.example.com&t=1700000000&s=e58bd1a72b3c68dc666946ea97a82609"
        );
        let unsigned = Provider { secret: None, ..p };
        assert_eq!(
            request_path(&unsigned, "h", 0, Duration::ZERO),
            "/139450/d?host=h"
        );
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
            Some(Duration::from_secs(5)),
            DnsSource::HttpDns,
        );
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
