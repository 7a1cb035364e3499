//! SIGHUP on a real router: `[regions]` and `[edge]`'s block list change in place; a
//! file that fails validation changes nothing (logged, counted); a change only a
//! restart applies is named and waits.

use std::time::Duration;

use harness::{get_json, http_get, wait_until, Etcd, NodeJson, RouterProc, P};

/// The region the router answers a client at 127.0.0.1 with.
fn region(r: &RouterProc) -> Option<String> {
    let (code, body) = get_json(r.addr, "/gateways")?;
    (code == 200).then(|| body["region"].as_str().unwrap_or("").to_string())
}

fn metric(r: &RouterProc, line: &str) -> bool {
    http_get(r.addr, "/metrics").is_some_and(|(_, text)| text.contains(line))
}

#[test]
fn sighup_applies_regions_and_block_lists_and_keeps_a_bad_file_out() {
    let etcd = Etcd::start();
    for (id, region) in [("sh-1", "cn-sh"), ("bj-1", "cn-bj")] {
        etcd.put(
            &format!("{P}/nodes/{id}"),
            &NodeJson::new(id).region(region).conns(1).build(),
        );
    }
    let r = RouterProc::start(
        &etcd,
        "[regions]\ncidrs = { \"127.0.0.0/8\" = \"cn-sh\" }\n",
        &[],
    );
    wait_until(Duration::from_secs(10), "cn-sh", || {
        region(&r).as_deref() == Some("cn-sh")
    });
    let path = r.config_path().to_path_buf();
    let first = std::fs::read_to_string(&path).unwrap();
    let rewrite = |from: &str, to: &str| {
        let now = std::fs::read_to_string(&path).unwrap();
        assert!(now.contains(from), "{from:?} not in\n{now}");
        std::fs::write(&path, now.replace(from, to)).unwrap();
        r.proc.signal("HUP");
    };

    // [regions]: the next answer is the new region's.
    rewrite("= \"cn-sh\"", "= \"cn-bj\"");
    wait_until(Duration::from_secs(10), "cn-bj after SIGHUP", || {
        region(&r).as_deref() == Some("cn-bj")
    });
    r.proc
        .wait_for_output("configuration reloaded", Duration::from_secs(5));

    // A file that fails: the region stays, the refusal is logged and counted.
    rewrite("\"127.0.0.0/8\"", "\"127.0.0.0/33\"");
    r.proc
        .wait_for_output("configuration reload refused", Duration::from_secs(10));
    assert_eq!(region(&r).as_deref(), Some("cn-bj"));
    assert!(metric(
        &r,
        "router_config_reloads_total{result=\"invalid\"} 1"
    ));
    rewrite("\"127.0.0.0/33\"", "\"127.0.0.0/8\"");

    // A change only a restart applies: named, counted, not in force.
    std::fs::write(
        &path,
        format!(
            "max_load = 0.5\n{}",
            std::fs::read_to_string(&path).unwrap()
        ),
    )
    .unwrap();
    r.proc.signal("HUP");
    r.proc
        .wait_for_output("need a restart", Duration::from_secs(10));
    wait_until(Duration::from_secs(5), "restart needed", || {
        metric(&r, "router_config_restart_needed 1")
    });

    // [edge] block, this client's network: refused from the next request on.
    rewrite("[edge]\n", "[edge]\nblock = [\"127.0.0.0/8\"]\n");
    wait_until(Duration::from_secs(10), "blocked after SIGHUP", || {
        get_json(r.addr, "/gateways").is_some_and(|(code, _)| code == 403)
    });
    assert!(
        first.contains("[edge]"),
        "the harness writes an [edge] table"
    );
}
