//! The TOML file: [`FileConfig`] and its sections, each key's default, and reading a
//! file (its rules are in `validate`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::dns;
use super::error::ConfigError;

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
    #[serde(deserialize_with = "strict_backoff")]
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
    /// `[feedback]`: clients' connect outcomes, and the demotions they cause.
    pub feedback: super::feedback::FeedbackConfig,
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

impl RegistryConfig {
    /// Its etcd TLS and authentication, as the `--etcd-*` flags would give them.
    pub fn security(&self) -> registry::security::EtcdSecurity {
        registry::security::EtcdSecurity {
            cacert: self.cacert.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            user: self.user.clone(),
            password_file: self.password_file.clone(),
            insecure_transport: self.insecure_transport,
        }
    }
}

/// The `[backoff]` table, sent to clients as-is: `gateway_api::Backoff`, read strictly
/// (a key it does not have is an error naming it; keys left out take the defaults).
pub type BackoffConfig = gateway_api::Backoff;

/// Reads `[backoff]` into [`BackoffConfig`]: the keys allowed are the type's own (as it
/// serializes), so the list is not written twice.
fn strict_backoff<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BackoffConfig, D::Error> {
    use serde::de::Error;
    let given = toml::Table::deserialize(d)?;
    let toml::Value::Table(mut full) =
        toml::Value::try_from(BackoffConfig::default()).map_err(D::Error::custom)?
    else {
        return Err(D::Error::custom("the backoff defaults are not a table"));
    };
    for (key, value) in given {
        if !full.contains_key(&key) {
            let known: Vec<&str> = full.keys().map(String::as_str).collect();
            return Err(D::Error::custom(format!(
                "unknown field `{key}`, expected one of {}",
                known.join(", ")
            )));
        }
        full.insert(key, value);
    }
    toml::Value::Table(full)
        .try_into()
        .map_err(D::Error::custom)
}

/// The `[regions]` table: clients' regions and ISPs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegionsConfig {
    /// Region for clients no CIDR matches (empty: unknown, candidates from any region).
    pub default: String,
    /// Client CIDR → region; the longest matching prefix wins.
    pub cidrs: BTreeMap<IpNet, String>,
    /// Region → fallback regions, in order.
    pub fallbacks: BTreeMap<String, Vec<String>>,
    /// Client CIDR → ISP, as node records name ISPs; the longest matching prefix
    /// wins, before the database.
    pub isp_cidrs: BTreeMap<IpNet, String>,
    /// A MaxMind-format database mapping networks to ASNs (the ASN or the ISP
    /// edition), read again when the file changes; its ASNs are named by `asn_isps`.
    pub isp_db: Option<std::path::PathBuf>,
    /// ASN → ISP for the database's answers: `{ "AS9808" = "cmcc" }` (or `"9808"`).
    pub asn_isps: BTreeMap<String, String>,
    /// How often the database file is checked for changes, ms.
    pub isp_db_check_ms: u64,
}

impl Default for RegionsConfig {
    fn default() -> Self {
        RegionsConfig {
            default: String::new(),
            cidrs: BTreeMap::new(),
            fallbacks: BTreeMap::new(),
            isp_cidrs: BTreeMap::new(),
            isp_db: None,
            asn_isps: BTreeMap::new(),
            isp_db_check_ms: 5000,
        }
    }
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
    /// On SIGTERM, how long the router keeps serving everything while `/readyz` answers
    /// 503 "going away", so a health-checking load balancer stops sending new
    /// connections before the listeners close.
    pub shutdown_readiness_delay_ms: u64,
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
    /// The public listeners (HTTP and HTTPS, not the admin one) expect the PROXY
    /// protocol (v1 or v2) from a TCP balancer: every connection begins with its
    /// header, which names the client. Only `trusted_proxies` may connect (they are
    /// exempt from `max_connections_per_network`); DNS is not affected.
    pub proxy_protocol: bool,
}

/// The `[tls]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// How often the certificate files are checked for changes.
    pub reload_check_ms: u64,
}

impl RegionsConfig {
    /// `asn_isps` by number (validation has checked every key parses).
    pub fn asn_isps(&self) -> impl Iterator<Item = (u32, String)> + '_ {
        self.asn_isps
            .iter()
            .filter_map(|(asn, isp)| Some((parse_asn(asn)?, isp.clone())))
    }

    /// Every region name the table mentions: networks', fallbacks', the default.
    pub fn names(&self) -> impl Iterator<Item = String> + '_ {
        self.cidrs
            .values()
            .chain(self.fallbacks.keys())
            .chain(self.fallbacks.values().flatten())
            .chain((!self.default.is_empty()).then_some(&self.default))
            .cloned()
    }
}

/// An ASN as `asn_isps` keys spell it: `AS9808`, `as9808` or `9808`.
pub(super) fn parse_asn(s: &str) -> Option<u32> {
    let digits = s
        .strip_prefix("AS")
        .or_else(|| s.strip_prefix("as"))
        .unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
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
            feedback: Default::default(),
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
            shutdown_readiness_delay_ms: 5000,
            shutdown_grace_secs: 10,
            shutdown_keepalive_ms: 1000,
            first_byte_timeout_ms: 5000,
            proxy_protocol: false,
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

impl FileConfig {
    /// Reads and validates a TOML file.
    pub fn load(path: &std::path::Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Unreadable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        FileConfig::parse(&text).map_err(|e| ConfigError::InFile {
            path: path.to_path_buf(),
            error: Box::new(e),
        })
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<FileConfig, ConfigError> {
        let cfg: FileConfig = toml::from_str(text).map_err(|e| {
            let reason = e.message().trim().replace('\n', " ");
            // Name the line, so a wrong type points at its key.
            match e.span() {
                Some(span) => {
                    let line = text[..span.start].matches('\n').count() + 1;
                    let text = text.lines().nth(line - 1).unwrap_or("").trim().to_string();
                    ConfigError::Syntax { line, text, reason }
                }
                None => ConfigError::Unparsed { reason },
            }
        })?;
        cfg.validate()?;
        Ok(cfg)
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
    fn isp_tables_parse_and_name_asns_by_number() {
        let cfg = FileConfig::parse(
            "[regions]\nisp_cidrs = { \"10.1.0.0/16\" = \"ctcc\" }\nisp_db = \"/var/lib/geo/asn.mmdb\"\nasn_isps = { AS9808 = \"cmcc\", \"4134\" = \"ctcc\", as4837 = \"cucc\" }\n",
        )
        .unwrap();
        cfg.validate().unwrap();
        let mut asns: Vec<(u32, String)> = cfg.regions.asn_isps().collect();
        asns.sort();
        assert_eq!(
            asns,
            [
                (4134, "ctcc".into()),
                (4837, "cucc".into()),
                (9808, "cmcc".into())
            ]
        );
        assert_eq!(cfg.regions.isp_db_check_ms, 5000);
        assert_eq!(parse_asn("AS"), None);
        assert_eq!(parse_asn("AS-1"), None);
        assert_eq!(parse_asn("+5"), None);
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(FileConfig::parse("").unwrap(), FileConfig::default());
    }

    #[test]
    fn a_partial_backoff_table_keeps_the_other_defaults() {
        let cfg = FileConfig::parse("[backoff]\nbase_ms = 500").unwrap();
        let want = BackoffConfig {
            base_ms: 500,
            ..BackoffConfig::default()
        };
        assert_eq!(cfg.backoff, want);
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
}
