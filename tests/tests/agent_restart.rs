//! Agents that restart are not nodes that leave: with `--state-file`, every agent of a
//! fleet restarted at once (as a configuration push does while the gateways serve)
//! keeps its node in every answer, while an agent whose gateway is down still takes
//! its node away at once, and a state file older than its lease starts cleanly.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::{gateway_ids, get_json, wait_until, Etcd, Proc, RouterProc, P};

/// A gateway that accepts connections (and so passes a `tcp:` health probe) until
/// stopped, when its listener closes.
struct Gateway {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Gateway {
    fn start() -> Gateway {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((c, _)) => held.push(c),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Gateway {
            port,
            stop,
            thread: Some(thread),
        }
    }

    /// Closes the listener: the health probe fails from now on.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An agent for node `id` in front of `gw`, probing it, with its lease kept in `state`.
fn agent(etcd: &Etcd, id: &str, gw: &Gateway, state: &Path, extra: &[&str]) -> Proc {
    let endpoints = etcd.endpoints();
    let port = format!("tcp={}", gw.port);
    let health = format!("tcp:127.0.0.1:{}", gw.port);
    let state = state.to_str().unwrap();
    let mut args = vec![
        "--etcd",
        &endpoints,
        "--id",
        id,
        "--ip",
        "127.0.0.1",
        "--region",
        "r",
        "--capacity",
        "100000",
        "--port",
        &port,
        "--health",
        &health,
        "--health-interval-ms",
        "200",
        "--state-file",
        state,
    ];
    args.extend_from_slice(extra);
    Proc::spawn("gateway-agent", &args)
}

/// The lease id (hex) a state file holds.
fn kept_lease(path: &Path) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("state file")).unwrap();
    format!(
        "{:x}",
        v["lease"].as_i64().expect("lease in the state file")
    )
}

#[test]
fn restarting_every_agent_at_once_keeps_every_node_in_every_answer() {
    const N: usize = 6;
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let gateways: Vec<Gateway> = (0..N).map(|_| Gateway::start()).collect();
    let ids: Vec<String> = (0..N).map(|i| format!("rs{i}")).collect();
    let states: Vec<PathBuf> = ids
        .iter()
        .map(|id| dir.path().join(format!("{id}.state")))
        .collect();
    let start_all = || -> Vec<Proc> {
        (0..N)
            .map(|i| agent(&etcd, &ids[i], &gateways[i], &states[i], &[]))
            .collect()
    };
    let mut agents = start_all();
    wait_until(Duration::from_secs(15), "six nodes registered", || {
        etcd.keys(&format!("{P}/nodes/")).len() == N
    });
    let router = RouterProc::start(&etcd, "", &[]);
    wait_until(Duration::from_secs(10), "six nodes served", || {
        gateway_ids(&router.answer("/gateways?count=10")).len() == N
    });

    // A client asking every few milliseconds throughout.
    let answers = Arc::new(AtomicU64::new(0));
    let bad: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (answers, bad, stop, addr) = (answers.clone(), bad.clone(), stop.clone(), router.addr);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                answers.fetch_add(1, Ordering::Relaxed);
                match get_json(addr, "/gateways?count=10") {
                    Some((200, body)) => {
                        let got = gateway_ids(&body);
                        if got.len() != N {
                            bad.lock().unwrap().push(format!("200 listing {got:?}"));
                        }
                    }
                    Some((code, body)) => bad.lock().unwrap().push(format!("{code} {body}")),
                    None => bad.lock().unwrap().push("no answer".into()),
                }
                std::thread::sleep(Duration::from_millis(3));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));

    // Every agent at once, as a configuration push restarts them.
    let before = answers.load(Ordering::Relaxed);
    for a in &agents {
        a.signal("TERM");
    }
    for a in agents.iter_mut() {
        assert!(a.wait_exit(Duration::from_secs(10)).success());
    }
    // Away for a while, as a slow host would be.
    std::thread::sleep(Duration::from_millis(500));
    agents = start_all();
    for a in &agents {
        a.wait_for_output("registered", Duration::from_secs(15));
    }
    let during = answers.load(Ordering::Relaxed) - before;
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();

    let total = answers.load(Ordering::Relaxed);
    let bad = bad.lock().unwrap();
    let refused = bad.iter().filter(|b| !b.starts_with("200")).count();
    eprintln!(
        "{total} asks in all, {during} from the SIGTERMs until every agent registered again; {refused} refused, {} without all six nodes",
        bad.len() - refused
    );
    assert!(during > 50, "only {during} asks during the restart");
    assert!(
        bad.is_empty(),
        "{} of {total} answers: {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    // The state files are rewritten at the next stop only: they still name the leases
    // the agents kept.
    let leases: Vec<String> = states.iter().map(|p| kept_lease(p)).collect();
    for (a, lease) in agents.iter().zip(&leases) {
        let out = a.output();
        assert!(
            out.contains("took up the lease of the previous run")
                && out.contains(&format!("lease={lease}")),
            "lease {lease} not taken up:\n{out}"
        );
    }
    assert_eq!(etcd.keys(&format!("{P}/nodes/")).len(), N);
}

#[test]
fn an_agent_whose_gateway_is_down_revokes_at_once() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("down.state");
    let mut gw = Gateway::start();
    let mut a = agent(&etcd, "down", &gw, &state, &[]);
    let key = format!("{P}/nodes/down");
    wait_until(Duration::from_secs(15), "registered", || {
        etcd.get(&key).is_some()
    });
    // The gateway stops, and the agent right after it (before the probe's hysteresis
    // would call the gateway unhealthy): one last probe at stop says it is down.
    gw.stop();
    a.signal("TERM");
    assert!(a.wait_exit(Duration::from_secs(10)).success());
    assert!(
        etcd.get(&key).is_none(),
        "the lease is revoked before exit:\n{}",
        a.output()
    );
    assert!(!state.exists(), "no lease left for a next start");
    assert!(a.output().contains("the gateway is down"), "{}", a.output());

    // SIGUSR1 leaves for good even while the gateway serves.
    let gw = Gateway::start();
    let mut a = agent(&etcd, "down", &gw, &state, &[]);
    wait_until(Duration::from_secs(15), "registered again", || {
        etcd.get(&key).is_some()
    });
    a.signal("USR1");
    assert!(a.wait_exit(Duration::from_secs(10)).success());
    assert!(etcd.get(&key).is_none(), "the lease is revoked on SIGUSR1");
    assert!(!state.exists());
}

#[test]
fn a_state_file_whose_lease_expired_starts_with_a_new_lease() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("late.state");
    let gw = Gateway::start();
    let key = format!("{P}/nodes/late");
    let mut a = agent(&etcd, "late", &gw, &state, &["--ttl", "2"]);
    wait_until(Duration::from_secs(15), "registered", || {
        etcd.get(&key).is_some()
    });
    a.signal("TERM");
    assert!(a.wait_exit(Duration::from_secs(10)).success());
    assert!(
        etcd.get(&key).is_some(),
        "the record stays for the next start"
    );
    let old = kept_lease(&state);
    // Down for longer than the TTL: etcd expires the lease and the record with it.
    wait_until(Duration::from_secs(10), "the record expired", || {
        etcd.get(&key).is_none()
    });
    let a = agent(&etcd, "late", &gw, &state, &["--ttl", "2"]);
    a.wait_for_output("the previous run's lease expired", Duration::from_secs(15));
    wait_until(Duration::from_secs(10), "registered anew", || {
        etcd.get(&key).is_some()
    });
    a.wait_for_output("registered", Duration::from_secs(5));
    let out = a.output();
    let line = out
        .lines()
        .find(|l| l.contains("registered") && l.contains("lease="))
        .expect("a registered line");
    assert!(!line.contains(&format!("lease={old} ")), "{line}");
    assert!(!line.contains("took up"), "{line}");
}

/// A migrate applied before a restart that kept the lease is not applied again after it:
/// the gateway hears it once.
#[test]
fn a_command_applied_before_a_kept_lease_restart_is_applied_once() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("cmd.state");
    let gw = Gateway::start();
    let hook = harness::HookServer::start();
    let url = hook.url();
    let key = format!("{P}/nodes/cmd");
    let mut a = agent(&etcd, "cmd", &gw, &state, &["--hook", &url]);
    wait_until(Duration::from_secs(15), "registered", || {
        etcd.get(&key).is_some()
    });
    let (code, out) = harness::router_ctl(&etcd, &["migrate", "cmd", "--percent", "30"]);
    assert_eq!(code, 0, "{out}");
    wait_until(Duration::from_secs(10), "delivered", || {
        hook.delivered().len() == 1
    });
    let applied = |etcd: &Etcd| -> serde_json::Value {
        serde_json::from_str(&etcd.get(&key).expect("the record")).unwrap()
    };
    let cmd = applied(&etcd)["applied_command"].clone();
    assert!(cmd.is_string(), "{}", applied(&etcd));
    a.signal("TERM");
    assert!(a.wait_exit(Duration::from_secs(10)).success());
    let a = agent(&etcd, "cmd", &gw, &state, &["--hook", &url]);
    a.wait_for_output(
        "took up the lease of the previous run",
        Duration::from_secs(15),
    );
    a.wait_for_output(
        "resuming after the last applied command",
        Duration::from_secs(5),
    );
    // Time for a second delivery, were there one.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(hook.delivered().len(), 1, "{:?}", hook.bodies());
    assert_eq!(applied(&etcd)["applied_command"], cmd);
    assert_eq!(applied(&etcd)["state"], "serving");
}
