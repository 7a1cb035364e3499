//! Second baseline for HTTP benchmarks: bare axum on axum-server answering
//! `GET /gateways` with a fixed body of the same size, with none of the router's layers
//! (metrics, URI limit, client-IP and rate-limit plumbing). It bounds what the
//! framework alone costs.
//!
//! `cargo run --release -p router-server --example bare_static_server -- ADDR`

use std::net::SocketAddr;

use axum::http::header;
use axum::routing::get;
use axum::Router;

/// A router answer of the bench router's size (three candidates).
const BODY: &str = include_str!("static_body.json");

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = std::net::TcpListener::bind(&addr)?;
    listener.set_nonblocking(true)?;
    println!("listening on {}", listener.local_addr()?);
    let app = Router::new().route(
        "/gateways",
        get(|| async { ([(header::CONTENT_TYPE, "application/json")], BODY) }),
    );
    axum_server::from_tcp(listener)?
        .serve(app.into_make_service_with_connect_info::<SocketAddr>())
        .await?;
    Ok(())
}
