//! Each command applied once: across agent restarts (within and after the lease's
//! TTL), across repeated rebalances, through a hook endpoint that is down or failing,
//! and never out of order when a newer command supersedes an undelivered one. Real
//! etcd, real agents, real `ctl` and router.

use std::time::Duration;

use harness::{
    free_port, has_sample, node_record as record, router_ctl as ctl, wait_until, Etcd, HookServer,
    Proc, RouterProc, P,
};
use serde_json::Value;

fn applied(etcd: &Etcd, id: &str) -> Option<Value> {
    etcd.get(&format!("{P}/applied/{id}"))
        .map(|v| serde_json::from_str(&v).unwrap())
}

fn hook_state(etcd: &Etcd, id: &str) -> Option<(String, String)> {
    let r = record(etcd, id)?;
    Some((
        r["hook"]["command"].as_str()?.to_string(),
        r["hook"]["state"].as_str()?.to_string(),
    ))
}

fn agent(etcd: &Etcd, id: &str, hook: &str, conns: u64) -> Proc {
    let load = format!("static:{conns}");
    Proc::agent(
        etcd,
        id,
        "cn-sh",
        &[
            "--port", "tcp=7000", "--ttl", "3", "--hook", hook, "--load", &load,
        ],
    )
}

fn migrate(etcd: &Etcd, id: &str, percent: u32) -> String {
    let p = percent.to_string();
    let (code, out) = ctl(etcd, &["migrate", id, "--percent", &p]);
    assert_eq!(code, 0, "{out}");
    let cmd: Value =
        serde_json::from_str(&etcd.get(&format!("{P}/commands/{id}")).unwrap()).unwrap();
    cmd["id"].as_str().unwrap().to_string()
}

/// Starts the agent again with the same id and waits until it has looked at the
/// standing command (it logs that the command was applied before).
fn restart_and_wait_for_the_command(etcd: &Etcd, id: &str, hook: &str, cmd: &str) -> Proc {
    let a = agent(etcd, id, hook, 100);
    a.wait_for_output(&format!("command={cmd}"), Duration::from_secs(15));
    wait_until(Duration::from_secs(15), "registered again", || {
        record(etcd, id).is_some_and(|r| r["applied_command"] == cmd)
    });
    a
}

#[test]
fn a_migrate_is_applied_once_across_restarts_within_and_after_the_ttl() {
    let etcd = Etcd::start();
    let hook = HookServer::start();
    let url = hook.url();
    let mut a = agent(&etcd, "gw-r", &url, 100);
    wait_until(Duration::from_secs(15), "registered", || {
        record(&etcd, "gw-r").is_some()
    });
    let cmd = migrate(&etcd, "gw-r", 25);
    wait_until(Duration::from_secs(10), "delivered", || {
        hook_state(&etcd, "gw-r") == Some((cmd.clone(), "delivered".into()))
    });
    assert_eq!(hook.delivered().len(), 1);
    wait_until(
        Duration::from_secs(5),
        "outcome kept outside the lease",
        || {
            applied(&etcd, "gw-r")
                .is_some_and(|v| v["command"] == cmd && v["hook"]["state"] == "delivered")
        },
    );

    // Within the TTL: killed, its record still alive when it starts again.
    a.signal("KILL");
    a.wait_exit(Duration::from_secs(5));
    assert!(
        record(&etcd, "gw-r").is_some(),
        "the record outlives a SIGKILL by the TTL"
    );
    let mut a = restart_and_wait_for_the_command(&etcd, "gw-r", &url, &cmd);
    assert!(a.output().contains("already applied"), "{}", a.output());

    // After the TTL: stopped, its record gone (revoked), started again later.
    a.signal("TERM");
    assert!(a.wait_exit(Duration::from_secs(10)).success());
    wait_until(Duration::from_secs(10), "record gone", || {
        record(&etcd, "gw-r").is_none()
    });
    let a = restart_and_wait_for_the_command(&etcd, "gw-r", &url, &cmd);
    assert!(a.output().contains("already applied"), "{}", a.output());
    assert_eq!(
        hook.bodies().len(),
        1,
        "the migrate reached the gateway once: {:?}\n{}",
        hook.bodies(),
        a.output()
    );
    let r = record(&etcd, "gw-r").unwrap();
    assert_eq!(r["hook"]["state"], "delivered", "{r}");
}

#[test]
fn rebalance_twice_in_a_row_issues_one_plan() {
    let etcd = Etcd::start();
    let hot: Vec<(HookServer, Proc)> = (0..3)
        .map(|i| {
            let h = HookServer::start();
            let a = agent(&etcd, &format!("hot-{i}"), &h.url(), 900);
            (h, a)
        })
        .collect();
    let cold_hook = HookServer::start();
    let _cold = agent(&etcd, "new-0", &cold_hook.url(), 0);
    wait_until(Duration::from_secs(15), "registered", || {
        etcd.keys(&format!("{P}/nodes/")).len() == 4
    });

    let (code, first) = ctl(&etcd, &["rebalance", "--json"]);
    assert_eq!(code, 0, "{first}");
    let first: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["issued"].as_array().unwrap().len(), 3, "{first}");
    for s in first["plan"].as_array().unwrap() {
        assert_eq!(
            s["percent"], 25,
            "2700 of 4000: each hot node to 675: {first}"
        );
    }

    // At once, before anything was applied or reported.
    let (code, second) = ctl(&etcd, &["rebalance", "--json"]);
    assert_eq!(code, 0, "{second}");
    let second: Value = serde_json::from_str(&second).unwrap();
    assert!(second["issued"].as_array().unwrap().is_empty(), "{second}");
    assert_eq!(second["pending"].as_array().unwrap().len(), 3, "{second}");
    for (h, _) in &hot {
        wait_until(Duration::from_secs(10), "hook called", || {
            !h.delivered().is_empty()
        });
    }
    // Again once delivered (the reports still say 900: the clients are moving).
    for i in 0..3 {
        wait_until(Duration::from_secs(10), "delivered", || {
            hook_state(&etcd, &format!("hot-{i}")).is_some_and(|(_, s)| s == "delivered")
        });
    }
    let (code, table) = ctl(&etcd, &["rebalance", "--dry-run"]);
    assert_eq!(code, 0, "{table}");
    assert!(
        table.contains("in flight") && table.contains("delivered"),
        "{table}"
    );
    assert!(table.contains("nothing to issue"), "{table}");
    let (code, third) = ctl(&etcd, &["rebalance", "--json"]);
    assert_eq!(code, 0);
    let third: Value = serde_json::from_str(&third).unwrap();
    assert!(third["issued"].as_array().unwrap().is_empty(), "{third}");

    for (h, _) in &hot {
        let bodies = h.bodies();
        assert_eq!(bodies.len(), 1, "{bodies:?}");
        assert!(bodies[0].contains(r#""percent":25"#), "{bodies:?}");
    }
    assert!(cold_hook.bodies().is_empty());
    assert_eq!(etcd.keys(&format!("{P}/commands/")).len(), 3);
}

#[test]
fn a_hook_that_comes_up_late_gets_the_signal_once_and_the_wait_is_visible() {
    let etcd = Etcd::start();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let _a = agent(&etcd, "gw-l", &url, 100);
    let router = RouterProc::start(&etcd, "", &["--admin-token", "t0ken-t0ken-t0ken"]);
    wait_until(Duration::from_secs(15), "registered", || {
        record(&etcd, "gw-l").is_some()
    });
    let cmd = migrate(&etcd, "gw-l", 30);
    wait_until(Duration::from_secs(10), "retrying, with the cause", || {
        record(&etcd, "gw-l").is_some_and(|r| {
            r["hook"]["state"] == "retrying"
                && r["hook"]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("connection refused"))
        })
    });
    let (code, table) = ctl(&etcd, &["nodes"]);
    assert_eq!(code, 0, "{table}");
    assert!(
        table.contains(&format!("{cmd} retrying")) && table.contains("connection refused"),
        "{table}"
    );
    wait_until(Duration::from_secs(10), "metric", || {
        harness::http_get(router.addr, "/metrics")
            .is_some_and(|(_, m)| has_sample(&m, r#"router_node_hooks{state="retrying"} 1"#))
    });
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-H",
            "Authorization: Bearer t0ken-t0ken-t0ken",
            &format!("http://{}/admin/nodes", router.addr),
        ])
        .output()
        .unwrap();
    let nodes: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        nodes["nodes"][0]["record"]["hook"]["state"], "retrying",
        "{nodes}"
    );

    // The gateway's hook comes up 5 s after the command.
    std::thread::sleep(Duration::from_secs(5));
    let hook = HookServer::start_on(port);
    wait_until(Duration::from_secs(10), "delivered", || {
        hook_state(&etcd, "gw-l") == Some((cmd.clone(), "delivered".into()))
    });
    wait_until(Duration::from_secs(10), "metric follows", || {
        harness::http_get(router.addr, "/metrics")
            .is_some_and(|(_, m)| has_sample(&m, r#"router_node_hooks{state="delivered"} 1"#))
    });
    let bodies = hook.bodies();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert!(bodies[0].contains(&cmd), "{bodies:?}");
}

#[test]
fn a_superseded_command_is_never_delivered_after_its_successor() {
    let etcd = Etcd::start();
    let hook = HookServer::start();
    hook.answer_with(503);
    let a = agent(&etcd, "gw-s", &hook.url(), 100);
    wait_until(Duration::from_secs(15), "registered", || {
        record(&etcd, "gw-s").is_some()
    });
    let old = migrate(&etcd, "gw-s", 20);
    wait_until(
        Duration::from_secs(10),
        "old retrying with the status",
        || {
            record(&etcd, "gw-s").is_some_and(|r| {
                r["hook"]["command"] == old
                    && r["hook"]["state"] == "retrying"
                    && r["hook"]["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("HTTP 503"))
            })
        },
    );
    let new = migrate(&etcd, "gw-s", 50);
    wait_until(Duration::from_secs(10), "new being retried", || {
        hook.bodies().iter().any(|b| b.contains(&new))
    });
    hook.answer_with(200);
    wait_until(Duration::from_secs(15), "new delivered", || {
        hook_state(&etcd, "gw-s") == Some((new.clone(), "delivered".into()))
    });
    let bodies = hook.bodies();
    let first_new = bodies.iter().position(|b| b.contains(&new)).unwrap();
    assert!(
        bodies[first_new..].iter().all(|b| !b.contains(&old)),
        "the old signal after its successor: {bodies:?}"
    );
    assert!(
        hook.delivered().iter().all(|b| !b.contains(&old)),
        "the old signal was never acknowledged: {bodies:?}"
    );
    assert_eq!(hook.delivered().len(), 1, "{bodies:?}");
    assert!(a.output().contains("superseded"), "{}", a.output());
    let kept = applied(&etcd, "gw-s").unwrap();
    assert_eq!(kept["command"], new.as_str());
    assert_eq!(kept["hook"]["state"], "delivered");
}
