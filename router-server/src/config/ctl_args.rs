//! The command line of `router-server ctl`: its flags, its operations (`nodes`, `drain`,
//! `bind`, `block`, `auth`, ...), and the value parsers only they use.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use ipnet::IpNet;
use registry::DEFAULT_PREFIX;

use super::shared_args::{
    parse_etcd, parse_prefix, parse_principal, parse_registry, RouterEtcdFlags,
};

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
    /// The router's configuration file (`serve --config`): its `[[registries]]` are
    /// addressed too, each with its own etcd TLS and credentials from the file.
    #[arg(long, env = "ROUTER_CONFIG", value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
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
    /// Operator policy (`P/policy/`): groups excluded for a client network, shares of
    /// its answers between groups; every router follows it within a second.
    Policy {
        /// `set`, `get`, `rm` or `list`.
        #[command(subcommand)]
        op: PolicyOp,
    },
    /// The audit trail (`P/audit/`): every change operators made through `ctl` and
    /// the admin API, newest first, with who, when, and the value before and after.
    Audit {
        /// The most entries shown.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        limit: u64,
        /// Print JSON instead of a table.
        #[arg(long, env = "ROUTER_CTL_JSON", value_parser = clap::builder::BoolishValueParser::new())]
        json: bool,
    },
    /// Why a client address gets the gateways it gets, or none: asks a router's
    /// admin API (--router), not etcd.
    Explain(super::ExplainArgs),
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

/// `ctl policy` operations.
#[derive(Debug, Clone, Subcommand)]
pub enum PolicyOp {
    /// Write a policy (replacing one of the same name) to every registry given.
    Set {
        /// The policy's name (its key under `P/policy/`).
        #[arg(value_parser = parse_bind_name)]
        name: String,
        /// The clients' region.
        #[arg(long, value_parser = parse_bind_name)]
        region: String,
        /// The clients' ISP; without it, the region's clients no policy of their own
        /// ISP covers.
        #[arg(long, value_parser = parse_bind_name)]
        isp: Option<String>,
        /// A group never answered to these clients: `dc:NAME` or `pool:NAME`,
        /// repeatable.
        #[arg(long, value_name = "GROUP", value_parser = parse_group)]
        exclude: Vec<registry::policy::Group>,
        /// A group's share of the answers, `GROUP=PERCENT` (`dc:sh=70`), repeatable;
        /// the shares add up to 100.
        #[arg(long, value_name = "GROUP=PERCENT", value_parser = parse_ratio)]
        ratio: Vec<registry::policy::Ratio>,
        /// The most of the answers a group may lead, `GROUP=PERCENT` (`pool:edge=20`,
        /// 1-99), repeatable; in the other answers its nodes come last.
        #[arg(long, value_name = "GROUP=PERCENT", value_parser = parse_ratio)]
        cap: Vec<registry::policy::Ratio>,
        /// Print what the change moves (networks, nodes, shares) without writing it.
        #[arg(long, value_parser = clap::builder::BoolishValueParser::new())]
        dry_run: bool,
    },
    /// Print one policy.
    Get {
        /// The policy's name.
        name: String,
    },
    /// Delete a policy from every registry given.
    Rm {
        /// The policy's name.
        name: String,
    },
    /// Table of the policies.
    List {
        /// Print JSON instead of a table.
        #[arg(long, env = "ROUTER_CTL_JSON", value_parser = clap::builder::BoolishValueParser::new())]
        json: bool,
    },
}

/// `ctl policy --exclude`: `dc:NAME` or `pool:NAME`.
fn parse_group(s: &str) -> Result<registry::policy::Group, String> {
    s.parse().map_err(|e: registry::RecordError| e.to_string())
}

/// `ctl policy --ratio`: `GROUP=PERCENT`.
fn parse_ratio(s: &str) -> Result<registry::policy::Ratio, String> {
    let (group, percent) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("{s:?} is not GROUP=PERCENT (dc:sh=70)"))?;
    let percent: u8 = percent
        .parse()
        .ok()
        .filter(|p| (1..=100).contains(p))
        .ok_or_else(|| format!("{percent:?} is not a percentage 1-100"))?;
    Ok(registry::policy::Ratio {
        to: parse_group(group)?,
        percent,
    })
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

/// `ctl bind --ip`: a CIDR, or one address (a /32 or /128).
fn parse_bind_cidr(s: &str) -> Result<IpNet, String> {
    match s.parse::<IpAddr>() {
        Ok(ip) => Ok(IpNet::from(ip)),
        Err(_) => registry::binding::parse_cidr(s).map_err(|e| e.to_string()),
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
    registry::binding::normalize_suffix(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, Command};

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
