//! Test harness for end-to-end tests: real etcd processes and the real binaries.
//!
//! # Layout
//!
//! * [`Etcd`]: one etcd member (or a 3-member cluster via [`Etcd::cluster`]) on free
//!   loopback ports with a temporary data dir; stopped and removed on drop, also when
//!   the test panics. Missing `etcd` fails the test with the install command.
//! * [`Proc`]: a spawned binary with its output captured to a file, killed on drop.
//! * [`bin`]: the path of a workspace binary, built once per test process so tests
//!   never run stale code.
//! * [`wait_until`]: polls a condition with a deadline instead of sleeping.
//! * [`http_get`] / [`HookServer`]: tiny std-only HTTP helpers for probing and for
//!   receiving the agent's hook POSTs.

pub mod gateway;
pub mod netns;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A port that was free a moment ago on 127.0.0.1.
///
/// It is drawn at random from below the kernel's ephemeral range, so that the
/// thousands of outgoing connections other tests open at the same time can never take
/// it between this call and the bind of whoever asked for it (an etcd member, say).
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (lo, hi) = (10_000u16, ephemeral_low.max(10_001));
    for _ in 0..1000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let port = lo + (h.finish() % u64::from(hi - lo)) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes; panics naming `what`.
/// Returns how long it took.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The path of program `name` on `PATH`, if any.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

fn require_tool(name: &str) -> PathBuf {
    which(name).unwrap_or_else(|| {
        panic!(
            "`{name}` was not found on PATH. Install it with `apt-get install -y etcd-server etcd-client` \
             (Debian), or run `scripts/test.sh`, which installs it."
        )
    })
}

/// One etcd member of a (possibly single-member) cluster.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// A real etcd (one member, or a cluster), on loopback, in a temporary directory.
pub struct Etcd {
    members: Vec<Member>,
    dir: tempfile::TempDir,
    /// With TLS on its client port: the files etcd and `etcdctl` use.
    tls: Option<EtcdTls>,
}

/// The TLS material of a secure etcd: its CA, its server certificate, and a client
/// certificate whose common name is `root` (what `etcdctl` here authenticates with).
pub struct EtcdTls {
    /// The CA that signed every certificate here.
    pub ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    /// `root`'s client certificate and key.
    pub root_cert: PathBuf,
    /// `root`'s key.
    pub root_key: PathBuf,
}

impl Etcd {
    /// Starts a single-member etcd and waits until it is healthy.
    pub fn start() -> Etcd {
        Etcd::cluster(1)
    }

    /// Starts a single-member etcd with `extra` flags (e.g. a tiny
    /// `--quota-backend-bytes`) and waits until it is healthy.
    pub fn start_with(extra: &[&str]) -> Etcd {
        Etcd::cluster_with(1, extra)
    }

    /// Starts an `n`-member cluster and waits until every member is healthy.
    pub fn cluster(n: usize) -> Etcd {
        Etcd::cluster_with(n, &[])
    }

    /// [`Etcd::cluster`] with `extra` flags for every member.
    pub fn cluster_with(n: usize, extra: &[&str]) -> Etcd {
        require_tool("etcd");
        // A port taken between `free_port` and etcd's bind (by another test's process)
        // makes a member exit; such a start is tried again on other ports.
        let mut last = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir");
            let members: Vec<Member> = (0..n)
                .map(|i| Member {
                    name: format!("m{i}"),
                    client_port: free_port(),
                    peer_port: free_port(),
                    child: None,
                })
                .collect();
            let mut etcd = Etcd {
                members,
                dir,
                tls: None,
            };
            for i in 0..n {
                etcd.spawn_with(i, extra);
            }
            match etcd.try_wait_healthy() {
                Ok(()) => return etcd,
                Err(e) => {
                    last = e;
                    if !last.contains("address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("{last}");
    }

    /// Starts a single-member etcd as production runs it: TLS on the client port with
    /// certificates from `ca` (`--cert-file`, `--key-file`, `--trusted-ca-file`),
    /// client certificates required (`--client-cert-auth`), and authentication enabled
    /// (`etcdctl auth enable`, with `root` authenticated by its certificate's common
    /// name). `extra` flags go to etcd (e.g. `--auth-token-ttl 5`).
    pub fn secure(ca: &TestCa, extra: &[&str]) -> Etcd {
        require_tool("etcd");
        let dir = tempfile::tempdir().expect("temp dir");
        let files = {
            let d = dir.path();
            let write = |name: &str, text: &str| {
                let p = d.join(name);
                std::fs::write(&p, text).expect("write pem");
                make_private(&p);
                p
            };
            let (cert, key) = ca.leaf(&["localhost", "127.0.0.1"]);
            let (rcert, rkey) = ca.client_leaf("root", false);
            EtcdTls {
                ca: write("etcd-ca.pem", &ca.pem()),
                server_cert: write("etcd-server.pem", &cert),
                server_key: write("etcd-server-key.pem", &key),
                root_cert: write("etcd-root.pem", &rcert),
                root_key: write("etcd-root-key.pem", &rkey),
            }
        };
        let mut etcd = Etcd {
            members: vec![Member {
                name: "m0".into(),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
            }],
            dir,
            tls: Some(files),
        };
        etcd.spawn_with(0, extra);
        etcd.wait_healthy();
        etcd.ctl(&["user", "add", "root", "--no-password"]);
        etcd.ctl(&["auth", "enable"]);
        etcd
    }

    /// The TLS files, for a secure etcd.
    pub fn tls(&self) -> &EtcdTls {
        self.tls.as_ref().expect("a secure etcd")
    }

    /// A scratch directory that lives as long as this etcd.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize) {
        self.spawn_with(i, &[]);
    }

    fn spawn_with(&mut self, i: usize, extra: &[&str]) {
        let cluster = self.initial_cluster();
        let scheme = self.scheme();
        let m = &self.members[i];
        let data = self.dir.path().join(&m.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", m.name)))
            .expect("etcd log file");
        let client = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let mut cmd = Command::new("etcd");
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&t.server_cert)
                .arg("--key-file")
                .arg(&t.server_key)
                .arg("--trusted-ca-file")
                .arg(&t.ca)
                .arg("--client-cert-auth");
        }
        cmd.args(extra);
        let child = cmd
            .args(["--name", &m.name, "--data-dir"])
            .arg(&data)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args([
                "--initial-cluster",
                &cluster,
                "--initial-cluster-state",
                "new",
            ])
            .args(["--initial-cluster-token", "test"])
            .stdout(Stdio::from(log.try_clone().expect("log fd")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn etcd");
        self.members[i].child = Some(child);
    }

    fn wait_healthy(&self) {
        if let Err(e) = self.try_wait_healthy() {
            panic!("{e}");
        }
    }

    /// Waits up to 20 s for every member to be healthy; on failure, says which member
    /// is not and ends with the tail of each member's log.
    fn try_wait_healthy(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let healthy = |m: &Member| {
            if self.tls.is_some() {
                return self.ctl_raw(&["endpoint", "health"]).status.success();
            }
            let addr: SocketAddr = format!("127.0.0.1:{}", m.client_port).parse().unwrap();
            http_get(addr, "/health")
                .is_some_and(|(code, body)| code == 200 && body.contains("true"))
        };
        for m in &self.members {
            while !healthy(m) {
                if Instant::now() > deadline {
                    return Err(format!(
                        "timed out after 20s waiting for etcd member {} (client port {}, peer port {}) to become healthy\n{}",
                        m.name,
                        m.client_port,
                        m.peer_port,
                        self.log_tails()
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }

    /// The last lines of every member's log.
    fn log_tails(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let log = std::fs::read_to_string(self.dir.path().join(format!("{}.log", m.name)))
                    .unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(8)..].join("\n");
                format!("--- {} log (last lines) ---\n{tail}", m.name)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `http://127.0.0.1:PORT[,...]` (`https://` for a secure etcd) for `--etcd`.
    pub fn endpoints(&self) -> String {
        let scheme = self.scheme();
        self.members
            .iter()
            .map(|m| format!("{scheme}://127.0.0.1:{}", m.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The endpoints as a list.
    pub fn endpoint_list(&self) -> Vec<String> {
        self.endpoints().split(',').map(str::to_string).collect()
    }

    /// Stops every member (SIGKILL: etcd recovers from its WAL on restart).
    pub fn stop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Stops member `i` (SIGKILL), as a crashed machine would.
    pub fn stop_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The index of the member that is leader, as the running members report it.
    pub fn leader(&self) -> Option<usize> {
        let running: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].child.is_some())
            .collect();
        let eps: Vec<String> = running
            .iter()
            .map(|&i| format!("http://127.0.0.1:{}", self.members[i].client_port))
            .collect();
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &eps.join(","), "--command-timeout=300ms"])
            .args(["endpoint", "status", "-w", "json"])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let statuses = v.as_array()?;
        let leader = statuses
            .iter()
            .find_map(|s| s["Status"]["leader"].as_u64().filter(|l| *l != 0))?;
        statuses.iter().find_map(|s| {
            (s["Status"]["header"]["member_id"].as_u64() == Some(leader)).then(|| {
                let ep = s["Endpoint"].as_str().unwrap_or_default();
                running
                    .iter()
                    .copied()
                    .find(|&i| ep.ends_with(&format!(":{}", self.members[i].client_port)))
            })?
        })
    }

    /// Starts every stopped member again with the same data and ports.
    pub fn start_again(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                self.spawn(i);
            }
        }
        self.wait_healthy();
    }

    /// Runs `etcdctl` against this cluster; panics with its stderr when it fails.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = self.ctl_raw(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `etcdctl` with `input` on its standard input; panics when it fails.
    pub fn ctl_input(&self, args: &[&str], input: &str) -> String {
        let mut cmd = self.ctl_command(args);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run etcdctl");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().expect("etcdctl output");
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `etcdctl`, returning its output whatever the status.
    pub fn ctl_raw(&self, args: &[&str]) -> std::process::Output {
        self.ctl_command(args).output().expect("run etcdctl")
    }

    fn ctl_command(&self, args: &[&str]) -> Command {
        require_tool("etcdctl");
        let mut cmd = Command::new("etcdctl");
        if let Some(t) = &self.tls {
            cmd.arg("--cacert")
                .arg(&t.ca)
                .arg("--cert")
                .arg(&t.root_cert)
                .arg("--key")
                .arg(&t.root_key);
        }
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.endpoints())
            .args(args);
        cmd
    }

    /// The value at `key`, if any.
    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.ctl(&["get", key, "--print-value-only"]);
        let v = out.trim_end_matches('\n');
        (!v.is_empty()).then(|| v.to_string())
    }

    /// The keys under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.ctl(&["get", prefix, "--prefix", "--keys-only"])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Writes `value` at `key`.
    pub fn put(&self, key: &str, value: &str) {
        self.ctl(&["put", key, value]);
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

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

    fn start(mut cmd: Command) -> Proc {
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

/// A minimal HTTP/1.1 request with `Authorization: Bearer token` when given; the
/// status and body, `None` when the connection fails.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// A minimal HTTP/1.1 GET; `None` when the connection fails.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// Receives hook POSTs; records each body and answers 200.
pub struct HookServer {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<String>>>,
    status: Arc<std::sync::atomic::AtomicU16>,
}

impl HookServer {
    /// Starts listening on a free loopback port.
    pub fn start() -> HookServer {
        HookServer::start_on(0)
    }

    /// Starts listening on loopback `port` (0: any free one), e.g. a port a test
    /// reserved so the hook comes up only after the agent needs it.
    pub fn start_on(port: u16) -> HookServer {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind hook server");
        let addr = listener.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(std::sync::atomic::AtomicU16::new(200));
        let (sink, answer) = (bodies.clone(), status.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let (sink, answer) = (sink.clone(), answer.clone());
                std::thread::spawn(move || {
                    if let Some(body) = read_request_body(&mut conn) {
                        // Recorded and answered under one lock: the order of `bodies` is
                        // the order of the answers.
                        let mut sink = sink.lock().unwrap();
                        let code = answer.load(std::sync::atomic::Ordering::SeqCst);
                        sink.push(if code == 200 {
                            body
                        } else {
                            format!("{code} {body}")
                        });
                        let _ = conn.write_all(
                            format!("HTTP/1.1 {code} X\r\ncontent-length: 7\r\nconnection: close\r\n\r\nanswer!")
                                .as_bytes(),
                        );
                    }
                });
            }
        });
        HookServer {
            addr,
            bodies,
            status,
        }
    }

    /// Answers every request from now on with `code` (200 by default). Requests
    /// answered with another code are listed by [`HookServer::bodies`] as `"CODE body"`.
    pub fn answer_with(&self, code: u16) {
        self.status.store(code, std::sync::atomic::Ordering::SeqCst);
    }

    /// `http://127.0.0.1:PORT/hook`.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The bodies received so far (answered with 200; others are prefixed with their
    /// code).
    pub fn bodies(&self) -> Vec<String> {
        self.bodies.lock().unwrap().clone()
    }

    /// The bodies acknowledged with 200: the signals the gateway acted on.
    pub fn delivered(&self) -> Vec<String> {
        self.bodies()
            .into_iter()
            .filter(|b| b.starts_with('{'))
            .collect()
    }
}

fn read_request_body(conn: &mut TcpStream) -> Option<String> {
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= len {
                return Some(body[..len].to_string());
            }
        }
    }
}

impl Proc {
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

/// True when the metrics text `text` has the sample line `line` exactly (a substring
/// test would also match a HELP line such as `# HELP router_protect_active 1 while ...`).
pub fn has_sample(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

/// The value of the sample whose line starts with `series` (name and labels) in the
/// metrics text `text`, or 0 when it is not there yet.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(series))
        .find_map(|rest| rest.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A TCP connection to `to` from the local address `from` (any of 127.0.0.0/8 is
/// local: a client from another network without leaving the machine), with a
/// receive buffer of `recv_buffer` bytes when given (a client slow to read).
pub fn connect_from(
    from: std::net::IpAddr,
    to: SocketAddr,
    recv_buffer: Option<usize>,
) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if let Some(n) = recv_buffer {
        sock.set_recv_buffer_size(n)?;
    }
    sock.bind(&SocketAddr::new(from, 0).into())?;
    sock.connect_timeout(&to.into(), Duration::from_secs(5))?;
    Ok(sock.into())
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

/// Runs `router-server ctl --etcd ENDPOINTS ARGS...`; returns the exit code and output.
pub fn router_ctl(etcd: &Etcd, args: &[&str]) -> (i32, String) {
    let e = etcd.endpoints();
    let mut all = vec!["ctl", "--etcd", &e];
    all.extend_from_slice(args);
    let (status, out) = run("router-server", &all, Duration::from_secs(30));
    (status.code().unwrap_or(-1), out)
}

/// A GET returning the status and the body parsed as JSON (`Value::Null` when not JSON).
pub fn get_json(addr: SocketAddr, path: &str) -> Option<(u16, serde_json::Value)> {
    let (code, body) = http_get(addr, path)?;
    Some((
        code,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    ))
}

/// A throwaway certificate authority for TLS tests (rcgen).
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    /// A new self-signed CA.
    pub fn new(name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().expect("ca key");
        TestCa {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).expect("self-signed CA"),
        }
    }

    /// The CA certificate (PEM), for a client's trust store.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `names` (DNS names or IP literals): (cert PEM, key PEM).
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate whose common name is `cn` (etcd's user, with
    /// `--client-cert-auth`): (cert PEM, key PEM). `expired`: valid only in 2020.
    pub fn client_leaf(&self, cn: &str, expired: bool) -> (String, String) {
        self.client_signed(cn, |params| {
            if expired {
                params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                params.not_after = rcgen::date_time_ymd(2020, 12, 31);
            }
        })
    }

    /// A client certificate for `cn` that expires `valid` from now: (cert PEM, key PEM).
    pub fn client_leaf_for(&self, cn: &str, valid: Duration) -> (String, String) {
        self.client_signed(cn, |params| {
            params.not_after = (std::time::SystemTime::now() + valid).into();
        })
    }

    /// A client certificate for `cn`, its parameters adjusted by `adjust`.
    fn client_signed(
        &self,
        cn: &str,
        adjust: impl FnOnce(&mut rcgen::CertificateParams),
    ) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        adjust(&mut params);
        let key = rcgen::KeyPair::generate().expect("client key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign client");
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a leaf's cert and key to `dir` atomically (write + rename, as certbot
    /// does); returns the two paths.
    pub fn write_leaf(&self, dir: &Path, names: &[&str]) -> (PathBuf, PathBuf) {
        let (cert, key) = self.leaf(names);
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        for (path, content) in [(&key_path, key), (&cert_path, cert)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, content).expect("write pem");
            make_private(&tmp);
            std::fs::rename(&tmp, path).expect("rename pem");
        }
        (cert_path, key_path)
    }
}

/// Makes `path` readable by its owner alone (mode 0600), as the binaries require of
/// private keys, passwords and token files.
pub fn make_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

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

/// An HTTPDNS provider for tests, speaking the Alibaba-style API:
/// `GET /{account}/d?host=H` and `/{account}/sign_d?host=H&t=T&s=S`. Answers are set per
/// host as raw JSON bodies, so a test can also serve hijack-style answers. Every
/// request's path and query is recorded.
pub struct HttpDnsServer {
    addr: SocketAddr,
    answers: Arc<Answers>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl HttpDnsServer {
    /// Starts on a free loopback port.
    pub fn start() -> HttpDnsServer {
        HttpDnsServer::serve(None, "127.0.0.1")
    }

    /// Starts over HTTPS with the certificate and key given (PEM).
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> HttpDnsServer {
        HttpDnsServer::start_tls_on("127.0.0.1", cert_pem, key_pem)
    }

    /// [`HttpDnsServer::start_tls`] on loopback address `ip` (`::1` for IPv6).
    pub fn start_tls_on(ip: &str, cert_pem: &str, key_pem: &str) -> HttpDnsServer {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("certificate PEM");
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key PEM");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server certificate");
        HttpDnsServer::serve(Some(Arc::new(config)), ip)
    }

    fn serve(tls: Option<Arc<rustls::ServerConfig>>, ip: &str) -> HttpDnsServer {
        let listener = TcpListener::bind((ip, 0)).expect("bind httpdns");
        let addr = listener.local_addr().unwrap();
        let answers: Arc<Answers> = Arc::default();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let (a, r) = (answers.clone(), requests.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let (a, r, tls) = (a.clone(), r.clone(), tls.clone());
                std::thread::spawn(move || match tls {
                    Some(config) => {
                        let Ok(session) = rustls::ServerConnection::new(config) else {
                            return;
                        };
                        answer_httpdns(rustls::StreamOwned::new(session, conn), &a, &r);
                    }
                    None => answer_httpdns(conn, &a, &r),
                });
            }
        });
        HttpDnsServer {
            addr,
            answers,
            requests,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers `host` with these IPv4 and IPv6 strings (not checked: tests send junk).
    pub fn answer(&self, host: &str, ips: &[&str], ipsv6: &[&str], ttl: u64) {
        let body =
            serde_json::json!({"host": host, "ips": ips, "ipsv6": ipsv6, "ttl": ttl}).to_string();
        self.answers
            .lock()
            .unwrap()
            .insert(host.to_string(), (200, body));
    }

    /// Answers `host` with a raw body.
    pub fn answer_raw(&self, host: &str, body: &str) {
        self.answer_status(host, 200, body);
    }

    /// Answers `host` with an HTTP status and body (a provider's 403
    /// `InvalidSignature`, say).
    pub fn answer_status(&self, host: &str, status: u16, body: &str) {
        self.answers
            .lock()
            .unwrap()
            .insert(host.to_string(), (status, body.to_string()));
    }

    /// Every request target received so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// The requests that asked for `host` (a client also pre-resolves its router's
    /// domain when it starts).
    pub fn requests_for(&self, host: &str) -> Vec<String> {
        let param = format!("host={host}");
        self.requests()
            .into_iter()
            .filter(|r| {
                r.split(['?', '&'])
                    .any(|kv| kv == param || kv == format!("dn={host}"))
            })
            .collect()
    }
}

type Answers = Mutex<std::collections::HashMap<String, (u16, String)>>;

/// Reads one request from `conn`, records it, and answers for its `host=`.
fn answer_httpdns(mut conn: impl Read + Write, answers: &Answers, requests: &Mutex<Vec<String>>) {
    let mut buf = vec![0u8; 8192];
    let mut n = 0;
    while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf[n..]) {
            Ok(0) | Err(_) => return,
            Ok(k) => n += k,
        }
        if n == buf.len() {
            return;
        }
    }
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
    requests.lock().unwrap().push(target.clone());
    let host = target
        .split_once('?')
        .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("host=")))
        .unwrap_or("")
        .to_string();
    let (status, body) = answers
        .lock()
        .unwrap()
        .get(&host)
        .cloned()
        .unwrap_or_else(|| {
            (
                200,
                format!(r#"{{"host":"{host}","ips":[],"ipsv6":[],"ttl":60}}"#),
            )
        });
    let _ = write!(
        conn,
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.flush();
}
