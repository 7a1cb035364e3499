//! A node binding (`P/bindings/{id}`) and a record judged against it: parsed or refused,
//! never a panic; a parsed binding survives a round trip, and a record it passes really
//! is inside it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use registry::binding::{domain_is_under, Binding};
use registry::NodeRecord;

fuzz_target!(|data: &[u8]| {
    // The binding, then (after a 0 byte) a node record to judge against it.
    let (binding, record) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let Ok(b) = Binding::parse(binding) else {
        return;
    };
    let again = Binding::parse(&b.to_json()).expect("a parsed binding round-trips");
    assert_eq!(again, b);
    let Ok(r) = NodeRecord::parse("gw-fuzz", record) else {
        return;
    };
    match b.check(&r) {
        Ok(()) => {
            if let Some(ranges) = &b.ips {
                assert!(ranges.iter().any(|n| n.contains(&r.ip)));
            }
            if let Some(regions) = &b.regions {
                assert!(regions.contains(&r.region));
            }
            if let Some(max) = b.max_capacity {
                assert!(r.capacity <= max.get());
            }
            if let (Some(suffixes), Some(domain)) = (&b.domain_suffixes, &r.domain) {
                assert!(suffixes.iter().any(|s| domain_is_under(domain, s)));
            }
        }
        // A reason is one printable line.
        Err(v) => assert!(!v.to_string().chars().any(char::is_control)),
    }
});
