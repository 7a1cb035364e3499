//! The request-body limit every route takes: a declared `Content-Length` over the
//! limit is answered 413 `payload_too_large` before any byte is read; a chunked body is
//! cut where it crosses it.

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use gateway_api::ErrorCode;

use super::error::ApiError;

/// Bodies of at most `max` bytes on `router`'s routes: a declared `Content-Length`
/// above it is answered 413 before a byte of the body is read; a longer chunked body
/// is cut by the extractors' `DefaultBodyLimit` (their 413 gets the contract's body
/// in the routes' edge middleware).
///
/// Not tower-http's `RequestBodyLimitLayer`: its cut of a chunked body reaches axum's
/// extractors as an unknown body error (400), not as a length limit (413).
pub(crate) fn limit_body<S>(router: Router<S>, max: usize) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router
        .route_layer(DefaultBodyLimit::max(max))
        .route_layer(middleware::from_fn_with_state(max, declared_length))
}

/// Refuses a request whose declared body is over `max` bytes, without reading it.
async fn declared_length(State(max): State<usize>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(len) if len > max as u64 => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            format!("the request body is {len} bytes; the limit is {max}"),
        )
        .into_response(),
        _ => next.run(req).await,
    }
}
