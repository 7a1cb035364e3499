//! A node record written by someone else: parsed or refused, never a panic; a parsed
//! record is valid and survives a round trip.
#![no_main]

use registry::NodeRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let id = "gw-fuzz";
    if let Ok(r) = NodeRecord::parse(id, data) {
        assert!(r.validate().is_ok());
        assert!(r.capacity > 0);
        let again = NodeRecord::parse(id, &r.to_json()).expect("a parsed record round-trips");
        assert_eq!(again, r);
        let _ = r.load();
    }
});
