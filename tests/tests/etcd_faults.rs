//! etcd's faults as people see them, with a real etcd, a real agent and a real router:
//! an etcd out of its space quota (alarm NOSPACE) is named once by the agent whose
//! writes it refuses and shown by the router (`router_etcd_alarm`, `/ops`) until an
//! operator frees space and disarms it; and the router's lag behind etcd is measured.

use std::time::Duration;

use harness::{get_json, has_sample, http_get, sample, wait_until, Etcd, Proc, RouterProc, P};

fn metrics(router: &RouterProc) -> String {
    http_get(router.addr, "/metrics")
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// The lines of the agent's output at `level` that say `what`.
fn agent_lines(agent: &Proc, level: &str, what: &str) -> usize {
    agent
        .output()
        .lines()
        .filter(|l| l.contains(level) && l.contains(what))
        .count()
}

/// The lines of the agent's output that warn about NOSPACE.
fn nospace_warnings(agent: &Proc) -> usize {
    agent_lines(agent, "WARN", "NOSPACE")
}

/// The router's alarm gauge line for NOSPACE at `v`.
fn alarm_line(v: u8) -> String {
    format!("router_etcd_alarm{{registry=\"default\",alarm=\"nospace\"}} {v}")
}

/// The agent's debug lines for a report refused again.
fn refused_again(agent: &Proc) -> usize {
    agent_lines(agent, "DEBUG", "failed again")
}

/// An etcd with a 2 MiB quota, an agent reporting the count in `conns`, and a router
/// serving its node. Fields drop in order: router, agent, load file, etcd.
struct Quota {
    router: RouterProc,
    agent: Proc,
    conns: std::path::PathBuf,
    _dir: tempfile::TempDir,
    etcd: Etcd,
}

impl Quota {
    fn start() -> Quota {
        // 2 MiB: a few dozen writes of 100 KB fill it.
        let etcd = Etcd::start_with(&["--quota-backend-bytes", "2097152"]);
        let dir = tempfile::tempdir().unwrap();
        let conns = dir.path().join("conns");
        std::fs::write(&conns, "10").unwrap();
        let load = format!("file:{}", conns.display());
        // At debug for its write faults: each refused attempt shows (at debug), so the
        // test can wait for several of them.
        let endpoints = etcd.endpoints();
        let agent = Proc::spawn_env(
            "gateway-agent",
            &[
                "--etcd",
                &endpoints,
                "--id",
                "gw-q",
                "--ip",
                "127.0.0.1",
                "--region",
                "cn-sh",
                "--capacity",
                "1000",
                "--port",
                "tcp=8000",
                "--load",
                &load,
                "--report-min-change",
                "0",
            ],
            &[("RUST_LOG", "info,gateway_agent::faults=debug")],
        );
        let router = RouterProc::start(&etcd, "", &[]);
        wait_until(Duration::from_secs(15), "the node served", || {
            http_get(router.addr, "/gateways?count=3")
                .is_some_and(|(code, body)| code == 200 && body.contains("gw-q"))
        });
        wait_until(Duration::from_secs(10), "the alarm gauge at 0", || {
            has_sample(&metrics(&router), &alarm_line(0))
        });
        Quota {
            router,
            agent,
            conns,
            _dir: dir,
            etcd,
        }
    }

    /// Fill etcd until it refuses: the NOSPACE alarm is raised.
    fn fill_until_refused(&self) {
        let blob = "x".repeat(100_000);
        let mut refused = None;
        for i in 0..200 {
            let out = self.etcd.ctl_raw(&["put", &format!("/fill/{i}"), &blob]);
            if !out.status.success() {
                refused = Some(String::from_utf8_lossy(&out.stderr).into_owned());
                break;
            }
        }
        let refused = refused.expect("etcd refuses writes past its quota");
        assert!(refused.contains("database space exceeded"), "{refused}");
        assert!(self.etcd.ctl(&["alarm", "list"]).contains("NOSPACE"));
    }

    /// The router shows it: the gauge, and /ops names it.
    fn the_router_shows_the_alarm(&self) {
        let router = &self.router;
        wait_until(Duration::from_secs(10), "the alarm gauge at 1", || {
            has_sample(&metrics(router), &alarm_line(1))
        });
        let (code, summary) = get_json(router.addr, "/ops/summary.json").expect("summary");
        assert_eq!(code, 200);
        let dc = &summary["router"]["registries"][0];
        assert_eq!(dc["alarms"], serde_json::json!(["nospace"]), "{dc}");
        assert!(router.proc.output().contains("etcd alarm raised"));
    }

    /// The agent's reports are refused: it says why, once, however many it tries.
    fn the_agent_names_it_once(&self) {
        let (agent, conns) = (&self.agent, &self.conns);
        std::fs::write(conns, "20").unwrap();
        wait_until(Duration::from_secs(10), "the agent names NOSPACE", || {
            nospace_warnings(agent) >= 1
        });
        // Each change is another report the agent tries and etcd refuses.
        for n in [30, 40, 50, 60] {
            let before = refused_again(agent);
            std::fs::write(conns, n.to_string()).unwrap();
            wait_until(Duration::from_secs(10), "another refused report", || {
                refused_again(agent) > before
            });
        }
        assert_eq!(
            nospace_warnings(agent),
            1,
            "one warning per change of cause:\n{}",
            agent.output()
        );
        let record = self.etcd.get(&format!("{P}/nodes/gw-q")).unwrap();
        assert!(record.contains("\"connections\":10"), "{record}");
    }

    /// The operator frees space (delete, compact, defragment) and disarms the alarm;
    /// the router's gauge and /ops follow.
    fn the_operator_frees_space_and_disarms(&self) {
        let etcd = &self.etcd;
        etcd.ctl(&["del", "/fill/", "--prefix"]);
        let status = etcd.ctl(&["endpoint", "status", "--write-out=json"]);
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        let revision = status[0]["Status"]["header"]["revision"].as_i64().unwrap();
        etcd.ctl(&["compaction", &revision.to_string()]);
        etcd.ctl(&["defrag"]);
        etcd.ctl(&["alarm", "disarm"]);
        assert!(!etcd.ctl(&["alarm", "list"]).contains("NOSPACE"));
        wait_until(Duration::from_secs(10), "the alarm gauge back at 0", || {
            has_sample(&metrics(&self.router), &alarm_line(0))
        });
        let (_, summary) = get_json(self.router.addr, "/ops/summary.json").expect("summary");
        assert_eq!(
            summary["router"]["registries"][0]["alarms"],
            serde_json::json!([])
        );
    }

    /// The agent writes again, and says so; still one NOSPACE warning.
    fn the_agent_writes_again(&self) {
        let agent = &self.agent;
        std::fs::write(&self.conns, "70").unwrap();
        wait_until(
            Duration::from_secs(10),
            "the report after the disarm",
            || {
                self.etcd
                    .get(&format!("{P}/nodes/gw-q"))
                    .is_some_and(|r| r.contains("\"connections\":70"))
            },
        );
        wait_until(
            Duration::from_secs(5),
            "the agent says writes succeed",
            || agent.output().contains("writes to etcd succeed again"),
        );
        assert_eq!(nospace_warnings(agent), 1, "{}", agent.output());
    }
}

#[test]
fn an_etcd_out_of_space_is_named_once_by_the_agent_and_shown_by_the_router() {
    let q = Quota::start();
    q.fill_until_refused();
    q.the_router_shows_the_alarm();
    q.the_agent_names_it_once();
    q.the_operator_frees_space_and_disarms();
    q.the_agent_writes_again();
}

#[test]
fn the_lag_behind_a_healthy_etcd_is_measured_and_small() {
    let etcd = Etcd::start();
    let router = RouterProc::start(&etcd, "", &[]);
    let series = "router_registry_lag_seconds{registry=\"default\"}";
    wait_until(Duration::from_secs(10), "the lag gauge", || {
        metrics(&router).lines().any(|l| l.starts_with(series))
    });
    // A few heartbeats: each one's round trip through etcd stays small.
    for _ in 0..3 {
        let lag = sample(&metrics(&router), series);
        assert!((0.0..0.5).contains(&lag), "lag {lag} s");
        std::thread::sleep(Duration::from_millis(1_000));
    }
    let (_, summary) = get_json(router.addr, "/ops/summary.json").expect("summary");
    let dc = &summary["router"]["registries"][0];
    let lag_ms = dc["lag_ms"].as_u64().expect("lag_ms on /ops");
    assert!(lag_ms < 500, "{dc}");
    assert_eq!(summary["router"]["stale"], false);
    // The heartbeat is the registration: its fields stay, with the beat.
    let key = etcd.keys(&format!("{P}/routers/"));
    assert_eq!(key.len(), 1, "{key:?}");
    let value: serde_json::Value = serde_json::from_str(&etcd.get(&key[0]).unwrap()).unwrap();
    assert!(
        value["id"].is_string() && value["started_ms"].is_u64(),
        "{value}"
    );
    assert!(value["beat"].as_u64().unwrap() >= 2, "{value}");
}
