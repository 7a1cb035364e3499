//! Real etcd for tests: one member or a cluster on free loopback ports with a
//! temporary data dir, optionally with TLS and authentication as production runs it,
//! and `etcdctl` against it.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ca::{make_private, TestCa};
use crate::http::http_get;
use crate::util::{free_port, tool};

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
        tool("etcd", "etcd-server");
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
        tool("etcd", "etcd-server");
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
        tool("etcdctl", "etcd-client");
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
