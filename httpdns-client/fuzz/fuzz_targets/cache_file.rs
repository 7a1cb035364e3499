//! The SDK's gateway cache file, as found on a phone's disk (truncated, edited, from
//! another version): accepted only when every candidate is usable.
#![no_main]

use httpdns_client::client::parse_cache_file;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(answer) = parse_cache_file(data, "router.example.com") {
        assert!(!answer.gateways.is_empty());
        for g in &answer.gateways {
            assert!(g.port != 0 && !g.ip.is_unspecified());
        }
    }
});
