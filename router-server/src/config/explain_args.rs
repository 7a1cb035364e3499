//! The flags of `router-server ctl explain`: the client's address, what it would ask
//! `/gateways`, and the router whose admin API to ask, with the admin token.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;

/// `ctl explain IP`: asks a router (`GET /admin/explain`), not etcd.
#[derive(Debug, Clone, Args)]
pub struct ExplainArgs {
    /// The client's address, IPv4 or IPv6.
    pub ip: IpAddr,
    /// The client's region, overriding the router's lookup by address (as
    /// `/gateways?region=` does).
    #[arg(long, env = "ROUTER_CTL_EXPLAIN_REGION", value_name = "R", value_parser = parse_name)]
    pub region: Option<String>,
    /// The client's ISP, reported back (the selection does not use ISPs).
    #[arg(long, env = "ROUTER_CTL_EXPLAIN_ISP", value_name = "I", value_parser = parse_name)]
    pub isp: Option<String>,
    /// The protocol the client speaks.
    #[arg(long, env = "ROUTER_CTL_EXPLAIN_PROTO", value_name = "PROTO",
          value_parser = ["tcp", "ws", "wss"])]
    pub proto: Option<String>,
    /// Candidates the client asks for (1-10; the router's default 3).
    #[arg(long, env = "ROUTER_CTL_EXPLAIN_COUNT", value_name = "N",
          value_parser = clap::value_parser!(u8).range(1..=10))]
    pub count: Option<u8>,
    /// The address family the client can reach.
    #[arg(long = "ip-version", env = "ROUTER_CTL_EXPLAIN_IP_VERSION", value_name = "4|6",
          value_parser = ["4", "6"])]
    pub ip_version: Option<String>,
    /// The router to ask: the base URL of its admin API (its --admin-listen address,
    /// else its --listen one), e.g. `http://10.0.0.7:9090`.
    #[arg(long, env = "ROUTER_URL", value_name = "URL", value_parser = parse_url)]
    pub router: String,
    /// The router's admin bearer token (it shows in `ps`: prefer --admin-token-file).
    #[arg(
        long,
        env = "ROUTER_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        conflicts_with = "admin_token_file"
    )]
    pub admin_token: Option<String>,
    /// A file holding the admin token: the token alone on a line, or `name:token`
    /// lines as a router's --admin-token-file holds them (the first is used). It must
    /// not be readable by group or others.
    #[arg(long, env = "ROUTER_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// PEM CA certificate to check an https:// router's certificate with (besides the
    /// usual roots).
    #[arg(long, env = "ROUTER_CTL_ROUTER_CACERT", value_name = "PEM")]
    pub router_cacert: Option<PathBuf>,
    /// Print the router's JSON instead of a report.
    #[arg(long, env = "ROUTER_CTL_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    pub json: bool,
}

/// A region or ISP name, as records carry them.
fn parse_name(s: &str) -> Result<String, String> {
    let max = registry::record::MAX_NAME_LEN;
    let ok = !s.is_empty() && s.len() <= max && s.chars().all(registry::record::is_name_char);
    if !ok {
        return Err(format!("{s:?} is not 1-{max} of A-Z a-z 0-9 . _ -"));
    }
    Ok(s.to_string())
}

/// An `http://` or `https://` base URL.
fn parse_url(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .ok_or_else(|| format!("{s:?} is not an http:// or https:// URL"))?;
    if rest.is_empty() || rest.starts_with('/') || s.chars().any(char::is_whitespace) {
        return Err(format!("{s:?} has no host"));
    }
    Ok(s.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use crate::config::{Cli, Command, CtlOp};

    #[test]
    fn ctl_explain_flags() {
        let parse = |extra: &[&str]| {
            let mut args = vec!["router-server", "ctl", "explain"];
            args.extend_from_slice(extra);
            Cli::parse_args(args)
        };
        let cli = parse(&[
            "::ffff:192.0.2.1",
            "--router",
            "http://127.0.0.1:9090/",
            "--region",
            "cn-sh",
            "--count",
            "5",
            "--ip-version",
            "6",
            "--admin-token",
            "0123456789abcdef",
        ])
        .unwrap();
        let Command::Ctl(ctl) = cli.command else {
            panic!("not ctl");
        };
        let CtlOp::Explain(x) = ctl.op else {
            panic!("not explain");
        };
        assert_eq!(x.router, "http://127.0.0.1:9090");
        assert_eq!((x.region.as_deref(), x.count), (Some("cn-sh"), Some(5)));
        for (args, needle) in [
            (&["nope", "--router", "http://r"][..], "IP"),
            (&["192.0.2.1", "--router", "ftp://r"], "--router"),
            (&["192.0.2.1", "--router", "http://"], "--router"),
            (
                &["192.0.2.1", "--router", "http://r", "--isp", "a b"],
                "--isp",
            ),
            (
                &["192.0.2.1", "--router", "http://r", "--count", "11"],
                "--count",
            ),
            (
                &["192.0.2.1", "--router", "http://r", "--proto", "udp"],
                "--proto",
            ),
            (
                &[
                    "192.0.2.1",
                    "--router",
                    "http://r",
                    "--admin-token",
                    "x",
                    "--admin-token-file",
                    "f",
                ],
                "--admin-token",
            ),
        ] {
            let e = parse(args).expect_err(needle).render().to_string();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }
}
