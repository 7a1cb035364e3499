//! The agent's own metrics and health endpoint (`--metrics-listen`), the agent alerts'
//! rules, and what both binaries say they were built from (`--version`,
//! `*_build_info`).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::{has_sample, http_get, run, sample, wait_until, which, Etcd, Proc, RouterProc};

/// `promtool`, installed by `scripts/deps.sh --test`.
fn promtool() -> PathBuf {
    which("promtool").unwrap_or_else(|| {
        panic!(
            "promtool is needed: apt-get install prometheus (scripts/deps.sh --test installs it)"
        )
    })
}

/// `promtool check metrics` on `text`: its verdict and what it said.
fn check_metrics(text: &str) -> (bool, String) {
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// The `(version, commit)` a `--version` line names: `NAME 0.1.0 (commit abc, built D)`.
fn version_of(bin: &str) -> (String, String) {
    let (status, out) = run(bin, &["--version"], Duration::from_secs(10));
    assert!(status.success(), "{out}");
    let line = out.trim();
    let rest = line
        .strip_prefix(&format!("{bin} "))
        .unwrap_or_else(|| panic!("{line:?}"));
    let (version, tail) = rest.split_once(" (commit ").expect(line);
    let (commit, date) = tail.split_once(", built ").expect(line);
    let date = date.strip_suffix(')').expect(line);
    assert!(!commit.is_empty() && commit.len() <= 40, "{line}");
    assert_eq!(date.len(), 10, "{line}");
    assert!(date.starts_with("20"), "{line}");
    (version.to_string(), commit.to_string())
}

#[test]
fn the_agent_serves_metrics_health_and_readiness() {
    let mut etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    // A load file that is not there yet: each sample fails, and is counted.
    let load = dir.path().join("load");
    let load_spec = format!("file:{}", load.display());
    let agent = Proc::agent(
        &etcd,
        "gw-m",
        "r",
        &[
            "--port",
            "tcp=7000",
            "--ttl",
            "2",
            "--load",
            &load_spec,
            "--sample-interval-ms",
            "50",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let addr = agent.wait_for_addr("serving metrics", Duration::from_secs(20));
    let (version, commit) = version_of("gateway-agent");
    assert!(
        agent.output().contains(&format!("version={version}"))
            && agent.output().contains(&format!("commit={commit}")),
        "the start-up line names the build:\n{}",
        agent.output()
    );
    assert_eq!(http_get(addr, "/healthz").unwrap().0, 200);
    wait_until(Duration::from_secs(15), "ready", || {
        http_get(addr, "/readyz").is_some_and(|(c, _)| c == 200)
    });
    std::fs::write(&load, "17\n").unwrap();
    let metrics = || http_get(addr, "/metrics").unwrap().1;
    wait_until(Duration::from_secs(10), "17 connections sampled", || {
        has_sample(&metrics(), "agent_connections 17")
    });
    let text = metrics();
    let (ok, said) = check_metrics(&text);
    assert!(ok, "promtool: {said}\n{text}");
    assert!(
        has_sample(
            &text,
            &format!("agent_build_info{{version=\"{version}\",commit=\"{commit}\"}} 1")
        ),
        "{text}"
    );
    assert!(has_sample(&text, "agent_etcd_connected 1"), "{text}");
    assert!(has_sample(&text, "agent_registered 1"), "{text}");
    assert!(sample(&text, "agent_reports_total") >= 1.0, "{text}");
    assert!(
        sample(&text, "agent_load_source_failures_total") >= 1.0,
        "{text}"
    );
    assert!(
        sample(&text, "agent_last_report_age_seconds") < 60.0,
        "{text}"
    );
    wait_until(Duration::from_secs(5), "a renewal", || {
        sample(&metrics(), "agent_lease_renewals_total") >= 1.0
    });

    // etcd out of reach for longer than the TTL: not ready, still alive.
    etcd.stop();
    wait_until(Duration::from_secs(15), "not ready without etcd", || {
        http_get(addr, "/readyz").is_some_and(|(c, _)| c == 503)
    });
    assert_eq!(http_get(addr, "/healthz").unwrap().0, 200);
    assert!(has_sample(&metrics(), "agent_registered 0"));
    wait_until(Duration::from_secs(10), "etcd seen out of reach", || {
        has_sample(&metrics(), "agent_etcd_connected 0")
    });
    etcd.start_again();
    wait_until(Duration::from_secs(20), "ready again", || {
        http_get(addr, "/readyz").is_some_and(|(c, _)| c == 200)
    });
    assert!(has_sample(&metrics(), "agent_etcd_connected 1"));
}

#[test]
fn the_router_says_what_it_was_built_from() {
    let (version, commit) = version_of("router-server");
    let etcd = Etcd::start();
    let r = RouterProc::start(&etcd, "", &[]);
    let out = r.proc.output();
    assert!(
        out.lines().any(|l| l.contains("router starting")
            && l.contains(&format!("version={version}"))
            && l.contains(&format!("commit={commit}"))),
        "{out}"
    );
    let (_, text) = http_get(r.addr, "/metrics").unwrap();
    assert!(
        has_sample(
            &text,
            &format!("router_build_info{{version=\"{version}\",commit=\"{commit}\"}} 1")
        ),
        "{text}"
    );
    let (ok, said) = check_metrics(&text);
    assert!(ok, "promtool: {said}");
}

#[test]
fn agent_alerts_pass_promtool_and_read_exported_metrics() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    let out = Command::new(promtool())
        .current_dir(&dir)
        .args(["check", "rules", "agent-alerts.yml"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("SUCCESS: 2 rules found"), "{said}");
    let out = Command::new(promtool())
        .current_dir(&dir)
        .args(["test", "rules", "agent-alerts.test.yml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every metric the rules read is one the agent exports.
    let rules = std::fs::read_to_string(dir.join("agent-alerts.yml")).unwrap();
    let etcd = Etcd::start();
    let agent = Proc::agent(
        &etcd,
        "gw-a",
        "r",
        &["--port", "tcp=7000", "--metrics-listen", "127.0.0.1:0"],
    );
    let addr = agent.wait_for_addr("serving metrics", Duration::from_secs(20));
    let (_, text) = http_get(addr, "/metrics").unwrap();
    let exported: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    for line in rules
        .lines()
        .filter(|l| l.trim_start().starts_with("expr:"))
    {
        let names: Vec<&str> = line
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("agent_"))
            .collect();
        assert!(!names.is_empty(), "{line}");
        for name in names {
            assert!(exported.contains(&name), "the rules read {name}");
        }
    }
}
