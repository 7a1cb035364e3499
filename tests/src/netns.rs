//! A network of namespaces for partition tests: etcd members that can be cut off from
//! each other while their client ports still answer, and clients that can be cut off
//! from every member.
//!
//! ```text
//!            hub namespace: bridge "brp" (peer traffic), bridge "brc" (client traffic)
//!            (addresses of lab 0 below; lab k uses 10.77.{10k+1}.x and 10.77.{10k+2}.x)
//!   m0 ns:  p0 10.77.1.1 ─ brp        c0 10.77.2.1 ─ brc
//!   m1 ns:  p0 10.77.1.2 ─ brp        c0 10.77.2.2 ─ brc
//!   m2 ns:  p0 10.77.1.3 ─ brp        c0 10.77.2.3 ─ brc
//!   client: c0 10.77.2.100 ─ brc      (routers, ctl, etcdctl and curl run here)
//!   gw:     c0 10.77.2.101 ─ brc      (gateway agents run here)
//! ```
//!
//! Every address exists only inside these namespaces. Because each lab's namespaces
//! are its own, etcd's standard ports (2379, 2380) cannot collide with anything.
//! [`Lab::attach_host`] adds one link to the test's own namespace (`10.77.{10 net +
//! 2}.200`), for processes the test runs there to reach the members' client ports.
//!
//! A cut takes a link off its bridge: packets are silently dropped, as in a real
//! partition (no refusal, no unreachable error), and the link itself stays up.
//! Namespaces, and every process started in them, are removed on drop; those of a test
//! process that was killed are removed by the next lab ([`crate::leftovers`]).

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::util::{ip, tool, wait_until};

const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;

/// A lab network with an etcd cluster in it; see the module documentation.
pub struct Lab {
    tag: String,
    /// Which `10.77.x` addresses this lab uses (several labs can be joined).
    net: u8,
    members: Vec<Option<Child>>,
    /// `--initial-cluster`, and flags every member gets, for restarts.
    cluster: String,
    extra: Vec<String>,
    dir: tempfile::TempDir,
}

impl Lab {
    /// Builds the network and starts an `n`-member etcd cluster in it (etcd's default
    /// timing), waiting until every member is healthy.
    pub fn new(n: usize) -> Lab {
        Lab::on_net(n, 0)
    }

    /// [`Lab::new`] on addresses of its own (`net` 0-9), so that it can be joined to
    /// another lab ([`Lab::join`]): peers on `10.77.{10 net + 1}.x` (a /24), clients on
    /// `10.77.{10 net + 2}.x` (in one /16 with every joined lab's clients).
    pub fn on_net(n: usize, net: u8) -> Lab {
        Lab::with_flags(n, net, &[])
    }

    /// [`Lab::on_net`] with `extra` flags for every member (e.g. a small
    /// `--quota-backend-bytes`).
    pub fn with_flags(n: usize, net: u8, extra: &[&str]) -> Lab {
        tool("ip", "iproute2");
        tool("etcd", "etcd-server");
        tool("etcdctl", "etcd-client");
        tool("curl", "curl");
        crate::leftovers::sweep();
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let tag = format!(
            "gl{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let lab = Lab {
            tag,
            net,
            members: Vec::new(),
            cluster: String::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            dir: tempfile::tempdir().expect("temp dir"),
        };
        let hub = lab.ns("hub");
        ip(&["netns", "add", &hub]);
        ip(&["-n", &hub, "link", "set", "lo", "up"]);
        for br in ["brp", "brc"] {
            ip(&["-n", &hub, "link", "add", br, "type", "bridge"]);
            ip(&["-n", &hub, "link", "set", br, "up"]);
        }
        let mut lab = lab;
        for i in 0..n {
            let ns = lab.ns(&format!("m{i}"));
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            lab.attach(&ns, &format!("m{i}p"), "p0", "brp", &lab.peer_ip(i));
            lab.attach(&ns, &format!("m{i}c"), "c0", "brc", &lab.client_ip(i + 1));
        }
        let client = lab.ns("client");
        ip(&["netns", "add", &client]);
        ip(&["-n", &client, "link", "set", "lo", "up"]);
        lab.attach(&client, "clc", "c0", "brc", &lab.client_ip(100));
        let gw = lab.ns("gw");
        ip(&["netns", "add", &gw]);
        ip(&["-n", &gw, "link", "set", "lo", "up"]);
        lab.attach(&gw, "gwc", "c0", "brc", &lab.client_ip(101));
        lab.cluster = (0..n)
            .map(|i| format!("m{i}=http://{}:{PEER_PORT}", lab.peer_ip(i)))
            .collect::<Vec<_>>()
            .join(",");
        for i in 0..n {
            let child = lab.spawn_member(i);
            lab.members.push(Some(child));
        }
        for i in 0..n {
            lab.wait_member_healthy(i);
        }
        lab
    }

    fn wait_member_healthy(&self, i: usize) {
        wait_until(Duration::from_secs(30), "etcd member healthy", || {
            self.member_healthy(i)
        });
    }

    /// Member `i` answers `endpoint health` (it is up and its cluster has a leader).
    pub fn member_healthy(&self, i: usize) -> bool {
        self.ctl_on(&[i], &["endpoint", "health", "--command-timeout=500ms"])
            .status
            .success()
    }

    /// Stops member `i` (SIGKILL, as a crashed machine would); its data stays.
    pub fn stop_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data (after [`Lab::stop_member`]); it is
    /// healthy once [`Lab::member_healthy`] says so.
    pub fn start_member(&mut self, i: usize) {
        if self.members[i].is_none() {
            let child = self.spawn_member(i);
            self.members[i] = Some(child);
        }
    }

    /// Links the test's own namespace to the client bridge, as `10.77.{10 net + 2}.200`
    /// (a /24): processes the test runs there (not in a namespace of the lab) reach
    /// every member's client port, and [`Lab::cut_peers`] leaves that reach alone. The
    /// link goes with the hub namespace on drop.
    pub fn attach_host(&self) {
        let host = format!("{}h", self.tag);
        crate::leftovers::claim(&client_prefix(self.net), &host);
        link_host(&self.ns("hub"), &host, &self.client_ip(200), Some("brc"));
    }

    fn peer_ip(&self, i: usize) -> String {
        format!("10.77.{}.{}", self.net * 10 + 1, i + 1)
    }

    /// The address of host `k` on the client bridge (members are 1.., the client
    /// namespace 100, the gateways' 101).
    fn client_ip(&self, k: usize) -> String {
        format!("{}{k}", client_prefix(self.net))
    }

    /// The gateways' namespace's address, for an agent's `--ip`.
    pub fn gateway_ip(&self) -> String {
        self.client_ip(101)
    }

    /// Joins this lab's client bridge to `other`'s (labs on different nets): their
    /// clients and members reach each other until [`Lab::cut_join`].
    pub fn join(&self, other: &Lab) {
        let (a, b) = (self.ns("hub"), other.ns("hub"));
        ip(&[
            "-n", &a, "link", "add", "xj", "type", "veth", "peer", "name", "xj", "netns", &b,
        ]);
        ip(&["-n", &a, "link", "set", "xj", "master", "brc", "up"]);
        ip(&["-n", &b, "link", "set", "xj", "master", "brc", "up"]);
    }

    /// Cuts the join made by [`Lab::join`] on this side: packets are dropped.
    pub fn cut_join(&self) {
        self.bridge("xj", None);
    }

    /// Restores the join.
    pub fn heal_join(&self) {
        self.bridge("xj", Some("brc"));
    }

    fn ns(&self, what: &str) -> String {
        format!("{}-{what}", self.tag)
    }

    /// A veth pair from namespace `ns` (named `inner`, with `addr`/24) to the hub's
    /// bridge `bridge` (named `outer` there).
    fn attach(&self, ns: &str, outer: &str, inner: &str, bridge: &str, addr: &str) {
        let hub = self.ns("hub");
        ip(&[
            "-n", &hub, "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", ns,
        ]);
        ip(&["-n", &hub, "link", "set", outer, "master", bridge, "up"]);
        // Client bridges of joined labs form one network (a /16); peer bridges never
        // join (a /24 each, which also keeps peer traffic on its own link).
        let len = if bridge == "brc" { 16 } else { 24 };
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/{len}"),
            "dev",
            inner,
        ]);
        ip(&["-n", ns, "link", "set", inner, "up"]);
    }

    fn spawn_member(&self, i: usize) -> Child {
        let name = format!("m{i}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .unwrap();
        Command::new("ip")
            .args(["netns", "exec", &self.ns(&name), "etcd", "--name", &name])
            .arg("--data-dir")
            .arg(self.dir.path().join(&name))
            .args([
                "--listen-client-urls",
                &self.endpoint(i),
                "--advertise-client-urls",
                &self.endpoint(i),
                "--listen-peer-urls",
                &format!("http://{}:{PEER_PORT}", self.peer_ip(i)),
                "--initial-advertise-peer-urls",
                &format!("http://{}:{PEER_PORT}", self.peer_ip(i)),
                "--initial-cluster",
                &self.cluster,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                &self.tag,
            ])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn etcd in its namespace")
    }

    /// Member `i`'s client URL.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://{}:{CLIENT_PORT}", self.client_ip(i + 1))
    }

    /// Every member's client URL, member 0 first, for `--etcd`.
    pub fn endpoints(&self) -> String {
        (0..self.members.len())
            .map(|i| self.endpoint(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The wrapper that runs a program in the client namespace (for `Proc::spawn_full`).
    pub fn in_client(&self) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.ns("client"),
        ]
    }

    /// The wrapper that runs a program in the gateways' namespace, which
    /// [`Lab::cut_client`] leaves connected.
    pub fn in_gateways(&self) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.ns("gw")]
    }

    /// Runs `program args` in the client namespace.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns("client"), program])
            .args(args)
            .output()
            .expect("run in the client namespace")
    }

    /// `etcdctl` from the client namespace against members `on`.
    pub fn ctl_on(&self, on: &[usize], args: &[&str]) -> Output {
        let eps = on
            .iter()
            .map(|&i| self.endpoint(i))
            .collect::<Vec<_>>()
            .join(",");
        let mut full = vec!["--endpoints", &eps];
        full.extend_from_slice(args);
        Command::new("ip")
            .args(["netns", "exec", &self.ns("client"), "etcdctl"])
            .args(&full)
            .env("ETCDCTL_API", "3")
            .output()
            .expect("run etcdctl")
    }

    /// The value at `key` as members `on` agree on it (a linearizable read, which a
    /// member without quorum cannot serve).
    pub fn get_on(&self, on: &[usize], key: &str) -> Option<String> {
        let out = self.ctl_on(
            on,
            &["get", key, "--print-value-only", "--command-timeout=400ms"],
        );
        let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !v.is_empty()).then_some(v)
    }

    /// The lease `key` is written under, as members `on` agree on it.
    pub fn lease_of(&self, on: &[usize], key: &str) -> Option<i64> {
        let out = self.ctl_on(on, &["get", key, "-w", "json", "--command-timeout=400ms"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["kvs"][0]["lease"].as_i64().filter(|l| *l != 0)
    }

    /// The seconds lease `id` has left, as members `on` see it (`None` while they
    /// cannot answer).
    pub fn lease_remaining(&self, on: &[usize], id: i64) -> Option<i64> {
        let out = self.ctl_on(
            on,
            &[
                "lease",
                "timetolive",
                &format!("{id:x}"),
                "-w",
                "json",
                "--command-timeout=400ms",
            ],
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["ttl"].as_i64()
    }

    /// The member each of `on` reports as leader (by index), if they agree on one.
    pub fn leader_seen_by(&self, on: &[usize]) -> Option<usize> {
        let out = self.ctl_on(
            on,
            &[
                "endpoint",
                "status",
                "-w",
                "json",
                "--command-timeout=300ms",
            ],
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let statuses = v.as_array()?;
        if statuses.len() != on.len() {
            return None;
        }
        let ids: Vec<(u64, u64)> = statuses
            .iter()
            .map(|s| {
                (
                    s["Status"]["header"]["member_id"].as_u64().unwrap_or(0),
                    s["Status"]["leader"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        let leader = ids[0].1;
        if leader == 0 || ids.iter().any(|&(_, l)| l != leader) {
            return None;
        }
        self.member_ids().iter().position(|&id| id == leader)
    }

    /// The raft id of every member, by index.
    pub fn member_ids(&self) -> Vec<u64> {
        let all: Vec<usize> = (0..self.members.len()).collect();
        let out = self.ctl_on(&all, &["endpoint", "status", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
        (0..self.members.len())
            .map(|i| {
                v.as_array()
                    .unwrap()
                    .iter()
                    .find(|s| s["Endpoint"].as_str() == Some(self.endpoint(i).as_str()))
                    .and_then(|s| s["Status"]["header"]["member_id"].as_u64())
                    .expect("every member's id")
            })
            .collect()
    }

    /// Makes member `i` the leader (`etcdctl move-leader`), and waits until all agree.
    pub fn make_leader(&self, i: usize) {
        let all: Vec<usize> = (0..self.members.len()).collect();
        wait_until(Duration::from_secs(20), "a leader", || {
            self.leader_seen_by(&all).is_some()
        });
        let current = self.leader_seen_by(&all).unwrap();
        if current != i {
            let id = format!("{:x}", self.member_ids()[i]);
            let out = self.ctl_on(&[current], &["move-leader", &id]);
            assert!(
                out.status.success(),
                "move-leader: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        wait_until(Duration::from_secs(20), "the chosen leader", || {
            self.leader_seen_by(&all) == Some(i)
        });
    }

    /// Cuts member `i` off from its peers; its client port stays reachable.
    pub fn cut_peers(&self, i: usize) {
        self.bridge(&format!("m{i}p"), None);
    }

    /// Joins member `i` to its peers again.
    pub fn heal_peers(&self, i: usize) {
        self.bridge(&format!("m{i}p"), Some("brp"));
    }

    /// Puts hub link `link` on `bridge`, or takes it off any (a silent cut).
    fn bridge(&self, link: &str, bridge: Option<&str>) {
        let hub = self.ns("hub");
        match bridge {
            Some(b) => ip(&["-n", &hub, "link", "set", link, "master", b]),
            None => ip(&["-n", &hub, "link", "set", link, "nomaster"]),
        }
    }

    /// Cuts the client namespace off from every member (the gateways' namespace stays).
    pub fn cut_client(&self) {
        self.bridge("clc", None);
    }

    /// Joins the client namespace to the members again.
    pub fn heal_client(&self) {
        self.bridge("clc", Some("brc"));
    }

    /// `GET url` from the client namespace (with curl): the status and body.
    pub fn http_get(&self, url: &str) -> Option<(u16, String)> {
        let out = self.run("curl", &["-s", "-m", "2", "-w", "\n%{http_code}", url]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n')?;
        Some((
            code.trim().parse().ok().filter(|&c| c > 0)?,
            body.to_string(),
        ))
    }

    /// A scratch directory that lives as long as the lab.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last lines of each member's log.
    pub fn logs(&self) -> String {
        (0..self.members.len())
            .map(|i| {
                let log = std::fs::read_to_string(self.dir.path().join(format!("m{i}.log")))
                    .unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                format!(
                    "--- m{i} ---\n{}",
                    lines[lines.len().saturating_sub(6)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The first three parts of lab `net`'s client addresses, with the dot.
fn client_prefix(net: u8) -> String {
    format!("10.77.{}.", net * 10 + 2)
}

/// A veth from `hub`'s `hostc` (on `bridge` there, if any) to `link` in the test's own
/// namespace, with `addr`/24.
fn link_host(hub: &str, link: &str, addr: &str, bridge: Option<&str>) {
    // `netns PID`: the peer goes to this process's namespace.
    let here = std::process::id().to_string();
    ip(&[
        "-n", hub, "link", "add", "hostc", "type", "veth", "peer", "name", link, "netns", &here,
    ]);
    match bridge {
        Some(b) => ip(&["-n", hub, "link", "set", "hostc", "master", b, "up"]),
        None => ip(&["-n", hub, "link", "set", "hostc", "up"]),
    }
    ip(&["addr", "add", &format!("{addr}/24"), "dev", link]);
    ip(&["link", "set", link, "up"]);
}

/// What a killed test process with a lab on `net` leaves ([`leave_as_killed`]).
pub struct Leftovers {
    /// Its hub namespace.
    pub hub: String,
    /// Its link in the host's namespace, holding the address the host's link of a lab
    /// on `net` takes ([`Lab::attach_host`]).
    pub link: String,
    /// A process in the namespace, as its etcd members were.
    pub orphan: Child,
}

/// Leaves, as a test process killed with a lab on `net` would, a namespace with a
/// process in it and a host link on the lab's client subnet, named for a process id
/// no process can have (above `pid_max`). For tests of [`crate::leftovers`]'s sweep.
pub fn leave_as_killed(net: u8) -> Leftovers {
    let _held = crate::leftovers::hold();
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .expect("read pid_max")
        .trim()
        .parse()
        .expect("pid_max is a number");
    let tag = format!("gl{}x0", pid_max + 1);
    let (hub, link) = (format!("{tag}-hub"), format!("{tag}h"));
    ip(&["netns", "add", &hub]);
    link_host(&hub, &link, &format!("{}200", client_prefix(net)), None);
    let orphan = Command::new("ip")
        .args(["netns", "exec", &hub, "sleep", "600"])
        .spawn()
        .expect("run ip netns exec");
    Leftovers { hub, link, orphan }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in self.members.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Deleting a namespace also deletes its links (and their veth peers).
        let mut names = vec![self.ns("client"), self.ns("gw"), self.ns("hub")];
        names.extend((0..self.members.len()).map(|i| self.ns(&format!("m{i}"))));
        for ns in names {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
    }
}
