//! The benchmarks' fleet: node `i` of `n`, spread over 10 regions, with a capacity
//! large enough that the benchmark's own answers do not fill it, and a reported load
//! that varies from node to node.

use std::net::IpAddr;

use registry::{NodeRecord, Ports};

/// Node `i` at address `ip`, in region `r{i % 10}`, serving TCP and WebSocket.
pub(crate) fn node(i: usize, ip: IpAddr) -> NodeRecord {
    NodeRecord::new(
        format!("gw-{i:05}"),
        ip,
        Ports {
            tcp: Some(8000),
            ws: Some(8080),
            wss: None,
        },
        format!("r{}", i % 10),
        1_000_000_000,
        (i as u64 * 7919) % 900_000_000,
    )
}
