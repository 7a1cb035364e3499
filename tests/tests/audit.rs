//! The audit trail: changes made through `ctl` (policy, block, bind, drain) and
//! through the admin API with a named token are each recorded in `P/audit/` with their
//! author, and `ctl audit` lists them newest first with the values before and after.

use std::path::Path;
use std::process::Command;

use harness::{bin, http_request, make_private, router_ctl, Etcd, NodeJson, RouterProc, P};

const BOB: &str = "bob-token-0123456789abcdef";

/// `router-server ctl ARGS` run as login `user` (no etcd user: ctl names the login).
fn ctl_as(etcd: &Etcd, user: &str, args: &[&str]) -> String {
    let out = Command::new(bin("router-server"))
        .args(["ctl", "--etcd", &etcd.endpoints()])
        .args(args)
        .env("USER", user)
        .env_remove("LOGNAME")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "ctl {args:?}: {text}");
    text
}

fn token_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("admin-tokens");
    std::fs::write(&path, format!("bob:{BOB}\n")).unwrap();
    make_private(&path);
    path
}

#[test]
fn every_change_names_its_author_in_the_audit_trail() {
    let etcd = Etcd::start();
    for id in ["gw-a", "gw-b"] {
        etcd.put(
            &format!("{P}/nodes/{id}"),
            &NodeJson::new(id).region("cn-sh").build(),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let tokens = token_file(dir.path());
    let r = RouterProc::start(&etcd, "", &["--admin-token-file", tokens.to_str().unwrap()]);

    for group in ["pool:cdn", "pool:other"] {
        let set = [
            "policy",
            "set",
            "p1",
            "--region",
            "cn-sh",
            "--exclude",
            group,
        ];
        ctl_as(&etcd, "alice", &set);
    }
    ctl_as(
        &etcd,
        "carol",
        &["block", "198.51.100.0/24", "--reason", "scraper"],
    );
    ctl_as(&etcd, "carol", &["bind", "gw-a", "--region", "cn-sh"]);
    ctl_as(&etcd, "alice", &["drain", "gw-b"]);
    let (code, body) =
        http_request(r.addr, "POST", "/admin/nodes/gw-a/drain", Some(BOB), "").unwrap();
    assert_eq!(code, 202, "{body}");
    ctl_as(&etcd, "alice", &["policy", "rm", "p1"]);

    let (code, out) = router_ctl(&etcd, &["audit", "--json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let entries = v["entries"].as_array().unwrap();
    let summary: Vec<(String, String, String, String)> = entries
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap().to_string();
            (s("by"), s("via"), s("action"), s("key"))
        })
        .collect();
    let key = |k: &str| format!("{P}/{k}");
    assert_eq!(
        summary,
        [
            (
                "alice".into(),
                "ctl".into(),
                "policy rm".into(),
                key("policy/p1")
            ),
            (
                "bob".into(),
                "admin-api".into(),
                "drain".into(),
                key("commands/gw-a")
            ),
            (
                "alice".into(),
                "ctl".into(),
                "drain".into(),
                key("commands/gw-b")
            ),
            (
                "carol".into(),
                "ctl".into(),
                "bind".into(),
                key("bindings/gw-a")
            ),
            (
                "carol".into(),
                "ctl".into(),
                "block".into(),
                key("blocklist/198.51.100.0_24")
            ),
            (
                "alice".into(),
                "ctl".into(),
                "policy set".into(),
                key("policy/p1")
            ),
            (
                "alice".into(),
                "ctl".into(),
                "policy set".into(),
                key("policy/p1")
            ),
        ],
        "{out}"
    );
    // Before and after: the replaced policy, then its removal.
    assert_eq!(entries[6]["before"], serde_json::Value::Null);
    assert_eq!(entries[5]["before"]["exclude"][0], "pool:cdn");
    assert_eq!(entries[5]["after"]["exclude"][0], "pool:other");
    assert_eq!(entries[0]["before"]["exclude"][0], "pool:other");
    assert_eq!(entries[0]["after"], serde_json::Value::Null);
    assert_eq!(entries[1]["after"]["action"], "drain");
    // Every entry lives under a lease, so the trail never fills etcd.
    for k in etcd.keys(&format!("{P}/audit/")) {
        let out = etcd.ctl(&["get", &k, "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_ne!(
            v["kvs"][0]["lease"].as_i64().unwrap_or(0),
            0,
            "{k} has no lease"
        );
    }
    // The admin API (and the fleet page's panel) reads the same trail.
    let (code, body) = http_request(r.addr, "GET", "/admin/audit?limit=3", Some(BOB), "").unwrap();
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let by: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["by"].as_str().unwrap())
        .collect();
    assert_eq!(by, ["alice", "bob", "alice"], "{body}");
    assert_eq!(v["entries"][1]["registry"], "default");
    assert_eq!(
        http_request(r.addr, "GET", "/admin/audit", None, "")
            .unwrap()
            .0,
        401
    );
    assert_eq!(
        http_request(r.addr, "GET", "/admin/audit?limit=0", Some(BOB), "")
            .unwrap()
            .0,
        400
    );
    // The table: newest first, one line each.
    let (code, table) = router_ctl(&etcd, &["audit", "--limit", "2"]);
    assert_eq!(code, 0, "{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[1].contains("alice") && lines[1].contains("policy rm"),
        "{table}"
    );
    assert!(
        lines[2].contains("bob") && lines[2].contains("admin-api"),
        "{table}"
    );
}
