//! The operations' tests: rebalance plans, command issue, display order.
use super::*;
use proptest::prelude::*;
use registry::Ports;

fn node(id: &str, region: &str, conns: u64, cap: u64) -> NodeRecord {
    NodeRecord::new(
        id,
        "10.0.0.1".parse().unwrap(),
        Ports {
            tcp: Some(1),
            ws: None,
            wss: None,
        },
        region,
        cap,
        conns,
    )
}

#[test]
fn scale_out_plan() {
    let mut fleet: Vec<NodeRecord> = (0..4)
        .map(|i| node(&format!("hot{i}"), "r", 900, 1000))
        .collect();
    fleet.push(node("new0", "r", 0, 1000));
    fleet.push(node("new1", "r", 0, 1000));
    fleet.push(node("other", "x", 10, 1000));
    let none = BTreeMap::new();
    let plan = rebalance_plan(&fleet, &none, 0, DEFAULT_TOLERANCE);
    assert_eq!(plan.steps.len(), 4);
    for s in &plan.steps {
        assert!((s.region_mean - 0.6).abs() < 1e-9);
        assert_eq!(s.move_connections, 300);
        assert_eq!(s.percent, 34, "300 of 900, rounded up");
        assert_eq!(s.pool, 6);
    }
    assert!(
        rebalance_plan(&fleet[..4], &none, 0, DEFAULT_TOLERANCE)
            .steps
            .is_empty(),
        "an even region needs nothing"
    );
}

fn migrate(id: &str, percent: u8, from: u64, issued_ms: u64) -> Command {
    Command {
        id: id.into(),
        action: CommandAction::Migrate,
        percent: Some(percent),
        issued_ms: Some(issued_ms),
        from_connections: Some(from),
    }
}

#[test]
fn a_plan_in_flight_is_not_issued_again() {
    let mut fleet: Vec<NodeRecord> = (0..3)
        .map(|i| node(&format!("hot{i}"), "r", 900, 1000))
        .collect();
    fleet.push(node("new", "r", 0, 1000));
    let t0 = 1_000_000;
    let first = rebalance_plan(&fleet, &BTreeMap::new(), t0, DEFAULT_TOLERANCE);
    assert_eq!(first.steps.len(), 3);
    assert!(first.steps.iter().all(|s| s.percent == 25), "{first:?}");
    // Issued; nothing applied yet, or applied and delivered a second ago.
    let commands: BTreeMap<String, Command> = first
        .steps
        .iter()
        .map(|s| {
            (
                s.node.clone(),
                migrate(&format!("c-{}", s.node), s.percent, 900, t0),
            )
        })
        .collect();
    let again = rebalance_plan(&fleet, &commands, t0 + 1000, DEFAULT_TOLERANCE);
    assert!(again.steps.is_empty(), "{again:?}");
    assert_eq!(again.pending.len(), 3);
    assert!(again
        .pending
        .iter()
        .all(|p| p.state == "not_applied" && p.projected_connections == 675));
    for n in &mut fleet[..3] {
        n.applied_command = Some(format!("c-{}", n.id));
        n.hook = Some(registry::HookStatus {
            command: format!("c-{}", n.id),
            percent: 25,
            state: HookState::Delivered,
            since_ms: t0 + 500,
            attempts: 1,
            error: None,
        });
    }
    let delivered = rebalance_plan(&fleet, &commands, t0 + 2000, DEFAULT_TOLERANCE);
    assert!(delivered.steps.is_empty());
    assert!(delivered.pending.iter().all(|p| p.state == "delivered"));
    // Settled: reports are the truth again (still 900: the clients did not move).
    let settled = rebalance_plan(&fleet, &commands, t0 + 500 + SETTLE_MS, DEFAULT_TOLERANCE);
    assert!(settled.pending.is_empty());
    assert_eq!(settled.steps.len(), 3);
    // A hook still failing keeps its command in flight however old.
    for n in &mut fleet[..3] {
        let h = n.hook.as_mut().unwrap();
        h.state = HookState::Retrying;
    }
    let retrying = rebalance_plan(&fleet, &commands, t0 + 10 * SETTLE_MS, DEFAULT_TOLERANCE);
    assert!(retrying.steps.is_empty());
    assert!(retrying.pending.iter().all(|p| p.state == "retrying"));
}

#[test]
fn pools_follow_protocol_and_family() {
    let v6 = |id: &str, conns: u64| {
        let mut n = node(id, "r", conns, 1000);
        n.ip = "2001:db8::1".parse().unwrap();
        n.ports = Ports {
            tcp: None,
            ws: None,
            wss: Some(443),
        };
        n
    };
    // Two wss-over-IPv6 nodes at 900 and 800 among tcp-only IPv4 nodes at 0: the
    // wss nodes' clients cannot go to the tcp nodes.
    let mut fleet = vec![v6("wss-a", 900), v6("wss-b", 800)];
    fleet.extend((0..4).map(|i| node(&format!("tcp{i}"), "r", 0, 1000)));
    let plan = rebalance_plan(&fleet, &BTreeMap::new(), 0, DEFAULT_TOLERANCE);
    assert!(
        plan.steps.is_empty(),
        "850 mean, both within tolerance: {plan:?}"
    );
    fleet[1].connections = 100;
    let plan = rebalance_plan(&fleet, &BTreeMap::new(), 0, DEFAULT_TOLERANCE);
    assert_eq!(plan.steps.len(), 1);
    let s = &plan.steps[0];
    assert_eq!(
        (s.node.as_str(), s.pool, s.move_connections),
        ("wss-a", 2, 400)
    );
    // A dual-stack node serving tcp and wss can take them.
    let mut dual = node("dual", "r", 0, 1000);
    dual.ipv6 = Some("2001:db8::2".parse().unwrap());
    dual.ports.wss = Some(443);
    fleet.push(dual);
    let plan = rebalance_plan(&fleet, &BTreeMap::new(), 0, DEFAULT_TOLERANCE);
    assert_eq!(plan.steps[0].pool, 3);
}

proptest! {
    #[test]
    fn plans_move_hot_nodes_toward_the_mean(loads in proptest::collection::vec((0u64..1000, 1u64..1000), 1..20),
                                            tol in 0.0f64..0.2) {
        let fleet: Vec<NodeRecord> = loads.iter().enumerate()
            .map(|(i, (c, cap))| node(&format!("n{i}"), "r", (*c).min(*cap), *cap)).collect();
        let plan = rebalance_plan(&fleet, &BTreeMap::new(), 0, tol);
        for s in &plan.steps {
            let n = fleet.iter().find(|n| n.id == s.node).unwrap();
            prop_assert!(n.load() > s.region_mean + tol);
            prop_assert!((1..=100).contains(&s.percent));
            let after = n.connections - (n.connections * s.percent as u64).div_ceil(100).min(n.connections);
            // Moving `percent` lands the node at or just below the mean.
            prop_assert!(after as f64 / n.capacity as f64 <= s.region_mean + 1e-9 + 1.0 / n.capacity as f64);
        }
    }
}

#[tokio::test]
async fn listed_nodes_are_judged_against_their_bindings() {
    let kv = registry::memory::MemoryKv::new();
    let layout = Layout::new("/t");
    for (id, cap) in [("a", 100), ("b", 100), ("c", 100), ("d", 100)] {
        kv.put(&layout.node_key(id), node(id, "r", 1, cap).to_json(), None)
            .await
            .unwrap();
    }
    kv.put(
        &layout.binding_key("b"),
        br#"{"max_capacity": 10}"#.to_vec(),
        None,
    )
    .await
    .unwrap();
    kv.put(
        &layout.binding_key("c"),
        br#"{"ips": ["nope"]}"#.to_vec(),
        None,
    )
    .await
    .unwrap();
    kv.put(
        &layout.binding_key("d"),
        br#"{"regions": ["r"]}"#.to_vec(),
        None,
    )
    .await
    .unwrap();
    let (nodes, invalid) = list_nodes(&*kv, &layout).await.unwrap();
    let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["a", "d"]);
    assert_eq!(
        invalid[0],
        (
            "/t/nodes/b".to_string(),
            "binding: capacity 100 is above max_capacity 10".to_string()
        )
    );
    assert_eq!(invalid[1].0, "/t/nodes/c");
    assert!(
        invalid[1].1.starts_with("binding: /t/bindings/c is broken"),
        "{}",
        invalid[1].1
    );
}
