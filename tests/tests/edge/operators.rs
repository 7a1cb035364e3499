//! Careless operators: a blank admin token refused at start, the bearer scheme in any
//! case, and every subcommand configured from variables alone.

use std::time::Duration;

use harness::{http_get, wait_until, Etcd, Proc, RouterProc, P};

use super::{raw, record};

/// Runs `router-server` with `args` and only the given variables (none inherited).
fn router_env(args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut all = vec![("PATH", "/usr/bin:/bin")];
    all.extend_from_slice(env);
    Proc::spawn_clean("router-server", args, &all)
}

#[test]
fn a_blank_admin_token_is_refused_at_start_from_flag_or_variable() {
    let endpoints = "http://127.0.0.1:1";
    for (args, env) in [
        (vec!["--admin-token", ""], vec![]),
        (vec!["--admin-token", "  "], vec![]),
        (vec![], vec![("ROUTER_ADMIN_TOKEN", "")]),
        (vec![], vec![("ROUTER_ADMIN_TOKEN", " \t")]),
    ] {
        let mut all = vec!["--etcd", endpoints, "--listen", "127.0.0.1:0"];
        all.extend_from_slice(&args);
        let mut p = router_env(&all, &env);
        let status = p.wait_exit(Duration::from_secs(10));
        let out = p.output();
        assert_eq!(status.code(), Some(2), "{args:?} {env:?}: {out}");
        assert!(out.contains("admin token is empty"), "{out}");
        assert_eq!(out.trim().lines().count(), 1, "one line: {out}");
    }
    // The demo too.
    let mut p = router_env(
        &["demo", "--listen", "127.0.0.1:0", "--admin-token", ""],
        &[],
    );
    assert_eq!(p.wait_exit(Duration::from_secs(10)).code(), Some(2));
}

#[test]
fn the_admin_api_wants_a_bearer_token_whatever_the_case_of_the_scheme() {
    let etcd = Etcd::start();
    etcd.put(&format!("{P}/nodes/gw-a"), &record("gw-a"));
    let r = RouterProc::start(&etcd, "", &["--admin-token", "s3cret-s3cret-s3cret"]);
    let post = |auth: Option<&str>| {
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "POST /admin/nodes/gw-a/serve HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        raw(r.addr, req.as_bytes(), Duration::from_secs(5))
    };
    assert!(post(None).starts_with("HTTP/1.1 401"), "{}", post(None));
    assert!(post(Some("Bearer ")).starts_with("HTTP/1.1 401"));
    assert!(post(Some("Bearer wrong")).starts_with("HTTP/1.1 401"));
    let ok = post(Some("bearer s3cret-s3cret-s3cret"));
    assert!(ok.starts_with("HTTP/1.1 202"), "{ok}");
    assert!(post(Some("BEARER s3cret-s3cret-s3cret")).starts_with("HTTP/1.1 202"));
}

#[test]
fn every_subcommand_runs_from_variables_alone() {
    let etcd = Etcd::start();
    let endpoints = etcd.endpoints();
    // Variables of every subcommand set at once: none may break another.
    let all_vars = [
        ("ROUTER_ETCD", endpoints.as_str()),
        ("ROUTER_LISTEN", "127.0.0.1:0"),
        ("ROUTER_ADMIN_TOKEN", "t0ken-t0ken-t0ken"),
        ("ROUTER_PREFIX", P),
        ("ROUTER_DEMO_NODES", "3"),
    ];
    let agent_vars = [
        ("AGENT_ETCD", endpoints.as_str()),
        ("AGENT_ID", "gw-env"),
        ("AGENT_IP", "127.0.0.1"),
        ("AGENT_REGION", "r"),
        ("AGENT_CAPACITY", "100"),
        ("AGENT_PORTS", "tcp=7000,ws=7001"),
        ("AGENT_LOAD", "static:5"),
        ("AGENT_TTL", "3"),
    ];
    let mut agent = Proc::spawn_clean("gateway-agent", &[], &agent_vars);
    wait_until(Duration::from_secs(15), "agent registered", || {
        etcd.get(&format!("{P}/nodes/gw-env")).is_some()
    });
    let mut serve = router_env(&[], &all_vars);
    let addr = serve.wait_for_addr("serving HTTP", Duration::from_secs(20));
    wait_until(Duration::from_secs(10), "router answers", || {
        http_get(addr, "/gateways").is_some_and(|(c, b)| c == 200 && b.contains("gw-env"))
    });
    let mut demo = router_env(&["demo"], &all_vars);
    let demo_addr = demo.wait_for_addr("serving HTTP", Duration::from_secs(20));
    wait_until(Duration::from_secs(10), "demo answers", || {
        http_get(demo_addr, "/readyz").is_some_and(|(c, _)| c == 200)
    });
    let mut ctl = router_env(&["ctl", "nodes"], &all_vars);
    let status = ctl.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{}", ctl.output());
    assert!(ctl.output().contains("gw-env"), "{}", ctl.output());
    // The operation's own flags too.
    let mut vars = all_vars.to_vec();
    vars.push(("ROUTER_CTL_JSON", "true"));
    let mut ctl = router_env(&["ctl", "nodes"], &vars);
    assert!(
        ctl.wait_exit(Duration::from_secs(20)).success(),
        "{}",
        ctl.output()
    );
    let json: serde_json::Value =
        serde_json::from_str(&ctl.output()).expect("JSON from ROUTER_CTL_JSON");
    assert_eq!(json["nodes"][0]["id"], "gw-env", "{json}");
    for p in [&mut serve, &mut demo, &mut agent] {
        p.signal("TERM");
        assert!(
            p.wait_exit(Duration::from_secs(20)).success(),
            "{}",
            p.output()
        );
    }
}
