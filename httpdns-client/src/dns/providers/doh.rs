//! DNS over HTTPS (RFC 8484): `application/dns-message` by GET (`?dns=` base64url) or
//! POST; an A query, and an AAAA query when IPv6 is wanted.

use std::net::IpAddr;
use std::time::Duration;

use super::{usable, Answer, Ask};
use crate::error::Failure;
use crate::http::Request;

/// RFC 8484's media type, for the query and the answer.
const DNS_MESSAGE: &str = "application/dns-message";

/// A DNS query message for `host` and `rtype` (id 0, recursion desired), as RFC 8484
/// recommends for cacheable GETs.
pub fn dns_query(host: &str, v6: bool) -> Result<Vec<u8>, String> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};
    let name = Name::from_ascii(host).map_err(|e| format!("{host:?}: {e}"))?;
    let rtype = if v6 { RecordType::AAAA } else { RecordType::A };
    let mut m = Message::new();
    m.set_id(0)
        .set_recursion_desired(true)
        .add_query(Query::query(name, rtype));
    m.to_vec().map_err(|e| e.to_string())
}

/// The addresses and the smallest TTL of a DNS answer message.
pub fn parse_dns_message(body: &[u8]) -> Result<(Vec<IpAddr>, Option<Duration>), String> {
    use hickory_proto::op::{Message, ResponseCode};
    use hickory_proto::rr::RData;
    let m = Message::from_vec(body).map_err(|e| format!("not a DNS message: {e}"))?;
    if m.response_code() != ResponseCode::NoError {
        return Err(format!("DNS {}", m.response_code()));
    }
    let mut ips = Vec::new();
    let mut ttl: Option<u32> = None;
    for r in m.answers() {
        let ip = match r.data() {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        if usable(ip) {
            ips.push(ip);
            ttl = Some(ttl.map_or(r.ttl(), |t| t.min(r.ttl())));
        }
    }
    Ok((ips, ttl.map(|t| Duration::from_secs(u64::from(t)))))
}

/// Asks a DoH resolver for A (and AAAA) records of the host.
pub(crate) async fn ask(a: &Ask<'_>, path: &str, post: bool) -> Result<Answer, Failure> {
    let families: &[bool] = if a.ipv6 { &[false, true] } else { &[false] };
    let mut ips = Vec::new();
    let mut ttl: Option<Duration> = None;
    let mut last_err = None;
    for &v6 in families {
        let msg = dns_query(a.host, v6).map_err(|e| a.malformed(e))?;
        let req = if post {
            Request {
                path: path.to_string(),
                accept: Some(DNS_MESSAGE),
                post: Some((DNS_MESSAGE, msg)),
            }
        } else {
            use base64::Engine;
            let q = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&msg);
            Request {
                path: format!("{path}?dns={q}"),
                accept: Some(DNS_MESSAGE),
                post: None,
            }
        };
        let body = a.send(&req).await?;
        match parse_dns_message(&body) {
            Ok((found, t)) => {
                ips.extend(found);
                ttl = match (ttl, t) {
                    (Some(x), Some(y)) => Some(x.min(y)),
                    (x, y) => x.or(y),
                };
            }
            Err(e) => last_err = Some(e),
        }
    }
    if ips.is_empty() {
        return Err(a.malformed(last_err.unwrap_or_else(|| "no A or AAAA record".into())));
    }
    ips.sort_by_key(|ip| ip.is_ipv6());
    Ok((ips, ttl))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_well_formed_and_garbage_is_refused() {
        // A query is a well-formed DNS message asking one question.
        let q = dns_query("router.test", true).unwrap();
        let m = hickory_proto::op::Message::from_vec(&q).unwrap();
        assert_eq!(m.queries().len(), 1);
        assert_eq!(
            m.queries()[0].query_type(),
            hickory_proto::rr::RecordType::AAAA
        );
        assert_eq!(m.id(), 0, "id 0 for cacheable GETs (RFC 8484 4.1)");
        assert!(parse_dns_message(b"garbage").is_err());
    }
}
