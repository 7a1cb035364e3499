//! SDK errors, each saying whether trying again elsewhere (another router, another
//! gateway, later) can help.

use std::net::SocketAddr;

/// Everything the SDK can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is unusable (no router domain, bad provider address, ...).
    /// Retrying cannot help; fix the configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// No source (HTTPDNS, local DNS, bootstrap IPs) produced an address for `host`.
    #[error("could not resolve {host}: {detail}")]
    Resolve {
        /// The host name.
        host: String,
        /// What each source said.
        detail: String,
    },
    /// No router answered and no fallback (cache file, fallback domain) had candidates.
    #[error("no gateway candidates: {0}")]
    NoCandidates(String),
    /// Every candidate refused or timed out.
    #[error("could not connect to any of {} candidates: {}", .attempts.len(), summarize(.attempts))]
    Connect {
        /// Each address tried and why it failed.
        attempts: Vec<(SocketAddr, String)>,
    },
    /// The connect-with-retry loop used up its attempts.
    #[error("gave up after {attempts} rounds: {last}")]
    GaveUp {
        /// Rounds tried.
        attempts: u32,
        /// The backoff slept between rounds.
        delays: Vec<std::time::Duration>,
        /// The last round's error.
        last: Box<Error>,
    },
}

fn summarize(attempts: &[(SocketAddr, String)]) -> String {
    attempts
        .iter()
        .map(|(a, e)| format!("{a}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// True when the same call may succeed later or against another router or gateway
    /// (network failures, overloaded fleets). False for configuration mistakes.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Error::Config(_))
    }
}
