//! A client app as the tests run it inside a network namespace: `CLIENTS` SDK clients
//! (`httpdns_client::Client`, each its own) that connect, drop the connection and
//! connect again, for ever, through the router at `ROUTER` (plain HTTP, as a bootstrap
//! address: no HTTPDNS provider). Each connection is printed as one JSON line:
//! `{"ms": since start, "client": k, "first": the answer's first candidate, "gateway":
//! the one connected, "connect_ms": ...}`; a failure as `{"ms", "client", "error"}`.
//! Outcome reports are on, every outcome sampled, at most one report per
//! `REPORT_MS` per client.
//!
//! `sdk-probe ROUTER CLIENTS REPORT_MS`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use httpdns_client::{Client, Config};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: sdk-probe ROUTER CLIENTS REPORT_MS";
    let router: SocketAddr = args.first().expect(usage).parse().expect(usage);
    let clients: usize = args.get(1).expect(usage).parse().expect(usage);
    let report_ms: u64 = args.get(2).expect(usage).parse().expect(usage);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..clients {
        let mut config = Config::new("router.probe");
        config.router_https = false;
        config.router_port = router.port();
        config
            .dns
            .bootstrap
            .insert("router.probe".into(), vec![router.ip()]);
        config.dns.local_fallback = false;
        config.report_sample = 1.0;
        config.report_interval = Duration::from_millis(report_ms);
        let client = Client::new(config).expect("a valid configuration");
        tasks.push(tokio::spawn(run(client, k, start)));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn run(client: Client, k: usize, start: Instant) {
    loop {
        let t = Instant::now();
        let line = match client.connect().await {
            Ok(conn) => {
                let connect_ms = t.elapsed().as_millis();
                let first = client
                    .gateways()
                    .await
                    .ok()
                    .and_then(|g| g.gateways.first().map(|g| g.id.clone()));
                serde_json::json!({
                    "ms": start.elapsed().as_millis() as u64,
                    "client": k,
                    "first": first,
                    "gateway": conn.gateway.id,
                    "connect_ms": connect_ms as u64,
                })
            }
            Err(e) => serde_json::json!({
                "ms": start.elapsed().as_millis() as u64,
                "client": k,
                "error": e.to_string(),
            }),
        };
        println!("{line}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
