//! Configuration: the command line (clap, `ROUTER_*` variables) and the TOML file.
//!
//! Every key of the file has a default, so an empty file (or none) is a working
//! configuration. [`FileConfig::validate`] is the one place that turns a bad value into
//! a message naming the key; `main` prints it and exits 2.

pub mod dns;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;
use registry::DEFAULT_PREFIX;
use serde::{Deserialize, Serialize};

/// Routes long-connection clients to gateway nodes.
///
/// `serve` may be left out (`router-server --etcd URL --listen ADDR`): [`Cli::parse_args`]
/// puts it in. Each subcommand declares its own flags and variables, so a variable meant
/// for one (`ROUTER_LISTEN` for `serve`) is never read, let alone required, by another.
#[derive(Debug, Parser)]
#[command(name = "router-server", version = registry::build_info!().long_version())]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
    /// Logs on stderr as `text` or `json` (one object per line, with span fields).
    #[arg(
        long,
        global = true,
        env = "ROUTER_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    pub log_format: registry::cli::LogFormat,
}

/// The words that name a subcommand or ask clap for help / version.
const LEADING_WORDS: [&str; 8] = [
    "serve",
    "demo",
    "ctl",
    "help",
    "--help",
    "-h",
    "--version",
    "-V",
];

impl Cli {
    /// Parses `args` (the program name first), reading `serve` when no subcommand is
    /// named.
    pub fn parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString>,
    {
        let mut args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        let names_one = args
            .get(1)
            .and_then(|a| a.to_str())
            .is_some_and(|a| LEADING_WORDS.contains(&a));
        if !names_one {
            args.insert(1.min(args.len()), "serve".into());
        }
        Cli::try_parse_from(args)
    }
}

registry::etcd_security_flags!(RouterEtcdFlags, "ROUTER");

/// The shortest token accepted: 16 bytes (128 bits when random).
pub const MIN_TOKEN_BYTES: usize = 16;

/// What is wrong with `token`, if anything: blank, not one word, or too short.
pub fn check_token(token: &str) -> Result<(), String> {
    if token.trim().is_empty() {
        return Err(
            "is empty; give a secret or leave the setting out to disable the admin API".into(),
        );
    }
    if token.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(
            "has spaces or control characters; it is sent in an HTTP header and must be one word"
                .into(),
        );
    }
    if token.len() < MIN_TOKEN_BYTES {
        return Err(format!(
            "is {} bytes; at least {MIN_TOKEN_BYTES} are required (e.g. `openssl rand -hex 24`)",
            token.len()
        ));
    }
    Ok(())
}

/// The most candidates one answer can hold (`/gateways` allows 10; a DNS answer more):
/// the bound `[dns] count` is checked against, and selection's ([`crate::schedule::MAX_COUNT`]).
pub const MAX_CANDIDATES: usize = 64;

/// An admin token: refused when empty, blank, not one word or shorter than 16 bytes,
/// whether it comes from the flag or the variable (a blank token would be a door anyone
/// could open, a short one a door anyone could guess).
fn parse_token(s: &str) -> Result<String, String> {
    check_token(s).map_err(|e| format!("the admin token {e}"))?;
    Ok(s.to_string())
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve GET /gateways from the registry in etcd.
    Serve(ServeArgs),
    /// Run the real router on an in-memory registry with simulated gateways.
    Demo(DemoArgs),
    /// Operate the fleet: list nodes, drain, migrate, serve, rebalance.
    Ctl(CtlArgs),
}

fn parse_etcd(s: &str) -> Result<String, String> {
    registry::etcd::parse_endpoints(s).map(|v| v.join(","))
}

fn parse_registry(s: &str) -> Result<(String, String), String> {
    let (name, urls) = s
        .trim()
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=URL[,URL...]"))?;
    let name = name.trim();
    registry::record::validate_id(name).map_err(|e| format!("registry name {name:?}: {e}"))?;
    Ok((name.to_string(), parse_etcd(urls)?))
}

fn parse_prefix(s: &str) -> Result<String, String> {
    registry::keys::validate_prefix(s)?;
    Ok(s.to_string())
}

/// Flags of `router-server serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// etcd endpoints, comma-separated: the one registry, named `default` (or use
    /// --registry, or `[[registries]]` in the config file).
    #[arg(long, env = "ROUTER_ETCD", value_name = "URL[,URL...]", value_parser = parse_etcd)]
    pub etcd: Option<String>,
    /// A registry to follow, one per data centre: `NAME=URL[,URL...]`; repeat it for
    /// several. The first is this router's own DC. In the environment:
    /// `NAME=URL[,URL]; NAME=...`.
    #[arg(long = "registry", env = "ROUTER_REGISTRIES", value_name = "NAME=URL[,URL...]",
          value_delimiter = ';', value_parser = parse_registry)]
    pub registries: Vec<(String, String)>,
    /// Address to listen on (HTTPS when --tls-cert is given, plain HTTP otherwise).
    #[arg(long, env = "ROUTER_LISTEN", value_name = "ADDR", required = true)]
    pub listen: SocketAddr,
    /// Key prefix in etcd.
    #[arg(long, env = "ROUTER_PREFIX", default_value = DEFAULT_PREFIX, value_parser = parse_prefix)]
    pub prefix: String,
    /// TLS and credentials for etcd.
    #[command(flatten)]
    pub etcd_security: RouterEtcdFlags,
    /// This router's id: its key `P/routers/{ID}`, and its etcd user under `ctl auth`
    /// (which may write that key alone). Default: host name, process id and a random
    /// part.
    #[arg(long, env = "ROUTER_ID", value_name = "ID", value_parser = parse_principal)]
    pub router_id: Option<String>,
    /// An address clients reach this router at (repeatable; in the environment,
    /// comma-separated). Published in its registration: the routers' domain in DNS
    /// and HTTPDNS (`httpdns.router_domain`) answers the live routers' addresses.
    #[arg(
        long = "public-addr",
        env = "ROUTER_PUBLIC_ADDRS",
        value_name = "IP",
        value_delimiter = ','
    )]
    pub public_addrs: Vec<IpAddr>,
    /// TOML configuration file.
    #[arg(long, env = "ROUTER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Enables the admin API with this bearer token (at least 16 bytes; it shows in
    /// `ps`: prefer --admin-token-file).
    #[arg(
        long,
        env = "ROUTER_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        value_parser = parse_token
    )]
    pub admin_token: Option<String>,
    /// Enables the admin API with the tokens of this file: `name:token` lines (`#`
    /// comments and blank lines allowed), each token at least 16 bytes; requests are
    /// logged with the name of the token they carry. The file must not be readable by
    /// group or others.
    #[arg(long, env = "ROUTER_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// PEM certificate chain; serves HTTPS on --listen. Reloaded when the file changes.
    #[arg(
        long,
        env = "ROUTER_TLS_CERT",
        value_name = "PEM",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(
        long,
        env = "ROUTER_TLS_KEY",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// An internal listener (plain HTTP) for operators: when given, `/metrics`, `/ops`,
    /// `/ops/*.json` and the admin API are served only here (404 on --listen and
    /// --http-listen); `/healthz` and `/readyz` are served on every listener.
    #[arg(long, env = "ROUTER_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// With TLS: also serve plain HTTP here (for a TLS-terminating balancer).
    #[arg(
        long,
        env = "ROUTER_HTTP_LISTEN",
        value_name = "ADDR",
        requires = "tls_cert"
    )]
    pub http_listen: Option<SocketAddr>,
}

/// Flags of `router-server demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Address to listen on.
    #[arg(
        long,
        env = "ROUTER_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,
    /// Simulated gateway nodes.
    #[arg(long, env = "ROUTER_DEMO_NODES", value_name = "N", default_value_t = 12,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub nodes: u32,
    /// Admin token for the demo's admin API.
    #[arg(
        long,
        env = "ROUTER_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        value_parser = parse_token
    )]
    pub admin_token: Option<String>,
    /// TOML configuration file; the demo's regions apply where it sets none.
    #[arg(long, env = "ROUTER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Flags of `router-server ctl`.
#[derive(Debug, Clone, Args)]
pub struct CtlArgs {
    /// etcd endpoints, comma-separated (one registry; or use --registry).
    #[arg(long, env = "ROUTER_ETCD", value_name = "URL[,URL...]", value_parser = parse_etcd)]
    pub etcd: Option<String>,
    /// A data centre's registry, `NAME=URL[,URL...]`, repeatable (as `serve` takes
    /// it): `nodes` shows every one with a DC column, a command goes to the registry
    /// holding the node, `rebalance` and `auth` run in each.
    #[arg(long = "registry", env = "ROUTER_REGISTRIES", value_name = "NAME=URL[,URL...]",
          value_delimiter = ';', value_parser = parse_registry)]
    pub registries: Vec<(String, String)>,
    /// Key prefix in etcd.
    #[arg(long, env = "ROUTER_PREFIX", default_value = DEFAULT_PREFIX, value_parser = parse_prefix)]
    pub prefix: String,
    /// TLS and credentials for etcd.
    #[command(flatten)]
    pub etcd_security: RouterEtcdFlags,
    /// The operation.
    #[command(subcommand)]
    pub op: CtlOp,
}

/// `ctl` operations.
#[derive(Debug, Clone, Subcommand)]
pub enum CtlOp {
    /// Table of nodes, by region and load.
    Nodes {
        /// Print JSON instead of a table.
        #[arg(long, env = "ROUTER_CTL_JSON", value_parser = clap::builder::BoolishValueParser::new())]
        json: bool,
    },
    /// Stop sending clients to a node and move its clients away.
    Drain {
        /// Node id.
        id: String,
        /// Show progress and return when the node reports 0 connections.
        #[arg(long, env = "ROUTER_CTL_WAIT", value_parser = clap::builder::BoolishValueParser::new())]
        wait: bool,
        /// Give up waiting after this many seconds (exit 1).
        #[arg(
            long,
            env = "ROUTER_CTL_TIMEOUT",
            value_name = "SECS",
            default_value_t = 600
        )]
        timeout: u64,
    },
    /// Move a percentage of a node's clients away.
    Migrate {
        /// Node id.
        id: String,
        /// 1-100.
        #[arg(long, env = "ROUTER_CTL_PERCENT", value_parser = clap::value_parser!(u8).range(1..=100))]
        percent: u8,
    },
    /// Undo a drain.
    Serve {
        /// Node id.
        id: String,
    },
    /// Least-privilege roles and users in etcd for routers, agents and operators.
    Auth {
        /// `plan` or `apply`.
        #[command(subcommand)]
        op: AuthOp,
    },
    /// Bind what a node's record may claim (`P/bindings/{ID}`): routers refuse a
    /// record outside its binding. Each flag left out leaves that claim unbound.
    Bind {
        /// Node id.
        #[arg(value_parser = parse_principal)]
        id: String,
        /// An address range the record's ip and ipv6 must fall in (CIDR, or one
        /// address), repeatable.
        #[arg(long = "ip", env = "ROUTER_CTL_BIND_IPS", value_name = "CIDR",
              value_delimiter = ',', value_parser = parse_bind_cidr)]
        ips: Vec<IpNet>,
        /// A region the record may name, repeatable.
        #[arg(long = "region", env = "ROUTER_CTL_BIND_REGIONS", value_name = "R",
              value_delimiter = ',', value_parser = parse_bind_name)]
        regions: Vec<String>,
        /// An ISP the record may name, repeatable (a record naming none passes).
        #[arg(long = "isp", env = "ROUTER_CTL_BIND_ISPS", value_name = "I",
              value_delimiter = ',', value_parser = parse_bind_name)]
        isps: Vec<String>,
        /// The largest capacity the record may claim.
        #[arg(long, env = "ROUTER_CTL_BIND_MAX_CAPACITY", value_name = "N",
              value_parser = clap::value_parser!(u64).range(1..))]
        max_capacity: Option<u64>,
        /// A domain the record's domain must be or fall under (`.gw.example.com`;
        /// the leading dot is optional), repeatable.
        #[arg(long = "domain-suffix", env = "ROUTER_CTL_BIND_DOMAIN_SUFFIXES", value_name = "S",
              value_delimiter = ',', value_parser = parse_bind_suffix)]
        domain_suffixes: Vec<String>,
        /// Delete the node's binding instead.
        #[arg(long, env = "ROUTER_CTL_BIND_REMOVE",
              value_parser = clap::builder::BoolishValueParser::new(),
              conflicts_with_all = ["ips", "regions", "isps", "max_capacity", "domain_suffixes"])]
        remove: bool,
    },
    /// Table of the node bindings.
    Bindings {
        /// Print JSON instead of a table.
        #[arg(long, env = "ROUTER_CTL_JSON", value_parser = clap::builder::BoolishValueParser::new())]
        json: bool,
    },
    /// Refuse a client network on every router (`P/blocklist/`): HTTP 403 `blocked`,
    /// DNS REFUSED, within a second.
    Block {
        /// The network (CIDR, or one address); no wider than /8 (IPv6: /16).
        #[arg(value_parser = parse_bind_cidr)]
        cidr: IpNet,
        /// Why, for whoever reads the list.
        #[arg(long, env = "ROUTER_CTL_BLOCK_REASON")]
        reason: String,
        /// How long the entry holds (`90s`, `30m`, `1h`, `7d`); without it, until
        /// `ctl unblock`.
        #[arg(long, env = "ROUTER_CTL_BLOCK_TTL", value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
    },
    /// Take a network off the block list.
    Unblock {
        /// The network, as it was blocked.
        #[arg(value_parser = parse_bind_cidr)]
        cidr: IpNet,
    },
    /// Table of the block list.
    Blocks {
        /// Print JSON instead of a table.
        #[arg(long, env = "ROUTER_CTL_JSON", value_parser = clap::builder::BoolishValueParser::new())]
        json: bool,
    },
    /// Even out load inside each region by migrating clients off hot nodes.
    Rebalance {
        /// Print the plan without issuing commands.
        #[arg(long, env = "ROUTER_CTL_DRY_RUN", value_parser = clap::builder::BoolishValueParser::new())]
        dry_run: bool,
        /// Print JSON instead of a table.
        #[arg(long, env = "ROUTER_CTL_JSON", value_parser = clap::builder::BoolishValueParser::new())]
        json: bool,
    },
}

/// `ctl auth` operations.
#[derive(Debug, Clone, Subcommand)]
pub enum AuthOp {
    /// Print the roles and users for these principals, and what etcd lacks of them.
    Plan(AuthWho),
    /// Create what etcd lacks (idempotent: nothing existing is changed or removed).
    Apply {
        /// Who gets access.
        #[command(flatten)]
        who: AuthWho,
        /// Give each new user a random password, written to DIR/USER.password (mode
        /// 0600). Without it, users have no password: etcd authenticates them by the
        /// common name of their client certificate.
        #[arg(long, env = "ROUTER_CTL_PASSWORD_DIR", value_name = "DIR")]
        password_dir: Option<PathBuf>,
    },
}

/// The principals of `ctl auth`.
#[derive(Debug, Clone, Args)]
pub struct AuthWho {
    /// Router ids (`serve --router-id`): read the prefix, write their own registration.
    #[arg(long, value_name = "ID[,ID...]", value_delimiter = ',', value_parser = parse_principal)]
    pub routers: Vec<String>,
    /// Node ids: each agent reads and writes its record and applied command, and reads
    /// its commands.
    #[arg(long, value_name = "ID[,ID...]", value_delimiter = ',', value_parser = parse_principal)]
    pub agents: Vec<String>,
    /// Also every node registered now (its record or its applied command).
    #[arg(long)]
    pub registered: bool,
    /// Operators' user names: read the prefix, write commands.
    #[arg(long, value_name = "NAME[,NAME...]", value_delimiter = ',', value_parser = parse_principal)]
    pub operators: Vec<String>,
    /// Routers serve the admin API (and `/ops` buttons), so they write commands too.
    #[arg(long)]
    pub router_admin: bool,
}

fn parse_principal(s: &str) -> Result<String, String> {
    registry::record::validate_id(s)
        .map(|()| s.to_string())
        .map_err(|e| e.to_string())
}

/// `ctl bind --ip`: a CIDR, or one address (a /32 or /128).
fn parse_bind_cidr(s: &str) -> Result<IpNet, String> {
    match s.parse::<IpAddr>() {
        Ok(ip) => Ok(IpNet::from(ip)),
        Err(_) => registry::binding::parse_cidr(s),
    }
}

/// `ctl bind --region` / `--isp`: a name as node records carry it.
fn parse_bind_name(s: &str) -> Result<String, String> {
    let max = registry::record::MAX_NAME_LEN;
    if s.is_empty() || s.len() > max {
        return Err(format!("{s:?} is not 1-{max} characters"));
    }
    if let Some(c) = s.chars().find(|c| !registry::record::is_name_char(*c)) {
        return Err(format!(
            "{s:?}: character {c:?} is not one of A-Z a-z 0-9 . _ -"
        ));
    }
    Ok(s.to_string())
}

/// `ctl bind --domain-suffix`: a host name, with or without its leading dot.
fn parse_bind_suffix(s: &str) -> Result<String, String> {
    registry::binding::normalize_suffix(s)
}

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

    #[test]
    fn ctl_bind_flags() {
        let bind = |extra: &[&str]| {
            let mut args = vec![
                "router-server",
                "ctl",
                "--etcd",
                "http://127.0.0.1:2379",
                "bind",
            ];
            args.extend_from_slice(extra);
            Cli::parse_args(args)
        };
        let cli = bind(&[
            "gw-1",
            "--ip",
            "203.0.113.0/28",
            "--ip",
            "2001:db8::1",
            "--region",
            "cn-sh",
            "--max-capacity",
            "1000",
            "--domain-suffix",
            "gw.example.com",
        ])
        .unwrap();
        let Command::Ctl(CtlArgs {
            op:
                CtlOp::Bind {
                    ips,
                    domain_suffixes,
                    max_capacity,
                    remove,
                    ..
                },
            ..
        }) = cli.command
        else {
            panic!("not a bind");
        };
        assert_eq!(ips[1].to_string(), "2001:db8::1/128");
        assert_eq!(domain_suffixes, [".gw.example.com"]);
        assert_eq!(max_capacity, Some(1000));
        assert!(!remove);
        for (args, needle) in [
            (&["a/b"][..], "ID"),
            (&["gw-1", "--ip", "203.0.113.0/33"], "--ip"),
            (&["gw-1", "--ip", "nope"], "--ip"),
            (&["gw-1", "--region", "cn sh"], "--region"),
            (&["gw-1", "--isp", ""], "--isp"),
            (&["gw-1", "--max-capacity", "0"], "--max-capacity"),
            (&["gw-1", "--domain-suffix", "a..b"], "--domain-suffix"),
            (&["gw-1", "--remove", "--region", "cn-sh"], "--remove"),
        ] {
            let e = bind(args).expect_err(needle).render().to_string();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
        assert!(bind(&["gw-1", "--remove"]).is_ok());
    }
}
