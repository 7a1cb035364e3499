//! A block-list entry (`P/blocklist/{key}`, written by whoever holds operator rights):
//! parsed or refused, never a panic; a parsed entry round-trips, is never wider than
//! allowed, and covers exactly the addresses of its network.
#![no_main]

use libfuzzer_sys::fuzz_target;
use registry::blocklist::{BlockEntry, MIN_V4_PREFIX, MIN_V6_PREFIX};

fuzz_target!(|data: &[u8]| {
    let Ok(e) = BlockEntry::parse(data) else {
        return;
    };
    assert_eq!(BlockEntry::parse(&e.to_json()).expect("round trip"), e);
    let (len, min) = match e.cidr {
        ipnet::IpNet::V4(n) => (n.prefix_len(), MIN_V4_PREFIX),
        ipnet::IpNet::V6(n) => (n.prefix_len(), MIN_V6_PREFIX),
    };
    assert!(len >= min, "{}", e.cidr);
    // Both ends are covered, unless an end is IPv4-mapped: clients are compared in
    // their canonical form, and a mapped address is an IPv4 client.
    for end in [e.cidr.network(), e.cidr.broadcast()] {
        assert!(end.to_canonical() != end || e.covers(end), "{} {end}", e.cidr);
    }
    assert!(!e.reason.chars().any(char::is_control));
    let key = BlockEntry::key_for(&e.cidr);
    assert!(!key.contains('/'), "{key}");
    assert_eq!(key, BlockEntry::key_for(&e.cidr.trunc()));
});
