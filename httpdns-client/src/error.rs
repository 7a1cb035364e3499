//! SDK errors. Each keeps its cause: [`std::error::Error::source`] leads to what
//! failed underneath (the TLS error, the refused connection, the provider's answer),
//! and the variants can be matched on: a router that refused ([`Error::Refused`]) is
//! not a router that could not be reached ([`Error::NoCandidates`]).

use std::net::SocketAddr;
use std::time::Duration;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything the SDK can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is unusable (no router domain, bad provider address, ...).
    /// Retrying cannot help; fix the configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// No source (HTTPDNS, local DNS, bootstrap IPs) produced an address for `host`.
    #[error("could not resolve {host}: {failures}")]
    Resolve {
        /// The host name.
        host: String,
        /// What each source said, in the order they failed (the first is the
        /// error's `source()`).
        #[source]
        failures: Failures,
    },
    /// A router answered and refused: the fleet is full (503 `no_gateways`) or this
    /// client asks too often (429 `rate_limited`). The router is healthy; ask it again
    /// after `retry_after` ([`crate::Client::connect_with_retry`] does). Old candidates
    /// are not used instead: they would defeat the router's overload protection.
    #[error("router {addr} refused: HTTP {status} {code}: {message}{}", retry(.retry_after))]
    Refused {
        /// The router.
        addr: SocketAddr,
        /// The HTTP status.
        status: u16,
        /// The contract's error code (`no_gateways`, `rate_limited`, ...).
        code: String,
        /// The router's message.
        message: String,
        /// `Retry-After`, when the router sent one.
        retry_after: Option<Duration>,
    },
    /// No router could be reached and no fallback (cache file, fallback domain) had
    /// candidates.
    #[error("no gateway candidates: routers: {routers}; fallbacks: {fallbacks}")]
    NoCandidates {
        /// Why each router (or the router's name) failed (the first is the error's
        /// `source()`).
        #[source]
        routers: Failures,
        /// Why each fallback failed.
        fallbacks: Failures,
    },
    /// A migration found no candidate but the gateway it leaves (every source is
    /// filtered: the router's answer, the cache file, the fallback domain). Back off
    /// and try again: the fleet may have room elsewhere later.
    #[error(
        "no gateway other than {left} (the one being left) among the candidates from {from:?}"
    )]
    NoOtherGateway {
        /// The id of the gateway being left.
        left: String,
        /// Where the candidates came from.
        from: crate::answer::Source,
    },
    /// The call's overall deadline passed.
    #[error("no candidates within {0:?}")]
    Deadline(Duration),
    /// Every candidate refused, timed out or failed its TLS handshake.
    #[error("could not connect to any of {} candidates: {attempts}", .attempts.len())]
    Connect {
        /// Each candidate tried and why it failed (the first is the error's
        /// `source()`; a TLS failure's own source is the `rustls` error).
        #[source]
        attempts: Failures,
    },
    /// The connect-with-retry loop used up its attempts.
    #[error("gave up after {attempts} rounds: {last}")]
    GaveUp {
        /// Rounds tried.
        attempts: u32,
        /// The backoff slept between rounds.
        delays: Vec<Duration>,
        /// The last round's error.
        #[source]
        last: Box<Error>,
    },
}

impl Error {
    /// True when the same call may succeed later or against another router or gateway
    /// (network failures, overloaded fleets). False for configuration mistakes.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Error::Config(_))
    }

    /// How long the router asked to wait, for a refusal.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Refused { retry_after, .. } => *retry_after,
            Error::GaveUp { last, .. } => last.retry_after(),
            _ => None,
        }
    }

    /// The individual failures behind this error.
    pub fn failures(&self) -> &[Failure] {
        match self {
            Error::Resolve { failures, .. } => failures,
            Error::NoCandidates { routers, .. } if !routers.is_empty() => routers,
            Error::NoCandidates { fallbacks, .. } => fallbacks,
            Error::Connect { attempts } => attempts,
            _ => &[],
        }
    }
}

fn retry(after: &Option<Duration>) -> String {
    after
        .map(|d| format!(" (retry after {} s)", d.as_secs()))
        .unwrap_or_default()
}

/// Several failures, in order; as an error, its source is the first.
#[derive(Debug, Default)]
pub struct Failures(pub Vec<Failure>);

impl std::fmt::Display for Failures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("-");
        }
        for (i, failure) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{failure}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Failures {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .first()
            .map(|f| f as &(dyn std::error::Error + 'static))
    }
}

impl std::ops::Deref for Failures {
    type Target = [Failure];
    fn deref(&self) -> &[Failure] {
        &self.0
    }
}

impl From<Vec<Failure>> for Failures {
    fn from(v: Vec<Failure>) -> Failures {
        Failures(v)
    }
}

/// One thing that failed: which (`target`: a provider, a router, local DNS, the cache
/// file), how ([`FailureKind`]), and the underlying error as its source.
#[derive(Debug, thiserror::Error)]
#[error("{target}: {kind}")]
pub struct Failure {
    /// What was tried.
    pub target: String,
    /// How it failed.
    pub kind: FailureKind,
    /// The underlying error.
    #[source]
    pub source: Option<BoxError>,
}

impl Failure {
    /// A failure without an underlying error.
    pub fn new(target: impl Into<String>, kind: FailureKind) -> Failure {
        Failure {
            target: target.into(),
            kind,
            source: None,
        }
    }

    /// A failure caused by `e`, classified by the causes in its chain.
    pub fn caused(target: impl Into<String>, e: impl Into<BoxError>) -> Failure {
        let e = e.into();
        Failure {
            target: target.into(),
            kind: FailureKind::of(&*e),
            source: Some(e),
        }
    }
}

/// How something failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FailureKind {
    /// Nothing listens there.
    #[error("connection refused")]
    Refused,
    /// No answer in time.
    #[error("timed out")]
    TimedOut,
    /// The TLS handshake failed: an unknown CA, a name mismatch, not TLS at all.
    #[error("TLS: {0}")]
    Tls(String),
    /// An HTTP answer that is not a success, with the start of its body (a provider's
    /// `InvalidSignature` or `SignatureExpired`).
    #[error("HTTP {status}: {body}")]
    Status {
        /// The status.
        status: u16,
        /// The first 200 characters of the body.
        body: String,
    },
    /// An answer that cannot be used (not the format, no address, wrong host).
    #[error("unusable answer: {0}")]
    Malformed(String),
    /// Not configured, or nothing to ask.
    #[error("{0}")]
    Unavailable(String),
    /// A gateway's domain outside `Config::gateway_domain_suffixes`: not used for TLS
    /// (the router's answer named a domain the app does not allow).
    #[error("domain not allowed: {0}")]
    DomainNotAllowed(String),
    /// Anything else, as the lower layer said it.
    #[error("{0}")]
    Other(String),
}

impl FailureKind {
    /// Classifies an error by the causes in its chain, itself included (an
    /// `io::Error`'s own `source()` skips the error it wraps, so those are followed
    /// explicitly).
    pub fn of(e: &(dyn std::error::Error + 'static)) -> FailureKind {
        let mut chain: Vec<&(dyn std::error::Error + 'static)> = Vec::new();
        let mut next = Some(e);
        while let Some(s) = next {
            chain.push(s);
            next = match s
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
            {
                Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                None => s.source(),
            };
        }
        if let Some(tls) = chain.iter().find_map(|s| s.downcast_ref::<rustls::Error>()) {
            return FailureKind::Tls(tls.to_string());
        }
        if chain
            .iter()
            .any(|s| s.is::<http_body_util::LengthLimitError>())
        {
            return FailureKind::Malformed(format!(
                "an answer over {} bytes",
                crate::limits::MAX_BODY
            ));
        }
        for s in &chain {
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => return FailureKind::Refused,
                    std::io::ErrorKind::TimedOut => return FailureKind::TimedOut,
                    _ => {}
                }
            }
        }
        FailureKind::Other(chain.last().map(|s| s.to_string()).unwrap_or_default())
    }
}
