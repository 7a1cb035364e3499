//! The handles every request handler and background task shares.
//!
//! Request handlers read the current [`Snapshot`] through an `ArcSwapOption`: one
//! atomic load, no lock. Its only writer is the membership pipeline
//! ([`crate::membership`]), which also keeps the registries' health here.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use registry::imbl;
use tokio::time::Instant;

use crate::config::FileConfig;
use crate::metrics::Metrics;
use crate::schedule::Snapshot;
use serde::Serialize;

/// A live router as its registration describes it, for the fleet page.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Peer {
    /// Its id (`?` when the registration does not say).
    pub id: String,
    /// Its version and commit, `VERSION (COMMIT)` (`?` for a router too old to say).
    pub version: String,
}

/// What every handler shares.
pub struct AppState {
    /// The served snapshot; `None` until the first full load. In an `Arc` so that
    /// request threads can keep a cache of it (see `http::gateways`).
    pub snapshot: Arc<ArcSwapOption<Snapshot>>,
    /// The validated configuration.
    pub config: FileConfig,
    /// Metrics.
    pub metrics: Metrics,
    /// When the snapshot last followed the registry (for the age metric).
    pub last_sync: std::sync::Mutex<Option<Instant>>,
    /// The constant part of every answer, serialized once (see [`crate::answer::answer_tail`]).
    pub answer_tail: String,
    /// Live routers sharing the registry (this one included), from `P/routers/`.
    pub routers: std::sync::atomic::AtomicU64,
    /// This router's order among equally loaded nodes (see `Snapshot::build_seeded`).
    pub tie_seed: u64,
    /// Every registry's invalid keys (prefixed `NAME:` when there are several) and
    /// duplicate node ids, with the reasons, as of the last view (for the fleet page).
    pub invalid: std::sync::Mutex<imbl::OrdMap<Arc<str>, String>>,
    /// True while the protect threshold holds departed nodes.
    pub protecting: std::sync::atomic::AtomicBool,
    /// Each registry's health, in the order they are configured.
    pub registries: std::sync::Mutex<Vec<RegistryStatus>>,
    /// The client-region table (`[regions] cidrs`), built once for `/gateways` and DNS.
    pub regions: crate::identity::RegionTable,
    /// What one client network may cost: block and allow lists, budgets.
    pub guard: Arc<crate::guard::Guard>,
    /// Per registry followed, the public addresses its live routers publish
    /// (`--public-addr`), for the routers' own domain in DNS and HTTPDNS.
    pub router_addrs: std::sync::Mutex<Vec<Vec<std::net::IpAddr>>>,
    /// Per registry followed, its live routers' ids and versions (for the fleet page).
    pub router_peers: std::sync::Mutex<Vec<Vec<Peer>>>,
    /// Each registry's lag behind etcd, in the order they are configured (set once
    /// the registries are known; see [`crate::lag`]).
    pub lags: std::sync::OnceLock<Vec<Arc<crate::lag::Lag>>>,
    /// The steady lag (the largest registry's last heartbeat round trip), ms: the
    /// herd window is longer by it, since a connection shows in a report that much
    /// later.
    pub herd_lag_ms: std::sync::atomic::AtomicU64,
    /// True while this router's view of its own registry is behind etcd by more than
    /// `max_lag_ms`: answers are marked stale.
    pub lagging: std::sync::atomic::AtomicBool,
    /// The alarms each registry's etcd has raised, by registry name (absent: not read
    /// yet or not readable), see [`crate::alarms`].
    pub alarms: std::sync::Mutex<std::collections::BTreeMap<String, Vec<registry::Alarm>>>,
    /// True from SIGTERM on: `/readyz` answers 503 "going away" while everything else is
    /// still served, for `shutdown_readiness_delay_ms`.
    pub going_away: std::sync::atomic::AtomicBool,
}

impl AppState {
    /// Fresh state with no snapshot.
    pub fn new(config: FileConfig) -> AppState {
        AppState::with_clock(config, crate::clock::LimiterClock::default())
    }

    /// [`AppState::new`], with the per-client limiters on `clock` (tests drive it).
    pub fn with_clock(config: FileConfig, clock: crate::clock::LimiterClock) -> AppState {
        let regions =
            crate::identity::RegionTable::new(&config.regions.cidrs, &config.regions.default);
        let metrics = Metrics::default();
        let guard = Arc::new(crate::guard::Guard::new(&config, clock, &metrics));
        AppState {
            guard,
            answer_tail: crate::answer::answer_tail(&config),
            snapshot: Arc::new(ArcSwapOption::empty()),
            config,
            metrics,
            last_sync: std::sync::Mutex::new(None),
            routers: std::sync::atomic::AtomicU64::new(1),
            tie_seed: rand::random::<u64>() | 1,
            invalid: std::sync::Mutex::new(imbl::OrdMap::new()),
            protecting: std::sync::atomic::AtomicBool::new(false),
            registries: std::sync::Mutex::new(Vec::new()),
            router_addrs: std::sync::Mutex::new(Vec::new()),
            router_peers: std::sync::Mutex::new(Vec::new()),
            lags: std::sync::OnceLock::new(),
            herd_lag_ms: std::sync::atomic::AtomicU64::new(0),
            lagging: std::sync::atomic::AtomicBool::new(false),
            alarms: std::sync::Mutex::new(Default::default()),
            going_away: std::sync::atomic::AtomicBool::new(false),
            regions,
        }
    }

    /// The herd counts as a request sees them now.
    pub fn herd_view(&self) -> crate::herd::HerdView {
        crate::herd::HerdView::now(
            self.config.herd_window_secs * 1000
                + self.herd_lag_ms.load(std::sync::atomic::Ordering::Relaxed),
            self.routers.load(std::sync::atomic::Ordering::Relaxed),
        )
    }
}

/// A registry's health as the router sees it (for `/ops`, `/readyz` and metrics).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegistryStatus {
    /// Its name.
    pub name: String,
    /// The router's own DC.
    pub local: bool,
    /// A full listing has been loaded.
    pub loaded: bool,
    /// Its watch is live.
    pub connected: bool,
    /// The revision its view reflects.
    pub revision: i64,
    /// Valid node records in it.
    pub nodes: usize,
    /// Seconds it has been out of reach, while it is.
    pub unreachable_secs: Option<u64>,
    /// Out of reach for `registry_stale_secs`: its nodes are offered last.
    pub demoted: bool,
    /// Out of reach for `protect_max_secs`: its nodes are no longer offered.
    pub dropped: bool,
    /// Its protect threshold holds departed nodes.
    pub protecting: bool,
    /// How far behind etcd this router's view of it is, ms (see [`crate::lag`]);
    /// `None` before the first heartbeat.
    pub lag_ms: Option<u64>,
    /// The alarms its etcd has raised (`nospace`, `corrupt`).
    pub alarms: Vec<&'static str>,
}
