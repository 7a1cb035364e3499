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

const BODY: &str = r#"{"gateways":[{"id":"gw-00000","ip":"192.0.2.1","port":8000,"proto":"tcp","region":"r0","domain":"gw-00000.example.com","load":0.0},{"id":"gw-00010","ip":"192.0.2.1","port":8000,"proto":"tcp","region":"r0","domain":"gw-00010.example.com","load":0.0791},{"id":"gw-00020","ip":"192.0.2.1","port":8000,"proto":"tcp","region":"r0","domain":"gw-00020.example.com","load":0.1584}],"region":"r0","ttl_secs":300,"heartbeat_secs":240,"backoff":{"base_ms":1000,"max_ms":60000,"factor":1.6,"jitter":0.2},"revision":1001,"stale":false}"#;

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
