//! What a router and its clients exchange over HTTP, as serde types and nothing else:
//! the `GET /gateways` answer ([`GatewaysAnswer`], [`Gateway`], [`Backoff`]), the
//! protocols ([`Proto`]), the connect outcomes clients report ([`OutcomeReport`]) and
//! the error body every route shares ([`ErrorBody`], [`ErrorCode`]).
//!
//! The router writes these (its hot path assembles the same bytes from pre-serialised
//! pieces; a property test checks they equal what serde writes from these types), the
//! SDK and its bindings read them, and the OpenAPI test checks them against
//! `openapi.yaml`. Readers accept fields they do not know, so a router may add fields
//! without breaking older clients.

mod error;
mod outcome;
mod proto;

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use outcome::{Outcome, OutcomeKind, OutcomeReport, MAX_OUTCOMES, MAX_REPORT_BYTES};
pub use proto::Proto;

/// One candidate gateway of a `GET /gateways` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gateway {
    /// The node's id.
    pub id: String,
    /// The address to connect to, of the family asked for when the node has both.
    pub ip: IpAddr,
    /// The node's port for [`Gateway::proto`].
    pub port: u16,
    /// The protocol asked for.
    pub proto: Proto,
    /// The node's region.
    pub region: String,
    /// The data centre holding the node, as the router names it (routers that follow
    /// several DCs; absent from older routers and from fallbacks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dc: Option<String>,
    /// The ISP (carrier) the node is attached to, as its record names it: one, or
    /// several separated by commas (`ctcc,cmcc`: a node on several lines); `bgp`:
    /// multi-line. Absent when the record names none, and from older routers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isp: Option<String>,
    /// The node's DNS name (WebSocket and TLS clients use it as Host and SNI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Connections / capacity as the router estimates it, four decimals.
    pub load: f64,
}

impl Gateway {
    /// The socket address to dial.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }
}

/// Reconnect backoff as the router configures it: the delay before retry `n` is
/// `base_ms * factor^n`, at most `max_ms`, spread by ± `jitter`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Backoff {
    /// First delay.
    pub base_ms: u64,
    /// Largest delay.
    pub max_ms: u64,
    /// Growth per attempt.
    pub factor: f64,
    /// ± fraction of random spread.
    pub jitter: f64,
}

impl Default for Backoff {
    /// The contract's defaults: 1 s, at most 60 s, × 1.6, ± 20 %.
    fn default() -> Self {
        Backoff {
            base_ms: 1000,
            max_ms: 60_000,
            factor: 1.6,
            jitter: 0.2,
        }
    }
}

/// The `GET /gateways` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewaysAnswer {
    /// Candidates, best first.
    pub gateways: Vec<Gateway>,
    /// The region used; `None` when neither `?region` nor the address gave one.
    #[serde(default)]
    pub region: Option<String>,
    /// How long the answer may be reused.
    pub ttl_secs: u64,
    /// Heartbeat interval for the gateway connection.
    pub heartbeat_secs: u64,
    /// Reconnect backoff.
    pub backoff: Backoff,
    /// The registry revision the answer was chosen from.
    #[serde(default)]
    pub revision: i64,
    /// True when the router answered from a view it knows to be old.
    #[serde(default)]
    pub stale: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_reads_with_unknown_fields_and_writes_the_contract_order() {
        let text = r#"{"gateways":[{"id":"gw-1","ip":"192.0.2.1","port":9000,"proto":"tcp","region":"cn-sh","dc":"sh","load":0.25,"isp":"cmcc","weight":3}],"region":"cn-sh","ttl_secs":300,"heartbeat_secs":30,"backoff":{"base_ms":1000,"max_ms":60000,"factor":1.6,"jitter":0.2},"revision":7,"stale":false,"later":1}"#;
        let a: GatewaysAnswer = serde_json::from_str(text).unwrap();
        assert_eq!(a.gateways[0].addr(), "192.0.2.1:9000".parse().unwrap());
        assert_eq!(a.backoff, Backoff::default());
        let back = serde_json::to_string(&a).unwrap();
        assert!(
            back.starts_with(r#"{"gateways":[{"id":"gw-1","ip":"192.0.2.1","port":9000,"proto":"tcp","region":"cn-sh","dc":"sh","isp":"cmcc","load":0.25}],"region":"cn-sh","ttl_secs":300"#),
            "{back}"
        );
    }
}
