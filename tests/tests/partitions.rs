//! Partitions, in network namespaces of the test's own (see `harness::netns`): three
//! etcd members with etcd's default timing, and the agent, the router and `ctl` in a
//! client namespace, each given every member with member 0 first.

use std::time::{Duration, Instant};

use harness::netns::{leave_as_killed, Lab, Leftovers};
use harness::{stdout_of, wait_until, Proc, P};

/// Starts an agent for `id` in the lab's gateways' namespace, its load read from `load`.
fn agent(lab: &Lab, id: &str, load: &std::path::Path) -> Proc {
    agent_in(lab, id, "r", load)
}

/// [`agent`] in `region`.
fn agent_in(lab: &Lab, id: &str, region: &str, load: &std::path::Path) -> Proc {
    let endpoints = lab.endpoints();
    let load = format!("file:{}", load.display());
    let ip = lab.gateway_ip();
    Proc::spawn_full(
        "gateway-agent",
        &[
            "--etcd",
            &endpoints,
            "--id",
            id,
            "--ip",
            &ip,
            "--region",
            region,
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
/// still answers. Every call the agent makes fails over: its next report, and a `ctl
/// drain` issued at the cut, both reach the majority within 2 s of the majority having
/// a leader (at once for a cut follower, after the election for a cut leader); its
/// next lease renewal reaches the majority within 2 s of being due (or of the majority
/// having a leader, when it fell due during the election), and the lease never
/// lapses; the drain, once on the majority, reaches the agent through its command
/// watch and is in its record within 2 s.
fn first_member_cut_off(leader: bool) {
    let lab = Lab::new(3);
    lab.make_leader(if leader { 0 } else { 1 });
    let load = lab.dir().join("load");
    std::fs::write(&load, "100").unwrap();
    let mut agent = agent(&lab, "gw-p", &load);
    let key = format!("{P}/nodes/gw-p");
    let start = Instant::now();
    while !lab
        .get_on(&MAJORITY, &key)
        .is_some_and(|v| v.contains("\"connections\":100"))
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not registered with 100:\n{}",
            agent.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let lease = lab.lease_of(&MAJORITY, &key).expect("the record's lease");
    let renewals = Renewals::new(lab.lease_remaining(&MAJORITY, lease).unwrap());
    lab.cut_peers(0);
    let cut = Instant::now();
    std::fs::write(&load, "200").unwrap();
    // `ctl drain` at the same moment, from the same namespace.
    let ctl = ctl_drain(&lab);
    let (seen, ctl) = follow_the_cut(&lab, &agent, ctl, lease, cut, renewals);
    let (ok, ctl_took, ctl_out) = ctl.join().unwrap();
    assert!(ok, "ctl drain failed during the partition: {ctl_out}");
    let (writable, reported) = (seen.writable.unwrap(), seen.reported.unwrap());
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
    watch_and_keep_alive_bounds(&seen, cut, &agent);
    agent.signal("TERM");
    agent.wait_exit(Duration::from_secs(20));
}

/// The members that keep a quorum when member 0 is cut off.
const MAJORITY: [usize; 2] = [1, 2];

/// `ctl drain gw-p` from the lab's client namespace, on a thread of its own.
fn ctl_drain(lab: &Lab) -> CtlDrain {
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
}

/// A `ctl drain` running: whether it succeeded, how long it took, what it printed.
type CtlDrain = std::thread::JoinHandle<(bool, Duration, String)>;

/// When the majority saw each thing after the cut.
struct Seen {
    /// The majority had a leader other than member 0.
    writable: Option<Instant>,
    /// The agent's record with the new load.
    reported: Option<Instant>,
    /// The drain command.
    drained: Option<Instant>,
    /// The agent's record saying draining.
    applied: Option<Instant>,
    renewals: Renewals,
}

/// Polls the majority until it has seen a leader, the report, the drain command, the
/// drain applied and a lease renewal after `cut`; the lease must never lapse.
fn follow_the_cut(
    lab: &Lab,
    agent: &Proc,
    ctl: CtlDrain,
    lease: i64,
    cut: Instant,
    renewals: Renewals,
) -> (Seen, CtlDrain) {
    let key = format!("{P}/nodes/gw-p");
    let mut s = Seen {
        writable: None,
        reported: None,
        drained: None,
        applied: None,
        renewals,
    };
    while s.writable.is_none()
        || s.reported.is_none()
        || s.drained.is_none()
        || s.applied.is_none()
        || !s.renewals.renewed_after(cut)
    {
        assert!(
            cut.elapsed() < Duration::from_secs(60),
            "majority writable {:?}, report {:?}, drain {:?}, applied {:?}, renewals {:?}\nagent:\n{}\n{}",
            s.writable,
            s.reported,
            s.drained,
            s.applied,
            s.renewals.seen,
            agent.output(),
            lab.logs()
        );
        let left = lab.lease_remaining(&MAJORITY, lease);
        assert!(
            left.is_none_or(|l| l > 0),
            "the lease lapsed during the partition\n{}",
            agent.output()
        );
        if let Some(l) = left {
            s.renewals.sample(l);
        }
        let now = Some(Instant::now());
        if s.writable.is_none() && lab.leader_seen_by(&MAJORITY).is_some_and(|l| l != 0) {
            s.writable = now;
        }
        let v = lab.get_on(&MAJORITY, &key).unwrap_or_default();
        if s.reported.is_none() && v.contains("\"connections\":200") {
            s.reported = now;
        }
        if s.applied.is_none() && v.contains("\"draining\"") {
            s.applied = now;
        }
        let ctl_ended = ctl.is_finished();
        if s.drained.is_none()
            && lab
                .get_on(&MAJORITY, &format!("{P}/commands/gw-p"))
                .is_some()
        {
            s.drained = now;
        }
        // A `ctl` that has ended has written its command or failed: say which.
        if ctl_ended && s.drained.is_none() {
            let (ok, took, out) = ctl.join().unwrap();
            panic!("ctl drain ended (success {ok}, after {took:?}) without its command on the majority:\n{out}");
        }
    }
    (s, ctl)
}

/// The command watch: the drain on the majority is in the agent's record within 2 s.
/// The keep-alive: the first renewal after the cut lands within 2 s of when it was due.
fn watch_and_keep_alive_bounds(seen: &Seen, cut: Instant, agent: &Proc) {
    let writable = seen.writable.unwrap();
    let watched = seen
        .applied
        .unwrap()
        .saturating_duration_since(seen.drained.unwrap().max(writable));
    let due = writable.max(seen.renewals.last_before(cut) + RENEW_EVERY);
    let renewed = seen.renewals.first_after(cut);
    let renewal_late = renewed.saturating_duration_since(due);
    println!(
        "  the drain reached the agent's record {watched:?} after it was on the majority; the first lease renewal after the cut landed {renewal_late:?} after it was due"
    );
    assert!(
        watched <= Duration::from_secs(2),
        "the drain reached the agent {watched:?} after it was on the majority\n{}",
        agent.output()
    );
    // Renewal times are read from whole seconds of remaining TTL: one more second.
    assert!(
        renewal_late <= Duration::from_secs(3),
        "the lease was renewed {renewal_late:?} after it was due ({:?})\n{}",
        seen.renewals.seen,
        agent.output()
    );
}

/// The agent's lease TTL (its default) and how often it renews.
const TTL: Duration = Duration::from_secs(10);
const RENEW_EVERY: Duration = Duration::from_millis(3333);

/// The agent's lease renewals as the majority sees them: each reading of the
/// remaining TTL dates the last renewal (now − (TTL − remaining), to a second).
struct Renewals {
    seen: Vec<Instant>,
}

impl Renewals {
    fn new(remaining: i64) -> Renewals {
        let mut r = Renewals { seen: Vec::new() };
        r.sample(remaining);
        r
    }

    fn sample(&mut self, remaining: i64) {
        let at = Instant::now() - TTL.saturating_sub(Duration::from_secs(remaining.max(0) as u64));
        // A later date by more than the reading's second of rounding: a renewal.
        if self
            .seen
            .last()
            .is_none_or(|l| at > *l + Duration::from_millis(1500))
        {
            self.seen.push(at);
        }
    }

    fn renewed_after(&self, t: Instant) -> bool {
        self.seen.iter().any(|r| *r > t)
    }

    fn first_after(&self, t: Instant) -> Instant {
        *self.seen.iter().find(|r| **r > t).unwrap()
    }

    fn last_before(&self, t: Instant) -> Instant {
        *self.seen.iter().rev().find(|r| **r <= t).unwrap()
    }
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

/// A router in `lab`'s client namespace following `registries` (its own first).
fn router_in(lab: &Lab, registries: &[(&str, &Lab)], config: &str) -> (Proc, String) {
    let file = lab.dir().join("router.toml");
    std::fs::write(
        &file,
        format!("{config}\n[rate_limit]\nper_ip_per_sec = 0\n"),
    )
    .unwrap();
    let specs: Vec<String> = registries
        .iter()
        .map(|(name, l)| format!("{name}={}", l.endpoints()))
        .collect();
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--config",
        file.to_str().unwrap(),
    ];
    for s in &specs {
        args.extend(["--registry", s.as_str()]);
    }
    let p = Proc::spawn_full("router-server", &args, &[], false, Some(lab.in_client()));
    let addr = p.wait_for_addr("serving HTTP", Duration::from_secs(30));
    (p, format!("http://{addr}"))
}

/// Two DCs, each a lab of its own (etcd, a router, a gateway), joined by one link. The
/// link is cut: each side keeps serving its own DC, the other DC's nodes are demoted.
/// It heals: every node is fresh again within a few seconds.
#[test]
fn a_partition_between_two_dcs() {
    let a = Lab::on_net(1, 0);
    let b = Lab::on_net(1, 1);
    a.join(&b);
    let (la, lb) = (a.dir().join("load"), b.dir().join("load"));
    std::fs::write(&la, "10").unwrap();
    std::fs::write(&lb, "10").unwrap();
    let _ga = agent_in(&a, "gw-a1", "a-r", &la);
    let _gb = agent_in(&b, "gw-b1", "b-r", &lb);
    let config =
        "registry_stale_secs = 3\n[regions.fallbacks]\n\"a-r\" = [\"b-r\"]\n\"b-r\" = [\"a-r\"]\n";
    let (_ra, ua) = router_in(&a, &[("a", &a), ("b", &b)], config);
    let (_rb, ub) = router_in(&b, &[("b", &b), ("a", &a)], config);
    // What a router in `lab` at `url` answers a client of `region`: (id, dc) pairs and
    // the stale flag.
    let ask_n =
        |lab: &Lab, url: &str, region: &str, n: u8| -> Option<(Vec<(String, String)>, bool)> {
            let (code, body) =
                lab.http_get(&format!("{url}/gateways?region={region}&count={n}"))?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            (code == 200).then(|| {
                let got = v["gateways"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|g| {
                        (
                            g["id"].as_str().unwrap().into(),
                            g["dc"].as_str().unwrap().into(),
                        )
                    })
                    .collect();
                (got, v["stale"] == true)
            })
        };
    let ask = |lab: &Lab, url: &str, region: &str| ask_n(lab, url, region, 2);
    let pair = |id: &str, dc: &str| (id.to_string(), dc.to_string());
    let own_first = |lab: &Lab, url: &str, own: &str, other: &str| {
        ask(lab, url, &format!("{own}-r")).is_some_and(|(got, stale)| {
            got == [
                pair(&format!("gw-{own}1"), own),
                pair(&format!("gw-{other}1"), other),
            ] && !stale
        })
    };
    wait_until(
        Duration::from_secs(60),
        "both routers answer both DCs",
        || own_first(&a, &ua, "a", "b") && own_first(&b, &ub, "b", "a"),
    );

    a.cut_join();
    let cut = Instant::now();
    // The other DC's clients, asking this side: this DC's node first, the other's
    // (demoted) after it, flagged stale.
    let demoted = |lab: &Lab, url: &str, own: &str, other: &str| {
        ask(lab, url, &format!("{other}-r")).is_some_and(|(got, stale)| {
            got == [
                pair(&format!("gw-{own}1"), own),
                pair(&format!("gw-{other}1"), other),
            ] && stale
        })
    };
    wait_until(
        Duration::from_secs(60),
        "each side demotes the other DC",
        || demoted(&a, &ua, "a", "b") && demoted(&b, &ub, "b", "a"),
    );
    println!(
        "DCs partitioned: each side demoted the other after {:?}",
        cut.elapsed()
    );
    // Each side still serves its own DC, fresh (an answer that goes on to name the
    // other DC's demoted node is stale).
    for (lab, url, own) in [(&a, &ua, "a"), (&b, &ub, "b")] {
        let got = ask_n(lab, url, &format!("{own}-r"), 1);
        assert_eq!(
            got,
            Some((vec![pair(&format!("gw-{own}1"), own)], false)),
            "{own}"
        );
    }

    a.heal_join();
    let healed = Instant::now();
    wait_until(Duration::from_secs(30), "every node fresh again", || {
        [(&a, &ua, "a", "b"), (&b, &ub, "b", "a")]
            .iter()
            .all(|(lab, url, _own, other)| {
                ask(lab, url, &format!("{other}-r")).is_some_and(|(got, stale)| {
                    got.first() == Some(&pair(&format!("gw-{other}1"), other)) && !stale
                })
            })
    });
    let fresh = healed.elapsed();
    println!("healed: every node fresh again after {fresh:?}");
    assert!(fresh <= Duration::from_secs(3), "{fresh:?}");
}

/// A run killed mid-test runs no `Drop`: its namespaces, a process in them and its
/// link in the host's namespace, on the subnet the next lab uses, stay. The next lab
/// removes them (their process is gone) and its own members answer the host; before,
/// the old link's route shadowed the new one and nothing in the lab was reachable.
#[test]
fn a_lab_left_by_a_killed_run_is_removed_by_the_next() {
    const NET: u8 = 5;
    let Leftovers {
        hub,
        link: host,
        mut orphan,
    } = leave_as_killed(NET);
    let lab = Lab::on_net(1, NET);
    lab.attach_host();
    let url = format!("{}/health", lab.endpoint(0));
    let health = stdout_of("curl", &["-sS", "--max-time", "5", &url]);
    assert!(
        health.contains("true"),
        "the new lab's member answers the host: {health}"
    );
    let links = stdout_of("ip", &["-br", "link"]);
    assert!(!links.contains(&host), "the old lab's host link is gone");
    let spaces = stdout_of("ip", &["netns", "list"]);
    assert!(!spaces.contains(&hub), "the old lab's namespace is gone");
    wait_until(Duration::from_secs(5), "the orphan killed", || {
        orphan.try_wait().unwrap().is_some()
    });
}
