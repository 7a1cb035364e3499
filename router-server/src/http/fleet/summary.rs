//! `GET /ops/summary.json`, the fleet page's poll: one line per region, problem regions
//! first, and the nodes of only the regions opened or searched (`open`, `q`, `limit`).

use std::collections::BTreeMap;

use serde::Serialize;

use super::regions::{line, page_state, Node};
use super::status::{router_status, RouterStatus};
use crate::http::error::ApiError;
use crate::http::gateways::Api;

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
    let snap = api.serving.snapshot.load_full();
    let herd = api.serving.herd_view();
    let now = registry::now_ms();
    let max_load = api.config.load().max_load;
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
