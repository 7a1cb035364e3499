//! `router-server demo`: the real router on the in-memory registry, with simulated
//! gateways run by the real agent library.
//!
//! Each simulated gateway listens on a real loopback port (so SDK examples can
//! connect), reports a drifting synthetic load plus the connections it holds, and lives
//! in one of four regions. One node is drained through a real command, so the demo
//! shows a draining node being skipped.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gateway_agent::{Agent, AgentConfig, NodeSpec};
use rand::Rng;
use registry::memory::MemoryKv;
use registry::{Command, CommandAction, Kv, Layout, Ports};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{DemoArgs, FileConfig, RegionsConfig};
use crate::{run, Listeners, ServeOptions};

const REGIONS: [&str; 4] = ["cn-sh", "cn-bj", "cn-gz", "us-west"];

/// The demo's configuration: loopback clients are in `cn-sh`, with fallbacks.
pub fn demo_config() -> FileConfig {
    let mut fallbacks = BTreeMap::new();
    fallbacks.insert(
        "cn-sh".to_string(),
        vec!["cn-bj".to_string(), "cn-gz".to_string()],
    );
    fallbacks.insert("cn-bj".to_string(), vec!["cn-sh".to_string()]);
    fallbacks.insert("cn-gz".to_string(), vec!["cn-sh".to_string()]);
    let mut cidrs = BTreeMap::new();
    cidrs.insert("127.0.0.0/8".parse().expect("cidr"), "cn-sh".to_string());
    cidrs.insert("::1/128".parse().expect("cidr"), "cn-sh".to_string());
    FileConfig {
        regions: RegionsConfig {
            default: String::new(),
            cidrs,
            fallbacks,
            ..RegionsConfig::default()
        },
        ..FileConfig::default()
    }
}

/// Accepts and holds connections; the count feeds the agent's reports.
async fn gateway(listener: TcpListener, held: Arc<AtomicU64>, cancel: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((mut stream, _)) = accepted else {
            continue;
        };
        let held = held.clone();
        let cancel = cancel.clone();
        held.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let mut buf = [0u8; 256];
            loop {
                use tokio::io::AsyncReadExt;
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    r = stream.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { break },
                }
            }
            held.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Starts `nodes` simulated gateways on `kv`; returns the id of the drained one.
pub async fn start_fleet(
    kv: Arc<MemoryKv>,
    layout: &Layout,
    nodes: u32,
    cancel: &CancellationToken,
) -> anyhow::Result<String> {
    let mut rng = rand::rng();
    let mut drained = String::new();
    for i in 0..nodes {
        let region = REGIONS[i as usize % REGIONS.len()];
        let id = format!("gw-{region}-{:02}", i as usize / REGIONS.len() + 1);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let capacity = 10_000;
        let ports = Ports {
            tcp: Some(port),
            ws: Some(port),
            wss: None,
        };
        let spec = NodeSpec {
            id: id.clone(),
            ip: "127.0.0.1".parse()?,
            ports,
            region: region.to_string(),
            capacity,
            ipv6: None,
            domain: Some(format!("{id}.demo.invalid")),
            zone: Some(format!("{region}-a")),
            isp: None,
            labels: BTreeMap::from([("version".to_string(), "demo".to_string())]),
        };
        let mut config = AgentConfig::new(spec);
        config.layout = layout.clone();
        let (agent, handle) = Agent::new(kv.clone(), config);
        tokio::spawn(agent.run(cancel.clone()));
        let held = Arc::new(AtomicU64::new(0));
        tokio::spawn(gateway(listener, held.clone(), cancel.clone()));
        // A synthetic base load that drifts, plus the connections actually held.
        let mut base: f64 = rng.random_range(0.1..0.8) * capacity as f64;
        let cancel = cancel.clone();
        tokio::spawn(async move {
            loop {
                handle.set_connections(base as u64 + held.load(Ordering::Relaxed));
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
                let drift: f64 = rand::rng().random_range(-0.03..0.03);
                base = (base + drift * capacity as f64).clamp(0.0, 0.9 * capacity as f64);
            }
        });
        if i == 0 {
            drained = id;
        }
    }
    // Drain the first node through a real command, as ops would.
    let cmd = Command {
        id: "demo-drain".into(),
        action: CommandAction::Drain,
        percent: None,
        issued_ms: Some(registry::now_ms()),
        from_connections: None,
    };
    kv.put(&layout.command_key(&drained), cmd.to_json(), None)
        .await?;
    Ok(drained)
}

/// Runs the demo until `shutdown`.
pub async fn run_demo(args: DemoArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let kv = MemoryKv::new();
    let layout = Layout::default();
    let listener = std::net::TcpListener::bind(args.listen).map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {}: {e} (choose another with --listen)",
            args.listen
        )
    })?;
    let addr = listener.local_addr()?;
    let fleet = shutdown.child_token();
    let drained = start_fleet(kv.clone(), &layout, args.nodes, &fleet).await?;
    let token = args.admin_token.clone();
    println!(
        "router-server demo: {} simulated gateways in {} regions; {drained} is draining",
        args.nodes,
        REGIONS.len().min(args.nodes as usize)
    );
    println!(
        "  curl 'http://{addr}/gateways'                      # loopback clients are in cn-sh"
    );
    println!("  curl 'http://{addr}/gateways?region=us-west&count=2'");
    println!(
        "  curl 'http://{addr}/gateways?proto=wss'            # no node has wss: 503 no_gateways"
    );
    println!("  curl 'http://{addr}/metrics'");
    println!("The fleet in a browser: http://{addr}/ops");
    if let Some(t) = &token {
        println!("  curl -H 'Authorization: Bearer {t}' 'http://{addr}/admin/nodes'");
    }
    println!("Ctrl-C to stop.");
    let mut config = match &args.config {
        Some(path) => FileConfig::load(path).map_err(anyhow::Error::msg)?,
        None => demo_config(),
    };
    if config.regions.cidrs.is_empty() && config.regions.fallbacks.is_empty() {
        config.regions = demo_config().regions;
    }
    let opts = ServeOptions {
        router_id: None,
        public_addrs: Vec::new(),
        config,
        config_file: None,
        layout,
        admin_tokens: match &token {
            Some(t) => crate::admin::Tokens::flag(t).map_err(anyhow::Error::msg)?,
            None => crate::admin::Tokens::default(),
        },
        tls: None,
    };
    let result = run(
        kv,
        opts,
        Listeners {
            main: listener,
            plain: None,
            admin: None,
        },
        shutdown,
    )
    .await;
    fleet.cancel();
    result
}
