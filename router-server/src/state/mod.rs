//! The handles the edges and the background tasks share, grouped by who reads them:
//!
//! * [`Serving`] (`serving.rs`): what answering a client reads — the snapshot (through
//!   an `ArcSwapOption`: one atomic load, no lock), the answer's tail, the region
//!   table, the guard, the herd's inputs, the stale mark, the routers' addresses.
//!   `/gateways`, DNS, DoH, `/resolve`, `/d` and the admin API's node list read it.
//!   An answer reads the swapped values through its thread's caches
//!   ([`Serving::read`], `reading.rs`).
//! * [`FleetStatus`] (`status.rs`): the fleet as the router follows it — invalid
//!   records, protect, each registry's health, lag and alarms, the live routers, the
//!   last sync, going away. `/ops`, `/ops/*.json`, `/readyz` and `/metrics` read it;
//!   no answer does.
//! * the configuration, a [`LiveConfig`] (SIGHUP replaces its reloadable part);
//! * the metrics, [`crate::metrics::Metrics`], each subsystem's in a struct of its own.
//!
//! [`AppState`] holds the four: `run` builds it and hands each edge and each task the
//! handles it reads or writes, never the whole.

mod reading;
mod serving;
mod status;

use std::sync::Arc;

use crate::config::{FileConfig, LiveConfig};
use crate::metrics::Metrics;

pub use reading::Reading;
pub use serving::{region_table, Serving};
pub use status::{FleetStatus, Peer, RegistryStatus};

/// The router's handles, built once by `run` (and by tests) and split between the
/// edges and the tasks. Cloning it clones four `Arc`s.
#[derive(Clone)]
pub struct AppState {
    /// The validated configuration in force.
    pub config: LiveConfig,
    /// Every subsystem's metrics.
    pub metrics: Arc<Metrics>,
    /// What answering reads.
    pub serving: Arc<Serving>,
    /// The fleet's status.
    pub status: Arc<FleetStatus>,
}

impl AppState {
    /// Fresh state with no snapshot.
    pub fn new(config: FileConfig) -> AppState {
        AppState::with_clock(config, crate::clock::LimiterClock::default())
    }

    /// [`AppState::new`], with the per-client limiters on `clock` (tests drive it).
    pub fn with_clock(config: FileConfig, clock: crate::clock::LimiterClock) -> AppState {
        let metrics = Metrics::default();
        let guard = Arc::new(crate::guard::Guard::new(&config, clock, &metrics));
        AppState {
            serving: Arc::new(Serving::new(&config, guard)),
            status: Arc::new(FleetStatus::default()),
            config: LiveConfig::new(config),
            metrics: Arc::new(metrics),
        }
    }
}
