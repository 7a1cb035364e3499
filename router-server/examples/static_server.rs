//! Baseline for HTTP benchmarks, built the same way as the router: the same
//! `router_server::http::router_with` stack (edge middleware, metrics, routes, state)
//! served by the same `router_server::serve` (same server, same limits), whose
//! `/gateways` service (a ready future, like the router's) returns a fixed body of the
//! router's answer size instead of scheduling. The ratio against it is the cost of the scheduling work itself.
//!
//! `cargo run --release -p router-server --example static_server -- ADDR`

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get_service;
use router_server::config::FileConfig;
use router_server::http::{router_with, Api};
use router_server::state::AppState;
use router_server::{serve, Listeners};
use tokio_util::sync::CancellationToken;

/// A router answer of the bench router's size (three candidates).
const BODY: &str = include_str!("static_body.json");

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    // The bench router's configuration, so every layer does the same work.
    let config = FileConfig::parse(
        "[rate_limit]\nper_ip_per_sec = 0\n[regions]\ncidrs = { \"127.0.0.0/8\" = \"r0\" }\nfallbacks = { r0 = [\"r1\"] }\n",
    )
    .map_err(anyhow::Error::msg)?;
    let state = Arc::new(AppState::new(config));
    let api = Api::new(state.clone());
    // A ready-future service, as the router's own `/gateways` is (`http::Gateways`).
    let fixed = get_service(tower::service_fn(|_: Request| {
        std::future::ready(Ok::<_, Infallible>(
            (
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                BODY,
            )
                .into_response(),
        ))
    }));
    let app = router_with(api, None, fixed);
    let listener = std::net::TcpListener::bind(&addr)?;
    println!("listening on {}", listener.local_addr()?);
    let never = CancellationToken::new();
    let tasks = tokio_util::task::TaskTracker::new();
    serve(
        app,
        state,
        Listeners {
            main: listener,
            plain: None,
        },
        None,
        never,
        &tasks,
    )
    .await
}
