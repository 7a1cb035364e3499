//! The contract's error answer, `{"error": {"code", "message"}}` (`gateway_api::ErrorBody`),
//! as an axum response.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use gateway_api::{ErrorBody, ErrorCode};

/// An error answer: `{"error": {"code", "message"}}` with a status and maybe Retry-After.
#[derive(Debug)]
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    /// 400 `invalid_parameter`.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: ErrorCode::InvalidParameter,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Any status and code.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The answer to a client the guard turns away: 403 `blocked` or 429
    /// `rate_limited` with Retry-After.
    pub fn refused(r: crate::guard::Refusal) -> ApiError {
        match r {
            crate::guard::Refusal::Blocked(reason) => ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Blocked,
                format!("requests from this network are refused ({reason})"),
            ),
            crate::guard::Refusal::Limited(secs) => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                "too many requests from this address",
            )
            .retry_after(secs),
        }
    }

    pub(crate) fn retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs.max(1));
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(ErrorBody::new(self.code, self.message));
        let mut resp = (self.status, body).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
