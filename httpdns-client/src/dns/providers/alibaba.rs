//! Alibaba Cloud-style HTTPDNS: `/{account}/d?host=` and the signed
//! `/{account}/sign_d?host=&t=&s=`, answered `{"host","ips","ipsv6","ttl"}`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use md5::{Digest, Md5};
use serde::Deserialize;
use tracing::warn;

use super::{esc, usable, AnswerError};
use crate::dns::config::{Provider, ProviderKind};

/// `md5("{host}-{secret}-{expiry}")` in lower-case hex: the `s` of a signed request.
pub fn sign(host: &str, secret: &str, expiry: u64) -> String {
    let digest = Md5::digest(format!("{host}-{secret}-{expiry}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The path and query of an Alibaba-style or DNSPod request for `host` (signed when
/// the provider has a secret; `&query=4,6` when IPv6 is wanted).
pub fn request_path(
    provider: &Provider,
    host: &str,
    now_unix: u64,
    sign_ttl: Duration,
    ipv6: bool,
) -> String {
    let h = esc(host);
    let families = if ipv6 { "&query=4,6" } else { "" };
    match (&provider.kind, &provider.secret) {
        (ProviderKind::DnsPod, _) => super::dnspod::request_path(host),
        (_, Some(secret)) => {
            let t = now_unix.saturating_add(sign_ttl.as_secs());
            format!(
                "/{}/sign_d?host={h}&t={t}&s={}{families}",
                provider.account,
                sign(host, secret, t)
            )
        }
        (_, None) => format!("/{}/d?host={h}{families}", provider.account),
    }
}

#[derive(Debug, Deserialize)]
struct Answer {
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    ips: Vec<serde_json::Value>,
    #[serde(default)]
    ipsv6: Vec<serde_json::Value>,
    #[serde(default)]
    ttl: Option<u64>,
}

/// Validates a provider answer for `host`: keeps only IP literals of the right family.
/// Returns the addresses (IPv4 first) and the TTL (at most a day), or why the answer is
/// unusable.
pub fn parse_answer(
    host: &str,
    body: &[u8],
) -> Result<(Vec<IpAddr>, Option<Duration>), AnswerError> {
    let a: Answer =
        serde_json::from_slice(body).map_err(|e| AnswerError::NotJson(e.to_string()))?;
    if let Some(h) = &a.host {
        if !h.eq_ignore_ascii_case(host) {
            return Err(AnswerError::OtherHost {
                got: h.clone(),
                asked: host.to_string(),
            });
        }
    }
    let mut ips = Vec::new();
    for (values, v6) in [(&a.ips, false), (&a.ipsv6, true)] {
        for v in values {
            let parsed = v.as_str().and_then(|s| {
                if v6 {
                    s.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
                } else {
                    s.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
                }
            });
            match parsed {
                Some(ip) if usable(ip) => ips.push(ip),
                _ => warn!(host, value = %v, "HTTPDNS answer entry is not an IP literal; dropped"),
            }
        }
    }
    if ips.is_empty() {
        return Err(AnswerError::NoAddress);
    }
    Ok((
        ips,
        a.ttl.filter(|t| *t > 0).map(crate::limits::dns_ttl_secs),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_fixed_vector() {
        // md5("gw.example.com-s3cr3t-1700000000"), computed independently.
        assert_eq!(
            sign("gw.example.com", "s3cr3t", 1_700_000_000),
            "e58bd1a72b3c68dc666946ea97a82609"
        );
        let p =
            Provider::alibaba("139450", vec!["127.0.0.1:1".parse().unwrap()]).with_secret("s3cr3t");
        assert_eq!(
            request_path(
                &p,
                "gw.example.com",
                1_699_999_400,
                Duration::from_secs(600),
                false
            ),
            "/139450/sign_d?host=gw.example.com&t=1700000000&s=e58bd1a72b3c68dc666946ea97a82609"
        );
        let unsigned = Provider::alibaba("139450", p.addrs.clone());
        assert_eq!(
            request_path(&unsigned, "h", 0, Duration::ZERO, false),
            "/139450/d?host=h"
        );
        assert_eq!(
            request_path(&unsigned, "h", 0, Duration::ZERO, true),
            "/139450/d?host=h&query=4,6",
            "IPv6 asked for"
        );
        assert_eq!(
            request_path(&unsigned, "a&b=c d", 0, Duration::ZERO, false),
            "/139450/d?host=a%26b%3Dc+d",
            "escaped"
        );
        let pod = Provider::dnspod(p.addrs.clone());
        assert_eq!(
            request_path(&pod, "h.example", 0, Duration::ZERO, false),
            "/d?dn=h.example&ttl=1"
        );
    }

    #[test]
    fn only_ip_literals_are_accepted() {
        let (ips, ttl) = parse_answer(
            "h.example",
            br#"{"host":"h.example","ips":["192.0.2.1","evil.example","::1","300.1.1.1"],"ipsv6":["2001:db8::1","192.0.2.9"],"ttl":60}"#,
        )
        .unwrap();
        assert_eq!(
            ips,
            vec![
                "192.0.2.1".parse::<IpAddr>().unwrap(),
                "2001:db8::1".parse().unwrap()
            ]
        );
        assert_eq!(ttl, Some(Duration::from_secs(60)));
        for bad in [
            &br#"{"host":"h.example","ips":[],"ipsv6":[],"ttl":60}"#[..],
            br#"{"host":"h.example","ips":["login.hijack.example"],"ttl":60}"#,
            br#"{"host":"other.example","ips":["192.0.2.1"]}"#,
            br#"<html>portal</html>"#,
            br#"{"host":"h.example","ips":["0.0.0.0"]}"#,
        ] {
            assert!(
                parse_answer("h.example", bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn any_ttl_parses_within_a_day(ttl in proptest::prelude::any::<u64>()) {
            let body = format!(r#"{{"host":"h.example","ips":["192.0.2.1"],"ttl":{ttl}}}"#);
            let (_, got) = parse_answer("h.example", body.as_bytes()).unwrap();
            let want = (ttl > 0).then(|| Duration::from_secs(ttl.min(86_400)));
            proptest::prop_assert_eq!(got, want);
        }

        #[test]
        fn any_body_parses_or_fails_without_panicking(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            if let Ok((_, Some(ttl))) = parse_answer("h.example", &body) {
                proptest::prop_assert!(ttl <= crate::limits::MAX_TTL);
            }
        }
    }
}
