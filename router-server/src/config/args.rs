//! The command line of `router-server [serve]` and `demo`, and the list of subcommands:
//! each subcommand's flags and `ROUTER_*` variables, with the value parsers they share
//! with `ctl` and the file's rules (etcd endpoints, registries, prefixes, ids, tokens).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use registry::DEFAULT_PREFIX;

use super::ctl_args::CtlArgs;
use super::shared_args::{
    parse_etcd, parse_prefix, parse_principal, parse_registry, RouterEtcdFlags,
};

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

/// The shortest token accepted: 16 bytes (128 bits when random).
pub const MIN_TOKEN_BYTES: usize = 16;

/// What is wrong with an admin token; the caller names the token before it ("the
/// admin token is empty; ...").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenProblem {
    /// Empty or blank.
    #[error("is empty; give a secret or leave the setting out to disable the admin API")]
    Empty,
    /// Spaces or control characters.
    #[error("has spaces or control characters; it is sent in an HTTP header and must be one word")]
    NotOneWord,
    /// Shorter than [`MIN_TOKEN_BYTES`]; its length.
    #[error("is {0} bytes; at least {MIN_TOKEN_BYTES} are required (e.g. `openssl rand -hex 24`)")]
    TooShort(usize),
}

/// What is wrong with `token`, if anything: blank, not one word, or too short.
pub fn check_token(token: &str) -> Result<(), TokenProblem> {
    if token.trim().is_empty() {
        return Err(TokenProblem::Empty);
    }
    if token.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(TokenProblem::NotOneWord);
    }
    if token.len() < MIN_TOKEN_BYTES {
        return Err(TokenProblem::TooShort(token.len()));
    }
    Ok(())
}

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
    #[cfg(feature = "tools")]
    Demo(DemoArgs),
    /// Operate the fleet: list nodes, drain, migrate, serve, rebalance.
    Ctl(CtlArgs),
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
    /// Check the configuration and exit, binding nothing and connecting to nothing:
    /// the flags and variables, the --config file, the TLS certificate and key, the
    /// admin tokens and each registry's etcd settings and files. Prints a summary and
    /// exits 0 when valid; prints the first problem and exits 2 otherwise. Safe to run
    /// beside the router it checks for (before a restart or a reload).
    #[arg(long)]
    pub check_config: bool,
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
    /// Check the configuration and exit, binding nothing and connecting to nothing:
    /// the flags and variables, the --config file, the TLS certificate and key, the
    /// admin tokens and each registry's etcd settings and files. Prints a summary and
    /// exits 0 when valid; prints the first problem and exits 2 otherwise. Safe to run
    /// beside the router it checks for (before a restart or a reload).
    #[arg(long)]
    pub check_config: bool,
}
