//! Unit tests of the connection cap and the connection table.

use std::net::IpAddr;
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::connection_cap;
use super::table::{ConnTable, Phase, Refused, Slot, TableRules};
use crate::metrics::{ConnLabels, Metrics};

#[test]
fn cap_stays_below_the_open_file_limit() {
    assert_eq!(connection_cap(0, Some(256)), 192);
    assert_eq!(connection_cap(100, Some(256)), 100);
    assert_eq!(connection_cap(10_000, Some(256)), 192);
    assert_eq!(connection_cap(0, Some(10)), 1);
    assert_eq!(connection_cap(0, None), 1_000_000);
    assert_eq!(connection_cap(5, None), 5);
}

fn table(cap: usize, per_network: usize, exempt: &[&str]) -> ConnTable {
    ConnTable::new(
        Instant::now(),
        TableRules {
            cap,
            per_network,
            exempt: exempt.iter().map(|n| n.parse().unwrap()).collect(),
            overdue_ms: 5000,
        },
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn closed(m: &Metrics, reason: &'static str) -> u64 {
    m.connections
        .closed
        .get_or_create(&ConnLabels { reason })
        .get()
}

#[test]
fn a_full_table_sheds_silent_then_idle_then_overdue_busy() {
    let m = Metrics::default();
    let t = table(3, 0, &[]);
    let a = ip("203.0.113.1");
    let set = |s: &Slot, phase, since| {
        s.phase.store(phase as u8, Ordering::Relaxed);
        s.since_ms.store(since, Ordering::Relaxed);
    };
    let (_, busy) = t.admit_at(0, a, &m.connections).unwrap();
    set(&busy, Phase::Busy, 100);
    let (_, idle) = t.admit_at(0, a, &m.connections).unwrap();
    set(&idle, Phase::Idle, 50);
    let (_, silent) = t.admit_at(200, a, &m.connections).unwrap();
    let (_, fourth) = t.admit_at(300, a, &m.connections).expect("room made");
    assert!(silent.is_closed(), "the silent one goes first");
    assert!(!idle.is_closed() && !busy.is_closed());
    set(&fourth, Phase::Busy, 300);
    let (_, fifth) = t.admit_at(400, a, &m.connections).expect("room made");
    assert!(idle.is_closed(), "then the idle one");
    set(&fifth, Phase::Busy, 400);
    // All busy, none beyond the 5 s request deadline: the newcomer is refused.
    assert_eq!(
        t.admit_at(5000, a, &m.connections).err(),
        Some(Refused::Full)
    );
    assert!(!busy.is_closed());
    // Past it, the one busy the longest makes room, and only that one.
    t.admit_at(5200, a, &m.connections).expect("room made");
    assert!(busy.is_closed(), "busy since 100: overdue at 5200");
    assert!(!fourth.is_closed() && !fifth.is_closed());
    assert_eq!(
        *busy.shed_reason.lock().unwrap(),
        Some("shed_overdue"),
        "its task drops it at once"
    );
    assert_eq!(t.len(), 3);
    let text = m.render();
    for reason in ["shed_silent", "shed_idle", "shed_overdue", "refused_full"] {
        assert!(
            text.contains(&format!(
                "router_connections_closed_by_server_total{{reason=\"{reason}\"}} 1"
            )),
            "{reason}: {text}"
        );
    }
}

#[test]
fn a_network_at_its_share_is_refused_and_no_other_notices() {
    let m = Metrics::default();
    let t = table(100, 2, &["192.0.2.0/28"]);
    let (first, _) = t.admit(ip("198.51.100.1"), &m.connections).unwrap();
    t.admit(ip("198.51.100.200"), &m.connections).unwrap();
    // The same /24, from another address: refused; counted.
    assert_eq!(
        t.admit(ip("198.51.100.7"), &m.connections).err(),
        Some(Refused::NetworkCap)
    );
    assert_eq!(closed(&m, "per_network_cap"), 1);
    // Another /24, and IPv6 by /56, are untouched.
    t.admit(ip("198.51.101.1"), &m.connections).unwrap();
    t.admit(ip("2001:db8:0:1::1"), &m.connections).unwrap();
    t.admit(ip("2001:db8:0:2::1"), &m.connections).unwrap();
    assert_eq!(
        t.admit(ip("2001:db8:0:ff::9"), &m.connections).err(),
        Some(Refused::NetworkCap),
        "one /56"
    );
    assert_eq!(
        t.admit(ip("::ffff:198.51.100.9"), &m.connections).err(),
        Some(Refused::NetworkCap),
        "IPv4-mapped counts as IPv4"
    );
    // A closed connection gives its network's share back.
    t.remove(first, &m.connections);
    t.admit(ip("198.51.100.9"), &m.connections)
        .expect("a share is free again");
    // Exempt peers (a load balancer) are not counted; loopback is not exempt.
    for _ in 0..5 {
        t.admit(ip("192.0.2.3"), &m.connections).expect("exempt");
    }
    t.admit(ip("127.0.0.1"), &m.connections).unwrap();
    t.admit(ip("127.0.0.2"), &m.connections).unwrap();
    assert!(
        t.admit(ip("127.0.0.3"), &m.connections).is_err(),
        "loopback is counted"
    );
    // Off: no share at all.
    let off = table(100, 0, &[]);
    for _ in 0..10 {
        off.admit(ip("198.51.100.1"), &m.connections).unwrap();
    }
}

#[test]
fn a_shed_connection_gives_its_networks_share_back_once() {
    let m = Metrics::default();
    let t = table(2, 2, &[]);
    let (a_id, a) = t.admit_at(0, ip("198.51.100.1"), &m.connections).unwrap();
    t.admit_at(10, ip("198.51.100.2"), &m.connections).unwrap();
    // Full: the oldest silent one (network A's) makes room for network B.
    t.admit_at(20, ip("203.0.113.1"), &m.connections).unwrap();
    assert!(a.is_closed());
    // Its task ends later and removes it again: nothing changes twice.
    t.remove(a_id, &m.connections);
    let open = t.open.lock().unwrap();
    assert_eq!(open.slots.len(), 2);
    assert_eq!(open.networks[&ip("198.51.100.0")], 1);
    assert_eq!(open.networks[&ip("203.0.113.0")], 1);
}
