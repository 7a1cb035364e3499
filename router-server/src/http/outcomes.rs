//! `POST /outcomes`: a client's connect outcomes (`gateway_api::OutcomeReport`), counted
//! for its network (see [`crate::feedback`]). Guarded like every client route (block
//! list, request budget); at most [`MAX_REPORT_BYTES`] of body and [`MAX_OUTCOMES`]
//! outcomes; answered 204 once counted.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use gateway_api::{ErrorCode, OutcomeReport, MAX_OUTCOMES, MAX_REPORT_BYTES};

use super::error::ApiError;
use super::gateways::Api;
use crate::feedback::Network;
use crate::identity::client_ip;

/// The route, with its own body limit.
pub fn routes(api: Api) -> Router {
    super::body_limit::limit_body(
        Router::new().route("/outcomes", post(outcomes)),
        MAX_REPORT_BYTES,
    )
    .with_state(api)
}

async fn outcomes(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let cfg = api.config.load();
    if !cfg.feedback.enabled {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "this router takes no connect outcomes ([feedback] enabled = false)",
        ));
    }
    let peer_ip = peer.ip().to_canonical();
    let ip = client_ip(peer_ip, &headers, &cfg.trusted_proxies);
    api.serving.guard.check(ip).map_err(ApiError::refused)?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            format!("the body must be application/json, not {ct:?}"),
        ));
    }
    let bad =
        |msg: String| ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidParameter, msg);
    let report: OutcomeReport =
        serde_json::from_slice(&body).map_err(|e| bad(format!("outcomes: {e}")))?;
    if report.outcomes.len() > MAX_OUTCOMES {
        return Err(bad(format!(
            "outcomes: {} of them, at most {MAX_OUTCOMES}",
            report.outcomes.len()
        )));
    }
    let snap = api.serving.snapshot.load();
    let Some(snap) = snap.as_deref() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::NotReady,
            "the registry has not been loaded yet",
        )
        .retry_after(1));
    };
    // The network is the address's, whatever the report or the query says.
    let regions = api.serving.regions.load();
    let network = Network::of(regions.lookup(ip), regions.isp(ip));
    api.serving.feedback.record(
        &network,
        &report.outcomes,
        |id| snap.position(id).is_some(),
        &cfg.feedback,
        &api.metrics.feedback,
    );
    Ok(StatusCode::NO_CONTENT)
}
