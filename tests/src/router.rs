//! `router-server` for tests: started on free ports with a test config (rate limits
//! off), waited on until ready, asked for its `/gateways` answer; and its `ctl`
//! subcommand.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::etcd::Etcd;
use crate::http::{get_json, http_get};
use crate::process::{run, Proc};
use crate::util::wait_until;

/// A router-server process on a free port, with its config file.
pub struct RouterProc {
    /// The process.
    pub proc: Proc,
    /// Where it serves plain HTTP.
    pub addr: SocketAddr,
    _config: tempfile::NamedTempFile,
}

impl RouterProc {
    /// Starts `router-server` against `etcd` with `config` (TOML; the rate limit is
    /// switched off, since tests poll far faster than any client) and `extra` flags, and
    /// waits until it is ready.
    pub fn start(etcd: &Etcd, config: &str, extra: &[&str]) -> RouterProc {
        RouterProc::start_with(etcd, config, extra, None)
    }

    /// Starts `router-server` on `listen` (e.g. `127.0.0.1:0`) following several
    /// registries (`--registry NAME=URLS` for each, the first being its own DC), and
    /// waits until it is ready.
    pub fn start_registries(
        listen: &str,
        registries: &[(&str, &Etcd)],
        config: &str,
        extra: &[&str],
    ) -> RouterProc {
        let file = router_config(config);
        let specs: Vec<String> = registries
            .iter()
            .map(|(name, etcd)| format!("{name}={}", etcd.endpoints()))
            .collect();
        let mut args = vec![
            "--listen",
            listen,
            "--config",
            file.path().to_str().unwrap(),
        ];
        for spec in &specs {
            args.extend(["--registry", spec.as_str()]);
        }
        args.extend_from_slice(extra);
        let proc = Proc::spawn_full("router-server", &args, &[], false, None);
        let addr = proc.wait_for_addr("serving HTTP", Duration::from_secs(20));
        RouterProc::ready(proc, addr, file)
    }

    /// [`RouterProc::start`] through `wrapper` (e.g. `prlimit --nofile=256:256`).
    pub fn start_with(
        etcd: &Etcd,
        config: &str,
        extra: &[&str],
        wrapper: Option<Vec<String>>,
    ) -> RouterProc {
        let (proc, file) = spawn_router(etcd, config, extra, wrapper);
        let addr = proc.wait_for_addr("serving HTTP", Duration::from_secs(20));
        RouterProc::ready(proc, addr, file)
    }

    /// Starts `router-server` serving HTTPS with `cert` / `key` on one free port and plain
    /// HTTP on another (`addr`), with `config` (rate limit off); returns the HTTPS address.
    pub fn start_tls(
        etcd: &Etcd,
        config: &str,
        cert: &Path,
        key: &Path,
    ) -> (RouterProc, SocketAddr) {
        let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
        let extra = [
            "--http-listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert,
            "--tls-key",
            key,
        ];
        RouterProc::start_tls_args(etcd, config, &extra)
    }

    /// [`RouterProc::start_tls`] with the flags given whole: `--tls-cert`, `--tls-key`
    /// and `--http-listen` among them.
    pub fn start_tls_args(etcd: &Etcd, config: &str, extra: &[&str]) -> (RouterProc, SocketAddr) {
        let (proc, file) = spawn_router(etcd, config, extra, None);
        let https = proc.wait_for_addr("serving HTTPS", Duration::from_secs(20));
        let addr = proc.wait_for_addr("serving HTTP ", Duration::from_secs(20));
        (RouterProc::ready(proc, addr, file), https)
    }

    fn ready(proc: Proc, addr: SocketAddr, config: tempfile::NamedTempFile) -> RouterProc {
        wait_until(Duration::from_secs(10), "router ready", || {
            http_get(addr, "/readyz").is_some_and(|(c, _)| c == 200)
        });
        RouterProc {
            proc,
            addr,
            _config: config,
        }
    }

    /// Starts `router-server` as [`RouterProc::start`] does, without waiting for it (a
    /// router whose public listener a plain `GET /readyz` cannot reach, say); returns
    /// the process and its config file, which must outlive it.
    pub fn spawn(etcd: &Etcd, config: &str, extra: &[&str]) -> (Proc, tempfile::NamedTempFile) {
        spawn_router(etcd, config, extra, None)
    }

    /// The config file this router was started with (SIGHUP reads it again).
    pub fn config_path(&self) -> &Path {
        self._config.path()
    }

    /// `GET path`, which must answer 200; returns the JSON body.
    pub fn answer(&self, path: &str) -> serde_json::Value {
        let (code, body) = get_json(self.addr, path).expect("router answers");
        assert_eq!(code, 200, "{path}: {body}");
        body
    }

    /// The gateway ids of a `GET /gateways` answer.
    pub fn ids(&self, path: &str) -> Vec<String> {
        gateway_ids(&self.answer(path))
    }
}

/// A router's config file holding `config`; tests send bursts from one address, so the
/// rate limit is off unless `config` sets one, and so is the per-network herd budget
/// (a storm from one loopback address stands for many networks) unless `config` has an
/// `[edge]` table.
fn router_config(config: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("config file");
    let limit = if config.contains("[rate_limit]") {
        ""
    } else {
        "\n[rate_limit]\nper_ip_per_sec = 0\n"
    };
    let edge = if config.contains("[edge]") {
        ""
    } else {
        "\n[edge]\nherd_budget = 0\n"
    };
    // A stopping router goes away at once unless the test asks for the readiness delay.
    let config = if config.contains("shutdown_readiness_delay_ms") {
        config.to_string()
    } else if config.contains("[http]") {
        config.replacen("[http]", "[http]\nshutdown_readiness_delay_ms = 0", 1)
    } else {
        format!("{config}\n[http]\nshutdown_readiness_delay_ms = 0\n")
    };
    std::fs::write(file.path(), format!("{config}{limit}{edge}")).expect("write config");
    file
}

fn spawn_router(
    etcd: &Etcd,
    config: &str,
    extra: &[&str],
    wrapper: Option<Vec<String>>,
) -> (Proc, tempfile::NamedTempFile) {
    let file = router_config(config);
    let endpoints = etcd.endpoints();
    let mut args = vec![
        "--etcd",
        &endpoints,
        "--listen",
        "127.0.0.1:0",
        "--config",
        file.path().to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    (
        Proc::spawn_full("router-server", &args, &[], false, wrapper),
        file,
    )
}

/// The gateway ids of a `GET /gateways` answer body.
pub fn gateway_ids(body: &serde_json::Value) -> Vec<String> {
    body["gateways"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|g| g["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `router-server ctl --etcd ENDPOINTS ARGS...`; returns the exit code and output.
pub fn router_ctl(etcd: &Etcd, args: &[&str]) -> (i32, String) {
    let e = etcd.endpoints();
    let mut all = vec!["ctl", "--etcd", &e];
    all.extend_from_slice(args);
    let (status, out) = run("router-server", &all, Duration::from_secs(30));
    (status.code().unwrap_or(-1), out)
}
