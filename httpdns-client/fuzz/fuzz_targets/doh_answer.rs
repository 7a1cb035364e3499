//! A DoH resolver's answer (possibly hijacked or cut short), read with the SDK's own
//! walk over hickory's wire primitives: addresses or an error, never a panic.
#![no_main]

use httpdns_client::dns::parse_dns_message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((ips, ttl)) = parse_dns_message(data) {
        for ip in &ips {
            assert!(!ip.is_unspecified() && !ip.is_multicast(), "{ip}");
        }
        assert_eq!(ips.is_empty(), ttl.is_none());
    }
});
