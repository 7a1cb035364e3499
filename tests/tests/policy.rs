//! Operator policy (`ctl policy`): two real routers over real etcd follow a policy
//! within a second of `ctl policy set` returning: a pool excluded for one region's
//! ISP while it keeps serving the rest, shares of the answers between pools, a dry run
//! that names what a change moves and writes nothing, `/ops` showing it, and `rm`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use harness::{gateway_ids, get_json, get_json_from, router_ctl, wait_until, Etcd, RouterProc, P};

/// cn-sh: `cdn-1` in pool `cdn` (least loaded), `own-1` and `own-2` in pool `own`.
fn put_nodes(etcd: &Etcd) {
    for (id, ip, pool, conns) in [
        ("cdn-1", "192.0.2.1", "cdn", 100),
        ("own-1", "192.0.2.2", "own", 200),
        ("own-2", "192.0.2.3", "own", 300),
    ] {
        etcd.put(
            &format!("{P}/nodes/{id}"),
            &format!(
                r#"{{"id":"{id}","ip":"{ip}","ports":{{"tcp":9000}},"region":"cn-sh","capacity":100000,"connections":{conns},"labels":{{"pool":"{pool}"}}}}"#
            ),
        );
    }
}

/// The ids `/gateways` answers a client at `from`.
fn ids(router: SocketAddr, from: &str) -> Vec<String> {
    let (code, body) = get_json_from(from.parse().unwrap(), router, "/gateways")
        .unwrap_or_else(|| panic!("no answer for {from}"));
    assert_eq!(code, 200, "{body}");
    gateway_ids(&body)
}

const CMCC: &str = "127.21.0.1";
const OTHER: &str = "127.20.0.1";

#[test]
fn a_policy_reaches_every_router_within_a_second_and_steers_only_its_network() {
    let etcd = Etcd::start();
    put_nodes(&etcd);
    let config = r#"
[regions]
cidrs = { "127.0.0.0/8" = "cn-sh" }
isp_cidrs = { "127.21.0.0/16" = "cmcc" }
"#;
    let routers = [
        RouterProc::start(&etcd, config, &[]),
        RouterProc::start(&etcd, config, &[]),
    ];
    for r in &routers {
        wait_until(Duration::from_secs(10), "every node in the router", || {
            get_json(r.addr, "/gateways?count=10").is_some_and(|(c, b)| {
                c == 200 && b["gateways"].as_array().is_some_and(|g| g.len() == 3)
            })
        });
        assert_eq!(ids(r.addr, CMCC)[0], "cdn-1");
    }

    // A dry run names the clients, the nodes no longer answered to them, and writes nothing.
    let set = [
        "policy",
        "set",
        "no-cdn-on-cmcc",
        "--region",
        "cn-sh",
        "--isp",
        "cmcc",
        "--exclude",
        "pool:cdn",
    ];
    let (code, out) = router_ctl(&etcd, &[&set[..], &["--dry-run"]].concat());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("for clients of cn-sh on cmcc (new)"), "{out}");
    assert!(out.contains("no longer answered to them: cdn-1\n"), "{out}");
    assert!(out.contains("dry run: nothing written"), "{out}");
    assert!(etcd.keys(&format!("{P}/policy/")).is_empty());

    // The policy: both routers follow it within a second of ctl returning.
    let (code, out) = router_ctl(&etcd, &set);
    assert_eq!(code, 0, "{out}");
    let set_at = Instant::now();
    for r in &routers {
        wait_until(
            Duration::from_secs(5),
            "the router follows the policy",
            || !ids(r.addr, CMCC).contains(&"cdn-1".to_string()),
        );
    }
    let took = set_at.elapsed();
    println!("both routers followed the policy {took:?} after ctl policy set returned");
    assert!(took < Duration::from_secs(1), "{took:?}");
    for r in &routers {
        assert_eq!(
            ids(r.addr, CMCC),
            ["own-1", "own-2"],
            "cmcc: never the cdn pool"
        );
        assert_eq!(ids(r.addr, OTHER)[0], "cdn-1", "other ISPs keep it");
    }

    // Shares between pools for the region's other clients: 70 % own first, 30 % cdn.
    let (code, out) = router_ctl(
        &etcd,
        &[
            "policy",
            "set",
            "sh-split",
            "--region",
            "cn-sh",
            "--ratio",
            "pool:own=70",
            "--ratio",
            "pool:cdn=30",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let r = routers[0].addr;
    wait_until(Duration::from_secs(5), "the split in force", || {
        (0..10).any(|_| ids(r, OTHER)[0] == "own-1")
    });
    // Every 100 answers of one router: exactly the shares (`/ops` counts them).
    let before = split_answers(r);
    let mut firsts = std::collections::HashMap::<String, u32>::new();
    for _ in 0..100 {
        *firsts.entry(ids(r, OTHER)[0].clone()).or_default() += 1;
    }
    let after = split_answers(r);
    let own = firsts.get("own-1").copied().unwrap_or(0) + firsts.get("own-2").copied().unwrap_or(0);
    assert_eq!(
        (own, firsts.get("cdn-1").copied().unwrap_or(0)),
        (70, 30),
        "{firsts:?}"
    );
    assert_eq!((after.0 - before.0, after.1 - before.1), (70, 30));
    // cmcc clients keep their own policy: the split is not theirs.
    assert_eq!(ids(r, CMCC), ["own-1", "own-2"]);

    // `list` names both; `get` shows who wrote it; `rm` lifts it on both routers.
    let (code, out) = router_ctl(&etcd, &["policy", "list"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("no-cdn-on-cmcc") && out.contains("cn-sh/cmcc") && out.contains("pool:cdn"),
        "{out}"
    );
    assert!(
        out.contains("sh-split") && out.contains("pool:own=70,pool:cdn=30"),
        "{out}"
    );
    let (code, out) = router_ctl(&etcd, &["policy", "get", "no-cdn-on-cmcc"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"by\"") && out.contains("\"at_ms\""), "{out}");

    // A cap instead of the split: the cdn pool (the least loaded) leads exactly 20 of
    // every 100 answers, and comes last in the others.
    let cap = [
        "policy",
        "set",
        "sh-split",
        "--region",
        "cn-sh",
        "--cap",
        "pool:cdn=20",
    ];
    let (code, out) = router_ctl(&etcd, &[&cap[..], &["--dry-run"]].concat());
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("pool:cdn: first in at most 20 % of their answers")
            && out.contains("pool:own: no share any more"),
        "{out}"
    );
    let (code, out) = router_ctl(&etcd, &cap);
    assert_eq!(code, 0, "{out}");
    wait_until(Duration::from_secs(5), "the cap in force", || {
        (0..10).any(|_| ids(r, OTHER).last().map(String::as_str) == Some("cdn-1"))
    });
    let mut led = 0;
    for _ in 0..100 {
        let got = ids(r, OTHER);
        match got[0].as_str() {
            "cdn-1" => led += 1,
            _ => assert_eq!(got.last().map(String::as_str), Some("cdn-1"), "{got:?}"),
        }
    }
    assert_eq!(led, 20);
    let (code, out) = router_ctl(&etcd, &["policy", "rm", "no-cdn-on-cmcc"]);
    assert_eq!(code, 0, "{out}");
    for r in &routers {
        wait_until(
            Duration::from_secs(5),
            "the router lifts the policy",
            || ids(r.addr, CMCC).contains(&"cdn-1".to_string()),
        );
    }
    let (code, out) = router_ctl(&etcd, &["policy", "rm", "no-cdn-on-cmcc"]);
    assert_eq!(code, 1, "{out}");
}

/// The answers `/ops` says the `sh-split` policy sent first to `pool:own` and
/// `pool:cdn`.
fn split_answers(router: SocketAddr) -> (u64, u64) {
    let (_, body) = get_json(router, "/ops/summary.json").unwrap();
    let p = body["router"]["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "sh-split")
        .unwrap_or_else(|| panic!("no sh-split in {body}"))
        .clone();
    (
        p["answers"][0].as_u64().unwrap(),
        p["answers"][1].as_u64().unwrap(),
    )
}

#[test]
fn bad_policies_are_refused_with_the_reason_and_write_nothing() {
    let etcd = Etcd::start();
    for (args, says) in [
        (
            &["policy", "set", "p", "--region", "cn-sh"][..],
            "excludes, shares or caps something",
        ),
        (
            &[
                "policy", "set", "p", "--region", "cn-sh", "--ratio", "dc:a=60",
            ][..],
            "add up to 60",
        ),
        (
            &[
                "policy",
                "set",
                "p",
                "--region",
                "cn-sh",
                "--exclude",
                "zone:a",
            ][..],
            "dc:NAME or pool:NAME",
        ),
        (
            &[
                "policy", "set", "p", "--region", "cn-sh", "--ratio", "dc:a=0",
            ][..],
            "1-100",
        ),
        (
            &[
                "policy",
                "set",
                "a/b",
                "--region",
                "cn-sh",
                "--exclude",
                "dc:a",
            ][..],
            "a/b",
        ),
    ] {
        let (code, out) = router_ctl(&etcd, args);
        assert_ne!(code, 0, "{args:?}: {out}");
        assert!(out.contains(says), "{args:?}: {out}");
    }
    assert!(etcd.keys(&format!("{P}/policy/")).is_empty());
}
