//! The configuration apps give: the uniffi records and enums of [`SdkConfig`], and
//! their conversion into the SDK's [`sdk::Config`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use httpdns_client as sdk;

use crate::error::SdkError;

/// What an HTTPDNS provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ProviderKind {
    /// Alibaba-style `/{account}/d?host=` (signed with `secret` when set).
    Alibaba,
    /// Tencent DNSPod's `/d?dn=`.
    DnsPod,
    /// DNS over HTTPS (RFC 8484).
    Doh,
}

/// One HTTPDNS service.
#[derive(Debug, Clone, uniffi::Record)]
pub struct ProviderConfig {
    /// The protocol.
    pub kind: ProviderKind,
    /// Provider addresses, `IP:port` (`[v6]:port`).
    pub addrs: Vec<String>,
    /// Account id (Alibaba-style).
    #[uniffi(default = "")]
    pub account: String,
    /// Secret for signed requests (Alibaba-style).
    #[uniffi(default = None)]
    pub secret: Option<String>,
    /// HTTPS to the provider (always for DoH).
    #[uniffi(default = false)]
    pub https: bool,
    /// The name the provider's certificate carries (the IP when absent).
    #[uniffi(default = None)]
    pub tls_name: Option<String>,
    /// DoH: the query path.
    #[uniffi(default = "/dns-query")]
    pub doh_path: String,
    /// DoH: POST instead of GET.
    #[uniffi(default = false)]
    pub doh_post: bool,
}

/// The protocol asked of gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Proto {
    /// Raw TCP (or TLS over TCP with `connect_tls`).
    Tcp,
    /// WebSocket.
    Ws,
    /// WebSocket over TLS.
    Wss,
}

/// The client's settings; every field but the router's domain has a default.
#[derive(Debug, Clone, uniffi::Record)]
pub struct SdkConfig {
    /// The router's domain: resolved through HTTPDNS; the Host and TLS name.
    pub router_domain: String,
    /// The router's port.
    #[uniffi(default = 443)]
    pub router_port: u16,
    /// HTTPS to the router (plain HTTP for development only).
    #[uniffi(default = true)]
    pub router_https: bool,
    /// Protocol to ask gateways for (TCP when absent).
    #[uniffi(default = None)]
    pub proto: Option<Proto>,
    /// Candidates to ask for (1-10).
    #[uniffi(default = 3)]
    pub count: u8,
    /// The client's region, when it knows better than the router.
    #[uniffi(default = None)]
    pub region: Option<String>,
    /// HTTPDNS services, raced in order.
    #[uniffi(default = [])]
    pub providers: Vec<ProviderConfig>,
    /// Last-resort addresses per host name.
    #[uniffi(default)]
    pub bootstrap: HashMap<String, Vec<String>>,
    /// Fall back to the system resolver when HTTPDNS fails.
    #[uniffi(default = true)]
    pub local_fallback: bool,
    /// Ask for IPv6 addresses: `None` when the device has an IPv6 route.
    #[uniffi(default = None)]
    pub ipv6: Option<bool>,
    /// The last good router answer, kept for cold starts without a router (a path in
    /// the app's files directory).
    #[uniffi(default = None)]
    pub cache_file: Option<String>,
    /// HTTPDNS answers kept across restarts.
    #[uniffi(default = None)]
    pub answers_file: Option<String>,
    /// Last resort: a domain whose addresses are gateways, on `fallback_port`.
    #[uniffi(default = None)]
    pub fallback_domain: Option<String>,
    /// Port of the fallback domain's gateways.
    #[uniffi(default = 443)]
    pub fallback_port: u16,
    /// CA certificates (PEM) trusted besides the platform's store.
    #[uniffi(default = None)]
    pub extra_roots_pem: Option<String>,
    /// ALPN protocols offered to gateways by `connect_tls`.
    #[uniffi(default = [])]
    pub tls_alpn: Vec<String>,
    /// Domain suffixes a gateway's domain must end with, on a label boundary, for
    /// `connect_tls` to use it (`".gw.example.com"` allows `a.gw.example.com`, not
    /// `evilgw.example.com`); empty: no pinning.
    #[uniffi(default = [])]
    pub gateway_domain_suffixes: Vec<String>,
    /// Deadline of one router request, ms.
    #[uniffi(default = 700)]
    pub router_attempt_timeout_ms: u64,
    /// Time after which no router is asked any more and the fallbacks are used, ms.
    #[uniffi(default = 1000)]
    pub router_budget_ms: u64,
    /// Deadline of a whole `gateways()` call, ms.
    #[uniffi(default = 1400)]
    pub deadline_ms: u64,
    /// Happy eyeballs: start the next candidate after this long, ms.
    #[uniffi(default = 250)]
    pub connect_delay_ms: u64,
    /// Deadline of one candidate (TCP and TLS handshake), ms.
    #[uniffi(default = 3000)]
    pub connect_timeout_ms: u64,
    /// Report connect outcomes (gateway ids, how each attempt ended, milliseconds; no
    /// address, device or user) to the router asked next, in the background; false:
    /// nothing recorded, nothing sent.
    #[uniffi(default = true)]
    pub report_outcomes: bool,
    /// The share of connect calls whose outcomes are recorded (0-1).
    #[uniffi(default = 0.25)]
    pub report_sample: f64,
    /// At most one outcome report per interval, ms (at most 32 outcomes wait for it).
    #[uniffi(default = 30000)]
    pub report_interval_ms: u64,
}

fn config_error(detail: String) -> SdkError {
    SdkError::Config {
        detail,
        causes: Vec::new(),
        retry_after_ms: None,
    }
}

fn socket_addr(s: &str) -> Result<SocketAddr, SdkError> {
    s.parse()
        .map_err(|_| config_error(format!("{s:?} is not an IP:port address")))
}

impl SdkConfig {
    pub(crate) fn to_sdk(&self) -> Result<sdk::Config, SdkError> {
        let mut c = sdk::Config::new(self.router_domain.clone());
        c.router_port = self.router_port;
        c.router_https = self.router_https;
        c.proto = match self.proto.unwrap_or(Proto::Tcp) {
            Proto::Tcp => sdk::Proto::Tcp,
            Proto::Ws => sdk::Proto::Ws,
            Proto::Wss => sdk::Proto::Wss,
        };
        c.count = self.count;
        c.region = self.region.clone();
        for p in &self.providers {
            let addrs = p
                .addrs
                .iter()
                .map(|a| socket_addr(a))
                .collect::<Result<Vec<_>, _>>()?;
            let mut provider = match p.kind {
                ProviderKind::Alibaba => sdk::Provider::alibaba(p.account.clone(), addrs),
                ProviderKind::DnsPod => sdk::Provider::dnspod(addrs),
                ProviderKind::Doh => sdk::Provider::doh(addrs, p.tls_name.clone())
                    .with_doh(p.doh_path.clone(), p.doh_post),
            };
            if let Some(s) = &p.secret {
                provider = provider.with_secret(s.clone());
            }
            if p.https && p.kind != ProviderKind::Doh {
                provider = provider.with_https(p.tls_name.clone());
            }
            c.dns.providers.push(provider);
        }
        for (host, ips) in &self.bootstrap {
            let ips = ips
                .iter()
                .map(|ip| {
                    ip.parse::<IpAddr>()
                        .map_err(|_| config_error(format!("bootstrap {ip:?} is not an IP")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            c.dns.bootstrap.insert(host.clone(), ips);
        }
        c.dns.local_fallback = self.local_fallback;
        c.dns.ipv6 = match self.ipv6 {
            None => sdk::Ipv6Mode::Auto,
            Some(true) => sdk::Ipv6Mode::Always,
            Some(false) => sdk::Ipv6Mode::Never,
        };
        c.dns.answers_file = self.answers_file.as_ref().map(Into::into);
        c.cache_file = self.cache_file.as_ref().map(Into::into);
        c.fallback_domain = self.fallback_domain.clone();
        c.fallback_port = self.fallback_port;
        if let Some(pem) = &self.extra_roots_pem {
            c.add_roots_pem(pem.as_bytes()).map_err(SdkError::from)?;
        }
        c.tls_alpn = self
            .tls_alpn
            .iter()
            .map(|p| p.as_bytes().to_vec())
            .collect();
        c.gateway_domain_suffixes = self.gateway_domain_suffixes.clone();
        c.router_attempt_timeout = Duration::from_millis(self.router_attempt_timeout_ms);
        c.router_budget = Duration::from_millis(self.router_budget_ms);
        c.deadline = Duration::from_millis(self.deadline_ms);
        c.connect_delay = Duration::from_millis(self.connect_delay_ms);
        c.connect_timeout = Duration::from_millis(self.connect_timeout_ms);
        c.report_outcomes = self.report_outcomes;
        c.report_sample = self.report_sample;
        c.report_interval = Duration::from_millis(self.report_interval_ms);
        Ok(c)
    }
}
