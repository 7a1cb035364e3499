//! A DNS message from anyone on the Internet, over UDP: answered (FORMERR for what does
//! not parse) or dropped, never a panic; an answer is a response to the same id and,
//! over UDP, fits the size the query allows.
#![no_main]

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use router_server::config::FileConfig;
use router_server::dns::{Dns, Transport};
use router_server::schedule::Snapshot;
use router_server::state::AppState;

fn dns() -> &'static Dns {
    static DNS: OnceLock<Dns> = OnceLock::new();
    DNS.get_or_init(|| {
        let cfg = FileConfig::parse(
            "[dns]\nzone = \"gw.example.com\"\ncount = 10\nrrl_per_sec = 0\n\
             [regions.cidrs]\n\"10.0.0.0/8\" = \"eu\"\n",
        )
        .unwrap();
        let state = AppState::new(cfg);
        let nodes = (0..12).map(|i| {
            let json = format!(
                r#"{{"id":"n{i}","ip":"192.0.2.{i}","ipv6":"2001:db8::{i}","ports":{{"tcp":9000,"wss":443}},"region":"{}","capacity":1000,"connections":{}}}"#,
                if i % 2 == 0 { "eu" } else { "us" },
                i * 50
            );
            Arc::new(registry::NodeRecord::parse(&format!("n{i}"), json.as_bytes()).unwrap())
        });
        state
            .serving
            .snapshot
            .store(Some(Arc::new(Snapshot::build(nodes, None, 7, false))));
        Dns::new(state.config.clone(), state.serving.clone(), &state.metrics)
    })
}

fuzz_target!(|data: &[u8]| {
    let client: IpAddr = "10.1.2.3".parse().unwrap();
    for transport in [Transport::Udp, Transport::Tcp] {
        if let Some(reply) = dns().handle(data, client, transport) {
            assert!(reply.len() >= 12);
            assert_eq!(reply[..2], data[..2], "the reply keeps the query's id");
            assert!(reply[2] & 0x80 != 0, "the reply is a response");
            if transport == Transport::Udp {
                assert!(reply.len() <= 1232);
            }
        }
    }
});
