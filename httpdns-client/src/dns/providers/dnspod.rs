//! Tencent DNSPod's HTTPDNS: `GET /d?dn=H&ttl=1`, answered `IP;IP;...,TTL` in plain
//! text.

use std::net::IpAddr;
use std::time::Duration;

use super::{esc, usable, AnswerError};

/// The path and query of a DNSPod request for `host`.
pub fn request_path(host: &str) -> String {
    format!("/d?dn={}&ttl=1", esc(host))
}

/// Parses DNSPod's plain-text answer: `IP;IP;...,TTL` (an empty body: no record). The
/// TTL is at most a day.
pub fn parse_dnspod(body: &[u8]) -> Result<(Vec<IpAddr>, Option<Duration>), AnswerError> {
    let text = std::str::from_utf8(body).map_err(|_| AnswerError::NotText)?;
    let text = text.trim();
    let (list, ttl) = match text.rsplit_once(',') {
        Some((l, t)) => (l, t.trim().parse::<u64>().ok()),
        None => (text, None),
    };
    let ips: Vec<IpAddr> = list
        .split(';')
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .filter(|ip| usable(*ip))
        .collect();
    if ips.is_empty() {
        return Err(AnswerError::NoAddressIn(text.chars().take(100).collect()));
    }
    Ok((ips, ttl.filter(|t| *t > 0).map(crate::limits::dns_ttl_secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_answers_parse() {
        let (ips, ttl) = parse_dnspod(b"192.0.2.1;192.0.2.2,600").unwrap();
        assert_eq!(ips.len(), 2);
        assert_eq!(ttl, Some(Duration::from_secs(600)));
        assert_eq!(parse_dnspod(b"192.0.2.1").unwrap().1, None);
        for bad in [&b""[..], b"evil.example,60", b"<html>", b"0.0.0.0,60"] {
            assert!(parse_dnspod(bad).is_err(), "{bad:?}");
        }
        assert_eq!(request_path("h.example"), "/d?dn=h.example&ttl=1");
    }

    proptest::proptest! {
        #[test]
        fn any_ttl_parses_within_a_day(ttl in proptest::prelude::any::<u64>()) {
            let (_, got) = parse_dnspod(format!("192.0.2.1,{ttl}").as_bytes()).unwrap();
            let want = (ttl > 0).then(|| Duration::from_secs(ttl.min(86_400)));
            proptest::prop_assert_eq!(got, want);
        }

        #[test]
        fn any_text_parses_or_fails_without_panicking(text in "\\PC{0,60}") {
            if let Ok((_, Some(ttl))) = parse_dnspod(text.as_bytes()) {
                proptest::prop_assert!(ttl <= crate::limits::MAX_TTL);
            }
        }
    }
}
