//! The real router (`router_server::run`: follower, updater, full middleware stack) on
//! an in-memory registry holding a static fleet, for HTTP benchmarks.
//!
//! `cargo run --release -p router-server --example bench_router -- NODES ADDR [CERT KEY]`
//! prints `listening on ADDR` once ready. Loopback clients are in region r0 (one tenth
//! of the fleet) with fallback r1; the rate limiter is on, with a budget the load
//! generator never exhausts (its cost is measured, its refusals are not).
//!
//! With `BENCH_DNS_LISTEN=ADDR` it also answers the zone `gw.bench.test` over UDP and
//! TCP there (response-rate limit off, as for the load generator's single address),
//! and every node gets an address of its own (`10.x.y.z`).
//!
//! With `BENCH_LEVELLED=1` every node reports the same load (half of a capacity of
//! 1,000,000) and no report follows: the moment in a storm between the agents'
//! samples, when the herd counts level the region and each answer changes the order.

use std::time::Duration;

use registry::memory::MemoryKv;
use registry::{Kv, Layout, NodeRecord, Ports};
use router_server::config::FileConfig;
use router_server::{run, Listeners, ServeOptions};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let nodes: usize = args.next().unwrap_or_else(|| "1000".into()).parse()?;
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    // With CERT and KEY, HTTPS on ADDR and plain HTTP on another port for readiness.
    let tls = match (args.next(), args.next()) {
        (Some(cert), Some(key)) => Some(router_server::tls::TlsFiles {
            cert: cert.into(),
            key: key.into(),
        }),
        _ => None,
    };
    let dns = std::env::var("BENCH_DNS_LISTEN").ok();
    let levelled = std::env::var("BENCH_LEVELLED").is_ok_and(|v| v == "1");
    let kv = MemoryKv::new();
    let layout = Layout::default();
    for i in 0..nodes {
        let r = NodeRecord {
            domain: Some(format!("gw-{i:05}.example.com")),
            updated_ms: Some(registry::now_ms()),
            ..NodeRecord::new(
                format!("gw-{i:05}"),
                match dns {
                    Some(_) => std::net::Ipv4Addr::from(0x0a00_0000 | (i as u32 + 1)).into(),
                    None => "192.0.2.1".parse()?,
                },
                Ports {
                    tcp: Some(8000),
                    ws: Some(8080),
                    wss: None,
                },
                format!("r{}", i % 10),
                if levelled { 1_000_000 } else { 1_000_000_000 },
                if levelled {
                    500_000
                } else {
                    (i as u64 * 7919) % 900_000_000
                },
            )
        };
        kv.put(&layout.node_key(&r.id), r.to_json(), None).await?;
    }
    // The load comes from one address: the request budget and the herd budget are
    // set high enough never to refuse or stop counting it, but both are checked on
    // every request, as they are for real clients.
    let mut text = "[rate_limit]\nper_ip_per_sec = 100000000\nburst = 100000000\n[edge]\nherd_budget = 4000000000\n[regions]\ncidrs = { \"127.0.0.0/8\" = \"r0\" }\nfallbacks = { r0 = [\"r1\"] }\n".to_string();
    if let Some(listen) = &dns {
        text.push_str(&format!(
            "[dns]\nlisten = \"{listen}\"\nzone = \"gw.bench.test\"\nrrl_per_sec = 0\n"
        ));
    }
    let config = FileConfig::parse(&text).map_err(anyhow::Error::msg)?;
    let listener = std::net::TcpListener::bind(&addr)?;
    let local = listener.local_addr()?;
    let plain = match &tls {
        Some(_) => Some(std::net::TcpListener::bind("127.0.0.1:0")?),
        None => None,
    };
    let probe = match &plain {
        Some(p) => p.local_addr()?,
        None => local,
    };
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(run(
        kv,
        ServeOptions {
            router_id: None,
            public_addrs: Vec::new(),
            config,
            config_file: None,
            layout,
            admin_tokens: Default::default(),
            tls,
        },
        Listeners {
            main: listener,
            plain,
            admin: None,
        },
        shutdown.clone(),
    ));
    // Ready once the snapshot holds the whole fleet.
    let url = format!("http://{probe}/readyz");
    while reqwest::get(&url)
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("listening on {local}");
    tokio::signal::ctrl_c().await?;
    shutdown.cancel();
    server.await??;
    Ok(())
}
