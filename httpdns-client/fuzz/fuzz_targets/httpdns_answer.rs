//! An HTTPDNS provider's answer (possibly hijacked): only IP literals come out.
#![no_main]

use httpdns_client::dns::parse_answer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((ips, ttl)) = parse_answer("router.example.com", data) {
        assert!(!ips.is_empty());
        for ip in &ips {
            // Every address is a literal that prints and parses back to itself.
            assert_eq!(ip.to_string().parse::<std::net::IpAddr>().unwrap(), *ip);
        }
        let _ = ttl;
    }
});
