//! The fleet page: `GET /ops`, one self-contained page (its scripts and style are
//! served beside it, nothing from elsewhere, so it works offline), and the JSON it
//! polls, `GET /ops/summary.json`: the router's own status, one line per region
//! (counts by state, load, the worst node), problem regions first, and the nodes of
//! only the regions the operator opened or searched, problem nodes first. At 10,000
//! nodes a poll is a few kilobytes instead of the whole fleet.
//! `GET /ops/fleet.json` still gives every node the router serves, by region, with its
//! state, load, projected load, ports and report age, for scripts.
//!
//! The page is read-only until an admin token is entered; it then calls the admin API
//! (`Authorization: Bearer`), which is mounted only when the router has a token. Values
//! from the registry are written into the page as text, never as markup.
//!
//! Here the routes and the page's assets; `status.rs` the router's own status,
//! `regions.rs` the nodes by region (`fleet.json`), `summary.rs` the poll and its search.

mod regions;
mod status;
mod summary;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::http::error::ApiError;
use crate::http::gateways::Api;

pub use regions::{fleet, Fleet, Node, Region};
pub use status::{Invalid, RouterStatus};
pub use summary::{
    summary, NodeList, RegionSummary, Summary, SummaryQuery, DEFAULT_LIMIT, MAX_LIMIT, SMALL_FLEET,
};

const PAGE: &str = include_str!("../ops/index.html");
const SCRIPT: &str = include_str!("../ops/ops.js");
const STYLE: &str = include_str!("../ops/ops.css");
/// morphdom 2.7.8 (MIT), which redraws the page by patching the elements in place.
const MORPHDOM: &str = include_str!("../ops/morphdom.min.js");

/// Only this origin's script, style and JSON; no frames.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page's routes; `admin` says whether the admin API is mounted.
pub fn routes(admin: bool) -> Router<Api> {
    Router::new()
        .route(
            "/ops",
            get(|| async { asset(PAGE, "text/html; charset=utf-8") }),
        )
        .route(
            "/ops/ops.js",
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/ops/morphdom.js",
            get(|| async { asset(MORPHDOM, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/ops/ops.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
        .route(
            "/ops/blocks.json",
            get(|State(api): State<Api>| async move {
                Json(api.serving.guard.listing(registry::now_ms()))
            }),
        )
        .route(
            "/ops/fleet.json",
            get(move |State(api): State<Api>| async move { Json(fleet(&api, admin)) }),
        )
        .route(
            "/ops/summary.json",
            get(
                move |State(api): State<Api>,
                      query: Result<Query<Vec<(String, String)>>, QueryRejection>| async move {
                    let Query(pairs) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
                    let want = SummaryQuery::parse(&pairs)?;
                    Ok::<_, ApiError>(Json(summary(&api, admin, &want)))
                },
            ),
        )
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}
