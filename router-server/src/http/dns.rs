//! The zone over HTTPS, on the router's own listeners:
//!
//! * `/dns-query`: DNS over HTTPS (RFC 8484), `GET ?dns=` (base64url) and `POST`
//!   (`application/dns-message`);
//! * `/resolve?name=&type=`: the JSON form Google and Cloudflare serve
//!   (`application/dns-json`);
//! * `/d?host=` and `/sign_d?host=&t=&s=` (also under `/{account}/`): the Alibaba
//!   HTTPDNS answer, `{"host","ips","ipsv6","ttl","origin_ttl"}`, for the gateway zone
//!   and for the routers' own domain.
//!
//! A request over HTTPS comes from one client (a browser, an app), so its answer counts
//! one client in the herd accounting, not `dns.weight`.

use gateway_api::ErrorCode;
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Query, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RecordType};
use md5::{Digest, Md5};
use serde_json::json;
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::config::dns::parse_domain;
use crate::dns::{qtype_label_of, rcode_label, Dns, Transport};
use crate::guard::Pass;
use crate::identity::client_ip;

/// The largest `/dns-query` body: a DNS message is at most 65,535 bytes (RFC 8484
/// §6 and the 16-bit length of DNS over TCP), so more is refused unread (413).
pub const MAX_DNS_MESSAGE: usize = u16::MAX as usize;

/// The routes, over `dns`.
pub fn routes(dns: Arc<Dns>) -> Router {
    let doh = super::body_limit::limit_body(
        Router::new().route("/dns-query", get(doh_get).post(doh_post)),
        MAX_DNS_MESSAGE,
    );
    Router::new()
        .route("/resolve", get(resolve))
        .route("/d", get(httpdns))
        .route("/sign_d", get(httpdns_signed))
        .route("/{account}/d", get(httpdns))
        .route("/{account}/sign_d", get(httpdns_signed))
        .merge(doh)
        .with_state(dns)
}

const DNS_MESSAGE: &str = "application/dns-message";

fn bad_request(code: ErrorCode, msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, msg)
}

/// The client: its address (the peer, or the address a trusted proxy forwarded), let
/// through by the guard (block list, request budget) before any other work.
fn asker(dns: &Dns, peer: SocketAddr, headers: &HeaderMap) -> Result<(IpAddr, Pass), ApiError> {
    let peer_ip = peer.ip().to_canonical();
    let cfg = dns.config();
    let ip = client_ip(peer_ip, headers, &cfg.trusted_proxies);
    super::forwarded::note(&cfg, dns.edge_metrics(), peer_ip, headers);
    let pass = dns.serving().guard.check(ip).map_err(ApiError::refused)?;
    Ok((ip, pass))
}

fn dns_off() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        "this router serves no DNS zone (dns.zone)",
    )
}

async fn doh_get(
    State(dns): State<Arc<Dns>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    doh_get_answer(&dns, peer, &headers, query.as_deref())
}

/// `GET /dns-query?dns=` from `peer`: the router's route, and the server's hot route
/// (see `http::routes::HotRoute`) alike. The query string is read in place.
pub fn doh_get_answer(
    dns: &Dns,
    peer: SocketAddr,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let (ip, pass) = asker(dns, peer, headers)?;
    let Some(b64) = dns_param(query.unwrap_or(""))? else {
        return Err(bad_request(
            ErrorCode::InvalidParameter,
            "dns: missing (a base64url DNS message)",
        ));
    };
    let packet = DOH_BASE64.decode(b64.as_bytes()).map_err(|e| {
        bad_request(
            ErrorCode::InvalidParameter,
            format!("dns: not base64url: {e}"),
        )
    })?;
    doh(dns, &packet, ip, pass)
}

/// Base64url as RFC 8484 writes it (no padding), lenient about padding and about
/// unused trailing bits.
const DOH_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// The `dns` parameter of a query string: the last one, as a map of the parameters
/// would keep. A query with nothing encoded in it (`%`, `+`; base64url needs neither)
/// is read in place; any other is decoded whole.
fn dns_param(query: &str) -> Result<Option<Cow<'_, str>>, ApiError> {
    if !query.contains(['%', '+']) {
        return Ok(query
            .split('&')
            .filter_map(|pair| match pair.split_once('=') {
                Some(("dns", v)) => Some(v),
                None if pair == "dns" => Some(""),
                _ => None,
            })
            .next_back()
            .map(Cow::Borrowed));
    }
    let pairs: Vec<(Cow<'_, str>, Cow<'_, str>)> = serde_urlencoded::from_str(query)
        .map_err(|e| bad_request(ErrorCode::InvalidParameter, format!("query string: {e}")))?;
    Ok(pairs
        .into_iter()
        .rev()
        .find(|(k, _)| k == "dns")
        .map(|(_, v)| v))
}

async fn doh_post(
    State(dns): State<Arc<Dns>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (ip, pass) = asker(&dns, peer, &headers)?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.eq_ignore_ascii_case(DNS_MESSAGE) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            format!("the body must be {DNS_MESSAGE}, not {ct:?}"),
        ));
    }
    doh(&dns, &body, ip, pass)
}

fn doh(dns: &Dns, packet: &[u8], client: IpAddr, pass: Pass) -> Result<Response, ApiError> {
    if dns.zone().is_none() {
        return Err(dns_off());
    }
    if packet.len() > u16::MAX as usize {
        return Err(bad_request(
            ErrorCode::InvalidParameter,
            "dns: over 65535 bytes",
        ));
    }
    let Some((answer, ttl)) = dns.handle_checked(packet, client, Transport::Https, Some(pass))
    else {
        return Err(bad_request(
            ErrorCode::InvalidParameter,
            "dns: not a DNS query message",
        ));
    };
    // RFC 8484 §5.1: cacheable for the smallest TTL of the answer.
    let mut resp = Response::new(Body::from(answer));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(DNS_MESSAGE));
    h.insert(header::CACHE_CONTROL, max_age(ttl));
    Ok(resp)
}

/// `max-age=TTL`; the last one made on this thread is reused, as an answer's TTL is
/// nearly always the zone's.
fn max_age(ttl: u32) -> HeaderValue {
    thread_local! {
        static LAST: RefCell<Option<(u32, HeaderValue)>> = const { RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((t, v)) if *t == ttl => v.clone(),
        _ => {
            let v = HeaderValue::from_str(&format!("max-age={ttl}"))
                .expect("a number is a valid header");
            *last = Some((ttl, v.clone()));
            v
        }
    })
}

/// A query name from a parameter: absolute, ASCII, no longer than DNS allows.
fn query_name(raw: &str, key: &str) -> Result<Name, ApiError> {
    let n = raw.trim_end_matches('.');
    if n.is_empty() || n.len() > 253 || !n.is_ascii() {
        return Err(bad_request(
            ErrorCode::InvalidParameter,
            format!("{key}: {raw:?} is not a domain name"),
        ));
    }
    Name::from_ascii(format!("{n}.")).map_err(|e| {
        bad_request(
            ErrorCode::InvalidParameter,
            format!("{key}: {raw:?} is not a domain name: {e}"),
        )
    })
}

async fn resolve(
    State(dns): State<Arc<Dns>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (ip, pass) = asker(&dns, peer, &headers)?;
    if dns.zone().is_none() {
        return Err(dns_off());
    }
    let name = query_name(
        q.get("name")
            .ok_or_else(|| bad_request(ErrorCode::InvalidParameter, "name: missing"))?,
        "name",
    )?;
    let qtype = match q.get("type").map(String::as_str) {
        None => RecordType::A,
        Some(t) => match t.parse::<u16>() {
            Ok(n) => RecordType::from(n),
            Err(_) => RecordType::from_str(&t.to_ascii_uppercase()).map_err(|_| {
                bad_request(
                    ErrorCode::InvalidParameter,
                    format!("type: {t:?} is not a record type"),
                )
            })?,
        },
    };
    let subnet = match q.get("edns_client_subnet") {
        None => None,
        Some(s) => Some(
            ipnet::IpNet::from_str(s)
                .map(|n| n.addr())
                .or_else(|_| IpAddr::from_str(s))
                .map_err(|_| {
                    bad_request(
                        ErrorCode::InvalidParameter,
                        format!("edns_client_subnet: {s:?} is not an address or subnet"),
                    )
                })?,
        ),
    };
    let weight = dns.herd_weight(ip, pass, 1);
    let found = dns.lookup(&name, qtype, ip, subnet, weight);
    dns.count(
        Transport::Https,
        qtype_label_of(qtype),
        Some(rcode_label(found.rcode)),
    );
    let records = |rs: &[hickory_proto::rr::Record]| -> Vec<serde_json::Value> {
        rs.iter()
            .map(|r| {
                json!({
                    "name": r.name().to_ascii(),
                    "type": u16::from(r.record_type()),
                    "TTL": r.ttl(),
                    "data": r.data().to_string(),
                })
            })
            .collect()
    };
    let mut body = json!({
        "Status": u16::from(found.rcode),
        "TC": false,
        "RD": true,
        "RA": false,
        "AD": false,
        "CD": false,
        "Question": [{"name": name.to_ascii(), "type": u16::from(qtype)}],
    });
    if !found.answers.is_empty() {
        body["Answer"] = records(&found.answers).into();
    }
    if !found.authority.is_empty() {
        body["Authority"] = records(&found.authority).into();
    }
    let ttl = found.min_ttl().unwrap_or(0);
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/dns-json"),
            ),
            (header::CACHE_CONTROL, max_age(ttl)),
        ],
        body.to_string(),
    )
        .into_response())
}

async fn httpdns(
    State(dns): State<Arc<Dns>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let asked = asker(&dns, peer, &headers)?;
    let cfg = &dns.config().httpdns;
    if cfg.signed_only {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::SignatureRequired,
            "this router answers signed requests only (/sign_d)",
        ));
    }
    httpdns_answer(&dns, asked, &q)
}

async fn httpdns_signed(
    State(dns): State<Arc<Dns>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let asked = asker(&dns, peer, &headers)?;
    let config = dns.config();
    let Some(secret) = config.httpdns.secret.as_deref().filter(|s| !s.is_empty()) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "signed requests are not configured (httpdns.secret)",
        ));
    };
    let host = q.get("host").map(String::as_str).unwrap_or("");
    let t = q
        .get("t")
        .and_then(|t| t.parse::<u64>().ok())
        .ok_or_else(|| bad_request(ErrorCode::InvalidParameter, "t: missing or not an integer"))?;
    let s = q
        .get("s")
        .ok_or_else(|| bad_request(ErrorCode::InvalidParameter, "s: missing"))?;
    let max_ahead = dns.config().httpdns.sign_max_ahead_secs;
    check_expiry(t, registry::now_ms() / 1000, max_ahead)?;
    let want = hex(&Md5::digest(format!("{host}-{secret}-{t}").as_bytes()));
    if !bool::from(want.as_bytes().ct_eq(s.to_ascii_lowercase().as_bytes())) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::InvalidSignature,
            "s is not md5(host-secret-t)",
        ));
    }
    httpdns_answer(&dns, asked, &q)
}

/// A signed request's expiry `t` (unix seconds) against `now`: passed is 403
/// `signature_expired`; more than `max_ahead` seconds away is 403
/// `signature_too_far_ahead`, so a captured URL replays for a bounded time.
fn check_expiry(t: u64, now: u64, max_ahead: u64) -> Result<(), ApiError> {
    if t < now {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::SignatureExpired,
            format!("t {t} has passed"),
        ));
    }
    if t - now > max_ahead {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::SignatureTooFarAhead,
            format!(
                "t {t} is {} s ahead; at most {max_ahead} s (httpdns.sign_max_ahead_secs) are accepted",
                t - now
            ),
        ));
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The Alibaba-style answer for `host`: the routers for the router domain, gateways
/// for a name of the zone, nothing for any other name.
///
/// `ip=` names the client whose region is wanted (a server resolving for its
/// clients); the herd count is charged to whoever asked.
fn httpdns_answer(
    dns: &Dns,
    (asker, pass): (IpAddr, Pass),
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let raw = q
        .get("host")
        .ok_or_else(|| bad_request(ErrorCode::InvalidParameter, "host: missing"))?;
    let host =
        parse_domain(raw).map_err(|e| bad_request(ErrorCode::InvalidHost, format!("host: {e}")))?;
    let (want4, want6) = match q.get("query").map(String::as_str) {
        None | Some("4") => (true, false),
        Some("6") => (false, true),
        Some("4,6") | Some("6,4") => (true, true),
        Some(other) => {
            return Err(bad_request(
                ErrorCode::InvalidParameter,
                format!("query: {other:?} is not 4, 6 or 4,6"),
            ))
        }
    };
    let client = match q.get("ip") {
        None => asker,
        Some(ip) => IpAddr::from_str(ip).map_err(|_| {
            bad_request(
                ErrorCode::InvalidParameter,
                format!("ip: {ip:?} is not an address"),
            )
        })?,
    };
    let cfg = &dns.config();
    let (mut ips, mut ipsv6, ttl) = (Vec::new(), Vec::new(), cfg.httpdns.router_ttl);
    let ttl = if !cfg.httpdns.router_domain.is_empty() && host == cfg.httpdns.router_domain {
        for ip in dns.router_addrs() {
            match ip {
                IpAddr::V4(_) if want4 => ips.push(ip.to_string()),
                IpAddr::V6(_) if want6 => ipsv6.push(ip.to_string()),
                _ => {}
            }
        }
        ttl
    } else {
        let name = query_name(&host, "host")?;
        let mut rcode = "NOERROR";
        for (want, qtype, out) in [
            (want4, RecordType::A, &mut ips),
            (want6, RecordType::AAAA, &mut ipsv6),
        ] {
            if !want {
                continue;
            }
            let found = dns.lookup(&name, qtype, client, None, dns.herd_weight(asker, pass, 1));
            if found.rcode != ResponseCode::NoError {
                rcode = rcode_label(found.rcode);
            }
            for r in &found.answers {
                if let Some(ip) = r.data().ip_addr() {
                    out.push(ip.to_string());
                }
            }
        }
        dns.count(Transport::Https, "httpdns", Some(rcode));
        cfg.dns.ttl
    };
    let mut body = json!({"host": host, "ips": ips, "ttl": ttl, "origin_ttl": ttl});
    if want6 {
        body["ipsv6"] = ipsv6.into();
    }
    Ok((
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What the whole decoder makes of a query's `dns` parameter.
    fn decoded(query: &str) -> Option<String> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap();
        pairs
            .into_iter()
            .rev()
            .find(|(k, _)| k == "dns")
            .map(|(_, v)| v)
    }

    #[test]
    fn the_dns_parameter_is_the_last_one_decoded_or_not() {
        for (query, want) in [
            ("dns=AAAB", Some("AAAB")),
            ("x=1&dns=AAAB&y", Some("AAAB")),
            ("dns=first&dns=last", Some("last")),
            ("dns", Some("")),
            ("dns=", Some("")),
            ("dnsx=AAAB&xdns=C", None),
            ("", None),
            ("&&dns=a=b&&", Some("a=b")),
            ("dns=AA%41B", Some("AAAB")),
            ("dn%73=AAAB", Some("AAAB")),
            ("dns=a+b", Some("a b")),
        ] {
            let got = dns_param(query).unwrap().map(Cow::into_owned);
            assert_eq!(got.as_deref(), want, "{query:?}");
            assert_eq!(
                got,
                decoded(query),
                "{query:?}: as the whole decoder reads it"
            );
        }
    }

    proptest! {
        /// Read in place or decoded, the parameter is what the whole decoder finds.
        #[test]
        fn the_dns_parameter_matches_the_whole_decoder(
            pairs in prop::collection::vec(
                (
                    prop_oneof![Just("dns"), Just("dn%73"), Just("dns+"), Just("x"), Just("")],
                    "[A-Za-z0-9_=%+-]{0,8}",
                    any::<bool>(),
                ),
                0..5,
            )
        ) {
            let query = pairs
                .iter()
                .map(|(k, v, with)| if *with { format!("{k}={v}") } else { k.to_string() })
                .collect::<Vec<_>>()
                .join("&");
            prop_assert_eq!(dns_param(&query).unwrap().map(Cow::into_owned), decoded(&query));
        }
    }

    #[test]
    fn max_age_is_the_ttl_asked_for() {
        for ttl in [10, 10, 60, 10, 0] {
            assert_eq!(max_age(ttl), format!("max-age={ttl}").as_str());
        }
    }

    #[test]
    fn a_signed_expiry_is_bounded_on_both_sides() {
        let now = 1_800_000_000;
        let day = 86_400;
        assert!(check_expiry(now, now, day).is_ok(), "expires this second");
        assert!(
            check_expiry(now + day, now, day).is_ok(),
            "exactly the bound"
        );
        let past = check_expiry(now - 1, now, day).unwrap_err();
        assert_eq!(
            (past.status, past.code),
            (StatusCode::FORBIDDEN, ErrorCode::SignatureExpired)
        );
        let ahead = check_expiry(now + day + 1, now, day).unwrap_err();
        assert_eq!(
            (ahead.status, ahead.code),
            (StatusCode::FORBIDDEN, ErrorCode::SignatureTooFarAhead)
        );
        assert!(ahead.message.contains("86401 s ahead"), "{}", ahead.message);
        let years = check_expiry(99_999_999_999, now, day).unwrap_err();
        assert_eq!(years.code, ErrorCode::SignatureTooFarAhead);
        // A shorter bound is followed.
        assert!(check_expiry(now + 61, now, 60).is_err());
        assert!(check_expiry(now + 60, now, 60).is_ok());
    }
}
