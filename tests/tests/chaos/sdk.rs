//! Clients through the SDK: `httpdns_client::Client` knowing the routers by one name
//! (bootstrap addresses, no HTTPDNS) and asking them over HTTPS (a private CA), connecting to a real gateway and moving to
//! another one again and again, each move on a fresh answer from a router. No call may
//! fail: at most one router is down at a time, and the SDK goes on to the next one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use httpdns_client::{Client, Config, Source};

use crate::fleet::{router_addr, ROUTERS_NAME};
use crate::world::World;
use crate::ROUTERS;

/// A client of the routers' HTTPS port, trusting `ca_pem`.
fn client(port: u16, ca_pem: &str) -> Client {
    let mut c = Config::new(ROUTERS_NAME);
    c.router_port = port;
    c.router_https = true;
    c.add_roots_pem(ca_pem.as_bytes()).expect("the chaos CA");
    c.count = 10;
    c.max_routers = ROUTERS;
    c.dns.providers = Vec::new();
    c.dns.local_fallback = false;
    let ips: Vec<IpAddr> = (0..ROUTERS).map(|j| router_addr(j, port).ip()).collect();
    c.dns.bootstrap = HashMap::from([(ROUTERS_NAME.to_string(), ips)]);
    c.prefetch_router = false;
    c.cache_file = None;
    Client::new(c).expect("an SDK client")
}

/// Runs until the world stops: connect, then migrate from the gateway reached, over
/// and over; every candidate is checked like a router's answer.
pub(crate) fn sdk_clients(world: Arc<World>, port: u16, ca_pem: String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sdk = client(port, &ca_pem);
        let mut conn = None;
        while !world.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let result = match &conn {
                None => sdk.connect().await,
                Some(c) => sdk.migrate(c).await,
            };
            match result {
                Ok(c) => {
                    world.sdk_connects.fetch_add(1, Ordering::Relaxed);
                    match c.source {
                        Source::Router { addr, .. } => world.check(
                            now,
                            std::slice::from_ref(&c.gateway.id),
                            &format!("SDK via {addr}"),
                            false,
                        ),
                        other => world.violation(format!(
                            "the SDK's candidates came from {other:?}, not a router"
                        )),
                    }
                    conn = Some(c);
                }
                Err(e) => {
                    world.violation(format!("an SDK call failed: {e}"));
                    conn = None;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}
