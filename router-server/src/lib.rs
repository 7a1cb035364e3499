//! The router: follows the registry and answers `GET /gateways`.
//!
//! # Layout
//!
//! * [`config`]: command line and the TOML file, validated in one step.
//! * [`state`]: shared state, and the updater task that turns registry views
//!   (from [`registry::follow`]) into snapshots, applying the protect threshold.
//! * [`schedule`]: the immutable, indexed [`schedule::Snapshot`] and the pure
//!   selection function (eligibility, region order, herd-safe least load).
//! * [`api`]: the axum application — `/gateways`, `/healthz`, `/readyz`, `/metrics` —
//!   and its protection layers.
//! * [`admin`]: the token-protected admin API; [`ops`]: commands and rebalance plans it
//!   shares with [`ctl`], the operator's command line.
//! * [`metrics`]: Prometheus metrics. [`tls`]: rustls config and hot reload.
//! * [`demo`]: the real router on the in-memory registry with simulated gateways.
//!
//! Data flows: etcd → `follow` (list + watch) → `state::run_updater` → `ArcSwap` →
//! request handlers, which never take a lock on the request path.

pub mod admin;
pub mod api;
pub mod config;
pub mod ctl;
pub mod demo;
pub mod metrics;
pub mod ops;
pub mod schedule;
pub mod state;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum_server::Handle;
use registry::{Kv, Layout};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::FileConfig;
use crate::tls::TlsFiles;

/// Everything `run` needs besides the store and the sockets.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Validated configuration.
    pub config: FileConfig,
    /// Key layout.
    pub layout: Layout,
    /// Enables the admin API.
    pub admin_token: Option<String>,
    /// Serves the main listener over HTTPS.
    pub tls: Option<TlsFiles>,
}

/// The sockets to serve on, bound by the caller (tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    /// HTTPS when TLS is configured, else plain HTTP.
    pub main: std::net::TcpListener,
    /// An extra plain-HTTP listener (with TLS, for a TLS-terminating balancer).
    pub plain: Option<std::net::TcpListener>,
}

/// Serves until `shutdown` fires, then stops accepting, lets in-flight requests finish
/// (up to `http.shutdown_grace_secs`) and returns.
pub async fn run(
    kv: Arc<dyn Kv>,
    opts: ServeOptions,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let background = CancellationToken::new();
    let state = Arc::new(state::AppState::new(opts.config.clone()));
    let (views, _follow) =
        registry::follow::follow(kv.clone(), opts.layout.clone(), background.clone());
    tokio::spawn(state::run_updater(state.clone(), views, background.clone()));
    let api = api::Api::new(state.clone());
    tokio::spawn(api.clone().housekeeping(background.clone()));
    let admin = opts
        .admin_token
        .as_ref()
        .map(|token| admin::router(state.clone(), kv.clone(), opts.layout.clone(), token));
    let app = api::router(api, admin);
    let result = serve(
        app,
        listeners,
        opts.tls.as_ref(),
        &opts.config,
        shutdown,
        background.clone(),
    )
    .await;
    background.cancel();
    result?;
    info!("stopped");
    Ok(())
}

/// A request head larger than `max_buf` is refused; one that takes longer than
/// `head_timeout` to arrive (a slowloris client) closes the connection.
fn limit(
    b: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    max_buf: usize,
    head_timeout: Duration,
) {
    b.http1()
        .max_buf_size(max_buf)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(head_timeout);
}

/// Serves `app` on the listeners (HTTPS on `main` when `tls` is given) until `shutdown`,
/// then drains in-flight requests for up to `http.shutdown_grace_secs`. Background
/// work it starts (certificate reloads) stops with `background`.
pub async fn serve(
    app: axum::Router,
    listeners: Listeners,
    tls: Option<&TlsFiles>,
    config: &FileConfig,
    shutdown: CancellationToken,
    background: CancellationToken,
) -> anyhow::Result<()> {
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    let handle: Handle<SocketAddr> = Handle::new();
    let grace = Duration::from_secs(config.http.shutdown_grace_secs);
    let max_buf = config.http.max_header_bytes;
    let head_timeout = config.request_timeout();
    {
        let handle = handle.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            info!(
                grace_secs = grace.as_secs(),
                "shutting down: no new connections, finishing in-flight requests"
            );
            handle.graceful_shutdown(Some(grace));
        });
    }

    listeners.main.set_nonblocking(true)?;
    let main_addr = listeners.main.local_addr()?;
    let main = match tls {
        Some(files) => {
            let rustls = files.load().await.map_err(anyhow::Error::msg)?;
            let every = Duration::from_millis(config.tls.reload_check_ms);
            tokio::spawn(files.clone().watch(rustls.clone(), every, background));
            let mut server =
                axum_server::from_tcp_rustls(listeners.main, rustls)?.handle(handle.clone());
            limit(server.http_builder(), max_buf, head_timeout);
            info!(addr = %main_addr, "serving HTTPS");
            tokio::spawn(server.serve(app.clone()))
        }
        None => {
            let mut server = axum_server::from_tcp(listeners.main)?.handle(handle.clone());
            limit(server.http_builder(), max_buf, head_timeout);
            info!(addr = %main_addr, "serving HTTP");
            tokio::spawn(server.serve(app.clone()))
        }
    };
    let plain = match listeners.plain {
        Some(l) => {
            l.set_nonblocking(true)?;
            info!(addr = %l.local_addr()?, "serving HTTP");
            let mut server = axum_server::from_tcp(l)?.handle(handle.clone());
            limit(server.http_builder(), max_buf, head_timeout);
            Some(tokio::spawn(server.serve(app)))
        }
        None => None,
    };
    let result = main.await?;
    if let Some(p) = plain {
        p.await??;
    }
    Ok(result?)
}
