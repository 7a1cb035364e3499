//! The deployment pieces, each checked by the tool its users use: the Grafana dashboard
//! (valid JSON, valid PromQL, only metrics a real router exports), the Prometheus
//! alerting rules (`promtool check rules`, `promtool test rules`), and the systemd units
//! (`systemd-analyze verify`, with no complaint at all).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harness::{bin, tool, wait_until, Etcd, Proc, RouterProc};
use serde_json::Value;

fn deploy(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(rel)
}

/// Runs `cmd`; returns (success, stdout + stderr).
fn output(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("run tool");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The metric names a real router exports once it serves a node and answered a
/// request (sample names, with `_bucket` / `_total` suffixes as scraped).
fn exported_metrics() -> BTreeSet<String> {
    let etcd = Etcd::start();
    let _agent = Proc::agent(&etcd, "gw-1", "cn-sh", &["--port", "tcp=7000"]);
    let router = RouterProc::start(&etcd, "", &[]);
    wait_until(Duration::from_secs(15), "node served", || {
        harness::http_get(router.addr, "/gateways").is_some_and(|(status, _)| status == 200)
    });
    // A network's demoted gateways are exported while one is demoted: the router's
    // only client reports that its connects to gw-1 fail.
    let failing = r#"{"gateway":"gw-1","result":"timeout","ms":250}"#;
    let report = format!(r#"{{"outcomes":[{}]}}"#, vec![failing; 20].join(","));
    let (code, body) =
        harness::http_request(router.addr, "POST", "/outcomes", None, &report).unwrap();
    assert_eq!(code, 204, "{body}");
    // The lag is exported once the first heartbeat has made its round trip, the
    // alarms once they have been read, the demotion at the next judging (5 s).
    let mut text = String::new();
    wait_until(
        Duration::from_secs(15),
        "the lag, alarm and demotion gauges",
        || {
            text = harness::http_get(router.addr, "/metrics").unwrap().1;
            text.contains("router_registry_lag_seconds{")
                && text.contains("router_etcd_alarm{")
                && text.contains("router_demoted_gateways{")
        },
    );
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// `router_*` identifiers in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("router_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        out.push(name);
    }
    out
}

/// Every expression of a dashboard, in panel order.
fn dashboard_exprs(dash: &Value) -> Vec<(String, String)> {
    dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().expect("panel title").to_string();
            p["targets"]
                .as_array()
                .expect("targets")
                .iter()
                .map(move |t| (title.clone(), t["expr"].as_str().expect("expr").to_string()))
        })
        .collect()
}

/// Writes `exprs` as recording rules and lets promtool parse them: a PromQL syntax
/// error fails the check.
fn promql_parses(dir: &Path, exprs: &[(String, String)]) -> (bool, String) {
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, e)) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:expr{i}\n        expr: {}\n",
            serde_json::to_string(e).unwrap()
        ));
    }
    let path = dir.join("dashboard-rules.yml");
    std::fs::write(&path, rules).unwrap();
    output(
        Command::new(tool("promtool", "prometheus"))
            .args(["check", "rules"])
            .arg(&path),
    )
}

#[test]
fn grafana_dashboard_is_valid_and_uses_only_exported_metrics() {
    let text = std::fs::read_to_string(deploy("grafana/router-dashboard.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(dash["title"].is_string() && dash["uid"].is_string());
    let exprs = dashboard_exprs(&dash);
    assert!(exprs.len() >= 10, "{exprs:?}");
    // What the issue asks to see.
    let all: String = exprs.iter().map(|(_, e)| e.as_str()).collect();
    for needed in [
        "router_http_requests_total",
        "histogram_quantile",
        "router_http_request_duration_seconds_bucket",
        "router_nodes",
        "router_protect_active",
        "router_snapshot_age_seconds",
        "router_registry_connected",
    ] {
        assert!(
            all.contains(needed),
            "the dashboard shows nothing of {needed}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = promql_parses(dir.path(), &exprs);
    assert!(ok, "a dashboard expression is not valid PromQL:\n{out}");
    // The check can fail: a broken expression is refused.
    let (ok, _) = promql_parses(
        dir.path(),
        &[("x".into(), "sum(rate(router_nodes[1m])".into())],
    );
    assert!(!ok, "promtool accepted broken PromQL");

    let exported = exported_metrics();
    for (title, expr) in &exprs {
        for name in metric_names(expr) {
            assert!(
                exported.contains(&name),
                "panel {title:?} uses {name}, which the router does not export ({exported:?})"
            );
        }
    }
}

/// Every `runbook: docs/runbooks.md#anchor` of `rules` names a heading of the runbook.
fn runbook_anchors_exist(rules: &str) {
    let book = std::fs::read_to_string(deploy("../docs/runbooks.md")).unwrap();
    let anchors: BTreeSet<String> = book
        .lines()
        .filter_map(|l| l.strip_prefix("### ").or_else(|| l.strip_prefix("## ")))
        .map(|h| h.trim().to_ascii_lowercase().replace(' ', "-"))
        .collect();
    let mut seen = 0;
    for line in rules.lines() {
        if let Some(anchor) = line.trim().strip_prefix("runbook: docs/runbooks.md#") {
            assert!(anchors.contains(anchor), "no runbook heading for #{anchor}");
            seen += 1;
        }
    }
    assert!(seen > 0, "the rules name no runbook");
}

#[test]
fn alerting_rules_pass_promtool_and_their_unit_tests() {
    let promtool = tool("promtool", "prometheus");
    let (ok, out) = output(
        Command::new(&promtool)
            .args(["check", "rules"])
            .arg(deploy("prometheus/router-alerts.yml")),
    );
    assert!(ok, "{out}");
    assert!(out.contains("SUCCESS: 18 rules found"), "{out}");
    let (ok, out) = output(
        Command::new(&promtool)
            .current_dir(deploy("prometheus"))
            .args(["test", "rules", "router-alerts.test.yml"]),
    );
    assert!(ok, "{out}");
    // Every metric the rules read is one the router exports.
    let rules = std::fs::read_to_string(deploy("prometheus/router-alerts.yml")).unwrap();
    runbook_anchors_exist(&rules);
    let exported = exported_metrics();
    for line in rules.lines().filter(|l| !l.trim_start().starts_with('#')) {
        for name in metric_names(line) {
            assert!(
                exported.contains(&name),
                "the rules read {name}, which is not exported"
            );
        }
    }
}

#[test]
fn systemd_units_verify_without_a_complaint() {
    let analyze = tool("systemd-analyze", "systemd");
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for (unit, binary) in [
        ("router-server.service", "router-server"),
        ("gateway-agent.service", "gateway-agent"),
    ] {
        let text = std::fs::read_to_string(deploy(&format!("systemd/{unit}"))).unwrap();
        // What each unit promises: SIGTERM, a stop timeout above the drain grace,
        // a restart policy, hardening, bounds, secrets as credentials.
        for needed in [
            "KillSignal=SIGTERM",
            "Restart=always",
            "NoNewPrivileges=yes",
            "DynamicUser=yes",
            "ProtectSystem=strict",
            "ProtectProc=invisible",
            "MemoryMax=",
            "TasksMax=",
            "LoadCredential=etcd-key:",
            "LoadCredential=etcd-password:",
        ] {
            assert!(text.contains(needed), "{unit} lacks {needed}");
        }
        let stop: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("TimeoutStopSec="))
            .and_then(|v| v.trim_end_matches('s').parse().ok())
            .unwrap_or_else(|| panic!("{unit} has no TimeoutStopSec"));
        assert!(
            stop > 7,
            "{unit}: the stop timeout must exceed the 5 s hook grace and the 2 s revoke"
        );
        // The binaries where this checkout built them (verify checks they exist).
        let local = text.replace(
            &format!("/usr/local/bin/{binary}"),
            bin(binary).to_str().unwrap(),
        );
        let path = dir.path().join(unit);
        std::fs::write(&path, local).unwrap();
        units.push(path);
    }
    let (ok, out) = output(
        Command::new(&analyze)
            .args(["verify", "--man=no"])
            .args(&units),
    );
    assert!(
        ok && out.trim().is_empty(),
        "systemd-analyze verify:\n{out}"
    );
    // The exposure systemd's own audit gives each unit (docs/operating.md's systemd paragraph
    // quotes it): at most 2.0, "OK". `--offline` needs systemd 250 or later.
    for unit in &units {
        let (ok, out) = output(
            Command::new(&analyze)
                .args(["security", "--offline=yes", "--no-pager"])
                .arg(unit),
        );
        if !ok && out.contains("--offline") {
            eprintln!("systemd-analyze security --offline is not supported here: {out}");
            continue;
        }
        let score: f64 = out
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|l| l.split(": ").nth(1))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level in:\n{out}"));
        assert!(score <= 2.0, "{}: exposure {score}:\n{out}", unit.display());
    }
    // The check can fail: a unit with an unknown key is reported.
    let bad = dir.path().join("bad.service");
    std::fs::write(&bad, "[Service]\nExecStart=/bin/true\nRestartt=always\n").unwrap();
    let (_, out) = output(
        Command::new(&analyze)
            .args(["verify", "--man=no"])
            .arg(&bad),
    );
    assert!(
        out.contains("Restartt"),
        "verify did not report the typo: {out}"
    );
}
