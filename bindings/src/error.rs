//! The errors apps see: [`SdkError`], its kind as the variant, with the message, the
//! cause chain and the router's `Retry-After`, and its conversions from the SDK's errors
//! and from I/O errors.

use httpdns_client as sdk;

/// Everything a call can fail with; the variant is the kind. Each carries the message,
/// the cause chain (outermost first: the failure, then what it wraps, down to the TLS
/// or socket error) and, for a refusal, the router's `Retry-After`.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum SdkError {
    /// The configuration is unusable; retrying cannot help.
    #[error("{detail}")]
    Config {
        /// What is wrong.
        detail: String,
        /// Causes, outermost first.
        causes: Vec<String>,
        /// Not set.
        retry_after_ms: Option<u64>,
    },
    /// A router answered and refused (the fleet is full, or this client asks too
    /// often): wait `retry_after_ms`, do not fall back to old candidates.
    #[error("{detail}")]
    Refused {
        /// The router's message.
        detail: String,
        /// Causes, outermost first.
        causes: Vec<String>,
        /// The router's `Retry-After`, ms.
        retry_after_ms: Option<u64>,
    },
    /// No router, cache file or fallback domain gave candidates (or the name did not
    /// resolve, or the deadline passed).
    #[error("{detail}")]
    Unreachable {
        /// What failed.
        detail: String,
        /// Causes, outermost first.
        causes: Vec<String>,
        /// Not set.
        retry_after_ms: Option<u64>,
    },
    /// A migration found no gateway but the one being left.
    #[error("{detail}")]
    NoOtherGateway {
        /// What failed.
        detail: String,
        /// Causes, outermost first.
        causes: Vec<String>,
        /// Not set.
        retry_after_ms: Option<u64>,
    },
    /// Every candidate refused, timed out or failed its TLS handshake.
    #[error("{detail}")]
    Connect {
        /// What failed.
        detail: String,
        /// Causes, outermost first: a TLS failure ends with the TLS error.
        causes: Vec<String>,
        /// Not set.
        retry_after_ms: Option<u64>,
    },
    /// Reading or writing a connection failed, or it was used after `shutdown()`.
    #[error("{detail}")]
    Io {
        /// What failed.
        detail: String,
        /// Causes, outermost first.
        causes: Vec<String>,
        /// Not set.
        retry_after_ms: Option<u64>,
    },
    /// The SDK itself failed (a task panicked).
    #[error("{detail}")]
    Internal {
        /// What failed.
        detail: String,
        /// Causes, outermost first.
        causes: Vec<String>,
        /// Not set.
        retry_after_ms: Option<u64>,
    },
}

/// The source chain of `e`, outermost first, without `e` itself.
fn causes(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out = Vec::new();
    let mut next = e.source();
    while let Some(s) = next {
        out.push(s.to_string());
        next = s.source();
    }
    out
}

impl From<sdk::Error> for SdkError {
    fn from(e: sdk::Error) -> SdkError {
        let detail = e.to_string();
        let causes = causes(&e);
        let retry_after_ms = e.retry_after().map(|d| d.as_millis() as u64);
        let inner = match &e {
            sdk::Error::GaveUp { last, .. } => last.as_ref(),
            other => other,
        };
        match inner {
            sdk::Error::Config(_) => SdkError::Config {
                detail,
                causes,
                retry_after_ms,
            },
            sdk::Error::Refused { .. } => SdkError::Refused {
                detail,
                causes,
                retry_after_ms,
            },
            sdk::Error::NoOtherGateway { .. } => SdkError::NoOtherGateway {
                detail,
                causes,
                retry_after_ms,
            },
            sdk::Error::Connect { .. } => SdkError::Connect {
                detail,
                causes,
                retry_after_ms,
            },
            _ => SdkError::Unreachable {
                detail,
                causes,
                retry_after_ms,
            },
        }
    }
}

pub(crate) fn io_error(what: &str, e: std::io::Error) -> SdkError {
    SdkError::Io {
        detail: format!("{what}: {e}"),
        causes: causes(&e),
        retry_after_ms: None,
    }
}
