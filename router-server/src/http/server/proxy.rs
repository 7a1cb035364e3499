//! The PROXY protocol (HAProxy's, v1 text and v2 binary) on listeners that ask for it
//! (`[http] proxy_protocol`): a balancer that passes TCP through says who the client
//! is in a header before the first byte of TLS or HTTP. Only peers `trusted_proxies`
//! lists may send it; a connection from any other peer, or one that does not begin
//! with a valid header within the first-byte deadline, is closed without an answer.
//! The header is framed here (bounded: 107 bytes for v1, 16 + 1,024 for v2) and
//! parsed by the `ppp` crate; what follows it is left in the reader for TLS or HTTP.

use std::net::SocketAddr;

use ppp::{v1, v2, HeaderResult};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The v2 header's first twelve bytes.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, CRLF included (the protocol's own limit).
const V1_MAX: usize = 107;
/// The most address and TLV bytes a v2 header may carry here. Balancers add a few
/// TLVs (AWS's VPC endpoint id, a unique id); more is refused rather than read.
const V2_MAX_PAYLOAD: usize = 1024;

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum ProxyError {
    /// The first bytes are neither a v1 nor a v2 header.
    #[error("the connection does not begin with a PROXY header")]
    Missing,
    /// A header longer than the protocol (v1) or this router (v2) allows.
    #[error("PROXY header too long")]
    TooLong,
    /// A header that `ppp` cannot read.
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
    /// The connection ended or failed inside the header.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one PROXY header from `r` and returns the client's address it names: `None`
/// for a v2 LOCAL header (the balancer's own health check) and a v1 `UNKNOWN`, whose
/// connection stays the balancer's. Reads the header's bytes and no more.
pub(super) async fn read_header<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<SocketAddr>, ProxyError> {
    let mut bytes = vec![0u8; V2_SIGNATURE.len()];
    r.read_exact(&mut bytes).await?;
    if bytes == V2_SIGNATURE {
        let mut fixed = [0u8; 4];
        r.read_exact(&mut fixed).await?;
        bytes.extend_from_slice(&fixed);
        let len = u16::from_be_bytes([fixed[2], fixed[3]]) as usize;
        if len > V2_MAX_PAYLOAD {
            return Err(ProxyError::TooLong);
        }
        let start = bytes.len();
        bytes.resize(start + len, 0);
        r.read_exact(&mut bytes[start..]).await?;
    } else if bytes.starts_with(b"PROXY ") {
        while bytes.last() != Some(&b'\n') {
            if bytes.len() >= V1_MAX {
                return Err(ProxyError::TooLong);
            }
            bytes.push(r.read_u8().await?);
        }
    } else {
        return Err(ProxyError::Missing);
    }
    match HeaderResult::parse(&bytes) {
        HeaderResult::V1(Ok(h)) => Ok(match h.addresses {
            v1::Addresses::Tcp4(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
            v1::Addresses::Tcp6(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
            v1::Addresses::Unknown => None,
        }),
        HeaderResult::V2(Ok(h)) => Ok(match (h.command, h.addresses) {
            (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                Some(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                Some(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            // LOCAL, or an address family that is not an IP one.
            _ => None,
        }),
        HeaderResult::V1(Err(e)) => Err(ProxyError::Malformed(format!("{e:?}"))),
        HeaderResult::V2(Err(e)) => Err(ProxyError::Malformed(format!("{e:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `read_header` over `bytes`, and what is left unread after it.
    async fn read(bytes: &[u8]) -> (Result<Option<SocketAddr>, ProxyError>, Vec<u8>) {
        let mut r = bytes;
        let got = read_header(&mut r).await;
        (got, r.to_vec())
    }

    fn v2(command: v2::Command, addresses: v2::Addresses) -> Vec<u8> {
        v2::Builder::with_addresses(v2::Version::Two | command, v2::Protocol::Stream, addresses)
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn v1_and_v2_name_the_client_and_leave_what_follows() {
        let (got, rest) =
            read(b"PROXY TCP4 198.51.100.7 192.0.2.1 40000 443\r\nGET / HTTP/1.1\r\n").await;
        assert_eq!(got.unwrap(), Some("198.51.100.7:40000".parse().unwrap()));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        let (got, _) = read(b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n").await;
        assert_eq!(got.unwrap(), Some("[2001:db8::7]:40000".parse().unwrap()));
        let (got, rest) = read(b"PROXY UNKNOWN\r\n\x16\x03").await;
        assert_eq!(got.unwrap(), None);
        assert_eq!(rest, b"\x16\x03");

        let mut bytes = v2(
            v2::Command::Proxy,
            v2::Addresses::IPv4(v2::IPv4::new([198, 51, 100, 8], [192, 0, 2, 1], 40001, 80)),
        );
        bytes.extend_from_slice(b"GET /");
        let (got, rest) = read(&bytes).await;
        assert_eq!(got.unwrap(), Some("198.51.100.8:40001".parse().unwrap()));
        assert_eq!(rest, b"GET /");
        let bytes = v2(
            v2::Command::Proxy,
            v2::Addresses::IPv6(v2::IPv6::new(
                "2001:db8::8".parse::<std::net::Ipv6Addr>().unwrap(),
                "2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap(),
                40002,
                80,
            )),
        );
        assert_eq!(
            read(&bytes).await.0.unwrap(),
            Some("[2001:db8::8]:40002".parse().unwrap())
        );
        let local = v2(v2::Command::Local, v2::Addresses::Unspecified);
        assert_eq!(read(&local).await.0.unwrap(), None, "a health check");
    }

    #[tokio::test]
    async fn anything_else_is_refused_within_its_bound() {
        let cases: [(&[u8], &str); 6] = [
            (b"GET /gateways HTTP/1.1\r\n\r\n", "does not begin"),
            (b"PROXY TCP4 198.51.100.7 192.0.2.1 40000\r\n", "malformed"),
            (
                b"PROXY TCP4 999.51.100.7 192.0.2.1 40000 443\r\n",
                "malformed",
            ),
            (b"PROXY TCP4 198.51.100.7 192.0.2.1 40000 443", "reading"),
            (b"PROXY xxxxxx", "reading"),
            (b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff", "too long"),
        ];
        for (bytes, why) in cases {
            let e = read(bytes).await.0.unwrap_err().to_string();
            assert!(e.contains(why), "{bytes:?}: {e}");
        }
        // A v1 line past 107 bytes is refused there, not read on.
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(4096, b'1');
        let (got, rest) = read(&long).await;
        assert!(matches!(got, Err(ProxyError::TooLong)), "{got:?}");
        assert_eq!(rest.len(), 4096 - V1_MAX);
    }
}
