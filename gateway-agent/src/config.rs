//! The agent's command line: the contract's flags, each also an `AGENT_*` variable.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use registry::record::validate_id;
use registry::{Layout, Ports, Proto, DEFAULT_PREFIX};

use crate::health::HealthProbe;
use crate::hook::HttpHook;
use crate::load::LoadSource;
use crate::report::ReportPolicy;
use crate::{AgentConfig, NodeSpec};

registry::etcd_security_flags!(AgentEtcdFlags, "AGENT");

/// Registers a gateway node in etcd under a lease, reports its connections and
/// health, and executes drain / migrate commands.
#[derive(Debug, Clone, Parser)]
#[command(name = "gateway-agent", version = registry::build_info!().long_version())]
pub struct Cli {
    /// etcd endpoints, comma-separated (http://HOST:PORT, or https:// for TLS).
    #[arg(long, env = "AGENT_ETCD", value_name = "URL[,URL...]", required = true, value_parser = parse_etcd)]
    pub etcd: Vec<String>,
    /// TLS and credentials for etcd.
    #[command(flatten)]
    pub etcd_security: AgentEtcdFlags,
    /// Logs on stderr as `text` or `json` (one object per line, with span fields).
    #[arg(long, env = "AGENT_LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: registry::cli::LogFormat,
    /// Node id, [A-Za-z0-9._-]{1,64}.
    #[arg(long, env = "AGENT_ID", value_parser = parse_id)]
    pub id: String,
    /// Address clients connect to (IPv4 or IPv6 literal).
    #[arg(long, env = "AGENT_IP")]
    pub ip: IpAddr,
    /// Region the node serves.
    #[arg(long, env = "AGENT_REGION", value_parser = parse_nonempty)]
    pub region: String,
    /// Connections the node is sized for (> 0).
    #[arg(long, env = "AGENT_CAPACITY", value_parser = clap::value_parser!(u64).range(1..))]
    pub capacity: u64,
    /// A listening port, PROTO=PORT with PROTO one of tcp, ws, wss; repeatable.
    #[arg(long = "port", env = "AGENT_PORTS", value_name = "PROTO=PORT", required = true,
          value_delimiter = ',', value_parser = parse_port)]
    pub ports: Vec<(Proto, u16)>,
    /// Key prefix in etcd.
    #[arg(long, env = "AGENT_PREFIX", default_value = DEFAULT_PREFIX, value_parser = parse_prefix)]
    pub prefix: String,
    /// Lease TTL in seconds.
    #[arg(long, env = "AGENT_TTL", value_name = "SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub ttl: u64,
    /// IPv6 address for dual-stack clients.
    #[arg(long, env = "AGENT_IPV6")]
    pub ipv6: Option<Ipv6Addr>,
    /// DNS name of the node.
    #[arg(long, env = "AGENT_DOMAIN")]
    pub domain: Option<String>,
    /// Availability zone.
    #[arg(long, env = "AGENT_ZONE")]
    pub zone: Option<String>,
    /// Carrier (ctcc, cucc, ...); several, comma-separated, for a node on several
    /// lines (`ctcc,cmcc`); `bgp` for one on every line.
    #[arg(long, env = "AGENT_ISP")]
    pub isp: Option<String>,
    /// Label KEY=VALUE, repeatable.
    #[arg(long = "label", env = "AGENT_LABELS", value_name = "KEY=VALUE", value_delimiter = ',',
          value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Connection count source: static:N | file:PATH | tcp-port:PORT | http-json:URL#/pointer.
    /// Without it the node reports 0 connections (static:0), and says so at start.
    #[arg(long, env = "AGENT_LOAD")]
    pub load: Option<LoadSource>,
    /// Health probe: tcp:HOST:PORT | http:URL.
    #[arg(long, env = "AGENT_HEALTH")]
    pub health: Option<HealthProbe>,
    /// URL the agent POSTs migrate signals to.
    #[arg(long, env = "AGENT_HOOK", value_parser = parse_url)]
    pub hook: Option<String>,
    /// Keep the routers' block list (`P/blocklist/`) in this file for the gateway, one
    /// network per line, replaced atomically on every change.
    #[arg(long, env = "AGENT_BLOCKLIST_FILE", value_name = "PATH")]
    pub blocklist_file: Option<std::path::PathBuf>,
    /// Keep the lease across a restart of the agent: on SIGTERM while the gateway serves
    /// (and no drain was asked), leave the lease in this file instead of revoking it, so
    /// the next start takes it up and the node never leaves. SIGUSR1 stops and leaves.
    #[arg(long, env = "AGENT_STATE_FILE", value_name = "PATH")]
    pub state_file: Option<std::path::PathBuf>,
    /// Serve the agent's own /metrics, /healthz and /readyz on this address (port 0: any
    /// free port, logged as `serving metrics addr=...`). Off by default.
    #[arg(long, env = "AGENT_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Report a connection change at once when it is at least this fraction of capacity.
    #[arg(long, env = "AGENT_REPORT_MIN_CHANGE", value_name = "RATIO", default_value_t = 0.01,
          value_parser = parse_ratio)]
    pub report_min_change: f64,
    /// Minimum milliseconds between two writes.
    #[arg(long, env = "AGENT_REPORT_MIN_INTERVAL_MS", value_name = "MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub report_min_interval_ms: u64,
    /// Maximum seconds between two writes, even without change.
    #[arg(long, env = "AGENT_REPORT_MAX_INTERVAL_SECS", value_name = "SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub report_max_interval_secs: u64,
    /// On SIGTERM, milliseconds the record stays marked `draining` before the lease is
    /// revoked, so every router stops answering the node while it still runs.
    #[arg(long, env = "AGENT_LEAVE_GRACE_MS", value_name = "MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub leave_grace_ms: u64,
    /// Milliseconds between two samples of the load source.
    #[arg(long, env = "AGENT_SAMPLE_INTERVAL_MS", value_name = "MS", default_value_t = 250,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub sample_interval_ms: u64,
    /// Milliseconds between two health probes.
    #[arg(long, env = "AGENT_HEALTH_INTERVAL_MS", value_name = "MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub health_interval_ms: u64,
}

fn parse_etcd(s: &str) -> Result<String, String> {
    registry::etcd::parse_endpoints(s)
        .map(|v| v.join(","))
        .map_err(|e| e.to_string())
}

fn parse_id(s: &str) -> Result<String, String> {
    validate_id(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

fn parse_nonempty(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("must not be empty".into());
    }
    Ok(s.to_string())
}

fn parse_prefix(s: &str) -> Result<String, String> {
    registry::keys::validate_prefix(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

fn parse_port(s: &str) -> Result<(Proto, u16), String> {
    let (proto, port) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not PROTO=PORT"))?;
    let proto: Proto = proto.parse()?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((proto, p)),
        _ => Err(format!("{port:?} is not a port 1-65535")),
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

fn parse_url(s: &str) -> Result<String, String> {
    if s.starts_with("http://") || s.starts_with("https://") {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not an http:// or https:// URL"))
    }
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a ratio between 0 and 1")),
    }
}

/// Why the flags together are refused (each alone parsed): the one line the agent
/// prints before it exits 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FlagError {
    /// `--port` given twice for one protocol.
    #[error("--port {0}= given twice")]
    PortTwice(Proto),
    /// The node record the flags make breaks a rule of the contract; `flag` names it.
    #[error("--{flag}: {source}")]
    Record {
        /// The flag, without its dashes (`zone`, `label`).
        flag: &'static str,
        /// The contract's reason.
        #[source]
        source: registry::RecordError,
    },
    /// The node record breaks a rule no single flag holds.
    #[error(transparent)]
    Node(registry::RecordError),
    /// `--report-max-interval-secs` below `--report-min-interval-ms`.
    #[error("--report-max-interval-secs is shorter than --report-min-interval-ms")]
    ReportIntervals,
}

impl Cli {
    /// The etcd endpoints as a list.
    pub fn endpoints(&self) -> Vec<String> {
        self.etcd
            .iter()
            .flat_map(|s| s.split(','))
            .map(str::to_string)
            .collect()
    }

    /// Checks what single flags cannot, and builds the agent's configuration.
    pub fn into_config(self, http: reqwest::Client) -> Result<AgentConfig, FlagError> {
        let mut ports = Ports::default();
        for (proto, port) in &self.ports {
            if ports.get(*proto).is_some() {
                return Err(FlagError::PortTwice(*proto));
            }
            ports.set(*proto, *port);
        }
        let node = NodeSpec {
            id: self.id,
            ip: self.ip,
            ports,
            region: self.region,
            capacity: self.capacity,
            ipv6: self.ipv6,
            domain: self.domain,
            zone: self.zone,
            isp: self.isp,
            labels: self.labels.into_iter().collect::<BTreeMap<_, _>>(),
        };
        // The record's own rules (names, sizes, the domain), named by flag.
        node.validate().map_err(|e| match &e {
            registry::RecordError::Invalid { field, .. } => FlagError::Record {
                flag: match *field {
                    "labels" => "label",
                    f => f,
                },
                source: e,
            },
            _ => FlagError::Node(e),
        })?;
        let mut config = AgentConfig::new(node);
        config.layout = Layout::new(&self.prefix);
        config.ttl = Duration::from_secs(self.ttl);
        config.policy = ReportPolicy {
            min_interval: Duration::from_millis(self.report_min_interval_ms),
            max_interval: Duration::from_secs(self.report_max_interval_secs),
            min_change: self.report_min_change,
        };
        if config.policy.max_interval < config.policy.min_interval {
            return Err(FlagError::ReportIntervals);
        }
        config.load = Some(self.load.unwrap_or_else(|| {
            tracing::warn!(
                "no --load (AGENT_LOAD): this node reports 0 connections whatever its gateway \
                 holds, so routers fill it first and drain --wait returns at once; give \
                 tcp-port:PORT, file:PATH or http-json:URL#/pointer"
            );
            LoadSource::Static(0)
        }));
        config.sample_interval = Duration::from_millis(self.sample_interval_ms);
        config.leave_grace = Duration::from_millis(self.leave_grace_ms);
        config.state_file = self.state_file;
        config.health = self.health;
        config.health_interval = Duration::from_millis(self.health_interval_ms);
        config.hook = self
            .hook
            .map(|url| Arc::new(HttpHook::new(url, http)) as Arc<dyn crate::Hook>);
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, String> {
        let base = [
            "gateway-agent",
            "--etcd",
            "http://127.0.0.1:2379",
            "--id",
            "gw-1",
            "--ip",
            "10.0.0.1",
            "--region",
            "r",
            "--capacity",
            "100",
            "--port",
            "tcp=8000",
        ];
        let mut all: Vec<&str> = base.to_vec();
        all.extend_from_slice(args);
        Cli::try_parse_from(all).map_err(|e| registry::cli::one_line(&e.render().to_string()))
    }

    #[test]
    fn valid_and_invalid_flags() {
        let cli = parse(&["--port", "ws=8080", "--load", "file:/tmp/x"]).unwrap();
        let cfg = cli.into_config(reqwest::Client::new()).unwrap();
        assert_eq!(cfg.node.ports.ws, Some(8080));
        for (args, needle) in [
            (&["--capacity", "0"][..], "--capacity"),
            (&["--ip", "not-an-ip"], "--ip"),
            (&["--port", "x=1"], "--port"),
            (&["--port", "tcp=0"], "--port"),
            (&["--bogus"], "--bogus"),
            (&["--id", "a/b"], "--id"),
            (&["--load", "nope:1"], "--load"),
            (&["--health", "udp:1"], "--health"),
            (&["--ttl", "0"], "--ttl"),
            (&["--prefix", "rel"], "--prefix"),
        ] {
            let e = parse(args).expect_err(needle);
            assert!(e.contains(needle), "{e}");
            assert!(!e.contains('\n'));
        }
        for (args, needle) in [
            (&["--zone", "cn sh"][..], "--zone"),
            (&["--zone", &"z".repeat(65)], "--zone"),
            (&["--isp", "c\u{1b}"], "--isp"),
            (&["--domain", "evil..example.com"], "--domain"),
            (&["--label", &format!("k={}", "v".repeat(257))], "--label"),
        ] {
            let e = parse(args)
                .unwrap()
                .into_config(reqwest::Client::new())
                .err()
                .expect(needle)
                .to_string();
            assert!(e.starts_with(needle), "{e}");
        }
        let dup = parse(&["--port", "tcp=9000"])
            .unwrap()
            .into_config(reqwest::Client::new());
        assert_eq!(dup.err().unwrap().to_string(), "--port tcp= given twice");
    }
}
