//! `gateway-agent`: parses flags, connects to etcd and runs the agent until SIGTERM/SIGINT.

use std::sync::Arc;

use gateway_agent::config::Cli;
use gateway_agent::Agent;
use registry::etcd::{connect_at_start, EtcdOptions};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli: Cli = registry::cli::parse_or_exit();
    registry::cli::init_logging(cli.log_format, "info");
    let endpoints = cli.endpoints();
    let security = cli.etcd_security.security();
    if let Err(e) = security.check(&endpoints) {
        registry::cli::exit_invalid(e);
    }
    let blocklist_file = cli.blocklist_file.clone();
    let metrics_listen = cli.metrics_listen;
    let config = match cli.into_config(reqwest::Client::new()) {
        Ok(c) => c,
        Err(e) => registry::cli::exit_invalid(e),
    };
    let build = registry::build_info!();
    tracing::info!(version = %build.version, commit = %build.commit, built = %build.date, etcd = %endpoints.join(","), prefix = %config.layout.prefix(), node_id = %config.node.id, "agent starting");
    // Served from the start, /healthz answering while etcd is still waited for.
    let cancel = CancellationToken::new();
    let metrics_server = match metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .unwrap_or_else(|e| {
                    registry::cli::exit_invalid(format!("--metrics-listen {addr}: {e}"))
                });
            let bound = listener.local_addr()?;
            tracing::info!(addr = %bound, "serving metrics");
            let (metrics, cancel) = (config.metrics.clone(), cancel.clone());
            Some(tokio::spawn(async move {
                if let Err(e) = gateway_agent::metrics::serve(listener, metrics, cancel).await {
                    tracing::warn!(error = %e, "the metrics listener failed");
                }
            }))
        }
        None => None,
    };
    // A wrong CA, an expired certificate or a wrong password: one line now, not a
    // retry loop. (An etcd that is down is waited for.)
    let own = config.layout.node_key(&config.node.id);
    let kv = connect_at_start(
        &endpoints,
        EtcdOptions {
            security,
            ..EtcdOptions::default()
        },
        &own,
    )
    .await
    .unwrap_or_else(|e| registry::cli::exit_invalid(e));
    let kv: Arc<dyn registry::Kv> = Arc::new(kv);
    let blocklist = blocklist_file.map(|path| {
        tokio::spawn(gateway_agent::blocklist::run(
            kv.clone(),
            config.layout.clone(),
            path,
            cancel.clone(),
        ))
    });
    let (agent, handle) = Agent::new(kv, config);
    // The handlers are registered now, not when the task first runs: a SIGTERM that
    // arrived before a busy machine ran it would kill the agent with its lease alive
    // and no graceful stop.
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let leave = signal(SignalKind::user_defined1()).expect("SIGUSR1 handler");
    tokio::spawn(shutdown_on_signal(
        cancel.clone(),
        handle,
        [term, int],
        leave,
    ));
    agent.run(cancel.clone()).await;
    cancel.cancel();
    if let Some(task) = blocklist {
        let _ = task.await;
    }
    if let Some(task) = metrics_server {
        // A scraper's open connection does not hold the exit up.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), task).await;
    }
    Ok(())
}

/// SIGTERM / SIGINT stop the agent (a restart with `--state-file` while the gateway
/// serves); SIGUSR1 stops it for good: the lease is revoked whatever the state file.
async fn shutdown_on_signal(
    cancel: CancellationToken,
    handle: gateway_agent::AgentHandle,
    [mut term, mut int]: [tokio::signal::unix::Signal; 2],
    mut leave: tokio::signal::unix::Signal,
) {
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = leave.recv() => {
            tracing::info!("SIGUSR1: leaving for good");
            handle.leave_on_stop();
        }
    }
    tracing::info!("shutting down");
    cancel.cancel();
}
