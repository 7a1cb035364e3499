//! The DNS answers, in process: one [`Dns`] over a snapshot of known nodes.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use proptest::prelude::*;
use registry::{NodeRecord, NodeState, Ports};

use super::{Dns, Transport};
use crate::config::dns::DnsConfig;
use crate::config::FileConfig;
use crate::schedule::Snapshot;
use crate::state::AppState;

pub(super) fn node(id: &str, ip: &str, region: &str, conns: u64) -> NodeRecord {
    let mut r = NodeRecord::new(
        id,
        ip.parse().unwrap(),
        Ports {
            tcp: Some(9000),
            ws: None,
            wss: Some(443),
        },
        region,
        1000,
        conns,
    );
    r.ipv6 = Some(
        format!("2001:db8::{}", &ip[ip.rfind('.').unwrap() + 1..])
            .parse()
            .unwrap(),
    );
    r
}

pub(super) fn config(f: impl FnOnce(&mut FileConfig)) -> FileConfig {
    let mut cfg = FileConfig {
        dns: DnsConfig {
            zone: "gw.example.com".into(),
            count: 2,
            rrl_per_sec: 0,
            ..DnsConfig::default()
        },
        ..FileConfig::default()
    };
    cfg.regions
        .cidrs
        .insert("10.1.0.0/16".parse().unwrap(), "eu".into());
    cfg.regions
        .cidrs
        .insert("10.2.0.0/16".parse().unwrap(), "us".into());
    f(&mut cfg);
    cfg.validate().unwrap();
    cfg
}

/// A router with two nodes per region, the first of each less loaded.
pub(super) fn dns_with(cfg: FileConfig, nodes: Vec<NodeRecord>) -> Dns {
    let state = AppState::new(cfg);
    let snap = Snapshot::build(nodes.into_iter().map(Arc::new), None, 42, false);
    state.serving.snapshot.store(Some(Arc::new(snap)));
    Dns::new(state.config, state.serving, &state.metrics)
}

pub(super) fn fleet() -> Vec<NodeRecord> {
    vec![
        node("eu-1", "192.0.2.1", "eu", 100),
        node("eu-2", "192.0.2.2", "eu", 500),
        node("us-1", "198.51.100.1", "us", 100),
        node("us-2", "198.51.100.2", "us", 500),
    ]
}

fn dns() -> Dns {
    dns_with(config(|_| {}), fleet())
}

pub(super) fn query(name: &str, qtype: RecordType) -> Message {
    let mut m = Message::new();
    m.set_id(4321)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m
}

fn with_subnet(mut m: Message, subnet: &str) -> Message {
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    edns.options_mut()
        .insert(EdnsOption::Subnet(ClientSubnet::from(
            subnet.parse::<ipnet::IpNet>().unwrap(),
        )));
    m.set_edns(edns);
    m
}

pub(super) const RESOLVER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 2, 0, 53));

fn ask(dns: &Dns, m: &Message, transport: Transport) -> Message {
    let bytes = dns
        .handle(&m.to_vec().unwrap(), RESOLVER, transport)
        .expect("an answer");
    Message::from_vec(&bytes).unwrap()
}

fn addrs(m: &Message) -> Vec<String> {
    m.answers()
        .iter()
        .filter_map(|r| r.data().ip_addr())
        .map(|ip| ip.to_string())
        .collect()
}

#[test]
fn the_apex_answers_the_region_of_the_client_subnet_else_of_the_resolver() {
    let dns = dns();
    let by_resolver = ask(
        &dns,
        &query("gw.example.com.", RecordType::A),
        Transport::Udp,
    );
    assert_eq!(by_resolver.response_code(), ResponseCode::NoError);
    assert!(by_resolver.authoritative());
    assert!(!by_resolver.recursion_available());
    assert_eq!(by_resolver.id(), 4321);
    assert_eq!(addrs(&by_resolver), ["198.51.100.1", "198.51.100.2"]);
    assert!(by_resolver.answers().iter().all(|r| r.ttl() == 10));
    let by_subnet = ask(
        &dns,
        &with_subnet(query("gw.example.com.", RecordType::A), "10.1.7.0/24"),
        Transport::Udp,
    );
    assert_eq!(addrs(&by_subnet), ["192.0.2.1", "192.0.2.2"]);
    let echoed = by_subnet.extensions().as_ref().unwrap();
    match echoed.option(hickory_proto::rr::rdata::opt::EdnsCode::Subnet) {
        Some(EdnsOption::Subnet(s)) => assert_eq!(s.scope_prefix(), 24),
        other => panic!("ECS not echoed: {other:?}"),
    }
    let v6 = ask(
        &dns,
        &query("gw.example.com.", RecordType::AAAA),
        Transport::Tcp,
    );
    assert_eq!(addrs(&v6), ["2001:db8::1", "2001:db8::2"]);
}

#[test]
fn region_and_protocol_names_and_the_zone_records() {
    let dns = dns();
    let eu = ask(
        &dns,
        &query("EU.gw.example.com.", RecordType::A),
        Transport::Udp,
    );
    assert_eq!(addrs(&eu), ["192.0.2.1", "192.0.2.2"]);
    assert_eq!(
        eu.answers()[0].name().to_ascii(),
        "EU.gw.example.com.",
        "the owner is the name as asked"
    );
    let wss = ask(
        &dns,
        &query("wss.eu.gw.example.com.", RecordType::A),
        Transport::Udp,
    );
    assert_eq!(addrs(&wss), ["192.0.2.1", "192.0.2.2"]);
    // No node serves ws: no data, with the SOA for negative caching.
    let ws = ask(
        &dns,
        &query("ws.eu.gw.example.com.", RecordType::A),
        Transport::Udp,
    );
    assert_eq!(ws.response_code(), ResponseCode::NoError);
    assert!(ws.answers().is_empty());
    assert_eq!(ws.name_servers()[0].record_type(), RecordType::SOA);

    let soa = ask(
        &dns,
        &query("gw.example.com.", RecordType::SOA),
        Transport::Udp,
    );
    match soa.answers()[0].data() {
        RData::SOA(s) => {
            assert_eq!(s.serial(), 42, "the serial is the registry revision");
            assert_eq!(s.mname().to_ascii(), "ns.gw.example.com.");
            assert_eq!(s.rname().to_ascii(), "hostmaster.gw.example.com.");
            assert_eq!(s.minimum(), 10);
        }
        other => panic!("not an SOA: {other:?}"),
    }
    let ns = ask(
        &dns,
        &query("gw.example.com.", RecordType::NS),
        Transport::Udp,
    );
    assert_eq!(ns.answers().len(), 1);
    assert_eq!(ns.answers()[0].data().to_string(), "ns.gw.example.com.");

    for missing in [
        "mars.gw.example.com.",
        "x.tcp.eu.gw.example.com.",
        "udp.eu.gw.example.com.",
    ] {
        let m = ask(&dns, &query(missing, RecordType::A), Transport::Udp);
        assert_eq!(m.response_code(), ResponseCode::NXDomain, "{missing}");
        assert!(m.authoritative());
        assert_eq!(
            m.name_servers()[0].record_type(),
            RecordType::SOA,
            "{missing}"
        );
    }
    for outside in ["example.com.", "www.google.com.", "xgw.example.com."] {
        let m = ask(&dns, &query(outside, RecordType::A), Transport::Udp);
        assert_eq!(m.response_code(), ResponseCode::Refused, "{outside}");
        assert!(m.answers().is_empty() && m.name_servers().is_empty());
        assert!(!m.authoritative());
    }
    let mut chaos = query("gw.example.com.", RecordType::A);
    let q = chaos.take_queries().pop().unwrap();
    let mut q2 = q.clone();
    q2.set_query_class(DNSClass::CH);
    chaos.add_query(q2);
    assert_eq!(
        ask(&dns, &chaos, Transport::Udp).response_code(),
        ResponseCode::Refused
    );
    let mut notify = query("gw.example.com.", RecordType::SOA);
    notify.set_op_code(OpCode::Notify);
    assert_eq!(
        ask(&dns, &notify, Transport::Udp).response_code(),
        ResponseCode::NotImp
    );
}

#[test]
fn draining_full_and_unhealthy_nodes_are_never_answered() {
    let mut nodes = fleet();
    nodes[0].state = NodeState::Draining;
    nodes[2].connections = 990;
    nodes[3].healthy = false;
    let dns = dns_with(config(|_| {}), nodes);
    let eu = ask(
        &dns,
        &query("eu.gw.example.com.", RecordType::A),
        Transport::Udp,
    );
    assert_eq!(addrs(&eu), ["192.0.2.2"]);
    let us = ask(
        &dns,
        &query("us.gw.example.com.", RecordType::A),
        Transport::Udp,
    );
    assert_eq!(
        addrs(&us),
        ["192.0.2.2"],
        "no eligible us node: the answer falls back"
    );
}

#[test]
fn each_answer_counts_its_weight_in_the_herd_accounting() {
    // `a` is 100 connections lighter than `b` (capacity 1000).
    let nodes = vec![
        node("a", "192.0.2.1", "eu", 100),
        node("b", "192.0.2.2", "eu", 200),
    ];
    let first_two = |dns: &Dns, transport| {
        let q = query("eu.gw.example.com.", RecordType::A);
        [ask(dns, &q, transport), ask(dns, &q, transport)].map(|m| addrs(&m)[0].clone())
    };
    let weighted = dns_with(
        config(|c| {
            c.dns.weight = 150;
            c.dns.count = 1;
        }),
        nodes.clone(),
    );
    assert_eq!(
        first_two(&weighted, Transport::Udp),
        ["192.0.2.1", "192.0.2.2"],
        "150 clients behind the first answer make `a` heavier than `b`"
    );
    // Over HTTPS an answer is one client: `a` stays the lighter.
    let https = dns_with(
        config(|c| {
            c.dns.weight = 150;
            c.dns.count = 1;
        }),
        nodes,
    );
    assert_eq!(
        first_two(&https, Transport::Https),
        ["192.0.2.1", "192.0.2.1"]
    );
    let snap = https.serving().snapshot.load_full().unwrap();
    let herd = https.serving().herd_view();
    let pending: u64 = snap
        .nodes
        .iter()
        .map(|e| herd.pending(&e.assigned, 0))
        .sum();
    assert_eq!(pending, 2, "two HTTPS answers, two clients");
}

#[test]
fn udp_answers_over_the_size_limit_are_truncated() {
    let nodes: Vec<NodeRecord> = (1..=40)
        .map(|i| node(&format!("n{i:02}"), &format!("192.0.2.{i}"), "eu", 100))
        .collect();
    let dns = dns_with(config(|c| c.dns.count = 40), nodes);
    let plain = query("eu.gw.example.com.", RecordType::AAAA);
    let udp = ask(&dns, &plain, Transport::Udp);
    assert!(udp.truncated(), "40 AAAA records are over 512 bytes");
    assert!(udp.answers().is_empty());
    assert_eq!(udp.queries().len(), 1);
    let tcp = ask(&dns, &plain, Transport::Tcp);
    assert!(!tcp.truncated());
    assert_eq!(tcp.answers().len(), 40);
    // A client that takes 1232 bytes gets them all over UDP too.
    let big = with_subnet(plain, "10.1.0.0/16");
    let udp = ask(&dns, &big, Transport::Udp);
    assert!(!udp.truncated());
    assert_eq!(udp.answers().len(), 40);
}

#[test]
fn garbage_gets_formerr_or_nothing() {
    let dns = dns();
    // A header and a question that runs off the end.
    let mut packet = query("gw.example.com.", RecordType::A).to_vec().unwrap();
    packet.truncate(packet.len() - 3);
    let reply = dns
        .handle(&packet, RESOLVER, Transport::Udp)
        .expect("FORMERR");
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(reply.response_code(), ResponseCode::FormErr);
    assert_eq!(reply.id(), 4321);
    assert!(
        dns.handle(&[1, 2, 3], RESOLVER, Transport::Udp).is_none(),
        "no header"
    );
    // A response is never answered (no loops between servers).
    let mut response = query("gw.example.com.", RecordType::A);
    response.set_message_type(MessageType::Response);
    assert!(dns
        .handle(&response.to_vec().unwrap(), RESOLVER, Transport::Udp)
        .is_none());
    // Two questions.
    let mut two = query("gw.example.com.", RecordType::A);
    two.add_query(Query::query(
        Name::from_ascii("eu.gw.example.com.").unwrap(),
        RecordType::A,
    ));
    assert_eq!(
        ask(&dns, &two, Transport::Udp).response_code(),
        ResponseCode::FormErr
    );
}

#[test]
fn the_rate_limit_applies_to_udp_only() {
    let clock = governor::clock::FakeRelativeClock::default();
    let cfg = config(|c| {
        c.dns.rrl_per_sec = 1;
        c.dns.rrl_burst = 2;
        c.dns.rrl_slip = 0;
    });
    let state = AppState::new(cfg);
    let snap = Snapshot::build(fleet().into_iter().map(Arc::new), None, 42, false);
    state.serving.snapshot.store(Some(Arc::new(snap)));
    let dns = Dns::with_limiter_clock(
        state.config.clone(),
        state.serving.clone(),
        &state.metrics,
        crate::clock::LimiterClock::Fake(clock.clone()),
    );
    let packet = query("gw.example.com.", RecordType::A).to_vec().unwrap();
    let udp = |dns: &Dns| dns.handle(&packet, RESOLVER, Transport::Udp).is_some();
    assert_eq!([udp(&dns), udp(&dns), udp(&dns)], [true, true, false]);
    for _ in 0..5 {
        assert!(
            dns.handle(&packet, RESOLVER, Transport::Tcp).is_some(),
            "TCP is not limited"
        );
    }
    clock.advance(std::time::Duration::from_secs(1));
    assert!(udp(&dns), "refilled");
    let m = state.metrics.render();
    assert!(m.contains("router_dns_rrl_total{action=\"drop\"} 1"), "{m}");
    assert!(
        m.contains("router_dns_queries_total{transport=\"udp\",qtype=\"A\",rcode=\"NOERROR\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("router_dns_queries_total{transport=\"tcp\",qtype=\"A\",rcode=\"NOERROR\"} 5"),
        "{m}"
    );
}

#[test]
fn the_routers_own_name_servers_answer_the_live_routers() {
    let dns = dns_with(
        config(|c| c.dns.nameservers = vec!["ns1.gw.example.com".into(), "ns.example.net".into()]),
        fleet(),
    );
    *dns.serving().router_addrs.lock().unwrap() = vec![
        vec![
            "203.0.113.1".parse().unwrap(),
            "2001:db8:53::1".parse().unwrap(),
        ],
        vec![
            "203.0.113.2".parse().unwrap(),
            "203.0.113.1".parse().unwrap(),
        ],
    ];
    let a = ask(
        &dns,
        &query("ns1.gw.example.com.", RecordType::A),
        Transport::Udp,
    );
    assert_eq!(addrs(&a), ["203.0.113.1", "203.0.113.2"]);
    let aaaa = ask(
        &dns,
        &query("ns1.gw.example.com.", RecordType::AAAA),
        Transport::Udp,
    );
    assert_eq!(addrs(&aaaa), ["2001:db8:53::1"]);
    let ns = ask(
        &dns,
        &query("gw.example.com.", RecordType::NS),
        Transport::Udp,
    );
    assert_eq!(ns.answers().len(), 2);
}

proptest! {
    /// Any bytes: no panic, and whatever is sent back is a response to the same id.
    #[test]
    fn any_packet_gets_a_response_or_nothing(packet in proptest::collection::vec(any::<u8>(), 0..600)) {
        let dns = dns();
        if let Some(reply) = dns.handle(&packet, RESOLVER, Transport::Udp) {
            let m = Message::from_vec(&reply).expect("a well-formed reply");
            prop_assert_eq!(m.message_type(), MessageType::Response);
            prop_assert_eq!(&reply[..2], &packet[..2]);
        }
    }

    /// A valid query with its bytes cut or flipped: no panic.
    #[test]
    fn damaged_queries_never_panic(cut in 0usize..64, flip in 0usize..64, bit in 0u8..8) {
        let dns = dns();
        let mut packet = with_subnet(query("eu.gw.example.com.", RecordType::A), "10.1.0.0/16").to_vec().unwrap();
        if flip < packet.len() {
            packet[flip] ^= 1 << bit;
        }
        packet.truncate(packet.len().saturating_sub(cut));
        let _ = dns.handle(&packet, RESOLVER, Transport::Udp);
        let _ = dns.handle(&packet, RESOLVER, Transport::Tcp);
    }
}

#[test]
fn gateways_sharing_an_address_answer_it_once() {
    let nodes = vec![
        node("a", "192.0.2.1", "eu", 100),
        node("b", "192.0.2.1", "eu", 200),
        node("c", "192.0.2.3", "eu", 300),
    ];
    let dns = dns_with(config(|c| c.dns.count = 3), nodes);
    let m = ask(
        &dns,
        &query("eu.gw.example.com.", RecordType::A),
        Transport::Udp,
    );
    assert_eq!(addrs(&m), ["192.0.2.1", "192.0.2.3"]);
}
