//! `[dns]` and `[httpdns]`: the zone the router answers, and its HTTPDNS endpoint.

use std::net::SocketAddr;

use registry::Proto;
use serde::{Deserialize, Serialize};

use super::error::ConfigError;

/// `[dns]`: the gateway zone, served over UDP and TCP on `listen`, and over HTTPS
/// (`/dns-query`, `/resolve`) on the router's own listeners once `zone` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// UDP and TCP address to answer DNS on; none: DNS over HTTPS only.
    pub listen: Option<SocketAddr>,
    /// The gateway zone (`gw.example.com`); empty turns DNS off.
    pub zone: String,
    /// TTL of every answer, in seconds (also the SOA's negative-caching TTL).
    pub ttl: u32,
    /// Gateways per answer, least loaded first.
    pub count: usize,
    /// Clients each answer counts for in the herd accounting: a resolver's answer
    /// reaches every client behind it.
    pub weight: u64,
    /// Protocol of the apex and `{region}.{zone}` (others: `{proto}.{region}.{zone}`).
    pub proto: Proto,
    /// The zone's NS names; default `ns.{zone}`.
    pub nameservers: Vec<String>,
    /// The SOA's mailbox, as a name; default `hostmaster.{zone}`.
    pub hostmaster: String,
    /// Response-rate limit: UDP answers per second per client network; 0 turns it off.
    pub rrl_per_sec: u32,
    /// Answers a client network may get at once before the rate applies.
    pub rrl_burst: u32,
    /// Of the answers over the limit, every `rrl_slip`-th is sent truncated (so a real
    /// client retries over TCP) and the rest are dropped; 0 drops them all.
    pub rrl_slip: u32,
    /// IPv4 clients share a budget per network of this many leading bits.
    pub rrl_ipv4_prefix_len: u8,
    /// IPv6 clients share a budget per network of this many leading bits.
    pub rrl_ipv6_prefix_len: u8,
    /// A DNS-over-TCP connection idle this long is closed.
    pub tcp_idle_ms: u64,
    /// DNS-over-TCP connections open at once; when reached, the connection idle the
    /// longest is closed to make room (when none is idle, the newcomer is refused).
    pub tcp_max_connections: usize,
    /// DNS-over-TCP connections open at once from one client network (its /24 or
    /// /56); beyond it a new one from that network is closed at accept. 0: no cap.
    pub tcp_max_per_network: usize,
    /// An answer a DNS-over-TCP client has not taken within this long closes its
    /// connection (a client that sends queries and never reads).
    pub tcp_write_timeout_ms: u64,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            listen: None,
            zone: String::new(),
            ttl: 10,
            count: 3,
            weight: 1,
            proto: Proto::Tcp,
            nameservers: Vec::new(),
            hostmaster: String::new(),
            rrl_per_sec: 100,
            rrl_burst: 200,
            rrl_slip: 2,
            rrl_ipv4_prefix_len: 24,
            rrl_ipv6_prefix_len: 56,
            tcp_idle_ms: 5000,
            tcp_max_connections: 1000,
            tcp_max_per_network: 16,
            tcp_write_timeout_ms: 2000,
        }
    }
}

/// `[httpdns]`: `GET /d?host=` (and `/sign_d`), Alibaba's HTTPDNS answer format, so the
/// SDK's `Provider::alibaba` can use the fleet's own routers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpDnsConfig {
    /// The routers' own domain: `/d?host=` of it answers the live routers' public
    /// addresses (`--public-addr`). Empty: only the gateway zone is answered.
    pub router_domain: String,
    /// Secret of signed requests (`/sign_d`: `s = md5(host-secret-t)`).
    pub secret: Option<String>,
    /// Refuses unsigned `/d` requests (needs `secret`).
    pub signed_only: bool,
    /// TTL of the router domain's answers, in seconds.
    pub router_ttl: u32,
    /// `/sign_d` refuses a `t` (expiry) further ahead than this, in seconds, so a
    /// captured signed URL replays for at most this long.
    pub sign_max_ahead_secs: u64,
}

impl Default for HttpDnsConfig {
    fn default() -> Self {
        HttpDnsConfig {
            router_domain: String::new(),
            secret: None,
            signed_only: false,
            router_ttl: 60,
            sign_max_ahead_secs: 86_400,
        }
    }
}

/// Why a configured or asked-for name is not a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// Empty, or longer than 253 characters; the name as given.
    #[error("{0:?} is not a domain name (1-253 characters)")]
    Length(String),
    /// A label that is empty, too long or has another character.
    #[error("{name:?} is not a domain name: label {label:?} (letters, digits, '-', '_', 1-63)")]
    Label {
        /// The name as given.
        name: String,
        /// The label at fault, lower-cased.
        label: String,
    },
}

/// A DNS name as configured: ASCII, dot-separated labels of 1-63 characters, at most
/// 253 in all; a trailing dot is allowed. Lower-cased, without the trailing dot.
pub fn parse_domain(s: &str) -> Result<String, DomainError> {
    let name = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
    if name.is_empty() || name.len() > 253 {
        return Err(DomainError::Length(s.to_string()));
    }
    for label in name.split('.') {
        let ok = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(DomainError::Label {
                name: s.to_string(),
                label: label.to_string(),
            });
        }
    }
    Ok(name)
}

impl DnsConfig {
    /// True when the router answers DNS (over UDP/TCP or HTTPS).
    pub fn enabled(&self) -> bool {
        !self.zone.is_empty()
    }

    /// Every rule, with a message naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |key: &str, msg: String| Err(ConfigError::invalid(format!("dns.{key}"), msg));
        if self.zone.is_empty() {
            if self.listen.is_some() {
                return err("listen", "needs dns.zone".into());
            }
            return Ok(());
        }
        if let Err(e) = parse_domain(&self.zone) {
            return err("zone", e.to_string());
        }
        if !(1..=86_400).contains(&self.ttl) {
            return err("ttl", format!("{} is not 1-86400", self.ttl));
        }
        if !(1..=super::MAX_CANDIDATES).contains(&self.count) {
            return err(
                "count",
                format!("{} is not 1-{}", self.count, super::MAX_CANDIDATES),
            );
        }
        if !(1..=1_000_000).contains(&self.weight) {
            return err("weight", format!("{} is not 1-1000000", self.weight));
        }
        for n in &self.nameservers {
            if let Err(e) = parse_domain(n) {
                return err("nameservers", e.to_string());
            }
        }
        if !self.hostmaster.is_empty() {
            if let Err(e) = parse_domain(&self.hostmaster) {
                return err("hostmaster", e.to_string());
            }
        }
        if self.rrl_per_sec > 0 && self.rrl_burst == 0 {
            return err(
                "rrl_burst",
                "must be at least 1 when the limit is on".into(),
            );
        }
        if self.rrl_ipv4_prefix_len > 32 {
            return err(
                "rrl_ipv4_prefix_len",
                format!("{} is not 0-32", self.rrl_ipv4_prefix_len),
            );
        }
        if self.rrl_ipv6_prefix_len > 128 {
            return err(
                "rrl_ipv6_prefix_len",
                format!("{} is not 0-128", self.rrl_ipv6_prefix_len),
            );
        }
        if self.tcp_idle_ms == 0 {
            return err("tcp_idle_ms", "must be above 0".into());
        }
        if self.tcp_max_connections == 0 {
            return err("tcp_max_connections", "must be above 0".into());
        }
        if self.tcp_write_timeout_ms == 0 {
            return err("tcp_write_timeout_ms", "must be above 0".into());
        }
        Ok(())
    }
}

impl HttpDnsConfig {
    /// Every rule, with a message naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.router_domain.is_empty() {
            parse_domain(&self.router_domain)
                .map_err(|e| ConfigError::invalid("httpdns.router_domain", e.to_string()))?;
        }
        if self.signed_only && self.secret.as_deref().is_none_or(str::is_empty) {
            return Err(ConfigError::invalid(
                "httpdns.signed_only",
                "needs httpdns.secret",
            ));
        }
        if self.sign_max_ahead_secs == 0 {
            return Err(ConfigError::invalid(
                "httpdns.sign_max_ahead_secs",
                "must be at least 1",
            ));
        }
        if !(1..=86_400).contains(&self.router_ttl) {
            return Err(ConfigError::invalid(
                "httpdns.router_ttl",
                format!("{} is not 1-86400", self.router_ttl),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_checked_and_lower_cased() {
        assert_eq!(parse_domain("GW.Example.com.").unwrap(), "gw.example.com");
        for bad in ["", ".", "a..b", "-a.b", "a b.c", &"x".repeat(64), "é.com"] {
            assert!(parse_domain(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn every_bad_value_names_its_key() {
        let on = || DnsConfig {
            zone: "gw.example.com".into(),
            ..DnsConfig::default()
        };
        assert!(on().validate().is_ok());
        assert!(DnsConfig::default().validate().is_ok(), "off is valid");
        let cases: Vec<(DnsConfig, &str)> = vec![
            (
                DnsConfig {
                    listen: Some("127.0.0.1:53".parse().unwrap()),
                    ..DnsConfig::default()
                },
                "dns.listen",
            ),
            (
                DnsConfig {
                    zone: "a..b".into(),
                    ..on()
                },
                "dns.zone",
            ),
            (DnsConfig { ttl: 0, ..on() }, "dns.ttl"),
            (DnsConfig { count: 0, ..on() }, "dns.count"),
            (DnsConfig { count: 65, ..on() }, "dns.count"),
            (DnsConfig { weight: 0, ..on() }, "dns.weight"),
            (
                DnsConfig {
                    nameservers: vec!["bad name".into()],
                    ..on()
                },
                "dns.nameservers",
            ),
            (
                DnsConfig {
                    rrl_burst: 0,
                    ..on()
                },
                "dns.rrl_burst",
            ),
            (
                DnsConfig {
                    rrl_ipv4_prefix_len: 33,
                    ..on()
                },
                "dns.rrl_ipv4_prefix_len",
            ),
            (
                DnsConfig {
                    tcp_idle_ms: 0,
                    ..on()
                },
                "dns.tcp_idle_ms",
            ),
            (
                DnsConfig {
                    tcp_write_timeout_ms: 0,
                    ..on()
                },
                "dns.tcp_write_timeout_ms",
            ),
        ];
        for (cfg, key) in cases {
            match cfg.validate().unwrap_err() {
                ConfigError::Invalid { key: named, .. } => assert_eq!(named, key),
                other => panic!("{other} does not name {key}"),
            }
        }
        let h = HttpDnsConfig {
            signed_only: true,
            ..HttpDnsConfig::default()
        };
        assert_eq!(
            h.validate().unwrap_err(),
            ConfigError::invalid("httpdns.signed_only", "needs httpdns.secret")
        );
    }
}
