//! EDNS in a query and its answer: the payload size offered, the version spoken, and
//! the client subnet a resolver forwards (ECS, RFC 7871).

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};

/// The largest UDP answer sent to a client that advertises more.
pub(super) const MAX_UDP_PAYLOAD: u16 = 1232;

/// The largest UDP answer a client takes: 512 bytes, or what its EDNS offers up to
/// ours.
pub(super) fn udp_limit(request_edns: Option<&Edns>) -> usize {
    request_edns.map_or(512, |e| e.max_payload().clamp(512, MAX_UDP_PAYLOAD)) as usize
}

/// The answer's EDNS to a request that has some: our payload size, and its client
/// subnet back with the scope the answer holds for.
pub(super) fn reply_edns(request: &Edns) -> Edns {
    let mut edns = Edns::new();
    edns.set_max_payload(MAX_UDP_PAYLOAD);
    edns.set_dnssec_ok(false);
    if let Some(EdnsOption::Subnet(s)) = request.option(EdnsCode::Subnet) {
        // The answer holds for the client's whole subnet as it was sent.
        let mut scope = ClientSubnet::new(s.addr(), s.source_prefix(), 0);
        scope.set_scope_prefix(s.source_prefix());
        edns.options_mut().insert(EdnsOption::Subnet(scope));
    }
    edns
}

/// The client subnet the request forwarded (EDNS Client Subnet), unless it is empty.
pub(super) fn client_subnet(request: Option<&Edns>) -> Option<IpAddr> {
    request.and_then(|e| match e.option(EdnsCode::Subnet) {
        Some(EdnsOption::Subnet(s)) if s.source_prefix() > 0 => Some(s.addr()),
        _ => None,
    })
}

/// Whether the request asked for an EDNS version we do not speak.
pub(super) trait EdnsVersion {
    fn edns_version_bad(&self) -> bool;
}

impl EdnsVersion for Message {
    fn edns_version_bad(&self) -> bool {
        self.extensions().as_ref().is_some_and(|e| e.version() > 0)
    }
}
