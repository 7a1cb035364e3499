//! DNS over HTTPS (RFC 8484): `application/dns-message` by GET (`?dns=` base64url) or
//! POST; an A query, and an AAAA query when IPv6 is wanted.

use std::net::IpAddr;
use std::time::Duration;

use super::{usable, Answer, AnswerError, Ask};
use crate::error::Failure;
use crate::http::Request;

/// RFC 8484's media type, for the query and the answer.
const DNS_MESSAGE: &str = "application/dns-message";

// The messages are written and read with hickory's wire primitives (header, question,
// name with compression, fixed fields) rather than its whole `Message`: an answer needs
// only A and AAAA, and the full record parser would bring every record type's code
// (and with CAA's, a URL parser and IDNA tables) into the apps' library.

/// A DNS query message for `host` and `rtype` (id 0, recursion desired), as RFC 8484
/// recommends for cacheable GETs.
pub fn dns_query(host: &str, v6: bool) -> Result<Vec<u8>, AnswerError> {
    use hickory_proto::op::{Header, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
    // hickory's errors are not formatted: their Display reaches its IDNA code.
    let name = Name::from_ascii(host).map_err(|_| AnswerError::NotDnsName(host.to_string()))?;
    let rtype = if v6 { RecordType::AAAA } else { RecordType::A };
    let mut header = Header::new();
    header
        .set_id(0)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .set_query_count(1);
    let mut buf = Vec::with_capacity(64);
    let mut e = BinEncoder::new(&mut buf);
    header
        .emit(&mut e)
        .and_then(|()| Query::query(name, rtype).emit(&mut e))
        .map_err(|_| AnswerError::QueryTooLarge(host.to_string()))?;
    Ok(buf)
}

/// The addresses and the smallest TTL (at most a day) of a DNS answer message.
pub fn parse_dns_message(body: &[u8]) -> Result<(Vec<IpAddr>, Option<Duration>), AnswerError> {
    use hickory_proto::op::{Header, MessageType, Query, ResponseCode};
    use hickory_proto::rr::{Name, RecordType};
    use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
    let mut d = BinDecoder::new(body);
    // hickory's errors are not formatted (their Display reaches its IDNA code): a
    // broken message is named by where it broke.
    let bad = |at: usize| AnswerError::Malformed {
        at,
        len: body.len(),
    };
    let header = Header::read(&mut d).map_err(|_| bad(0))?;
    if header.message_type() != MessageType::Response {
        return Err(AnswerError::NotResponse);
    }
    if header.response_code() != ResponseCode::NoError {
        return Err(AnswerError::Code(header.response_code().to_string()));
    }
    for _ in 0..header.query_count() {
        let at = d.index();
        Query::read(&mut d).map_err(|_| bad(at))?;
    }
    let mut ips = Vec::new();
    let mut ttl: Option<u32> = None;
    for _ in 0..header.answer_count() {
        let at = d.index();
        let (rtype, record_ttl, data) = (|| {
            Name::read(&mut d).ok()?;
            let rtype = RecordType::from(d.read_u16().ok()?.unverified());
            let _class = d.read_u16().ok()?;
            let ttl = d.read_u32().ok()?.unverified();
            let len = d.read_u16().ok()?.unverified();
            let data = d.read_slice(usize::from(len)).ok()?.unverified();
            Some((rtype, ttl, data))
        })()
        .ok_or_else(|| bad(at))?;
        // CNAMEs and anything else are stepped over; the addresses are the chain's end.
        let ip = match (rtype, data.len()) {
            (RecordType::A, 4) => IpAddr::from(<[u8; 4]>::try_from(data).expect("4 bytes")),
            (RecordType::AAAA, 16) => IpAddr::from(<[u8; 16]>::try_from(data).expect("16 bytes")),
            (RecordType::A | RecordType::AAAA, _) => return Err(bad(at)),
            _ => continue,
        };
        if usable(ip) {
            ips.push(ip);
            ttl = Some(ttl.map_or(record_ttl, |t| t.min(record_ttl)));
        }
    }
    Ok((ips, ttl.map(|t| crate::limits::dns_ttl_secs(u64::from(t)))))
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
        return Err(a.malformed(last_err.unwrap_or(AnswerError::NoRecord)));
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

    /// An answer as a resolver writes it (hickory's full message writer, compressed
    /// names): a CNAME chain ending in A and AAAA records.
    fn answer(code: hickory_proto::op::ResponseCode) -> Vec<u8> {
        answer_with_ttl(code, 60)
    }

    /// [`answer`] with the A record's TTL.
    fn answer_with_ttl(code: hickory_proto::op::ResponseCode, a_ttl: u32) -> Vec<u8> {
        use hickory_proto::op::{Message, MessageType, Query};
        use hickory_proto::rr::rdata::{A, AAAA, CNAME};
        use hickory_proto::rr::{Name, RData, Record, RecordType};
        let host = Name::from_ascii("router.test.").unwrap();
        let target = Name::from_ascii("edge.router.test.").unwrap();
        let mut m = Message::new();
        m.set_id(0)
            .set_message_type(MessageType::Response)
            .set_response_code(code)
            .add_query(Query::query(host.clone(), RecordType::A))
            .add_answer(Record::from_rdata(
                host,
                300,
                RData::CNAME(CNAME(target.clone())),
            ))
            .add_answer(Record::from_rdata(
                target.clone(),
                a_ttl,
                RData::A(A::new(192, 0, 2, 7)),
            ))
            .add_answer(Record::from_rdata(
                target,
                a_ttl.saturating_add(60),
                RData::AAAA(AAAA::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7)),
            ));
        m.to_vec().unwrap()
    }

    #[test]
    fn an_answer_gives_its_addresses_and_smallest_ttl() {
        let (ips, ttl) =
            parse_dns_message(&answer(hickory_proto::op::ResponseCode::NoError)).unwrap();
        assert_eq!(
            ips,
            vec![
                "192.0.2.7".parse::<IpAddr>().unwrap(),
                "2001:db8::7".parse().unwrap()
            ]
        );
        assert_eq!(
            ttl,
            Some(Duration::from_secs(60)),
            "the CNAME's TTL is not an address's"
        );
    }

    #[test]
    fn a_broken_or_failed_answer_is_refused_with_its_reason() {
        let full = answer(hickory_proto::op::ResponseCode::NoError);
        for cut in [5, 20, full.len() - 3] {
            let e = parse_dns_message(&full[..cut]).unwrap_err().to_string();
            assert!(e.starts_with("not a DNS message"), "{cut}: {e}");
        }
        let e = parse_dns_message(&answer(hickory_proto::op::ResponseCode::NXDomain))
            .unwrap_err()
            .to_string();
        assert!(e.contains("DNS") && e.contains("Non-Existent"), "{e}");
        let q = dns_query("router.test", false).unwrap();
        assert_eq!(
            parse_dns_message(&q).unwrap_err().to_string(),
            "not a DNS message: a query, not a response"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_ttl_parses_within_a_day(ttl in proptest::prelude::any::<u32>()) {
            let (_, got) =
                parse_dns_message(&answer_with_ttl(hickory_proto::op::ResponseCode::NoError, ttl))
                    .unwrap();
            proptest::prop_assert_eq!(got, Some(Duration::from_secs(u64::from(ttl).min(86_400))));
        }
    }
}
