//! The `GET /gateways` query string from any client: parsed within the contract's
//! ranges, or a 400 naming the parameter.
#![no_main]

use libfuzzer_sys::fuzz_target;
use router_server::http::parse_params;

fuzz_target!(|data: &[u8]| {
    let Ok(q) = std::str::from_utf8(data) else {
        return;
    };
    match parse_params(Some(q)) {
        Ok(p) => {
            assert!((1..=10).contains(&p.count));
            if let Some(r) = &p.region {
                assert!(!r.is_empty() && r.len() <= 64);
            }
        }
        Err(e) => assert!(!format!("{e:?}").is_empty()),
    }
});
