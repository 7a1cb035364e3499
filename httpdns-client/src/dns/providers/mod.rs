//! The providers' wire formats, one file each, and the request to one provider
//! address.
//!
//! * [`alibaba`]: `GET /{account}/d?host=H` answers `{"host","ips","ipsv6","ttl"}`;
//!   signed: `GET /{account}/sign_d?host=H&t=EXPIRY&s=S` with
//!   `S = md5("{host}-{secret}-{EXPIRY}")`. `&query=4,6` asks for IPv6 addresses too.
//! * [`dnspod`]: Tencent DNSPod's `GET /d?dn=H&ttl=1`, answered `IP;IP,TTL` in plain
//!   text.
//! * [`doh`]: DNS-over-HTTPS (RFC 8484), `application/dns-message` by GET (`?dns=`
//!   base64url) or POST, A and AAAA queries.
//!
//! Only IP literals are accepted from an answer: anything else is logged and dropped,
//! and an answer left with no address is a failure (a hijacked or broken provider).

pub mod alibaba;
pub mod dnspod;
pub mod doh;

use std::net::IpAddr;
use std::time::Duration;

use super::config::{Provider, ProviderKind};
use bytes::Bytes;

use crate::error::{Failure, FailureKind};
use crate::http::{Endpoint, Http, Request};

/// Why a provider's answer cannot be used, or the query for it cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AnswerError {
    /// A DNSPod answer that is not UTF-8.
    #[error("answer is not text")]
    NotText,
    /// An HTTPDNS answer that is not its JSON; serde's reason.
    #[error("answer is not HTTPDNS JSON: {0}")]
    NotJson(String),
    /// An HTTPDNS answer for another name.
    #[error("answer is for {got:?}, not {asked:?}")]
    OtherHost {
        /// The name in the answer.
        got: String,
        /// The name asked for.
        asked: String,
    },
    /// An HTTPDNS answer left with no address once the unusable ones are dropped.
    #[error("answer holds no usable IP address")]
    NoAddress,
    /// A DNSPod answer with no usable address; its first 100 characters.
    #[error("answer holds no usable IP address: {0:?}")]
    NoAddressIn(String),
    /// A DoH query for a name that is not one.
    #[error("{0:?} is not a DNS name")]
    NotDnsName(String),
    /// A DoH query that cannot be written.
    #[error("{0:?} does not fit a DNS query")]
    QueryTooLarge(String),
    /// A DoH answer that breaks off or does not parse at byte `at`.
    #[error("not a DNS message: malformed at byte {at} of {len}")]
    Malformed {
        /// Where it broke.
        at: usize,
        /// The message's length.
        len: usize,
    },
    /// A DoH answer that is a query.
    #[error("not a DNS message: a query, not a response")]
    NotResponse,
    /// A DoH answer with an error code (`NXDomain`, `ServFail`).
    #[error("DNS {0}")]
    Code(String),
    /// DoH answers with no A or AAAA record.
    #[error("no A or AAAA record")]
    NoRecord,
}

/// Addresses (IPv4 first) and the TTL the provider gave, if any.
pub(crate) type Answer = (Vec<IpAddr>, Option<Duration>);

/// One request to one provider address.
pub(crate) struct Ask<'a> {
    /// The SDK's HTTP client.
    pub(crate) http: &'a Http,
    /// The provider's address, and the name its certificate carries.
    pub(crate) endpoint: &'a Endpoint,
    /// The name looked up.
    pub(crate) host: &'a str,
    /// Wall-clock seconds, for signatures.
    pub(crate) now_unix: u64,
    /// Validity of a signature.
    pub(crate) sign_ttl: Duration,
    /// Ask for IPv6 addresses too.
    pub(crate) ipv6: bool,
    /// How failures name the provider address.
    pub(crate) target: &'a str,
}

impl Ask<'_> {
    pub(crate) fn malformed(&self, why: AnswerError) -> Failure {
        Failure::new(self.target, FailureKind::Malformed(why.to_string()))
    }

    /// Asks `p` for the host.
    pub(crate) async fn run(&self, p: &Provider) -> Result<Answer, Failure> {
        match &p.kind {
            ProviderKind::Doh { path, post } => doh::ask(self, path, *post).await,
            ProviderKind::DnsPod => {
                let path = dnspod::request_path(self.host);
                let body = self.send(&Request::get(path)).await?;
                dnspod::parse_dnspod(&body).map_err(|e| self.malformed(e))
            }
            ProviderKind::Alibaba => {
                let path =
                    alibaba::request_path(p, self.host, self.now_unix, self.sign_ttl, self.ipv6);
                let body = self.send(&Request::get(path)).await?;
                alibaba::parse_answer(self.host, &body).map_err(|e| self.malformed(e))
            }
        }
    }
}

/// An address a provider may give: not `0.0.0.0`, `::` or multicast.
pub(crate) fn usable(ip: IpAddr) -> bool {
    !ip.is_unspecified() && !ip.is_multicast()
}

/// Percent-encodes a query value.
pub(crate) fn esc(v: &str) -> String {
    form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

impl Ask<'_> {
    /// Sends a request; a non-2xx answer is a failure that keeps the body's start (a
    /// provider's `InvalidSignature` or `SignatureExpired`).
    pub(crate) async fn send(&self, req: &Request) -> Result<Bytes, Failure> {
        let resp = self.http.send(self.endpoint, req, self.target).await?;
        if !(200..300).contains(&resp.status) {
            return Err(Failure::new(
                self.target,
                FailureKind::Status {
                    status: resp.status,
                    body: String::from_utf8_lossy(&resp.body)
                        .chars()
                        .take(200)
                        .collect(),
                },
            ));
        }
        Ok(resp.body)
    }
}
