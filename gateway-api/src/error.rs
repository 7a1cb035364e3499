//! The error body every route answers with: `{"error": {"code", "message"}}`, and the
//! codes a router sends.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The code a program acts on and the message a person reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// One of [`ErrorCode`]'s names, or a code from a newer router.
    pub code: String,
    /// A sentence for people; never parsed.
    #[serde(default)]
    pub message: String,
}

impl ErrorBody {
    /// The body for `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: code.as_str().to_string(),
                message: message.into(),
            },
        }
    }
}

impl ErrorDetail {
    /// The code, when it is one this crate knows.
    pub fn known_code(&self) -> Option<ErrorCode> {
        self.code.parse().ok()
    }
}

macro_rules! codes {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal,)*) => {
        /// Every code a router sends. Clients act on a few (see each one's text) and
        /// report the others.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[doc = $doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code, in the order `openapi.yaml` lists them.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code as sent.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $name,)*
                }
            }
        }
    };
}

codes! {
    /// 400: a query parameter is missing, malformed or out of range.
    InvalidParameter = "invalid_parameter",
    /// 414: the request line is too long.
    UriTooLong = "uri_too_long",
    /// 429: this network asked too often; retry after `Retry-After`.
    RateLimited = "rate_limited",
    /// 503: the router has not loaded the registry yet, or is going away.
    NotReady = "not_ready",
    /// 503: no gateway's reported load leaves room; retry after `Retry-After`.
    NoGateways = "no_gateways",
    /// 503: the registry cannot be reached (admin writes).
    RegistryUnavailable = "registry_unavailable",
    /// 408 / 504: the request or its body took too long.
    Timeout = "timeout",
    /// 401: a missing or wrong admin token.
    Unauthorized = "unauthorized",
    /// 404: no node with that id.
    UnknownNode = "unknown_node",
    /// 404: no registry with that name.
    UnknownRegistry = "unknown_registry",
    /// 404: no such route.
    NotFound = "not_found",
    /// 400: an HTTPDNS name outside the served zones.
    InvalidHost = "invalid_host",
    /// 401: a signed HTTPDNS route asked without a signature.
    SignatureRequired = "signature_required",
    /// 401: the signature's time has passed.
    SignatureExpired = "signature_expired",
    /// 401: the signature's time is further ahead than allowed.
    SignatureTooFarAhead = "signature_too_far_ahead",
    /// 401: the signature does not match.
    InvalidSignature = "invalid_signature",
    /// 415: a body of a type the route does not take.
    UnsupportedMediaType = "unsupported_media_type",
    /// 413: the body is larger than the route takes.
    PayloadTooLarge = "payload_too_large",
    /// 408: the request did not arrive within its deadline.
    RequestTimeout = "request_timeout",
    /// 403: requests from this network are refused.
    Blocked = "blocked",
    /// 500: the router failed; the message says how.
    Internal = "internal",
    /// 431: the request head is larger than allowed.
    HeaderTooLarge = "header_too_large",
    /// 505: an HTTP version the router does not speak.
    HttpVersionNotSupported = "http_version_not_supported",
    /// 501: a method or framing the router does not implement.
    NotImplemented = "not_implemented",
    /// 400: the request could not be parsed.
    BadRequest = "bad_request",
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ErrorCode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ErrorCode::ALL
            .iter()
            .copied()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown error code {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_are_kept() {
        for c in ErrorCode::ALL {
            assert_eq!(c.as_str().parse::<ErrorCode>(), Ok(*c));
        }
        let b: ErrorBody =
            serde_json::from_str(r#"{"error":{"code":"later_code","message":"m","extra":1}}"#)
                .unwrap();
        assert_eq!(b.error.code, "later_code");
        assert_eq!(b.error.known_code(), None);
        let b = ErrorBody::new(ErrorCode::NoGateways, "none");
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            r#"{"error":{"code":"no_gateways","message":"none"}}"#
        );
        assert_eq!(b.error.known_code(), Some(ErrorCode::NoGateways));
    }
}
