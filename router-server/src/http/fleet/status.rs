//! The router's own status as the fleet page shows it: readiness, the registries
//! followed and their health, the live routers, and the counters for rates.

use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::http::gateways::Api;
use crate::metrics::RequestLabels;

/// The router's status as the page shows it.
#[derive(Debug, Serialize)]
pub struct RouterStatus {
    /// A snapshot is loaded.
    pub ready: bool,
    /// The registry's watch is live.
    pub registry_connected: bool,
    /// The registry revision served.
    pub revision: i64,
    /// Answers are marked stale.
    pub stale: bool,
    /// Seconds since the snapshot last followed the registry.
    pub snapshot_age_secs: Option<f64>,
    /// The protect threshold holds departed nodes.
    pub protect_active: bool,
    /// Live routers sharing the registry.
    pub routers_live: u64,
    /// Clients each of this router's answers counts for in the herd estimate.
    pub herd_scale: f64,
    /// The live routers of every registry followed, with their versions, by id.
    pub routers: Vec<crate::state::Peer>,
    /// Nodes at or above this projected load get no clients.
    pub max_load: f64,
    /// Answers are marked stale while the router's own registry's lag passes this, ms.
    pub max_lag_ms: u64,
    /// The admin API is mounted (the page offers actions only then).
    pub admin: bool,
    /// Invalid records in the registries (and node ids found in two of them).
    pub invalid: Vec<Invalid>,
    /// Each registry (data centre) followed, the router's own first.
    pub registries: Vec<crate::membership::RegistryStatus>,
    /// Counters since start, for rates: `/gateways` answered, refused by the rate
    /// limit (429), with no eligible gateway (503).
    pub gateways_ok: u64,
    /// See `gateways_ok`.
    pub rate_limited: u64,
    /// See `gateways_ok`.
    pub no_gateways: u64,
    /// The DNS zone served and its query counts, when DNS is on.
    pub dns: Option<crate::metrics::dns::DnsStatus>,
    /// The operator policies in force, by name.
    pub policies: Vec<PolicyStatus>,
    /// Gateways demoted for a client network by its clients' reports, at most
    /// [`DEMOTED_SHOWN`].
    pub demoted: Vec<crate::feedback::Demoted>,
}

/// The most demotions `/ops` lists.
const DEMOTED_SHOWN: usize = 100;

/// One operator policy in force.
#[derive(Debug, Serialize)]
pub struct PolicyStatus {
    /// Its name.
    pub name: String,
    /// The registry it was read from.
    pub registry: String,
    /// What it says.
    #[serde(flatten)]
    pub policy: registry::policy::Policy,
    /// Answers steered to each ratio group since this router read it, in `ratios`'
    /// order.
    pub answers: Vec<u64>,
}

/// An invalid registry value.
#[derive(Debug, Serialize)]
pub struct Invalid {
    /// Its key.
    pub key: String,
    /// Why it was skipped.
    pub reason: String,
}

/// The router's own status.
pub(super) fn router_status(
    api: &Api,
    admin: bool,
    snap: Option<&crate::schedule::Snapshot>,
) -> RouterStatus {
    let m = &api.metrics;
    let max_load = api.config.load().max_load;
    let invalid = api
        .status
        .invalid
        .lock()
        .expect("invalid lock")
        .iter()
        .map(|(id, reason)| Invalid {
            key: id.to_string(),
            reason: reason.clone(),
        })
        .collect();
    let snapshot_age_secs = api
        .status
        .last_sync
        .lock()
        .expect("last_sync lock")
        .map(|t| t.elapsed().as_secs_f64());
    RouterStatus {
        ready: snap.is_some(),
        registry_connected: m.fleet.registry_connected.get() == 1,
        revision: snap.map(|s| s.revision).unwrap_or(0),
        stale: snap.is_some_and(|s| s.stale) || api.serving.lagging.load(Ordering::Relaxed),
        snapshot_age_secs,
        protect_active: api.status.protecting.load(Ordering::Relaxed),
        routers_live: api.serving.routers.load(Ordering::Relaxed),
        herd_scale: api.serving.herd_scale.load(Ordering::Relaxed) as f64
            / crate::herd::SCALE_ONE as f64,
        routers: {
            let all = api.status.router_peers.lock().expect("router_peers lock");
            let mut peers: Vec<_> = all.iter().flatten().cloned().collect();
            peers.sort();
            peers.dedup();
            peers
        },
        max_load,
        max_lag_ms: api.config.load().max_lag_ms,
        admin,
        invalid,
        registries: with_health(&api.status),
        gateways_ok: m
            .http
            .requests
            .get_or_create(&RequestLabels {
                route: "/gateways",
                status: 200,
            })
            .get(),
        rate_limited: m.edge.rate_limited.get(),
        no_gateways: m.edge.no_gateways.get(),
        dns: api
            .config
            .load()
            .dns
            .enabled()
            .then(|| m.dns.totals.status(&api.config.load().dns.zone)),
        policies: api
            .serving
            .policies
            .load()
            .all()
            .into_iter()
            .map(|p| PolicyStatus {
                name: p.name.clone(),
                registry: p.registry.to_string(),
                policy: p.policy.clone(),
                answers: p.answers_by_group(),
            })
            .collect(),
        demoted: {
            let mut d = api.serving.feedback.demoted(tokio::time::Instant::now());
            d.truncate(DEMOTED_SHOWN);
            d
        },
    }
}

/// Each registry's status, with its lag and its etcd's alarms as of now (they change
/// without a new view).
fn with_health(status: &crate::state::FleetStatus) -> Vec<crate::membership::RegistryStatus> {
    let mut statuses = status.registries.lock().expect("registries lock").clone();
    let now = tokio::time::Instant::now();
    let lags = status.lags.get();
    let alarms = status.alarms.lock().expect("alarms lock");
    for st in &mut statuses {
        if let Some(l) = lags.and_then(|ls| ls.iter().find(|l| *l.registry == *st.name)) {
            st.lag_ms = l.current(now).map(|d| d.as_millis() as u64);
        }
        if let Some(a) = alarms.get(&st.name) {
            st.alarms = a.iter().map(|a| a.as_str()).collect();
        }
    }
    statuses
}
