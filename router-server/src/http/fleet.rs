//! The fleet page: `GET /ops`, one self-contained page (its script and style are
//! served beside it, nothing from elsewhere, so it works offline), and the JSON it
//! polls, `GET /ops/fleet.json`: every node the router serves, by region, with its
//! state, load, projected load, ports and report age, and the router's own status.
//!
//! The page is read-only until an admin token is entered; it then calls the admin API
//! (`Authorization: Bearer`), which is mounted only when the router has a token. Values
//! from the registry are written into the page as text, never as markup.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use registry::{NodeState, Proto};
use serde::Serialize;

use crate::http::gateways::Api;
use crate::metrics::RequestLabels;

const PAGE: &str = include_str!("ops/index.html");
const SCRIPT: &str = include_str!("ops/ops.js");
const STYLE: &str = include_str!("ops/ops.css");

/// Only this origin's script, style and JSON; no frames.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page's routes; `admin` says whether the admin API is mounted.
pub fn routes(admin: bool) -> Router<Api> {
    Router::new()
        .route(
            "/ops",
            get(|| async { asset(PAGE, "text/html; charset=utf-8") }),
        )
        .route(
            "/ops/ops.js",
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/ops/ops.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
        .route(
            "/ops/fleet.json",
            get(move |State(api): State<Api>| async move { Json(fleet(&api, admin)) }),
        )
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// `GET /ops/fleet.json`.
#[derive(Debug, Serialize)]
pub struct Fleet {
    /// Wall-clock ms when this was taken.
    pub now_ms: u64,
    /// The router's own status.
    pub router: RouterStatus,
    /// Regions by name, each with its nodes by id.
    pub regions: Vec<Region>,
}

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
    /// Nodes at or above this projected load get no clients.
    pub max_load: f64,
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
    pub dns: Option<crate::dns::stats::DnsStatus>,
}

/// An invalid registry value.
#[derive(Debug, Serialize)]
pub struct Invalid {
    /// Its key.
    pub key: String,
    /// Why it was skipped.
    pub reason: String,
}

/// One region.
#[derive(Debug, Serialize)]
pub struct Region {
    /// Its name.
    pub region: String,
    /// Its nodes.
    pub nodes: Vec<Node>,
}

/// One node as the page shows it.
#[derive(Debug, Serialize)]
pub struct Node {
    /// Node id.
    pub id: String,
    /// The data centre (registry) holding it.
    pub dc: Option<String>,
    /// `serving`, `draining`, `unhealthy` or `overloaded` (projected load at or above
    /// `max_load`): the colour of its bar.
    pub state: &'static str,
    /// Reported connections.
    pub connections: u64,
    /// Capacity.
    pub capacity: u64,
    /// Reported load.
    pub load: f64,
    /// Reported load plus the clients the routers sent since the report.
    pub projected_load: f64,
    /// Ports by protocol.
    pub ports: BTreeMap<&'static str, u16>,
    /// The node's address.
    pub ip: String,
    /// Ms since its last report, when it says when.
    pub report_age_ms: Option<u64>,
    /// The last command applied.
    pub applied_command: Option<String>,
    /// Where its last migrate signal's delivery stands.
    pub hook: Option<&'static str>,
}

/// The fleet as this router serves it now.
pub fn fleet(api: &Api, admin: bool) -> Fleet {
    let state = &api.state;
    let m = &state.metrics;
    let snap = state.snapshot.load_full();
    let herd = state.herd_view();
    let now = registry::now_ms();
    let max_load = state.config.max_load;
    let mut regions: BTreeMap<&str, Vec<Node>> = BTreeMap::new();
    if let Some(s) = &snap {
        for e in s.nodes.iter() {
            let r = &e.record;
            let projected = e.projected_load(&herd);
            let node_state = if r.state == NodeState::Draining {
                "draining"
            } else if !r.healthy {
                "unhealthy"
            } else if projected >= max_load {
                "overloaded"
            } else {
                "serving"
            };
            regions.entry(&r.region).or_default().push(Node {
                id: r.id.clone(),
                dc: r.dc.as_deref().map(str::to_string),
                state: node_state,
                connections: r.connections,
                capacity: r.capacity,
                load: r.load(),
                projected_load: projected,
                ports: Proto::ALL
                    .into_iter()
                    .filter_map(|p| Some((p.as_str(), r.ports.get(p)?)))
                    .collect(),
                ip: r.ip.to_string(),
                report_age_ms: r.updated_ms.map(|u| now.saturating_sub(u)),
                applied_command: r.applied_command.clone(),
                hook: r.hook.as_ref().map(|h| h.state.as_str()),
            });
        }
    }
    let invalid = state
        .invalid
        .lock()
        .expect("invalid lock")
        .iter()
        .map(|(id, reason)| Invalid {
            key: id.to_string(),
            reason: reason.clone(),
        })
        .collect();
    let snapshot_age_secs = state
        .last_sync
        .lock()
        .expect("last_sync lock")
        .map(|t| t.elapsed().as_secs_f64());
    Fleet {
        now_ms: now,
        router: RouterStatus {
            ready: snap.is_some(),
            registry_connected: m.registry_connected.get() == 1,
            revision: snap.as_ref().map(|s| s.revision).unwrap_or(0),
            stale: snap.as_ref().is_some_and(|s| s.stale),
            snapshot_age_secs,
            protect_active: state.protecting.load(Ordering::Relaxed),
            routers_live: state.routers.load(Ordering::Relaxed),
            max_load,
            admin,
            invalid,
            registries: state.registries.lock().expect("registries lock").clone(),
            gateways_ok: m
                .requests
                .get_or_create(&RequestLabels {
                    route: "/gateways",
                    status: 200,
                })
                .get(),
            rate_limited: m.rate_limited.get(),
            no_gateways: m.no_gateways.get(),
            dns: state
                .config
                .dns
                .enabled()
                .then(|| m.dns_totals.status(&state.config.dns.zone)),
        },
        regions: regions
            .into_iter()
            .map(|(region, nodes)| Region {
                region: region.to_string(),
                nodes,
            })
            .collect(),
    }
}
