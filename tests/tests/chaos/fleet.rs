//! The fleet under test: the etcd lab, the agents with their real TCP gateways and the
//! hook that hears their migrate signals, the routers on fixed addresses of their own
//! (so that the SDK, which knows them by name, finds a restarted one again), and the
//! commands issued to the nodes.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::netns::Lab;
use harness::{free_port, get_json, HookServer, Proc, TestCa, P};

use crate::world::World;
use crate::{node_id, AGENTS, APPLY_BOUND, MISSING_BOUND, RESTART_BOUND, ROUTERS, TTL};

/// A command issued with `ctl`, for the exactly-once check at the end.
pub(crate) struct Issued {
    pub(crate) node: usize,
    pub(crate) id: String,
    /// A drain or a migrate, which the gateway is told of through the hook.
    pub(crate) signals: bool,
}

pub(crate) struct Fleet {
    pub(crate) lab: Lab,
    pub(crate) world: Arc<World>,
    agents: Vec<Option<Proc>>,
    /// What each node's agents printed in their earlier lives.
    lives: Vec<String>,
    routers: Vec<Option<Proc>>,
    /// What each router printed in its earlier lives.
    router_lives: Vec<String>,
    /// Router `j` serves plain HTTP on `127.0.0.{j+1}`, all on one port (the test's
    /// own checks)...
    pub(crate) router_port: u16,
    /// ... and HTTPS on another (the SDK clients), with a certificate for
    /// [`ROUTERS_NAME`] from `ca`.
    pub(crate) https_port: u16,
    pub(crate) ca: TestCa,
    /// The certificate and key files, in a directory that lives as long as the fleet.
    tls: (PathBuf, PathBuf, tempfile::TempDir),
    pub(crate) gateways: Vec<Gateway>,
    /// The storm under way, if any.
    pub(crate) storm: Option<crate::storm::Storm>,
    hook: HookServer,
    config: tempfile::NamedTempFile,
    pub(crate) issued: Vec<Issued>,
    /// The etcd member stopped or cut off now, if any.
    pub(crate) member_out: Option<usize>,
}

/// A gateway: holds each connection until its client closes it, and counts them (its
/// agent counts the same sockets, `--load tcp-port:`).
pub(crate) struct Gateway {
    pub(crate) port: u16,
    /// Connections held now.
    pub(crate) held: Arc<AtomicUsize>,
}

fn gateway() -> Gateway {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a gateway");
    let port = listener.local_addr().unwrap().port();
    let held = Arc::new(AtomicUsize::new(0));
    let count = held.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let count = count.clone();
            count.fetch_add(1, Ordering::Relaxed);
            std::thread::spawn(move || {
                // Until the client closes (or resets) it.
                let _ = std::io::copy(&mut conn, &mut std::io::sink());
                count.fetch_sub(1, Ordering::Relaxed);
            });
        }
    });
    Gateway { port, held }
}

/// Each gateway's capacity: a storm ([`crate::storm`]) fills the fleet about half.
pub(crate) const CAPACITY: usize = 100;

/// The routers' name, in their certificate and in the SDK clients' configuration.
pub(crate) const ROUTERS_NAME: &str = "routers.chaos.test";

/// Router `j`'s address.
pub(crate) fn router_addr(j: usize, port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, j as u8 + 1], port))
}

impl Fleet {
    pub(crate) fn start(lab: Lab) -> Fleet {
        let config = tempfile::NamedTempFile::new().expect("router config");
        std::fs::write(
            config.path(),
            // The edge's herd budget as deployed: the checks' own answers (one client
            // network, 40 a second) add at most a network's share to the estimate, as
            // a monitor's would. The request budget is off: they ask that often.
            "[rate_limit]\nper_ip_per_sec = 0\n[http]\nshutdown_readiness_delay_ms = 0\n",
        )
        .unwrap();
        let router_port = free_port();
        let https_port = free_port();
        let ca = TestCa::new("chaos CA");
        let dir = tempfile::tempdir().expect("TLS directory");
        let (cert, key) = ca.write_leaf(dir.path(), &[ROUTERS_NAME]);
        let world = Arc::new(World::new(
            (0..ROUTERS)
                .map(|j| Some(router_addr(j, router_port)))
                .collect(),
        ));
        let mut fleet = Fleet {
            lab,
            world,
            agents: (0..AGENTS).map(|_| None).collect(),
            lives: vec![String::new(); AGENTS],
            routers: (0..ROUTERS).map(|_| None).collect(),
            router_lives: vec![String::new(); ROUTERS],
            router_port,
            https_port,
            ca,
            tls: (cert, key, dir),
            gateways: (0..AGENTS).map(|_| gateway()).collect(),
            storm: None,
            hook: HookServer::start(),
            config,
            issued: Vec::new(),
            member_out: None,
        };
        for k in 0..AGENTS {
            fleet.start_agent(k, None);
        }
        for j in 0..ROUTERS {
            fleet.start_router(j);
        }
        fleet
    }

    /// Starts node `k`'s agent, its clock `offset` seconds off when given.
    pub(crate) fn start_agent(&mut self, k: usize, offset: Option<i64>) {
        if let Some(old) = self.agents[k].take() {
            self.lives[k].push_str(&old.output());
        }
        let env = offset.map(harness::clock::clock_off).unwrap_or_default();
        let env: Vec<(&str, &str)> = env.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let endpoints = self.lab.endpoints();
        let port = self.gateways[k].port;
        let tcp = format!("tcp={port}");
        let load = format!("tcp-port:{port}");
        let ttl = TTL.as_secs().to_string();
        let hook = self.hook.url();
        let args = [
            "--etcd",
            &endpoints,
            "--id",
            &node_id(k),
            "--ip",
            "127.0.0.1",
            "--region",
            "r",
            "--capacity",
            &CAPACITY.to_string(),
            "--port",
            &tcp,
            "--load",
            &load,
            "--ttl",
            &ttl,
            "--report-min-change",
            "0",
            "--hook",
            &hook,
        ];
        self.agents[k] = Some(Proc::spawn_full("gateway-agent", &args, &env, false, None));
    }

    /// Signals node `k`'s agent.
    pub(crate) fn signal_agent(&self, k: usize, sig: &str) {
        if let Some(a) = &self.agents[k] {
            a.signal(sig);
        }
    }

    /// Starts router `j` on its address and waits until it is ready; returns how long
    /// that took.
    pub(crate) fn start_router(&mut self, j: usize) -> Duration {
        let started = Instant::now();
        let endpoints = self.lab.endpoints();
        let addr = router_addr(j, self.router_port);
        let plain = addr.to_string();
        let https = router_addr(j, self.https_port).to_string();
        let id = format!("r{j}");
        let (cert, key) = (self.tls.0.to_str().unwrap(), self.tls.1.to_str().unwrap());
        let args = [
            "--etcd",
            &endpoints,
            "--listen",
            &https,
            "--tls-cert",
            cert,
            "--tls-key",
            key,
            "--http-listen",
            &plain,
            "--config",
            self.config.path().to_str().unwrap(),
            "--router-id",
            &id,
        ];
        let proc = Proc::spawn_full("router-server", &args, &[], false, None);
        let ready = wait_for(RESTART_BOUND, || {
            get_json(addr, "/readyz").is_some_and(|(c, _)| c == 200)
        });
        if !ready {
            self.world.violation(format!(
                "router {addr} not ready {RESTART_BOUND:?} after its start:\n{}",
                tail(&proc.output(), 10)
            ));
        }
        self.routers[j] = Some(proc);
        self.world.routers.lock().unwrap()[j] = Some(addr);
        started.elapsed()
    }

    /// SIGKILLs router `j`; the clients stop asking it.
    pub(crate) fn kill_router(&mut self, j: usize) {
        self.world.routers.lock().unwrap()[j] = None;
        if let Some(r) = self.routers[j].take() {
            r.signal("KILL");
            self.router_lives[j].push_str(&r.output());
        }
    }

    /// What router `j` printed, in all its lives.
    pub(crate) fn router_log(&self, j: usize) -> String {
        let mut log = self.router_lives[j].clone();
        if let Some(r) = &self.routers[j] {
            log.push_str(&r.output());
        }
        log
    }

    /// The members that are up and joined now.
    pub(crate) fn majority(&self) -> Vec<usize> {
        (0..crate::MEMBERS)
            .filter(|&i| Some(i) != self.member_out)
            .collect()
    }

    /// The value at `key` as the majority has it.
    pub(crate) fn get(&self, key: &str) -> Option<String> {
        self.lab.get_on(&self.majority(), key)
    }

    /// Issues `ctl ACTION gw-k [extra]` and waits until the agent has applied it (and,
    /// for a drain or a migrate, delivered the migrate signal); records it. Returns the
    /// command id, or `None` after recording why not.
    pub(crate) fn command(&mut self, k: usize, action: &str, extra: &[&str]) -> Option<String> {
        let node = node_id(k);
        // ctl refuses a node without a record: one restarted a moment ago registers
        // within the bound a live node may be missing.
        let key = format!("{P}/nodes/{node}");
        if !wait_for(MISSING_BOUND, || self.get(&key).is_some()) {
            self.world
                .violation(format!("{node} not registered before `ctl {action}`"));
            return None;
        }
        let endpoints = self.lab.endpoints();
        let mut args = vec!["ctl", "--etcd", &endpoints, action, &node];
        args.extend_from_slice(extra);
        let (status, out) = harness::run("router-server", &args, Duration::from_secs(60));
        let id = out
            .split("(command ")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .map(str::to_string);
        let Some(id) = id.filter(|_| status.success()) else {
            self.world
                .violation(format!("`ctl {action} {node}` failed: {}", tail(&out, 5)));
            return None;
        };
        let signals = action != "serve";
        self.issued.push(Issued {
            node: k,
            id: id.clone(),
            signals,
        });
        let applied_key = format!("{P}/applied/{node}");
        let applied = wait_for(APPLY_BOUND, || {
            self.get(&applied_key)
                .and_then(|v| serde_json::from_str::<serde_json::Value>(&v).ok())
                .is_some_and(|v| {
                    v["command"] == id.as_str() && (!signals || v["hook"]["state"] == "delivered")
                })
        });
        if !applied {
            self.world.violation(format!(
                "{node} has not applied {action} {id} (signal delivered) {APPLY_BOUND:?} after ctl"
            ));
        }
        Some(id)
    }

    /// Every command issued was applied exactly once (one `command applied` line across
    /// the agent's lives) and its migrate signal delivered exactly once.
    /// What node `k`'s agents printed, in all their lives.
    pub(crate) fn agent_log(&self, k: usize) -> String {
        let mut log = self.lives[k].clone();
        if let Some(a) = &self.agents[k] {
            log.push_str(&a.output());
        }
        log
    }

    pub(crate) fn check_commands(&self) {
        let deliveries = self.hook.delivered();
        for c in &self.issued {
            let node = node_id(c.node);
            let log = self.agent_log(c.node);
            let mark = format!("command={}", c.id);
            let applied = log
                .lines()
                .filter(|l| l.contains("command applied") && l.contains(&mark))
                .count();
            let quoted = format!("\"command\":\"{}\"", c.id);
            let delivered = deliveries.iter().filter(|b| b.contains(&quoted)).count();
            let want = usize::from(c.signals);
            self.world
                .checks
                .fetch_add(2, std::sync::atomic::Ordering::Relaxed);
            if applied != 1 || delivered != want {
                self.world.violation(format!(
                    "{node}: command {} applied {applied} times, its signal delivered {delivered} times (want 1 and {want})",
                    c.id
                ));
            }
        }
    }

    /// The resident KiB and open files of every router and agent, with a name for each.
    pub(crate) fn resources(&self) -> Vec<(String, u64, usize)> {
        let procs = self
            .routers
            .iter()
            .enumerate()
            .filter_map(|(j, r)| Some((format!("router r{j}"), r.as_ref()?)))
            .chain(
                self.agents
                    .iter()
                    .enumerate()
                    .filter_map(|(k, a)| Some((format!("agent {}", node_id(k)), a.as_ref()?))),
            );
        procs
            .filter_map(|(name, p)| {
                let pid = p.pid();
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
                let field = |f: &str| {
                    status
                        .lines()
                        .find_map(|l| l.strip_prefix(f))
                        .map(str::trim)
                };
                // A process killed and reaped leaves its pid free: another process,
                // or a thread of this test (threads have ids from the same space, and
                // /proc shows them too), may have it now.
                let binary = if name.starts_with("router") {
                    "router-server"
                } else {
                    "gateway-agent"
                };
                if field("Tgid:") != Some(&pid.to_string()) || field("Name:") != Some(binary) {
                    return None;
                }
                let rss = field("VmRSS:")
                    .and_then(|v| v.trim_end_matches("kB").trim().parse().ok())
                    .unwrap_or(0);
                let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
                    .map(|d| d.count())
                    .unwrap_or(0);
                Some((name, rss, fds))
            })
            .collect()
    }

    /// Waits until every node is answered by every router (the start, and the end).
    pub(crate) fn wait_whole(&self, within: Duration) -> bool {
        wait_for(within, || {
            (0..ROUTERS).all(|j| {
                get_json(router_addr(j, self.router_port), "/gateways?count=10")
                    .is_some_and(|(c, v)| c == 200 && harness::gateway_ids(&v).len() == AGENTS)
            })
        })
    }
}

/// Polls `cond` every 20 ms until it holds (true) or `within` passes (false).
pub(crate) fn wait_for(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > within {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last `n` lines of `text`.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
