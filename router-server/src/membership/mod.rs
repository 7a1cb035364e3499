//! The membership pipeline: the registries a router follows, one per data centre,
//! merged into the one snapshot requests read.
//!
//! * [`protect`]: one registry's protect threshold (a mass departure without drains
//!   is held, bounded in time).
//! * [`merge`]: the updater: each registry's views diffed and judged, then merged
//!   (duplicates reported, out-of-reach registries demoted), patching the served
//!   snapshot report by report where it can.
//! * [`counts`]: the node-count gauges, kept up to date report by report.
//!
//! [`crate::state`] holds only the handles the pipeline writes: the snapshot, the
//! registries' health, the invalid records.

pub mod counts;
pub mod merge;
pub mod protect;

use std::sync::Arc;

use registry::{Kv, Layout};
use serde::Serialize;

pub use merge::{run_updater, spawn_updater, Input};
pub use protect::{Protect, Verdict};

/// One registry to follow: a data centre's etcd.
#[derive(Clone)]
pub struct Registry {
    /// The DC's name (`default` for `--etcd`), in answers as each gateway's `dc`.
    pub name: Arc<str>,
    /// The store.
    pub kv: Arc<dyn Kv>,
    /// Its key layout.
    pub layout: Layout,
    /// This router's own DC: its health decides `/readyz` and the answers' `stale`.
    pub local: bool,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("name", &self.name)
            .field("prefix", &self.layout.prefix())
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// The one registry of a router started with `--etcd`: `default`, local.
    pub fn single(kv: Arc<dyn Kv>, layout: Layout) -> Registry {
        Registry {
            name: Arc::from("default"),
            kv,
            layout,
            local: true,
        }
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
