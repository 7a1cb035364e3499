//! The fleet page: `GET /ops`, one self-contained page (its script and style are
//! served beside it, nothing from elsewhere, so it works offline), and the JSON it
//! polls, `GET /ops/summary.json`: the router's own status, one line per region
//! (counts by state, load, the worst node), problem regions first, and the nodes of
//! only the regions the operator opened or searched, problem nodes first. At 10,000
//! nodes a poll is a few kilobytes instead of the whole fleet.
//! `GET /ops/fleet.json` still gives every node the router serves, by region, with its
//! state, load, projected load, ports and report age, for scripts.
//!
//! The page is read-only until an admin token is entered; it then calls the admin API
//! (`Authorization: Bearer`), which is mounted only when the router has a token. Values
//! from the registry are written into the page as text, never as markup.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use registry::{NodeState, Proto};
use serde::Serialize;

use crate::http::error::ApiError;
use crate::http::gateways::Api;
use crate::metrics::RequestLabels;
use crate::schedule::NodeEntry;

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
            "/ops/blocks.json",
            get(|State(api): State<Api>| async move {
                Json(api.state.guard.listing(registry::now_ms()))
            }),
        )
        .route(
            "/ops/fleet.json",
            get(move |State(api): State<Api>| async move { Json(fleet(&api, admin)) }),
        )
        .route(
            "/ops/summary.json",
            get(
                move |State(api): State<Api>,
                      query: Result<Query<Vec<(String, String)>>, QueryRejection>| async move {
                    let Query(pairs) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
                    let want = SummaryQuery::parse(&pairs)?;
                    Ok::<_, ApiError>(Json(summary(&api, admin, &want)))
                },
            ),
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
#[derive(Debug, Clone, Serialize)]
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

/// A node's state as the page colours it, and its projected load.
fn page_state(e: &NodeEntry, herd: &crate::herd::HerdView, max_load: f64) -> (&'static str, f64) {
    let r = &e.record;
    let projected = e.projected_load(herd);
    let state = if r.state == NodeState::Draining {
        "draining"
    } else if !r.healthy {
        "unhealthy"
    } else if projected >= max_load {
        "overloaded"
    } else {
        "serving"
    };
    (state, projected)
}

/// One node as the page shows it, at `herd`.
fn node(e: &NodeEntry, herd: &crate::herd::HerdView, max_load: f64, now: u64) -> Node {
    let (state, projected) = page_state(e, herd, max_load);
    line(e, state, projected, now)
}

/// One node as the page shows it, in page state `node_state` at `projected` load.
fn line(e: &NodeEntry, node_state: &'static str, projected: f64, now: u64) -> Node {
    let r = &e.record;
    Node {
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
    }
}

/// The router's own status.
fn router_status(api: &Api, admin: bool, snap: Option<&crate::schedule::Snapshot>) -> RouterStatus {
    let state = &api.state;
    let m = &state.metrics;
    let max_load = state.config.max_load;
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
    RouterStatus {
        ready: snap.is_some(),
        registry_connected: m.registry_connected.get() == 1,
        revision: snap.map(|s| s.revision).unwrap_or(0),
        stale: snap.is_some_and(|s| s.stale) || state.lagging.load(Ordering::Relaxed),
        snapshot_age_secs,
        protect_active: state.protecting.load(Ordering::Relaxed),
        routers_live: state.routers.load(Ordering::Relaxed),
        routers: {
            let all = state.router_peers.lock().expect("router_peers lock");
            let mut peers: Vec<_> = all.iter().flatten().cloned().collect();
            peers.sort();
            peers.dedup();
            peers
        },
        max_load,
        max_lag_ms: state.config.max_lag_ms,
        admin,
        invalid,
        registries: with_health(state),
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
    }
}

/// Each registry's status, with its lag and its etcd's alarms as of now (they change
/// without a new view).
fn with_health(state: &crate::state::AppState) -> Vec<crate::membership::RegistryStatus> {
    let mut statuses = state.registries.lock().expect("registries lock").clone();
    let now = tokio::time::Instant::now();
    let lags = state.lags.get();
    let alarms = state.alarms.lock().expect("alarms lock");
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

/// The fleet as this router serves it now.
pub fn fleet(api: &Api, admin: bool) -> Fleet {
    let state = &api.state;
    let snap = state.snapshot.load_full();
    let herd = state.herd_view();
    let now = registry::now_ms();
    let max_load = state.config.max_load;
    let mut regions: BTreeMap<&str, Vec<Node>> = BTreeMap::new();
    if let Some(s) = &snap {
        for e in s.nodes.iter() {
            regions
                .entry(&e.record.region)
                .or_default()
                .push(node(e, &herd, max_load, now));
        }
    }
    Fleet {
        now_ms: now,
        router: router_status(api, admin, snap.as_deref()),
        regions: regions
            .into_iter()
            .map(|(region, nodes)| Region {
                region: region.to_string(),
                nodes,
            })
            .collect(),
    }
}

/// Nodes listed per opened region, and search matches, when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// The most nodes `limit` may ask for.
pub const MAX_LIMIT: usize = 1000;
/// A fleet this small is shown whole (every region open), as before summaries.
pub const SMALL_FLEET: usize = 200;

/// What `GET /ops/summary.json` is asked for: `open` (a region name, repeatable), `q`
/// (nodes whose id or address contains it, in any region), `limit` (nodes per opened
/// region and search, 1-1000, default 100).
#[derive(Debug, Default, PartialEq)]
pub struct SummaryQuery {
    /// Regions whose nodes to list.
    pub open: Vec<String>,
    /// Search text.
    pub q: Option<String>,
    /// Nodes per list.
    pub limit: usize,
}

impl SummaryQuery {
    /// From the query's pairs; an unknown key or a bad `limit` is a 400.
    pub fn parse(pairs: &[(String, String)]) -> Result<SummaryQuery, ApiError> {
        let mut want = SummaryQuery {
            limit: DEFAULT_LIMIT,
            ..SummaryQuery::default()
        };
        for (k, v) in pairs {
            match k.as_str() {
                "open" => want.open.push(v.clone()),
                "q" if v.trim().is_empty() => {}
                "q" => want.q = Some(v.trim().to_lowercase()),
                "limit" => {
                    want.limit = v
                        .parse()
                        .ok()
                        .filter(|l| (1..=MAX_LIMIT).contains(l))
                        .ok_or_else(|| {
                            ApiError::invalid(format!("limit must be 1-{MAX_LIMIT}, not {v:?}"))
                        })?;
                }
                _ => {
                    return Err(ApiError::invalid(format!(
                        "unknown parameter {k:?} (open, q, limit)"
                    )))
                }
            }
        }
        Ok(want)
    }
}

/// `GET /ops/summary.json`.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Wall-clock ms when this was taken.
    pub now_ms: u64,
    /// The router's own status.
    pub router: RouterStatus,
    /// Nodes in all.
    pub nodes: usize,
    /// Every region open (a fleet of at most [`SMALL_FLEET`] nodes).
    pub all_open: bool,
    /// One line per region, problem regions first.
    pub regions: Vec<RegionSummary>,
    /// Nodes matching `q`, problem nodes first (absent without `q`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found: Option<NodeList>,
}

/// One region's line.
#[derive(Debug, Serialize)]
pub struct RegionSummary {
    /// Its name.
    pub region: String,
    /// The data centres its nodes are in.
    pub dcs: Vec<String>,
    /// Nodes by page state (`serving`, `draining`, `unhealthy`, `overloaded`).
    pub counts: BTreeMap<&'static str, usize>,
    /// Nodes that are not serving below `max_load`.
    pub problems: usize,
    /// Connections / capacity of the nodes taking clients (serving or overloaded).
    pub mean_load: f64,
    /// The highest projected load among them.
    pub max_projected: f64,
    /// Its nodes, when opened (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodeList>,
}

/// Some nodes, problem nodes first, then by projected load, highest first.
#[derive(Debug, Serialize)]
pub struct NodeList {
    /// The first `limit`.
    pub nodes: Vec<Node>,
    /// How many more there are.
    pub more: usize,
}

/// Where a page state ranks: problems first.
fn rank(state: &str) -> u8 {
    match state {
        "overloaded" => 0,
        "unhealthy" => 1,
        "draining" => 2,
        _ => 3,
    }
}

fn list(mut nodes: Vec<Node>, limit: usize) -> NodeList {
    nodes.sort_by(|a, b| {
        rank(a.state)
            .cmp(&rank(b.state))
            .then(b.projected_load.total_cmp(&a.projected_load))
            .then_with(|| a.id.cmp(&b.id))
    });
    let more = nodes.len().saturating_sub(limit);
    nodes.truncate(limit);
    NodeList { nodes, more }
}

/// The fleet page's poll: region lines, and the nodes asked for.
pub fn summary(api: &Api, admin: bool, want: &SummaryQuery) -> Summary {
    let state = &api.state;
    let snap = state.snapshot.load_full();
    let herd = state.herd_view();
    let now = registry::now_ms();
    let max_load = state.config.max_load;
    let total = snap.as_ref().map_or(0, |s| s.nodes.len());
    let all_open = total <= SMALL_FLEET;
    #[derive(Default)]
    struct Acc {
        dcs: std::collections::BTreeSet<String>,
        counts: BTreeMap<&'static str, usize>,
        conns: u64,
        cap: u64,
        max_projected: f64,
        nodes: Option<Vec<Node>>,
    }
    let mut regions: BTreeMap<&str, Acc> = BTreeMap::new();
    let mut found = want.q.as_ref().map(|_| Vec::new());
    if let Some(s) = &snap {
        for e in s.nodes.iter() {
            let r = &e.record;
            // An opened region collects its nodes from its first one on.
            let acc = regions.entry(&r.region).or_insert_with(|| Acc {
                nodes: (all_open || want.open.iter().any(|o| *o == r.region)).then(Vec::new),
                ..Acc::default()
            });
            let matched = want.q.as_ref().is_some_and(|q| {
                r.id.to_lowercase().contains(q.as_str()) || r.ip.to_string().contains(q.as_str())
            });
            let (page_state, projected) = page_state(e, &herd, max_load);
            *acc.counts.entry(page_state).or_default() += 1;
            if let Some(dc) = &r.dc {
                if !acc.dcs.contains(&**dc) {
                    acc.dcs.insert(dc.to_string());
                }
            }
            if matches!(page_state, "serving" | "overloaded") {
                acc.conns += r.connections;
                acc.cap += r.capacity;
                acc.max_projected = acc.max_projected.max(projected);
            }
            // The full line is built only for the nodes listed, once.
            if matched || acc.nodes.is_some() {
                let n = line(e, page_state, projected, now);
                match (&mut found, &mut acc.nodes) {
                    (Some(found), Some(nodes)) if matched => {
                        found.push(n.clone());
                        nodes.push(n);
                    }
                    (_, Some(nodes)) => nodes.push(n),
                    (found, None) => found.as_mut().expect("q given").push(n),
                }
            }
        }
    }
    let mut lines: Vec<RegionSummary> = regions
        .into_iter()
        .map(|(region, acc)| {
            let problems = acc
                .counts
                .iter()
                .filter(|(s, _)| **s != "serving")
                .map(|(_, n)| n)
                .sum();
            RegionSummary {
                region: region.to_string(),
                dcs: acc.dcs.into_iter().collect(),
                counts: acc.counts,
                problems,
                mean_load: if acc.cap == 0 {
                    0.0
                } else {
                    acc.conns as f64 / acc.cap as f64
                },
                max_projected: acc.max_projected,
                nodes: acc.nodes.map(|n| list(n, want.limit)),
            }
        })
        .collect();
    lines.sort_by(|a, b| {
        b.problems
            .cmp(&a.problems)
            .then_with(|| a.region.cmp(&b.region))
    });
    Summary {
        now_ms: now,
        router: router_status(api, admin, snap.as_deref()),
        nodes: total,
        all_open,
        regions: lines,
        found: found.map(|f| list(f, want.limit)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &str) -> Vec<(String, String)> {
        q.split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    #[test]
    fn the_summary_query_is_parsed_and_bad_input_refused() {
        let q = SummaryQuery::parse(&pairs("open=r1&open=r2&q=GW-1&limit=5")).unwrap();
        assert_eq!(q.open, ["r1", "r2"]);
        assert_eq!(q.q.as_deref(), Some("gw-1"));
        assert_eq!(q.limit, 5);
        let q = SummaryQuery::parse(&pairs("q=")).unwrap();
        assert_eq!((q.q, q.limit), (None, DEFAULT_LIMIT));
        for bad in ["limit=0", "limit=1001", "limit=x", "opne=r1"] {
            let e = SummaryQuery::parse(&pairs(bad)).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn lists_put_problem_nodes_first_and_count_the_rest() {
        let n = |id: &str, state: &'static str, p: f64| Node {
            id: id.into(),
            dc: None,
            state,
            connections: 0,
            capacity: 1,
            load: 0.0,
            projected_load: p,
            ports: BTreeMap::new(),
            ip: "192.0.2.1".into(),
            report_age_ms: None,
            applied_command: None,
            hook: None,
        };
        let l = list(
            vec![
                n("a", "serving", 0.5),
                n("b", "draining", 0.1),
                n("c", "serving", 0.7),
                n("d", "overloaded", 0.99),
                n("e", "unhealthy", 0.2),
            ],
            4,
        );
        let ids: Vec<&str> = l.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["d", "e", "b", "c"]);
        assert_eq!(l.more, 1);
    }
}
