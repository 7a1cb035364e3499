//! Configuration: the command line (clap, `ROUTER_*` variables) and the TOML file.
//!
//! Every key of the file has a default, so an empty file (or none) is a working
//! configuration. [`FileConfig::validate`] is the one place that turns a bad value into
//! a message naming the key; `main` prints it and exits 2.
//!
//! The command line is in `args` (`serve`, `demo`) and `ctl_args` (`ctl`).

mod args;
mod ctl_args;
pub mod dns;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use args::{check_token, Cli, Command, DemoArgs, RouterEtcdFlags, ServeArgs, MIN_TOKEN_BYTES};
use args::{parse_etcd, parse_prefix};
pub use ctl_args::{AuthOp, AuthWho, CtlArgs, CtlOp};

/// The most candidates one answer can hold (`/gateways` allows 10; a DNS answer more):
/// the bound `[dns] count` is checked against, and selection's ([`crate::schedule::MAX_COUNT`]).
pub const MAX_CANDIDATES: usize = 64;

/// The TOML file. Every key is optional; see `docs/config.md` for each default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// Nodes at or above this projected load are not handed out (overload protection).
    pub max_load: f64,
    /// An update removing more than this fraction of live nodes at once is held back.
    pub protect_threshold: f64,
    /// How long a held-back update may be ignored before the router follows it anyway.
    pub protect_max_secs: u64,
    /// Fleets smaller than this are not protected (one node is already "more than half").
    pub protect_min_nodes: usize,
    /// Removals are judged together over this window (at least twice the agents'
    /// lease TTL, so a staggered expiry is seen whole).
    pub protect_window_secs: u64,
    /// How long an answer counts against its node when no report includes it (a real
    /// client connects within it; older answers are phantoms). 1-15.
    pub herd_window_secs: u64,
    /// Snapshots are rebuilt at most this often; reports arriving meanwhile are folded
    /// into the next build (0-1000).
    pub snapshot_min_interval_ms: u64,
    /// How long clients may reuse an answer.
    pub ttl_secs: u64,
    /// Heartbeat interval clients use on their gateway connection.
    pub heartbeat_secs: u64,
    /// Reconnect backoff clients use.
    pub backoff: BackoffConfig,
    /// Client region lookup and fallbacks.
    pub regions: RegionsConfig,
    /// Proxies whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Per-client-IP rate limit.
    pub rate_limit: RateLimitConfig,
    /// `[edge]`: block and allow lists, per-network herd budgets, automatic blocks.
    pub edge: EdgeConfig,
    /// HTTP limits, timeouts, CORS.
    pub http: HttpConfig,
    /// Certificate reloading.
    pub tls: TlsConfig,
    /// A registry the router cannot reach for this long has its nodes offered only
    /// after every node of a live registry (and dropped after `protect_max_secs`).
    pub registry_stale_secs: u64,
    /// Answers are marked `stale` while this router's view of its own registry is
    /// further behind etcd than this (its heartbeat's round trip, `crate::lag`), ms.
    pub max_lag_ms: u64,
    /// The registries to follow, one per data centre (`[[registries]]`).
    pub registries: Vec<RegistryConfig>,
    /// A node without a binding (`P/bindings/{id}`) is invalid: every node must be
    /// bound by an operator before the router answers it.
    pub require_bindings: bool,
    /// `[dns]`: the gateway zone over DNS and DNS over HTTPS.
    pub dns: dns::DnsConfig,
    /// `[httpdns]`: the Alibaba-style HTTPDNS endpoint.
    pub httpdns: dns::HttpDnsConfig,
}

/// One `[[registries]]` entry: a data centre's etcd.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// The DC's name, in answers as each gateway's `dc`.
    pub name: String,
    /// Endpoints, comma-separated.
    pub etcd: String,
    /// Key prefix (default: `--prefix`).
    pub prefix: Option<String>,
    /// This router's own DC (else the first registry is).
    pub local: bool,
    /// `--etcd-cacert` for this registry.
    pub cacert: Option<std::path::PathBuf>,
    /// `--etcd-cert` for this registry.
    pub cert: Option<std::path::PathBuf>,
    /// `--etcd-key` for this registry.
    pub key: Option<std::path::PathBuf>,
    /// `--etcd-user` for this registry.
    pub user: Option<String>,
    /// `--etcd-password-file` for this registry.
    pub password_file: Option<std::path::PathBuf>,
    /// `--etcd-insecure-transport` for this registry.
    pub insecure_transport: bool,
}

/// The `[backoff]` table, sent to clients as-is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackoffConfig {
    /// First delay.
    pub base_ms: u64,
    /// Largest delay.
    pub max_ms: u64,
    /// Growth per attempt.
    pub factor: f64,
    /// ± fraction of random spread.
    pub jitter: f64,
}

/// The `[regions]` table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegionsConfig {
    /// Region for clients no CIDR matches (empty: unknown, candidates from any region).
    pub default: String,
    /// Client CIDR → region; the longest matching prefix wins.
    pub cidrs: BTreeMap<IpNet, String>,
    /// Region → fallback regions, in order.
    pub fallbacks: BTreeMap<String, Vec<String>>,
}

/// The `[rate_limit]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained requests per second per client IP (0 disables the limit).
    pub per_ip_per_sec: u32,
    /// Requests a client may burst above the sustained rate.
    pub burst: u32,
    /// IPv4 clients sharing this many leading bits share one budget (32: per address).
    pub ipv4_prefix_len: u8,
    /// IPv6 clients sharing this many leading bits share one budget (64: per /64, the
    /// smallest network a subscriber is given, so rotating addresses inside it does not
    /// buy a new budget).
    pub ipv6_prefix_len: u8,
}

/// The `[edge]` table: what one client network may cost the router.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// Client networks refused on every route (HTTP 403 `blocked`, DNS REFUSED),
    /// beside the dynamic list in etcd (`P/blocklist/`).
    pub block: Vec<IpNet>,
    /// Trusted client networks (a carrier's NAT, a monitoring host): exempt from the
    /// per-client request budget, the herd budget and automatic blocks. A block entry
    /// still refuses them.
    pub allow: Vec<IpNet>,
    /// Leading bits that make one client network for the herd budget (IPv4).
    pub network_prefix_v4: u8,
    /// The same for IPv6 (56: a subscriber's delegated prefix).
    pub network_prefix_v6: u8,
    /// Clients one network's answers may add to the herd counts per
    /// `herd_window_secs`, at this router (each answer counts as many clients as there
    /// are live routers, since that is what it adds to the estimate); answers beyond
    /// it are still given, but not counted. 0: no bound.
    pub herd_budget: u32,
    /// A network refused by the request budget more than this many times a minute is
    /// blocked by the router itself for `auto_block_secs` (0: never).
    pub auto_block_refusals_per_min: u32,
    /// How long an automatic block lasts.
    pub auto_block_secs: u64,
    /// The most networks blocked automatically at once (the rest are only limited).
    pub auto_block_max: usize,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            block: Vec::new(),
            allow: Vec::new(),
            network_prefix_v4: crate::identity::NETWORK_PREFIX.0,
            network_prefix_v6: crate::identity::NETWORK_PREFIX.1,
            herd_budget: 100,
            auto_block_refusals_per_min: 6000,
            auto_block_secs: 600,
            auto_block_max: 10_000,
        }
    }
}

/// The `[http]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Deadline of admin requests (they wait on etcd) and of receiving a request head.
    pub request_timeout_ms: u64,
    /// Longest accepted request URI.
    pub max_uri_bytes: usize,
    /// Largest accepted request head (request line + headers).
    pub max_header_bytes: usize,
    /// Origins allowed by CORS (`*` for any); empty disables CORS.
    pub cors_origins: Vec<String>,
    /// On SIGTERM, how long in-flight requests may take to finish.
    pub shutdown_grace_secs: u64,
    /// On SIGTERM, how long requests arriving on open keep-alive connections are still
    /// answered (with `Connection: close`) before idle connections are closed.
    pub shutdown_keepalive_ms: u64,
    /// A connection that sends no byte within this long is closed.
    pub first_byte_timeout_ms: u64,
    /// Deadline of the TLS handshake, counted from the first byte.
    pub tls_handshake_timeout_ms: u64,
    /// A keep-alive connection with no request for this long is closed.
    pub idle_timeout_secs: u64,
    /// Most connections open at once; 0 sizes it from the open-file limit. When reached,
    /// silent and idle connections are closed first to make room.
    pub max_connections: usize,
    /// HTTP/2: most concurrent streams per connection.
    pub h2_max_concurrent_streams: u32,
    /// A request's body must have arrived whole this long after its head; else the
    /// request is answered 408 `request_timeout` and the connection closed.
    pub body_timeout_ms: u64,
    /// A connection answering a request that neither reads nor writes a byte for this
    /// long is closed (a handler's own deadline, `request_timeout_ms`, comes first: a
    /// smaller value is raised to it).
    pub stall_timeout_ms: u64,
    /// Connections open at once from one client network (its /24 or /56, by TCP
    /// peer); beyond it a new one from that network is closed at accept. 0 turns the
    /// cap off.
    pub max_connections_per_network: usize,
    /// Peers exempt from `max_connections_per_network`: the load balancers in front
    /// of the router, whose connections carry many clients.
    pub connection_cap_exempt: Vec<IpNet>,
}

/// The `[tls]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// How often the certificate files are checked for changes.
    pub reload_check_ms: u64,
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            max_load: 0.95,
            protect_threshold: 0.5,
            protect_max_secs: 300,
            protect_min_nodes: 2,
            protect_window_secs: 30,
            herd_window_secs: 5,
            snapshot_min_interval_ms: 50,
            ttl_secs: 300,
            heartbeat_secs: 240,
            backoff: BackoffConfig::default(),
            regions: RegionsConfig::default(),
            trusted_proxies: Vec::new(),
            rate_limit: RateLimitConfig::default(),
            edge: EdgeConfig::default(),
            http: HttpConfig::default(),
            tls: TlsConfig::default(),
            registry_stale_secs: 10,
            max_lag_ms: 2_000,
            registries: Vec::new(),
            require_bindings: false,
            dns: Default::default(),
            httpdns: Default::default(),
        }
    }
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            base_ms: 1000,
            max_ms: 60_000,
            factor: 1.6,
            jitter: 0.2,
        }
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        // Sized for carrier-grade NAT: thousands of phones share one IPv4 address, and
        // after a gateway crash they all reconnect within seconds. A burst of 10,000
        // admits a 10,000-client storm from one address whatever its shape; 1,000/s
        // sustained is about 1 % of one router's capacity, so a single abusive address
        // still cannot take a router down.
        RateLimitConfig {
            per_ip_per_sec: 1000,
            burst: 10_000,
            ipv4_prefix_len: 32,
            ipv6_prefix_len: 64,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            request_timeout_ms: 5000,
            max_uri_bytes: 4096,
            max_header_bytes: 16 * 1024,
            cors_origins: Vec::new(),
            shutdown_grace_secs: 10,
            shutdown_keepalive_ms: 1000,
            first_byte_timeout_ms: 5000,
            tls_handshake_timeout_ms: 5000,
            idle_timeout_secs: 60,
            max_connections: 0,
            h2_max_concurrent_streams: 100,
            body_timeout_ms: 5000,
            stall_timeout_ms: 10_000,
            max_connections_per_network: 256,
            connection_cap_exempt: Vec::new(),
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            reload_check_ms: 5000,
        }
    }
}

fn check(ok: bool, key: &str, msg: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("config: {key}: {}", msg()))
    }
}

impl FileConfig {
    /// Reads and validates a TOML file.
    pub fn load(path: &std::path::Path) -> Result<FileConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("config: cannot read {}: {e}", path.display()))?;
        FileConfig::parse(&text).map_err(|e| format!("{} ({})", e, path.display()))
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<FileConfig, String> {
        let cfg: FileConfig = toml::from_str(text).map_err(|e| {
            let msg = e.message().trim().replace('\n', " ");
            // Name the line, so a wrong type points at its key.
            match e.span() {
                Some(span) => {
                    let line_no = text[..span.start].matches('\n').count() + 1;
                    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
                    format!("config: line {line_no} `{line}`: {msg}")
                }
                None => format!("config: {msg}"),
            }
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Every rule a value must follow, with a message naming the key.
    pub fn validate(&self) -> Result<(), String> {
        self.dns.validate()?;
        self.httpdns.validate()?;
        check(
            self.max_load > 0.0 && self.max_load <= 1.0,
            "max_load",
            || format!("{} is not in (0, 1]", self.max_load),
        )?;
        check(
            self.protect_threshold > 0.0 && self.protect_threshold <= 1.0,
            "protect_threshold",
            || format!("{} is not in (0, 1]", self.protect_threshold),
        )?;
        check(self.protect_max_secs >= 1, "protect_max_secs", || {
            "must be at least 1".into()
        })?;
        check(self.protect_window_secs >= 1, "protect_window_secs", || {
            "must be at least 1".into()
        })?;
        check(self.registry_stale_secs >= 1, "registry_stale_secs", || {
            "must be at least 1".into()
        })?;
        check(self.max_lag_ms >= 1, "max_lag_ms", || {
            "must be at least 1".into()
        })?;
        let mut names = std::collections::HashSet::new();
        for r in &self.registries {
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
            self.registries.iter().filter(|r| r.local).count() <= 1,
            "registries.local",
            || "more than one registry is local".into(),
        )?;
        check(
            (1..=15).contains(&self.herd_window_secs),
            "herd_window_secs",
            || format!("{} is not 1-15", self.herd_window_secs),
        )?;
        check(
            self.snapshot_min_interval_ms <= 1000,
            "snapshot_min_interval_ms",
            || format!("{} is above 1000", self.snapshot_min_interval_ms),
        )?;
        check(self.ttl_secs >= 1, "ttl_secs", || {
            "must be at least 1".into()
        })?;
        check(self.heartbeat_secs >= 1, "heartbeat_secs", || {
            "must be at least 1".into()
        })?;
        let b = &self.backoff;
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
        })?;
        for (net, region) in &self.regions.cidrs {
            check(!region.trim().is_empty(), "regions.cidrs", || {
                format!("{net} maps to an empty region")
            })?;
        }
        for (region, fallbacks) in &self.regions.fallbacks {
            check(!fallbacks.contains(region), "regions.fallbacks", || {
                format!("{region} lists itself as a fallback")
            })?;
        }
        let r = &self.rate_limit;
        check(
            r.per_ip_per_sec == 0 || r.burst >= 1,
            "rate_limit.burst",
            || "must be at least 1 when the limit is on".into(),
        )?;
        let e = &self.edge;
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
                .map_err(|err| format!("config: edge.block: {err}"))?;
        }
        let lists: [(&str, Vec<&IpNet>); 4] = [
            ("trusted_proxies", self.trusted_proxies.iter().collect()),
            ("regions.cidrs", self.regions.cidrs.keys().collect()),
            ("edge.allow", e.allow.iter().collect()),
            (
                "http.connection_cap_exempt",
                self.http.connection_cap_exempt.iter().collect(),
            ),
        ];
        for (key, nets) in lists {
            for net in nets {
                registry::net::check_canonical(net)
                    .map_err(|err| format!("config: {key}: {err}"))?;
            }
        }
        let h = &self.http;
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
        let rl = &self.rate_limit;
        check(
            rl.ipv4_prefix_len <= 32,
            "rate_limit.ipv4_prefix_len",
            || format!("{} is not 0-32", rl.ipv4_prefix_len),
        )?;
        check(
            rl.ipv6_prefix_len <= 128,
            "rate_limit.ipv6_prefix_len",
            || format!("{} is not 0-128", rl.ipv6_prefix_len),
        )?;
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
        check(
            self.tls.reload_check_ms >= 10,
            "tls.reload_check_ms",
            || "must be at least 10".into(),
        )?;
        Ok(())
    }

    /// The request deadline.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.http.request_timeout_ms)
    }

    /// True when `ip` is a trusted proxy.
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        crate::identity::is_trusted(&self.trusted_proxies, ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(FileConfig::parse("").unwrap(), FileConfig::default());
    }

    #[test]
    fn full_file_parses() {
        let cfg = FileConfig::parse(
            r#"
            max_load = 0.9
            require_bindings = true
            trusted_proxies = ["10.0.0.0/8", "::1/128"]
            [regions]
            default = "cn-sh"
            cidrs = { "192.0.2.0/24" = "cn-bj", "2001:db8::/32" = "cn-sz" }
            fallbacks = { cn-sh = ["cn-hz", "cn-bj"] }
            [backoff]
            base_ms = 500
            [rate_limit]
            per_ip_per_sec = 0
            [http]
            cors_origins = ["https://app.example.com"]
            "#,
        )
        .unwrap();
        assert_eq!(cfg.regions.fallbacks["cn-sh"], vec!["cn-hz", "cn-bj"]);
        assert!(cfg.is_trusted_proxy("10.1.2.3".parse().unwrap()));
        assert!(!cfg.is_trusted_proxy("11.1.2.3".parse().unwrap()));
        assert!(cfg.require_bindings);
        assert!(!FileConfig::default().require_bindings);
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("max_load = 0", "max_load"),
            ("max_load = 1.5", "max_load"),
            ("protect_threshold = -1", "protect_threshold"),
            ("ttl_secs = 0", "ttl_secs"),
            ("[backoff]\nbase_ms = 10\nmax_ms = 5", "backoff.max_ms"),
            ("[backoff]\njitter = 2", "backoff.jitter"),
            (
                "[regions]\nfallbacks = { a = [\"a\"] }",
                "regions.fallbacks",
            ),
            (
                "[regions]\ncidrs = { \"10.0.0.0/33\" = \"a\" }",
                "10.0.0.0/33",
            ),
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
            let e = FileConfig::parse(text).expect_err(text);
            assert!(e.contains(key), "{text}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }
}
