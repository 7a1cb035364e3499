//! `ctl explain` end to end: real etcd, the real router with its admin API, and the
//! real `ctl`: a fleet with a draining node, a full one, one in another region and one
//! outside its binding (`ctl bind`), each named with its reason, and the answer the
//! same as the client's own `/gateways`.

use std::process::Command;
use std::time::Duration;

use harness::{bin, router_ctl, wait_until, Etcd, NodeJson, RouterProc, P};
use serde_json::Value;

const TOKEN: &str = "explain-e2e-token-0123456789";

const CONFIG: &str =
    "[regions]\ncidrs = { \"127.0.0.0/8\" = \"cn-sh\", \"198.51.100.0/24\" = \"cn-sh\" }\n";

fn put(etcd: &Etcd, node: NodeJson, id: &str) {
    etcd.put(&format!("{P}/nodes/{id}"), &node.build());
}

/// `ctl explain ARGS --router URL --admin-token T`: exit code, stdout, stderr.
fn explain(router: &RouterProc, args: &[&str]) -> (i32, String, String) {
    let url = format!("http://{}", router.addr);
    let out = Command::new(bin("router-server"))
        .args(["ctl", "explain"])
        .args(args)
        .args(["--router", &url, "--admin-token", TOKEN])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .expect("ctl runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(router: &RouterProc, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, out, err) = explain(router, &all);
    assert_eq!(code, 0, "ctl explain {args:?}: {out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn reason_of<'a>(x: &'a Value, id: &str) -> Option<&'a str> {
    x["passed_over"]
        .as_array()?
        .iter()
        .find(|p| p["id"] == id)
        .and_then(|p| p["reason"].as_str())
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn ctl_explain_names_each_node_left_out() {
    let etcd = Etcd::start();
    let sh = |id: &str, conns: u64| NodeJson::new(id).region("cn-sh").conns(conns);
    put(&etcd, sh("sh-1", 100), "sh-1");
    put(&etcd, sh("sh-2", 200), "sh-2");
    put(&etcd, sh("sh-3", 300), "sh-3");
    put(
        &etcd,
        sh("sh-draining", 0).with("state", "draining"),
        "sh-draining",
    );
    put(&etcd, sh("sh-full", 960), "sh-full");
    put(&etcd, NodeJson::new("bj-1").region("cn-bj"), "bj-1");
    // Claims an address outside the range the operator binds it to.
    put(&etcd, sh("sh-evil", 0).ip("198.51.100.99"), "sh-evil");
    let (code, out) = router_ctl(&etcd, &["bind", "sh-evil", "--ip", "192.0.2.0/28"]);
    assert_eq!(code, 0, "ctl bind: {out}");
    let router = RouterProc::start(&etcd, CONFIG, &["--admin-token", TOKEN]);

    // The router has judged the binding once sh-evil is listed invalid.
    let mut x = Value::Null;
    wait_until(Duration::from_secs(10), "sh-evil listed invalid", || {
        x = json(&router, &["198.51.100.7"]);
        ids(&x["invalid"]).contains(&"sh-evil".to_string())
            && x["passed_over"].as_array().is_some_and(|p| p.len() == 3)
    });
    assert_eq!(x["region"], "cn-sh");
    assert_eq!(x["region_from"], "cidr");
    assert_eq!(x["region_cidr"], "198.51.100.0/24");
    assert_eq!(x["outcome"], "answered");
    assert_eq!(ids(&x["answer"]), ["sh-1", "sh-2", "sh-3"]);
    assert_eq!(reason_of(&x, "sh-draining"), Some("draining"));
    assert_eq!(reason_of(&x, "sh-full"), Some("full"));
    assert_eq!(reason_of(&x, "bj-1"), Some("other_region"));
    let evil = &x["invalid"][0];
    assert_eq!(evil["kind"], "binding", "{evil}");
    assert!(
        evil["reason"]
            .as_str()
            .unwrap()
            .starts_with("binding: ip 198.51.100.99"),
        "{evil}"
    );

    // The client itself (127.0.0.1 is cn-sh too) gets the answer explained; explaining
    // counted nothing, so the order is the same.
    let mine = json(&router, &["127.0.0.1"]);
    assert_eq!(router.ids("/gateways"), ids(&mine["answer"]));

    // The human report: the region and why, the answer, the reasons grouped.
    let (code, out, err) = explain(&router, &["198.51.100.7", "--isp", "ctcc"]);
    assert_eq!(code, 0, "{out}{err}");
    for needle in [
        "region    cn-sh (from [regions] cidrs 198.51.100.0/24); then any region",
        "isp       ctcc (its line first in each region)",
        "outcome   answered",
        "1. sh-1",
        "draining (1):",
        "full (1):",
        "other_region (1):",
        "sh-evil",
        "binding: ip 198.51.100.99",
    ] {
        assert!(out.contains(needle), "{needle:?} missing:\n{out}");
    }

    // Asking for the other region, with room for one: bj-1 answers, cn-sh is passed over.
    let bj = json(
        &router,
        &["198.51.100.7", "--region", "cn-bj", "--count", "1"],
    );
    assert_eq!(ids(&bj["answer"]), ["bj-1"]);
    assert_eq!(reason_of(&bj, "sh-1"), Some("other_region"));
    // No wss port anywhere: no gateways, every node says why.
    let wss = json(&router, &["198.51.100.7", "--proto", "wss"]);
    assert_eq!(wss["outcome"], "no_gateways");
    assert_eq!(reason_of(&wss, "sh-1"), Some("no_port"));

    // Refusals: a bad token, a bad address.
    let url = format!("http://{}", router.addr);
    let out = Command::new(bin("router-server"))
        .args(["ctl", "explain", "198.51.100.7", "--router", &url])
        .args(["--admin-token", "wrong-token-wrong-token"])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401") && err.contains("unauthorized"), "{err}");
    let (code, _, err) = explain(&router, &["not-an-ip"]);
    assert_eq!(code, 2, "{err}");
}
