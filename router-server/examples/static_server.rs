//! Baseline for HTTP benchmarks, built the same way as the router: the same
//! `router_server::http::app_with` application (hot route, edge middleware, metrics,
//! routes, state) served by the same `router_server::serve` (same server, same limits),
//! whose `/gateways` answer returns a fixed body of the router's answer size instead of
//! scheduling. The ratio against it is the cost of the scheduling work itself.
//!
//! `cargo run --release -p router-server --example static_server -- ADDR`

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get_service;
use router_server::config::FileConfig;
use router_server::http::{app_with, Api};
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
        "[rate_limit]\nper_ip_per_sec = 100000000\nburst = 100000000\n[regions]\ncidrs = { \"127.0.0.0/8\" = \"r0\" }\nfallbacks = { r0 = [\"r1\"] }\n",
    )
    .map_err(anyhow::Error::msg)?;
    let state = AppState::new(config);
    let api = Api::new(&state);
    let fixed_response = || {
        (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            BODY,
        )
            .into_response()
    };
    // A ready-future service, as the router's own `/gateways` is (`http::Gateways`),
    // and the same answer as the server's hot route, as the router's is.
    let fixed = get_service(tower::service_fn(move |_: Request| {
        std::future::ready(Ok::<_, Infallible>(fixed_response()))
    }));
    let app = app_with(
        api,
        None,
        fixed,
        Arc::new(move |_, _, _, _| fixed_response()),
    );
    let listener = std::net::TcpListener::bind(&addr)?;
    println!("listening on {}", listener.local_addr()?);
    let never = CancellationToken::new();
    let tasks = tokio_util::task::TaskTracker::new();
    serve(
        app,
        None,
        &state,
        Listeners {
            main: listener,
            plain: None,
            admin: None,
        },
        None,
        never,
        &tasks,
    )
    .await
}
