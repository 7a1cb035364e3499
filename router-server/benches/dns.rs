//! What one DNS query costs the router, without the sockets: `Dns::handle` on the
//! queries of `scripts/bench-dns.sh` (the apex, a region, a region's `tcp` name), with
//! 1,000 nodes in 10 regions, each answer chosen by load and counted in the herd
//! accounting as the server does. "plain" has no EDNS (as dnsperf sends); "ecs" is a
//! resolver's query with EDNS and a client subnet; "doh" is the same question over
//! HTTPS (weight 1, the guard's budget checked).
//!
//! `cargo bench -p router-server --bench dns`

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::{Name, RecordType};
use router_server::config::FileConfig;
use router_server::dns::{Dns, Transport};
use router_server::schedule::Snapshot;
use router_server::state::AppState;

mod common;

const ZONE: &str = "gw.bench.test";

fn dns(nodes: usize) -> Dns {
    let text = format!(
        "[rate_limit]\nper_ip_per_sec = 100000000\nburst = 100000000\n\
         [edge]\nherd_budget = 4000000000\n\
         [regions]\ncidrs = {{ \"127.0.0.0/8\" = \"r0\" }}\nfallbacks = {{ r0 = [\"r1\"] }}\n\
         [dns]\nlisten = \"127.0.0.1:0\"\nzone = \"{ZONE}\"\nrrl_per_sec = 0\n"
    );
    let state = AppState::new(FileConfig::parse(&text).expect("valid config"));
    // Each node at an address of its own (10.x.y.z), as in `scripts/bench-dns.sh`.
    let records = (0..nodes).map(|i| {
        let ip = std::net::Ipv4Addr::from(0x0a00_0000 | (i as u32 + 1));
        Arc::new(common::node(i, ip.into()))
    });
    let snap = Snapshot::build(records, None, 1, false);
    state.serving.snapshot.store(Some(Arc::new(snap)));
    Dns::new(state.config, state.serving, &state.metrics)
}

fn query(name: &str, ecs: bool) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(4321)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    if ecs {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        edns.options_mut()
            .insert(EdnsOption::Subnet(ClientSubnet::new(
                "127.1.2.0".parse().unwrap(),
                24,
                0,
            )));
        m.set_edns(edns);
    }
    m.to_vec().unwrap()
}

fn handle(c: &mut Criterion) {
    let dns = dns(1_000);
    let client: IpAddr = "127.0.0.1".parse().unwrap();
    let names = [
        ZONE.to_string(),
        format!("r5.{ZONE}"),
        format!("tcp.r5.{ZONE}"),
    ];
    let mut group = c.benchmark_group("handle");
    for (label, ecs, transport) in [
        ("plain", false, Transport::Udp),
        ("ecs", true, Transport::Udp),
        ("doh", false, Transport::Https),
    ] {
        let packets: Vec<Vec<u8>> = names.iter().map(|n| query(n, ecs)).collect();
        let mut i = 0;
        group.bench_function(label, |b| {
            b.iter(|| {
                i = (i + 1) % packets.len();
                black_box(dns.handle(black_box(&packets[i]), client, transport))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, handle);
criterion_main!(benches);
