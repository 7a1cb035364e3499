//! [`FleetStatus`]: the fleet as this router follows it (invalid records, the protect
//! threshold, each registry's health, lag and etcd alarms, the live routers, the last
//! sync, going away), for `/ops`, `/ops/*.json`, `/readyz` and `/metrics`.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};

use registry::imbl;
use serde::Serialize;
use tokio::time::Instant;

/// What the fleet page and readiness read; no answer does. Its writers: the snapshot
/// updater (`membership`: invalid records, protect, health, last sync), the router
/// registrations (`peers`: the live routers), the alarms' reader (`alarms`), `run`
/// (the lags, once; going away).
#[derive(Default)]
pub struct FleetStatus {
    /// When the snapshot last followed the registry (for the age metric).
    pub last_sync: Mutex<Option<Instant>>,
    /// Every registry's invalid keys (prefixed `NAME:` when there are several) and
    /// duplicate node ids, with the reasons, as of the last view (for the fleet page).
    pub invalid: Mutex<imbl::OrdMap<Arc<str>, String>>,
    /// True while the protect threshold holds departed nodes.
    pub protecting: AtomicBool,
    /// Each registry's health, in the order they are configured.
    pub registries: Mutex<Vec<RegistryStatus>>,
    /// Per registry followed, its live routers' ids and versions (for the fleet page).
    pub router_peers: Mutex<Vec<Vec<Peer>>>,
    /// Each registry's lag behind etcd, in the order they are configured (set once
    /// the registries are known; see [`crate::lag`]).
    pub lags: OnceLock<Vec<Arc<crate::lag::Lag>>>,
    /// The alarms each registry's etcd has raised, by registry name (absent: not read
    /// yet or not readable), see [`crate::alarms`].
    pub alarms: Mutex<BTreeMap<String, Vec<registry::Alarm>>>,
    /// True from SIGTERM on: `/readyz` answers 503 "going away" while everything else is
    /// still served, for `shutdown_readiness_delay_ms`.
    pub going_away: AtomicBool,
}

/// A live router as its registration describes it, for the fleet page.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Peer {
    /// Its id (`?` when the registration does not say).
    pub id: String,
    /// Its version and commit, `VERSION (COMMIT)` (`?` for a router too old to say).
    pub version: String,
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
