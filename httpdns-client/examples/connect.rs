//! Resolves the router, asks for gateways and connects to one, against the demo router.
//!
//! ```text
//! scripts/demo.sh                                   # in one terminal
//! cargo run -p httpdns-client --example connect     # in another
//! cargo run -p httpdns-client --example connect -- 127.0.0.1:9090 --httpdns 127.0.0.1:8053 --account 100000
//! ```
//!
//! The demo router speaks plain HTTP on loopback, so this example turns HTTPS off; a
//! real app keeps the default (HTTPS with the router's domain as the TLS name).

use std::net::SocketAddr;

use httpdns_client::{Client, Config, Provider};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let router: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:8080".into())
        .parse()?;
    let mut config = Config::new("router.demo");
    config.router_https = false;
    config.router_port = router.port();
    // No HTTPDNS provider unless given: the router's address is a bootstrap IP.
    config
        .dns
        .bootstrap
        .insert("router.demo".into(), vec![router.ip()]);
    config.dns.local_fallback = false;
    let rest: Vec<String> = args.collect();
    if let Some(i) = rest.iter().position(|a| a == "--httpdns") {
        let addr: SocketAddr = rest.get(i + 1).ok_or("--httpdns needs ADDR")?.parse()?;
        let account = rest
            .iter()
            .position(|a| a == "--account")
            .and_then(|j| rest.get(j + 1))
            .cloned()
            .unwrap_or_else(|| "100000".into());
        config
            .dns
            .providers
            .push(Provider::alibaba(account, vec![addr]));
    }
    config.cache_file = Some(std::env::temp_dir().join("httpdns-client-example-gateways.json"));

    let client = Client::new(config)?;
    let g = client.gateways().await?;
    println!(
        "{} candidates from {:?} (region {:?}, reuse for {:?}):",
        g.gateways.len(),
        g.source,
        g.region,
        g.ttl
    );
    for gw in &g.gateways {
        println!(
            "  {:<16} {:>21}  {:<8} load {:.3}",
            gw.id,
            gw.addr().to_string(),
            gw.region,
            gw.load
        );
    }
    let conn = client.connect_with_retry(3).await?;
    println!(
        "connected to {} at {} (heartbeat every {:?}); a WebSocket client would dial ws://{}:{}/",
        conn.gateway.id,
        conn.stream.peer_addr()?,
        conn.heartbeat,
        conn.gateway
            .domain
            .as_deref()
            .unwrap_or(&conn.gateway.ip.to_string()),
        conn.gateway.port
    );
    Ok(())
}
