//! The workspace's binaries as processes: built once per test process, spawned with
//! their output captured to a file, killed on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::etcd::Etcd;
use crate::util::which;

/// The workspace's target directory for the profile these tests were built with.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// Path of workspace binary `name`, built (once per test process) if needed so tests
/// never exercise a stale binary.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let dir = target_dir();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--workspace", "--bins"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build --workspace --bins failed");
    });
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing after cargo build",
        path.display()
    );
    path
}

/// A spawned process with captured output, killed on drop.
pub struct Proc {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proc {
    /// Spawns workspace binary `name` with `args`.
    pub fn spawn(name: &str, args: &[&str]) -> Proc {
        Proc::spawn_env(name, args, &[])
    }

    /// Spawns with extra environment variables.
    pub fn spawn_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        Proc::spawn_full(name, args, env, false, None)
    }

    /// Spawns with exactly `env` (nothing inherited but `RUST_LOG`), to test
    /// configuration by variables alone.
    pub fn spawn_clean(name: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        Proc::spawn_full(name, args, env, true, None)
    }

    /// Spawns `name`, cleared of inherited variables when `clean`, and run through
    /// `wrapper` (e.g. `prlimit --nofile=256:256`) when given.
    pub fn spawn_full(
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
        clean: bool,
        wrapper: Option<Vec<String>>,
    ) -> Proc {
        let mut cmd = match &wrapper {
            Some(w) => {
                let mut c = Command::new(&w[0]);
                c.args(&w[1..]).arg(bin(name));
                c
            }
            None => Command::new(bin(name)),
        };
        if clean {
            cmd.env_clear();
        }
        cmd.args(args).env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc::start(cmd)
    }

    /// Spawns a program that is not this project's (found on `PATH`), e.g. a browser's
    /// WebDriver, with its output captured like the binaries'.
    pub fn external(program: &str, args: &[&str]) -> Proc {
        let path = which(program).unwrap_or_else(|| panic!("{program} is not installed"));
        let mut cmd = Command::new(path);
        cmd.args(args);
        Proc::start(cmd)
    }

    /// Spawns `cmd` as it is (its program, arguments and environment), with the output
    /// captured like the binaries'.
    pub fn start(mut cmd: Command) -> Proc {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("output.log");
        let file = std::fs::File::create(&log).expect("log file");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().expect("log fd")))
            .stderr(Stdio::from(file));
        let child = cmd.spawn().expect("spawn binary");
        Proc {
            child,
            log,
            _dir: dir,
        }
    }

    /// Spawns `gateway-agent` on `etcd` for node `id` of `region`, at 127.0.0.1 with a
    /// capacity of 1,000, plus `flags` for what a test varies (ports, TTL, load, hook).
    pub fn agent(etcd: &Etcd, id: &str, region: &str, flags: &[&str]) -> Proc {
        let endpoints = etcd.endpoints();
        let mut args = vec![
            "--etcd",
            &endpoints,
            "--id",
            id,
            "--ip",
            "127.0.0.1",
            "--region",
            region,
            "--capacity",
            "1000",
        ];
        args.extend_from_slice(flags);
        Proc::spawn("gateway-agent", &args)
    }

    /// What the process printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `KILL`, `INT`).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// Waits for exit up to `timeout`; panics (showing the output) if it does not exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if start.elapsed() > timeout {
                panic!(
                    "process did not exit within {timeout:?}; output:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits until the output contains `needle`.
    pub fn wait_for_output(&self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        while !self.output().contains(needle) {
            if start.elapsed() > timeout {
                panic!(
                    "output never contained {needle:?}; output:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for a log line containing `marker` and `addr=`, and returns that address
    /// (servers listen on port 0 and log where they ended up).
    pub fn wait_for_addr(&self, marker: &str, timeout: Duration) -> SocketAddr {
        let start = Instant::now();
        loop {
            let out = self.output();
            let found = out.lines().filter(|l| l.contains(marker)).find_map(|l| {
                l.split("addr=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            });
            if let Some(addr) = found {
                return addr;
            }
            if start.elapsed() > timeout {
                panic!("no {marker:?} line with addr= in output:\n{out}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- process output ---\n{}", self.output());
        }
    }
}

/// Runs workspace binary `name` to completion with a timeout; returns its status and
/// everything it printed.
pub fn run(name: &str, args: &[&str], timeout: Duration) -> (ExitStatus, String) {
    let mut p = Proc::spawn(name, args);
    let status = p.wait_exit(timeout);
    (status, p.output())
}

/// Resident memory of process `pid` in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status")
}
