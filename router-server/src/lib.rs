//! The router: follows the registry and answers `GET /gateways`.
//!
//! # Layout
//!
//! * [`config`]: command line and the TOML file, validated in one step.
//!   [`identity`]: who a client is (address behind trusted proxies, region, network).
//!   [`clock`]: the limiters' time source, which tests drive.
//! * [`membership`]: the registries followed (one per data centre), each view judged
//!   by its protect threshold, merged into one snapshot. [`state`]: the handles the
//!   edges and tasks share ([`state::Serving`] for answers, [`state::FleetStatus`] for
//!   the fleet page), built here once and split between them.
//! * [`schedule`]: the immutable, indexed [`schedule::Snapshot`] and the pure
//!   selection function (eligibility, region order, herd-safe least load).
//! * [`answer`]: the JSON a client receives, serialized in pieces once and assembled
//!   per request.
//! * [`http`]: the edge — the server that owns connections, the routes, `/gateways`,
//!   its parameters, errors.
//! * [`admin`]: the token-protected admin API; [`ops`]: commands and rebalance plans it
//!   shares with [`ctl`], the operator's command line.
//! * [`dns`]: the gateway zone over DNS (UDP, TCP), DNS over HTTPS, and the
//!   Alibaba-style HTTPDNS answer, from the same snapshot.
//! * [`metrics`]: Prometheus metrics. [`tls`]: rustls config and hot reload.
//! * [`demo`]: the real router on the in-memory registry with simulated gateways, and
//!   [`sim`], the storm simulator: behind the default feature `tools`, the only parts
//!   that need the agent's code (`--no-default-features` builds the router without).
//!
//! Data flows: each etcd → `follow` (list + watch) → `membership::run_updater` → `ArcSwap` →
//! request handlers, which never take a lock on the request path.

pub mod admin;
pub mod alarms;
pub mod answer;
pub mod clock;
pub mod config;
pub mod ctl;
#[cfg(feature = "tools")]
pub mod demo;
pub mod dns;
pub mod explain;
pub mod feedback;
pub mod guard;
pub mod herd;
pub mod http;
pub mod identity;
pub mod lag;
pub mod membership;
pub mod metrics;
pub mod ops;
pub mod peers;
pub mod policy;
pub mod reload;
pub mod schedule;
#[cfg(feature = "tools")]
pub mod sim;
pub mod state;
#[cfg(test)]
mod testkv;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use registry::{Kv, Layout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::FileConfig;
use crate::tls::TlsFiles;

/// Everything `run` needs besides the store and the sockets.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Validated configuration.
    pub config: FileConfig,
    /// The file it was read from: SIGHUP reads it again (see [`reload`]).
    pub config_file: Option<std::path::PathBuf>,
    /// Key layout.
    pub layout: Layout,
    /// The admin API's tokens; none leaves the admin API off.
    pub admin_tokens: admin::Tokens,
    /// Serves the main listener over HTTPS.
    pub tls: Option<TlsFiles>,
    /// This router's id under `P/routers/` (generated when `None`).
    pub router_id: Option<String>,
    /// Addresses clients reach this router at, published in its `P/routers/{id}`
    /// registration (the routers' domain in DNS and HTTPDNS answers them).
    pub public_addrs: Vec<std::net::IpAddr>,
}

/// Reads `path` again on each SIGHUP until `stop` (see [`reload`]).
async fn reload_on_sighup(
    path: std::path::PathBuf,
    state: state::AppState,
    stop: CancellationToken,
) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; configuration reloads are off");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            got = hangup.recv() => if got.is_none() { return },
        }
        let _ = reload::reload_file(&path, &state);
    }
}

/// The sockets to serve on, bound by the caller (tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    /// HTTPS when TLS is configured, else plain HTTP.
    pub main: std::net::TcpListener,
    /// An extra plain-HTTP listener (with TLS, for a TLS-terminating balancer).
    pub plain: Option<std::net::TcpListener>,
    /// The internal listener (`--admin-listen`, plain HTTP): when given, `/metrics`,
    /// `/ops`, `/ops/*.json` and the admin API are served only here, and the other
    /// listeners answer them 404.
    pub admin: Option<std::net::TcpListener>,
}

/// Serves until `shutdown` fires, then stops accepting, answers what was already asked
/// (see [`http::server`]) and joins every task it started before returning.
pub async fn run(
    kv: Arc<dyn Kv>,
    opts: ServeOptions,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let registry = membership::Registry::single(kv, opts.layout.clone());
    run_registries(vec![registry], opts, listeners, shutdown).await
}

/// [`run`], following several registries (one per data centre). The local one (else
/// the first) is where commands of the admin API go.
pub async fn run_registries(
    registries: Vec<membership::Registry>,
    opts: ServeOptions,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(!registries.is_empty(), "no registry to follow");
    let local = registries.iter().position(|r| r.local).unwrap_or(0);
    let tasks = TaskTracker::new();
    // The router's handles; each edge and task below is handed only its share.
    let state = state::AppState::new(opts.config.clone());
    // `shutdown` starts the going-away phase; serving stops after it.
    let shutdown = going_away(&state, shutdown, &tasks);
    // One tree: background work stops with `shutdown`, and is joined before returning.
    let background = shutdown.child_token();
    spawn_isp_db(&state, &background, &tasks)?;
    let followed = follow_registries(&registries, local, &opts, &state, &background, &tasks);
    spawn_pipeline(&state, followed, local, &background, &tasks);
    if let Some(listen) = opts.config.dns.listen {
        spawn_dns(listen, &state, &background, &tasks)?;
    }
    if let Some(path) = opts.config_file.clone() {
        tasks.spawn(reload_on_sighup(path, state.clone(), background.clone()));
    }
    let api = http::Api::new(&state);
    tasks.spawn(api.clone().housekeeping(background.clone()));
    let (app, operator) = apps(api, &registries, local, &opts, &state, &listeners);
    let result = serve(
        app,
        operator,
        &state,
        listeners,
        opts.tls.as_ref(),
        shutdown.clone(),
        &tasks,
    )
    .await;
    // Serving has ended (on shutdown, or an error): everything else stops too.
    shutdown.cancel();
    let grace = Duration::from_secs(opts.config.http.shutdown_grace_secs);
    join(&background, &tasks, grace).await;
    result?;
    info!("stopped");
    Ok(())
}

/// The token serving stops on: cancelled `shutdown_readiness_delay_ms` after
/// `shutdown`, a phase in which `/readyz` answers 503 "going away" while everything
/// else is served as before, so a load balancer's health check takes this router out
/// before its listeners close.
fn going_away(
    state: &state::AppState,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> CancellationToken {
    let serving = CancellationToken::new();
    let delay = Duration::from_millis(state.config.load().http.shutdown_readiness_delay_ms);
    let (status, stop) = (state.status.clone(), serving.clone());
    tasks.spawn(async move {
        tokio::select! {
            () = shutdown.cancelled() => {}
            // Stopped another way (an error): nothing to announce.
            () = stop.cancelled() => return,
        }
        status
            .going_away
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if !delay.is_zero() {
            info!(
                delay_ms = delay.as_millis() as u64,
                "going away: /readyz answers 503; serving until the delay ends"
            );
            tokio::time::sleep(delay).await;
        }
        stop.cancel();
    });
    serving
}

/// Loads the ASN database `[regions] isp_db` names (a file that cannot be read stops
/// the start, with the reason), and keeps it current on `tasks`.
fn spawn_isp_db(
    state: &state::AppState,
    background: &CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<()> {
    let config = state.config.load();
    let slot = state.serving.isp_db.clone();
    let loads = state.metrics.config.isp_db_loads.clone();
    let count = move |applied: bool| {
        let result = if applied { "applied" } else { "invalid" };
        loads.get_or_create(&metrics::ReloadLabels { result }).inc();
    };
    if let Some(path) = &config.regions.isp_db {
        identity::load_isp_db(&slot, path).map_err(|e| anyhow::anyhow!("[regions] isp_db: {e}"))?;
        count(true);
    }
    let live = state.config.clone();
    tasks.spawn(identity::follow_isp_db(
        slot,
        move || live.load().regions.isp_db.clone(),
        Duration::from_millis(config.regions.isp_db_check_ms),
        background.child_token(),
        count,
    ));
    Ok(())
}

/// What following the registries hands to the rest of the router.
struct Followed {
    /// The updater's input from each registry.
    inputs: Vec<membership::Input>,
    /// Each registry's block list, for the guard.
    blocklists: Vec<tokio::sync::watch::Receiver<Arc<registry::follow_map::MapView>>>,
    /// Each registry's policies, by the registry's name.
    policies: Vec<(
        Arc<str>,
        tokio::sync::watch::Receiver<Arc<registry::follow_map::MapView>>,
    )>,
    /// How far behind etcd each registry's views are.
    lags: Vec<Arc<lag::Lag>>,
}

/// Starts, for each registry, its followers (nodes and block list), its lag
/// measurement, its alarms and this router's registration in it, on `tasks`.
fn follow_registries(
    registries: &[membership::Registry],
    local: usize,
    opts: &ServeOptions,
    state: &state::AppState,
    background: &CancellationToken,
    tasks: &TaskTracker,
) -> Followed {
    let router_id = opts.router_id.clone().unwrap_or_else(peers::router_id);
    let per_registry = |v: u64| -> Arc<[std::sync::atomic::AtomicU64]> {
        registries
            .iter()
            .map(|_| std::sync::atomic::AtomicU64::new(v))
            .collect()
    };
    let (counts, scales) = (per_registry(1), per_registry(herd::SCALE_ONE));
    let mut inputs = Vec::new();
    let mut blocklists = Vec::new();
    let mut policies = Vec::new();
    let lags: Vec<Arc<lag::Lag>> = registries
        .iter()
        .map(|r| Arc::new(lag::Lag::new(r.name.clone())))
        .collect();
    let _ = state.status.lags.set(lags.clone());
    for (i, r) in registries.iter().enumerate() {
        let (blocklist, views) = spawn_followers(r, lags[i].taken.clone(), opts, background, tasks);
        blocklists.push(blocklist);
        policies.push((
            r.name.clone(),
            spawn_map(r, r.layout.policy_prefix(), background, tasks),
        ));
        inputs.push(membership::Input {
            name: r.name.clone(),
            local: i == local,
            nodes_prefix: r.layout.nodes_prefix(),
            views,
            lag: Some(lags[i].clone()),
        });
        let slot = peers::Slot {
            counts: counts.clone(),
            scales: scales.clone(),
            index: i,
            public_addrs: opts.public_addrs.clone(),
            lag: lags[i].clone(),
        };
        spawn_registry_tasks(r, &router_id, slot, state, background, tasks);
        if i == local {
            spawn_feedback(r, &router_id, state, background, tasks);
        }
    }
    Followed {
        inputs,
        blocklists,
        policies,
        lags,
    }
}

/// Starts a follower of `prefix` in `r` on `tasks`, keeping at most
/// [`policy::MAX_POLICIES`] keys; returns its view.
fn spawn_map(
    r: &membership::Registry,
    prefix: String,
    background: &CancellationToken,
    tasks: &TaskTracker,
) -> tokio::sync::watch::Receiver<Arc<registry::follow_map::MapView>> {
    let options = registry::follow_map::MapOptions {
        max_keys: policy::MAX_POLICIES,
    };
    let (view, follower) =
        registry::follow_map::follow_map_with(r.kv.clone(), prefix, options, background.clone());
    tasks.spawn(async move {
        let _ = follower.await;
    });
    view
}

/// Starts `r`'s followers, its block list's and its nodes', on `tasks`; returns their
/// views.
fn spawn_followers(
    r: &membership::Registry,
    wake: Arc<tokio::sync::Notify>,
    opts: &ServeOptions,
    background: &CancellationToken,
    tasks: &TaskTracker,
) -> (
    tokio::sync::watch::Receiver<Arc<registry::follow_map::MapView>>,
    tokio::sync::watch::Receiver<Arc<registry::follow::NodeView>>,
) {
    let (blocklist, follower) = registry::follow_map::follow_map(
        r.kv.clone(),
        r.layout.blocklist_prefix(),
        background.clone(),
    );
    tasks.spawn(async move {
        let _ = follower.await;
    });
    let (views, follower) = registry::follow::follow_with(
        r.kv.clone(),
        r.layout.clone(),
        registry::follow::FollowOptions {
            require_bindings: opts.config.require_bindings,
            wake: Some(wake),
        },
        background.clone(),
    );
    let name = r.name.clone();
    tasks.spawn(async move {
        if let Err(e) = follower.await {
            warn!(registry = %name, error = %e, "registry follower ended abnormally");
        }
    });
    (blocklist, views)
}

/// Starts `r`'s lag measurement, its alarms, and this router's registration in it
/// (`slot`), on `tasks`.
fn spawn_registry_tasks(
    r: &membership::Registry,
    router_id: &str,
    slot: peers::Slot,
    state: &state::AppState,
    background: &CancellationToken,
    tasks: &TaskTracker,
) {
    tasks.spawn(lag::follow(
        r.kv.clone(),
        r.layout.router_key(router_id),
        slot.lag.clone(),
        background.clone(),
    ));
    tasks.spawn(alarms::run(
        r.name.clone(),
        r.kv.clone(),
        state.status.clone(),
        state.metrics.registries.clone(),
        alarms::EVERY,
        background.clone(),
    ));
    // Registered in every registry it follows: each one's router count covers every
    // router that may send clients to its nodes.
    tasks.spawn(peers::run(
        router_id.to_string(),
        r.kv.clone(),
        r.layout.clone(),
        peers::Live::of(state),
        slot,
        background.clone(),
    ));
}

/// Starts the sharing and judging of clients' connect outcomes (`feedback`) in the
/// router's own registry, on `tasks`.
fn spawn_feedback(
    r: &membership::Registry,
    router_id: &str,
    state: &state::AppState,
    background: &CancellationToken,
    tasks: &TaskTracker,
) {
    let view = spawn_map(r, r.layout.outcomes_prefix(), background, tasks);
    tasks.spawn(feedback::run(
        r.kv.clone(),
        r.layout.outcome_key(router_id),
        router_id.to_string(),
        view,
        state.serving.feedback.clone(),
        state.config.clone(),
        state.metrics.feedback.clone(),
        background.clone(),
    ));
}

/// Starts what turns the followers' views into what requests read: the lag's
/// publication, the guard's block lists and the snapshot updater, on `tasks`.
fn spawn_pipeline(
    state: &state::AppState,
    followed: Followed,
    local: usize,
    background: &CancellationToken,
    tasks: &TaskTracker,
) {
    tasks.spawn(peers::publish_lag(
        state.serving.clone(),
        state.metrics.registries.clone(),
        state.config.load().max_lag_ms,
        followed.lags.clone(),
        local,
        background.clone(),
    ));
    tasks.spawn(guard::follow::run(
        state.serving.guard.clone(),
        followed.blocklists,
        background.clone(),
    ));
    tasks.spawn(policy::run(
        state.serving.policies.clone(),
        followed.policies,
        local,
        background.clone(),
    ));
    tasks.spawn(membership::spawn_updater(
        state.config.load_full(),
        membership::Outputs::of(state),
        followed.inputs,
        background.clone(),
    ));
}

/// Binds the DNS sockets on `listen` and serves the zone from them, on `tasks`.
fn spawn_dns(
    listen: std::net::SocketAddr,
    state: &state::AppState,
    background: &CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<()> {
    let sockets = dns::server::DnsSockets::bind(
        listen,
        std::thread::available_parallelism().map_or(1, usize::from),
    )
    .map_err(|e| anyhow::anyhow!("cannot serve DNS on {listen}: {e}"))?;
    dns::server::spawn(
        Arc::new(dns::Dns::new(
            state.config.clone(),
            state.serving.clone(),
            &state.metrics,
        )),
        sockets,
        background.clone(),
        tasks,
    );
    Ok(())
}

/// The public app and, with an admin listener, the operator's app (with the admin API
/// when there are admin tokens); without one, a single app serves everything.
fn apps(
    api: http::Api,
    registries: &[membership::Registry],
    local: usize,
    opts: &ServeOptions,
    state: &state::AppState,
    listeners: &Listeners,
) -> (http::routes::App, Option<http::routes::App>) {
    let admin = (!opts.admin_tokens.is_empty()).then(|| {
        let targets = registries
            .iter()
            .map(|r| admin::Target {
                name: r.name.clone(),
                kv: r.kv.clone(),
                layout: r.layout.clone(),
            })
            .collect();
        admin::router(state, targets, local, opts.admin_tokens.clone())
    });
    if listeners.admin.is_some() {
        (
            http::routes::public_app(api.clone()),
            Some(http::routes::operator_app(api, admin)),
        )
    } else {
        (http::routes::app(api, admin), None)
    }
}

/// Stops the background work and waits for it, at most `grace`.
async fn join(background: &CancellationToken, tasks: &TaskTracker, grace: Duration) {
    background.cancel();
    tasks.close();
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        warn!("background tasks did not stop within the grace period");
    }
}

/// Serves `app` on the listeners (HTTPS on `main` when `tls` is given), and `operator`
/// (else `app`) on the admin listener, until `shutdown`, then closes down as
/// [`http::server`] describes. Certificate reloading runs on `tasks` and stops with
/// `shutdown`. Of the router's handles `state`, it reads the configuration and counts
/// into the connections' metrics.
pub async fn serve(
    app: http::routes::App,
    operator: Option<http::routes::App>,
    state: &state::AppState,
    listeners: Listeners,
    tls: Option<&TlsFiles>,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<()> {
    let config = state.config.load_full();
    let mut endpoints = Vec::new();
    let live = match tls {
        Some(files) => {
            let live = files.load().await.map_err(anyhow::Error::msg)?;
            let expiry = state.metrics.connections.tls_cert_expiry.clone();
            expiry.set(files.expiry().unwrap_or(0));
            let every = Duration::from_millis(config.tls.reload_check_ms);
            tasks.spawn(files.clone().watch(
                live.clone(),
                every,
                shutdown.child_token(),
                move |at| {
                    expiry.set(at.unwrap_or(0));
                },
            ));
            Some(live)
        }
        None => None,
    };
    let proxy: Option<Arc<[ipnet::IpNet]>> = config
        .http
        .proxy_protocol
        .then(|| config.trusted_proxies.as_slice().into());
    endpoints.push(http::server::Endpoint {
        listener: listeners.main,
        tls: live,
        app: app.clone(),
        label: "",
        proxy: proxy.clone(),
    });
    if let Some(plain) = listeners.plain {
        endpoints.push(http::server::Endpoint {
            listener: plain,
            tls: None,
            app: app.clone(),
            label: "",
            proxy: proxy.clone(),
        });
    }
    if let Some(admin) = listeners.admin {
        endpoints.push(http::server::Endpoint {
            listener: admin,
            tls: None,
            app: operator.unwrap_or(app),
            label: "admin ",
            proxy: None,
        });
    }
    http::server::serve_endpoints(
        endpoints,
        &config.http,
        &state.metrics.connections,
        shutdown,
    )
    .await
}
