//! An operator policy (`P/policy/{name}`, written by whoever holds operator rights):
//! parsed or refused, never a panic; a parsed policy round-trips, keeps its bounds, and
//! its answers' groups follow its shares, and its capped groups their caps, exactly
//! over every 100 answers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use registry::policy::{Policy, MAX_EXCLUDE, MAX_RATIOS};

fuzz_target!(|data: &[u8]| {
    let Ok(p) = Policy::parse(data) else {
        return;
    };
    assert_eq!(Policy::parse(&p.to_json()).expect("round trip"), p);
    assert!(p.exclude.len() <= MAX_EXCLUDE && p.ratios.len() <= MAX_RATIOS);
    assert!(!p.by.chars().any(char::is_control));
    for r in &p.ratios {
        let got = (0..100u64).filter(|&n| p.group_for(n) == Some(&r.to)).count();
        assert_eq!(got, usize::from(r.percent), "{}", r.to);
        assert!(!p.exclude.contains(&r.to));
    }
    for (k, c) in p.caps.iter().enumerate() {
        let led = (0..100u64).filter(|&n| p.held_back(n) & (1 << k) == 0).count();
        assert_eq!(led, usize::from(c.percent), "{}", c.to);
        assert!(!p.exclude.contains(&c.to) && !p.ratios.iter().any(|r| r.to == c.to));
    }
    if p.ratios.is_empty() {
        assert!(p.group_for(7).is_none());
    }
});
