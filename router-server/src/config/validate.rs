//! The rules of the TOML file: [`FileConfig::validate`], one function per section, each
//! turning a bad value into one line naming its key (`config: backoff.max_ms: ...`).

use ipnet::IpNet;

use super::error::ConfigError;
use super::file::{
    BackoffConfig, EdgeConfig, FileConfig, HttpConfig, RateLimitConfig, RegionsConfig,
    RegistryConfig, TlsConfig,
};
use super::shared_args::{parse_etcd, parse_prefix};

/// The most candidates one answer can hold (`/gateways` allows 10; a DNS answer more):
/// the bound `[dns] count` is checked against, and selection's ([`crate::schedule::MAX_COUNT`]).
pub const MAX_CANDIDATES: usize = 64;

fn check(ok: bool, key: &str, msg: impl FnOnce() -> String) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(key, msg()))
    }
}

impl FileConfig {
    /// Every rule a value must follow, with a message naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.dns.validate()?;
        self.httpdns.validate()?;
        self.feedback.validate()?;
        validate_protection(self)?;
        validate_registries(&self.registries)?;
        validate_timing(self)?;
        validate_backoff(&self.backoff)?;
        validate_regions(&self.regions)?;
        validate_rate_limit(&self.rate_limit)?;
        validate_edge(&self.edge)?;
        validate_networks(self)?;
        validate_http(&self.http)?;
        check(
            !self.http.proxy_protocol || !self.trusted_proxies.is_empty(),
            "http.proxy_protocol",
            || {
                "needs trusted_proxies: the balancers that send the header (no one else may connect)".into()
            },
        )?;
        validate_tls(&self.tls)
    }
}

/// The top-level keys that guard answers against a bad update or a stale view:
/// `max_load`, `protect_*`, `registry_stale_secs`, `max_lag_ms`.
fn validate_protection(cfg: &FileConfig) -> Result<(), ConfigError> {
    check(
        cfg.max_load > 0.0 && cfg.max_load <= 1.0,
        "max_load",
        || format!("{} is not in (0, 1]", cfg.max_load),
    )?;
    check(
        cfg.protect_threshold > 0.0 && cfg.protect_threshold <= 1.0,
        "protect_threshold",
        || format!("{} is not in (0, 1]", cfg.protect_threshold),
    )?;
    check(cfg.protect_max_secs >= 1, "protect_max_secs", || {
        "must be at least 1".into()
    })?;
    check(cfg.protect_window_secs >= 1, "protect_window_secs", || {
        "must be at least 1".into()
    })?;
    check(cfg.registry_stale_secs >= 1, "registry_stale_secs", || {
        "must be at least 1".into()
    })?;
    check(cfg.max_lag_ms >= 1, "max_lag_ms", || {
        "must be at least 1".into()
    })
}

/// `[[registries]]`: names unique and well-formed, endpoints and prefixes that parse,
/// at most one local.
fn validate_registries(registries: &[RegistryConfig]) -> Result<(), ConfigError> {
    let mut names = std::collections::HashSet::new();
    for r in registries {
        check(
            registry::record::validate_id(&r.name).is_ok(),
            "registries.name",
            || format!("{:?} is not a name ([A-Za-z0-9._-], 1-64)", r.name),
        )?;
        check(names.insert(r.name.as_str()), "registries.name", || {
            format!("{:?} appears twice", r.name)
        })?;
        check(parse_etcd(&r.etcd).is_ok(), "registries.etcd", || {
            format!(
                "{:?} of registry {}: {}",
                r.etcd,
                r.name,
                parse_etcd(&r.etcd).unwrap_err()
            )
        })?;
        if let Some(p) = &r.prefix {
            check(parse_prefix(p).is_ok(), "registries.prefix", || {
                format!("{p:?} of registry {}", r.name)
            })?;
        }
    }
    check(
        registries.iter().filter(|r| r.local).count() <= 1,
        "registries.local",
        || "more than one registry is local".into(),
    )
}

/// The top-level timings: the herd window, the snapshot interval, and what clients are
/// told (`ttl_secs`, `heartbeat_secs`).
fn validate_timing(cfg: &FileConfig) -> Result<(), ConfigError> {
    check(
        (1..=15).contains(&cfg.herd_window_secs),
        "herd_window_secs",
        || format!("{} is not 1-15", cfg.herd_window_secs),
    )?;
    check(
        cfg.snapshot_min_interval_ms <= 1000,
        "snapshot_min_interval_ms",
        || format!("{} is above 1000", cfg.snapshot_min_interval_ms),
    )?;
    check(cfg.ttl_secs >= 1, "ttl_secs", || {
        "must be at least 1".into()
    })?;
    check(cfg.heartbeat_secs >= 1, "heartbeat_secs", || {
        "must be at least 1".into()
    })
}

/// `[backoff]`.
fn validate_backoff(b: &BackoffConfig) -> Result<(), ConfigError> {
    check(b.base_ms >= 1, "backoff.base_ms", || {
        "must be at least 1".into()
    })?;
    check(b.max_ms >= b.base_ms, "backoff.max_ms", || {
        format!("{} is below backoff.base_ms {}", b.max_ms, b.base_ms)
    })?;
    check(
        b.factor >= 1.0 && b.factor <= 10.0,
        "backoff.factor",
        || format!("{} is not in [1, 10]", b.factor),
    )?;
    check((0.0..=1.0).contains(&b.jitter), "backoff.jitter", || {
        format!("{} is not in [0, 1]", b.jitter)
    })
}

/// `[regions]` (its networks' spelling: [`validate_networks`]).
fn validate_regions(regions: &RegionsConfig) -> Result<(), ConfigError> {
    for (net, region) in &regions.cidrs {
        check(!region.trim().is_empty(), "regions.cidrs", || {
            format!("{net} maps to an empty region")
        })?;
    }
    for (region, fallbacks) in &regions.fallbacks {
        check(!fallbacks.contains(region), "regions.fallbacks", || {
            format!("{region} lists itself as a fallback")
        })?;
    }
    let isp_name = |isp: &str| {
        !isp.is_empty() && isp.len() <= 64 && isp.chars().all(registry::record::is_name_char)
    };
    for (net, isp) in &regions.isp_cidrs {
        check(isp_name(isp), "regions.isp_cidrs", || {
            format!("{net} maps to {isp:?}, not 1-64 of A-Z a-z 0-9 - _ . (as records name ISPs)")
        })?;
    }
    for (asn, isp) in &regions.asn_isps {
        check(
            super::file::parse_asn(asn).is_some(),
            "regions.asn_isps",
            || format!("{asn:?} is not an ASN (AS9808 or 9808)"),
        )?;
        check(isp_name(isp), "regions.asn_isps", || {
            format!("{asn} maps to {isp:?}, not 1-64 of A-Z a-z 0-9 - _ . (as records name ISPs)")
        })?;
    }
    check(
        regions.isp_db.is_none() || !regions.asn_isps.is_empty(),
        "regions.asn_isps",
        || "is empty, so the ISP database would name no ISP: map its ASNs to ISPs".into(),
    )?;
    check(
        regions.isp_db_check_ms >= 10,
        "regions.isp_db_check_ms",
        || format!("{} is below 10", regions.isp_db_check_ms),
    )
}

/// `[rate_limit]`.
fn validate_rate_limit(r: &RateLimitConfig) -> Result<(), ConfigError> {
    check(
        r.per_ip_per_sec == 0 || r.burst >= 1,
        "rate_limit.burst",
        || "must be at least 1 when the limit is on".into(),
    )?;
    check(
        r.ipv4_prefix_len <= 32,
        "rate_limit.ipv4_prefix_len",
        || format!("{} is not 0-32", r.ipv4_prefix_len),
    )?;
    check(
        r.ipv6_prefix_len <= 128,
        "rate_limit.ipv6_prefix_len",
        || format!("{} is not 0-128", r.ipv6_prefix_len),
    )
}

/// `[edge]`: network sizes, automatic blocks, and the static block list (each entry as
/// the dynamic list would take it; `allow`'s spelling: [`validate_networks`]).
fn validate_edge(e: &EdgeConfig) -> Result<(), ConfigError> {
    check(e.network_prefix_v4 <= 32, "edge.network_prefix_v4", || {
        format!("{} is not 0-32", e.network_prefix_v4)
    })?;
    check(e.network_prefix_v6 <= 128, "edge.network_prefix_v6", || {
        format!("{} is not 0-128", e.network_prefix_v6)
    })?;
    check(
        e.auto_block_refusals_per_min == 0 || e.auto_block_secs >= 1,
        "edge.auto_block_secs",
        || "must be at least 1 when automatic blocks are on".into(),
    )?;
    for net in &e.block {
        let entry = registry::blocklist::BlockEntry {
            cidr: *net,
            reason: "config".into(),
            expires_ms: 0,
            by: String::new(),
            at_ms: 0,
        };
        entry
            .validate()
            .map_err(|err| ConfigError::invalid("edge.block", err.to_string()))?;
    }
    Ok(())
}

/// Every list of networks, whatever its section, in canonical form (an IPv4-mapped
/// network is refused, naming its IPv4 spelling).
fn validate_networks(cfg: &FileConfig) -> Result<(), ConfigError> {
    let lists: [(&str, Vec<&IpNet>); 5] = [
        ("trusted_proxies", cfg.trusted_proxies.iter().collect()),
        ("regions.cidrs", cfg.regions.cidrs.keys().collect()),
        ("regions.isp_cidrs", cfg.regions.isp_cidrs.keys().collect()),
        ("edge.allow", cfg.edge.allow.iter().collect()),
        (
            "http.connection_cap_exempt",
            cfg.http.connection_cap_exempt.iter().collect(),
        ),
    ];
    for (key, nets) in lists {
        for net in nets {
            registry::net::check_canonical(net)
                .map_err(|err| ConfigError::invalid(key, err.to_string()))?;
        }
    }
    Ok(())
}

/// `[http]`: timeouts, request sizes, CORS origins (`connection_cap_exempt`'s spelling:
/// [`validate_networks`]).
fn validate_http(h: &HttpConfig) -> Result<(), ConfigError> {
    check(
        h.request_timeout_ms >= 10,
        "http.request_timeout_ms",
        || "must be at least 10".into(),
    )?;
    for (v, key) in [
        (h.first_byte_timeout_ms, "http.first_byte_timeout_ms"),
        (h.tls_handshake_timeout_ms, "http.tls_handshake_timeout_ms"),
        (h.idle_timeout_secs, "http.idle_timeout_secs"),
        (h.body_timeout_ms, "http.body_timeout_ms"),
        (h.stall_timeout_ms, "http.stall_timeout_ms"),
        (
            h.h2_max_concurrent_streams as u64,
            "http.h2_max_concurrent_streams",
        ),
    ] {
        check(v > 0, key, || "must be above 0".into())?;
    }
    check(h.max_uri_bytes >= 64, "http.max_uri_bytes", || {
        "must be at least 64".into()
    })?;
    check(h.max_header_bytes >= 8192, "http.max_header_bytes", || {
        "must be at least 8192 (the HTTP server's smallest buffer)".into()
    })?;
    for o in &h.cors_origins {
        check(
            o == "*" || o.starts_with("http://") || o.starts_with("https://"),
            "http.cors_origins",
            || format!("{o:?} is not \"*\" or an http(s):// origin"),
        )?;
        check(
            o.parse::<axum::http::HeaderValue>().is_ok(),
            "http.cors_origins",
            || format!("{o:?} is not a valid header value"),
        )?;
    }
    Ok(())
}

/// `[tls]`.
fn validate_tls(t: &TlsConfig) -> Result<(), ConfigError> {
    check(t.reload_check_ms >= 10, "tls.reload_check_ms", || {
        "must be at least 10".into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("max_load = 0", "max_load"),
            ("max_load = 1.5", "max_load"),
            ("protect_threshold = -1", "protect_threshold"),
            ("ttl_secs = 0", "ttl_secs"),
            ("[backoff]\nbase_ms = 10\nmax_ms = 5", "backoff.max_ms"),
            ("[backoff]\njitter = 2", "backoff.jitter"),
            ("[backoff]\nbogus = 1", "unknown field `bogus`"),
            ("[backoff]\nbase_ms = \"x\"", "base_ms"),
            (
                "[regions]\nfallbacks = { a = [\"a\"] }",
                "regions.fallbacks",
            ),
            (
                "[regions]\ncidrs = { \"10.0.0.0/33\" = \"a\" }",
                "10.0.0.0/33",
            ),
            (
                "[regions]\nisp_cidrs = { \"10.0.0.0/8\" = \"china mobile\" }",
                "regions.isp_cidrs",
            ),
            (
                "[regions]\nisp_cidrs = { \"::ffff:10.0.0.0/104\" = \"cmcc\" }",
                "regions.isp_cidrs",
            ),
            (
                "[regions]\nasn_isps = { \"ASx\" = \"cmcc\" }",
                "regions.asn_isps",
            ),
            (
                "[regions]\nasn_isps = { \"99999999999\" = \"cmcc\" }",
                "regions.asn_isps",
            ),
            (
                "[regions]\nasn_isps = { \"AS9808\" = \"\" }",
                "regions.asn_isps",
            ),
            (
                "[regions]\nisp_db = \"/x.mmdb\"",
                "is empty, so the ISP database",
            ),
            ("[regions]\nisp_db_check_ms = 1", "regions.isp_db_check_ms"),
            ("trusted_proxies = [\"nope\"]", "trusted_proxies"),
            (
                "trusted_proxies = [\"::ffff:10.0.0.0/104\"]",
                "write it as 10.0.0.0/8",
            ),
            ("[edge]\nallow = [\"::ffff:192.0.2.1/128\"]", "edge.allow"),
            ("[edge]\nblock = [\"0.0.0.0/4\"]", "edge.block"),
            ("[http]\ncors_origins = [\"ftp://x\"]", "http.cors_origins"),
            ("[http]\nmax_header_bytes = 100", "http.max_header_bytes"),
            ("[http]\nbody_timeout_ms = 0", "http.body_timeout_ms"),
            ("[http]\nstall_timeout_ms = 0", "http.stall_timeout_ms"),
            (
                "[http]\nconnection_cap_exempt = [\"lb\"]",
                "connection_cap_exempt",
            ),
            (
                "[httpdns]\nsign_max_ahead_secs = 0",
                "httpdns.sign_max_ahead_secs",
            ),
            ("unknown_key = 1", "unknown_key"),
            ("max_load = \"high\"", "max_load"),
            ("require_bindings = \"yes\"", "require_bindings"),
        ] {
            let e = FileConfig::parse(text).expect_err(text).to_string();
            assert!(e.contains(key), "{text}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }
}
