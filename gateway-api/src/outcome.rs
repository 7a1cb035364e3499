//! `POST /outcomes`: what a client saw when it connected to the gateways a router
//! named, sent to the router it asks next. Gateway ids, results and times only: no
//! address, device or user.

use serde::{Deserialize, Serialize};

/// The most outcomes one report may carry; a router refuses a longer one.
pub const MAX_OUTCOMES: usize = 32;

/// The largest report body a router reads, in bytes: [`MAX_OUTCOMES`] outcomes with
/// ids of up to 128 bytes fit.
pub const MAX_REPORT_BYTES: usize = 8 * 1024;

/// A batch of connect outcomes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeReport {
    /// At most [`MAX_OUTCOMES`], oldest first.
    pub outcomes: Vec<Outcome>,
}

/// One connect attempt at one gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The gateway's id, as the router's answer named it.
    pub gateway: String,
    /// How the attempt ended.
    pub result: OutcomeKind,
    /// Milliseconds from the attempt's start to its end: the connection made, the
    /// failure, or the moment another candidate won while this one had not answered.
    #[serde(default)]
    pub ms: u32,
}

/// How a connect attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    /// Connected (for TLS, the handshake done).
    Ok,
    /// Refused (a reset to the SYN).
    Refused,
    /// No answer: the attempt's deadline passed, or another candidate won while this
    /// one was still waiting.
    Timeout,
    /// The TLS handshake failed.
    Tls,
    /// Anything else (no route, a reset later); also what a reader makes of a kind it
    /// does not know.
    #[serde(other)]
    Other,
}

impl OutcomeKind {
    /// True for a connection made.
    pub fn is_ok(self) -> bool {
        self == OutcomeKind::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_unknown_kinds_as_other_and_writes_snake_case() {
        let r: OutcomeReport = serde_json::from_str(
            r#"{"outcomes":[{"gateway":"gw-1","result":"ok","ms":12},{"gateway":"gw-2","result":"quantum"},{"gateway":"gw-3","result":"timeout","ms":250}]}"#,
        )
        .unwrap();
        assert_eq!(r.outcomes[1].result, OutcomeKind::Other);
        assert_eq!(r.outcomes[1].ms, 0);
        assert!(r.outcomes[0].result.is_ok());
        assert_eq!(
            serde_json::to_string(&r.outcomes[2]).unwrap(),
            r#"{"gateway":"gw-3","result":"timeout","ms":250}"#
        );
    }
}
