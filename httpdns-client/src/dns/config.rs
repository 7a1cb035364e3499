//! Resolver settings: the HTTPDNS providers and how to talk to them, the cache's
//! bounds, IPv6.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

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
    /// How long an expired entry may still be served (at most 7 days).
    pub max_stale: Duration,
    /// TTL for answers without one (local DNS).
    pub default_ttl: Duration,
    /// Answers' TTLs are clamped to `min_ttl..=max_ttl` (and never above a day): a
    /// provider cannot make the SDK ask on every call, nor keep an address for days.
    pub min_ttl: Duration,
    /// See `min_ttl`.
    pub max_ttl: Duration,
    /// Hosts kept in the cache at most.
    pub max_entries: u64,
    /// Validity of a signature (`t` = now + this).
    pub sign_ttl: Duration,
    /// Ask for IPv6 addresses.
    pub ipv6: Ipv6Mode,
    /// Where HTTPDNS answers are kept across restarts (written atomically after each
    /// new answer). A cold start uses a saved answer younger than its TTL as fresh,
    /// and one younger than its TTL plus `max_stale` as stale (served at once, refreshed
    /// in the background), so it reaches the router without waiting for HTTPDNS.
    /// `None`: answers live in memory only.
    pub answers_file: Option<PathBuf>,
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
            answers_file: None,
        }
    }
}
