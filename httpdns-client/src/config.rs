//! The client's settings.

use std::path::PathBuf;
use std::time::Duration;

use crate::dns::DnsConfig;
use crate::error::Error;

pub use gateway_api::Proto;

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
    /// Deadline of a whole [`crate::Client::gateways`] call: resolution, routers, fallbacks.
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
    /// Deadline of one attempt at a candidate: the TCP connect, and for
    /// [`crate::Client::connect_tls`] the TLS handshake too.
    pub connect_timeout: Duration,
    /// ALPN protocols offered to gateways by [`crate::Client::connect_tls`] (none by
    /// default; `http/1.1` for a WebSocket over TLS, say).
    pub tls_alpn: Vec<Vec<u8>>,
    /// Domain suffixes a gateway's `domain` must end with, on a label boundary, for
    /// [`crate::Client::connect_tls`] to use it (empty, the default: no pinning).
    /// `".gw.example.com"` allows `a.gw.example.com`, not `gw.example.com` itself nor
    /// `evilgw.example.com`; `"gw.example.com"` (no leading dot) allows the domain
    /// itself too. Case and a trailing dot do not matter. A candidate outside them is
    /// passed over ([`crate::FailureKind::DomainNotAllowed`]) and the next one tried,
    /// so a router that names a domain of its choosing cannot steer the TLS name the
    /// client checks. The fallback domain must match as well.
    pub gateway_domain_suffixes: Vec<String>,
    /// Resolve the router's domain as soon as the client is built (in a Tokio
    /// runtime), so the first call does not wait for HTTPDNS (true).
    pub prefetch_router: bool,
    /// Roots trusted for the router and HTTPS providers besides the platform's store
    /// (system, enterprise and user-installed CAs): a private CA, say.
    pub extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Report connect outcomes to the router asked next (true). A sampled connect call
    /// records, for each candidate of a router's answer it started dialling, the
    /// gateway's id, how the attempt ended (connected, refused, timed out, TLS, other)
    /// and after how many milliseconds; the next router that answers gets them
    /// (`POST /outcomes`) in the background, never delaying the call. No address,
    /// device or user is sent. False: nothing is recorded and nothing sent.
    pub report_outcomes: bool,
    /// The share of connect calls whose outcomes are recorded, drawn once per call
    /// (0.25); clamped to 0..=1, NaN counts as 0.
    pub report_sample: f64,
    /// At most one report per interval (30 s): outcomes recorded meanwhile wait for
    /// the next one. At most [`gateway_api::MAX_OUTCOMES`] (32) wait; newer ones are
    /// dropped while the buffer is full, and a report that fails is dropped, never
    /// sent again.
    pub report_interval: Duration,
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
            tls_alpn: Vec::new(),
            gateway_domain_suffixes: Vec::new(),
            prefetch_router: true,
            extra_roots: Vec::new(),
            report_outcomes: true,
            report_sample: 0.25,
            report_interval: Duration::from_secs(30),
        }
    }

    /// `gateway_domain_suffixes`, checked and normalised.
    pub(crate) fn domain_pins(&self) -> Result<Vec<DomainPin>, Error> {
        let mut pins = Vec::with_capacity(self.gateway_domain_suffixes.len());
        for s in &self.gateway_domain_suffixes {
            pins.push(DomainPin::parse(s)?);
        }
        Ok(pins)
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

/// One entry of `gateway_domain_suffixes`: lower-case, without its leading and
/// trailing dots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DomainPin {
    suffix: String,
    /// Written with a leading dot: the domain itself is not allowed, only names below.
    below_only: bool,
}

impl DomainPin {
    fn parse(s: &str) -> Result<DomainPin, Error> {
        let below_only = s.starts_with('.');
        let trimmed = s.strip_prefix('.').unwrap_or(s);
        let suffix = trimmed
            .strip_suffix('.')
            .unwrap_or(trimmed)
            .to_ascii_lowercase();
        let is_domain = !suffix.is_empty()
            && suffix.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !is_domain {
            return Err(Error::Config(format!(
                "gateway domain suffix {s:?} is not a domain name (labels of letters, digits and '-'; IDNs in their xn-- form)"
            )));
        }
        Ok(DomainPin { suffix, below_only })
    }

    /// True when `domain` ends with this suffix on a label boundary (or is it, for a
    /// suffix written without a leading dot).
    pub(crate) fn allows(&self, domain: &str) -> bool {
        let d = domain
            .strip_suffix('.')
            .unwrap_or(domain)
            .to_ascii_lowercase();
        let Some(rest) = d.strip_suffix(self.suffix.as_str()) else {
            return false;
        };
        if rest.is_empty() {
            return !self.below_only;
        }
        rest.len() > 1 && rest.ends_with('.')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(s: &str) -> DomainPin {
        DomainPin::parse(s).unwrap()
    }

    #[test]
    fn suffixes_match_on_label_boundaries_only() {
        let below = pin(".gw.example.com");
        assert!(below.allows("a.gw.example.com"));
        assert!(
            below.allows("A.b.GW.example.com."),
            "case and a trailing dot"
        );
        assert!(!below.allows("evilgw.example.com"));
        assert!(
            !below.allows("gw.example.com"),
            "a leading dot: names below only"
        );
        assert!(!below.allows("a.gw.example.com.evil.test"));
        assert!(!below.allows(".gw.example.com"));
        assert!(!below.allows(""));
        let itself = pin("gw.example.com.");
        assert!(itself.allows("gw.example.com"));
        assert!(itself.allows("a.gw.example.com"));
        assert!(!itself.allows("evilgw.example.com"));
        assert!(!itself.allows("xgw.example.com"));
        for bad in ["", ".", "..x", "a..b", "a b", "*.x.com", "gw.example.com/"] {
            assert!(DomainPin::parse(bad).is_err(), "{bad:?}");
        }
    }
}
