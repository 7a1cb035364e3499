//! Partitions, in network namespaces of the test's own (see `harness::netns`): three
//! etcd members with etcd's default timing, and the agent, the router and `ctl` in a
//! client namespace, each given every member with member 0 first.

use std::time::{Duration, Instant};

use harness::netns::Lab;
use harness::{wait_until, Proc};

const P: &str = "/gateway-router/v1";

/// Starts an agent for `id` in the lab's gateways' namespace, its load read from `load`.
fn agent(lab: &Lab, id: &str, load: &std::path::Path) -> Proc {
    let endpoints = lab.endpoints();
    let load = format!("file:{}", load.display());
    Proc::spawn_full(
        "gateway-agent",
        &[
            "--etcd",
            &endpoints,
            "--id",
            id,
            "--ip",
            "10.77.2.101",
            "--region",
            "r",
            "--capacity",
            "1000",
            "--port",
            "tcp=7000",
            "--load",
            &load,
        ],
        &[],
        false,
        Some(lab.in_gateways()),
    )
}

/// Member 0, first in every `--etcd`, is cut off from its peers while its client port
/// still answers. The agent's next report, and a `ctl drain` issued at the cut, both
/// reach the majority within 2 s of the majority having a leader (at once for a cut
/// follower, after the election for a cut leader).
fn first_member_cut_off(leader: bool) {
    let lab = Lab::new(3);
    lab.make_leader(if leader { 0 } else { 1 });
    let load = lab.dir().join("load");
    std::fs::write(&load, "100").unwrap();
    let mut agent = agent(&lab, "gw-p", &load);
    let key = format!("{P}/nodes/gw-p");
    let majority = [1, 2];
    let start = Instant::now();
    while !lab
        .get_on(&majority, &key)
        .is_some_and(|v| v.contains("\"connections\":100"))
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not registered with 100:\n{}",
            agent.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    lab.cut_peers(0);
    let cut = Instant::now();
    std::fs::write(&load, "200").unwrap();
    // `ctl drain` at the same moment, from the same namespace.
    let ctl = {
        let endpoints = lab.endpoints();
        let wrapper = lab.in_client();
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut p = Proc::spawn_full(
                "router-server",
                &["ctl", "--etcd", &endpoints, "drain", "gw-p"],
                &[],
                false,
                Some(wrapper),
            );
            let status = p.wait_exit(Duration::from_secs(60));
            (status.success(), started.elapsed(), p.output())
        })
    };
    let mut writable: Option<Instant> = None;
    let mut reported: Option<Instant> = None;
    let mut drained: Option<Instant> = None;
    while writable.is_none() || reported.is_none() || drained.is_none() {
        assert!(
            cut.elapsed() < Duration::from_secs(60),
            "majority writable {writable:?}, report {reported:?}, drain {drained:?}\nagent:\n{}\n{}",
            agent.output(),
            lab.logs()
        );
        if writable.is_none() && lab.leader_seen_by(&majority).is_some_and(|l| l != 0) {
            writable = Some(Instant::now());
        }
        let v = lab.get_on(&majority, &key).unwrap_or_default();
        if reported.is_none() && v.contains("\"connections\":200") {
            reported = Some(Instant::now());
        }
        if drained.is_none()
            && lab
                .get_on(&majority, &format!("{P}/commands/gw-p"))
                .is_some()
        {
            drained = Some(Instant::now());
        }
    }
    let (ok, ctl_took, ctl_out) = ctl.join().unwrap();
    assert!(ok, "ctl drain failed during the partition: {ctl_out}");
    let (writable, reported) = (writable.unwrap(), reported.unwrap());
    let after = reported.saturating_duration_since(writable);
    println!(
        "member 0 ({}) cut off: majority has a leader after {:?}; the agent's report lands {:?} after the cut ({after:?} after the majority has a leader); ctl drain took {ctl_took:?}",
        if leader { "leader" } else { "follower" },
        writable - cut,
        reported - cut,
    );
    assert!(
        after <= Duration::from_secs(2),
        "the report landed {after:?} after the majority had a leader\n{}",
        agent.output()
    );
    let ctl_after = (cut + ctl_took).saturating_duration_since(writable);
    assert!(
        ctl_after <= Duration::from_secs(2),
        "ctl finished {ctl_after:?} after the majority had a leader: {ctl_out}"
    );
    // The node stayed listed all along, and the drain reached the agent.
    wait_until(Duration::from_secs(20), "the agent drains", || {
        lab.get_on(&majority, &key)
            .is_some_and(|v| v.contains("\"draining\""))
    });
    agent.signal("TERM");
    agent.wait_exit(Duration::from_secs(20));
}

#[test]
fn the_agent_and_ctl_follow_the_majority_when_the_first_member_is_a_cut_off_leader() {
    first_member_cut_off(true);
}

#[test]
fn the_agent_and_ctl_follow_the_majority_when_the_first_member_is_a_cut_off_follower() {
    first_member_cut_off(false);
}

/// A router cut off from every member keeps answering from what it knew, flagged
/// `stale`, and is current again once the network heals.
#[test]
fn a_router_cut_off_from_every_member_answers_stale_and_keeps_serving() {
    let lab = Lab::new(3);
    let load = lab.dir().join("load");
    std::fs::write(&load, "10").unwrap();
    let _agent = agent(&lab, "gw-s", &load);
    let config = lab.dir().join("router.toml");
    std::fs::write(&config, "[rate_limit]\nper_ip_per_sec = 0\n").unwrap();
    let endpoints = lab.endpoints();
    let router = Proc::spawn_full(
        "router-server",
        &[
            "--etcd",
            &endpoints,
            "--listen",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
        ],
        &[],
        false,
        Some(lab.in_client()),
    );
    let addr = router.wait_for_addr("serving HTTP", Duration::from_secs(30));
    let url = format!("http://{addr}/gateways");
    let answer = || -> serde_json::Value {
        let (code, body) = lab.http_get(&url).expect("the router answers");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    wait_until(Duration::from_secs(30), "gw-s answered", || {
        lab.http_get(&url)
            .is_some_and(|(c, b)| c == 200 && b.contains("gw-s"))
    });
    assert_eq!(answer()["stale"], false);

    lab.cut_client();
    let cut = Instant::now();
    wait_until(Duration::from_secs(60), "stale answers", || {
        let b = answer();
        assert_eq!(harness::gateway_ids(&b), ["gw-s"], "{b}");
        b["stale"] == true
    });
    // From the router's namespace, etcd is out of reach indeed.
    assert!(
        lab.get_on(&[1, 2], &format!("{P}/nodes/gw-s")).is_none(),
        "the client namespace is cut off"
    );
    println!(
        "cut off from every member: answers stale after {:?}",
        cut.elapsed()
    );
    // Still serving, from what it knew.
    for _ in 0..20 {
        let b = answer();
        assert_eq!(harness::gateway_ids(&b), ["gw-s"], "{b}");
        assert_eq!(b["stale"], true);
    }
    lab.heal_client();
    wait_until(Duration::from_secs(60), "current again", || {
        answer()["stale"] == false
    });
}
