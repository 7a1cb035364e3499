//! `--log-format json` on both binaries: every line of their logs is one JSON object,
//! with the level, the message, the event's fields and the fields of the span it
//! happened in, as log pipelines expect; the variable works as the flag does.

use std::time::Duration;

use harness::{Etcd, Proc};
use serde_json::Value;

/// Every line of `output` as JSON; panics naming a line that is not.
fn lines(output: &str) -> Vec<Value> {
    output
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn find<'a>(lines: &'a [Value], message: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["message"] == message)
        .unwrap_or_else(|| panic!("no {message:?} line in {lines:#?}"))
}

#[test]
fn both_binaries_log_one_json_object_per_line() {
    let etcd = Etcd::start();
    let agent = Proc::agent(
        &etcd,
        "gw-json",
        "r",
        &["--port", "tcp=9000", "--log-format", "json"],
    );
    agent.wait_for_output("\"registered\"", Duration::from_secs(20));
    let logged = lines(&agent.output());
    let started = find(&logged, "agent starting");
    assert_eq!(started["level"], "INFO");
    assert_eq!(started["node_id"], "gw-json", "{started}");
    assert!(started["timestamp"].is_string(), "{started}");
    let registered = find(&logged, "registered");
    // The span the event happened in, with its fields.
    assert_eq!(registered["span"]["node_id"], "gw-json", "{registered}");
    assert!(registered["spans"].is_array(), "{registered}");
    assert!(registered["lease"].is_string(), "{registered}");

    let endpoints = etcd.endpoints();
    let router = Proc::spawn_env(
        "router-server",
        &["--etcd", &endpoints, "--listen", "127.0.0.1:0"],
        &[("ROUTER_LOG_FORMAT", "json")],
    );
    router.wait_for_output("serving HTTP", Duration::from_secs(20));
    let logged = lines(&router.output());
    let serving = find(&logged, "serving HTTP");
    assert!(
        serving["addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{serving}"
    );
    // A bad value is one clear line and exit 2, as for any flag.
    let (status, out) = harness::run(
        "gateway-agent",
        &["--log-format", "yaml", "--etcd", &endpoints],
        Duration::from_secs(10),
    );
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(out.contains("yaml"), "{out}");
}
