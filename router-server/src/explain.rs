//! Why a client gets the gateways it gets, or none: its address, network, guard
//! verdict and region as `/gateways` would find them, the answer, and the selection
//! rule that leaves out each other node ([`crate::schedule::explain`]), with the
//! invalid records beside them. Pure over what the router holds: the admin API's
//! `GET /admin/explain` (and `ctl explain` through it) reads it, no request does.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use registry::imbl::OrdMap;
use registry::record::IpFamily;
use registry::Proto;
use serde::Serialize;

use crate::guard::{Guard, Listed};
use crate::herd::HerdView;
use crate::identity::{network_key, RegionTable};
use crate::schedule::{self, Query, Reason, Rules, Snapshot, Steer, Tier, Verdict};
use crate::state::Reading;

/// What to explain: a client's address and what it would ask `/gateways`.
#[derive(Debug, Clone, PartialEq)]
pub struct Ask {
    /// The client's address (an IPv4-mapped IPv6 address counts as IPv4).
    pub ip: IpAddr,
    /// `region`, overriding the `[regions]` lookup as on `/gateways`.
    pub region: Option<String>,
    /// The client's ISP, reported back (the selection does not use it).
    pub isp: Option<String>,
    /// `proto`.
    pub proto: Proto,
    /// `count`.
    pub count: usize,
    /// `ip_version`.
    pub family: Option<IpFamily>,
}

/// What the router holds, as one explanation reads it.
pub struct Facts<'a> {
    /// What an answer reads (the snapshot, `max_load`, `[regions] fallbacks`, the
    /// network prefixes, the region table, the policies and the demotions).
    pub reading: Reading<'a>,
    /// Block and allow lists.
    pub guard: &'a Guard,
    /// Invalid records (and duplicate ids) by key, with the reason.
    pub invalid: &'a OrdMap<Arc<str>, String>,
    /// The herd counts as of now.
    pub herd: HerdView,
    /// This router's view is behind etcd by more than `max_lag_ms`.
    pub lagging: bool,
    /// Wall-clock milliseconds now (which block entries are in force).
    pub now_ms: u64,
}

/// What `/gateways` would do for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// 200 with the `answer`.
    Answered,
    /// 403 `blocked`.
    Blocked,
    /// 503 `no_gateways`: every node is in `passed_over` with a refusal.
    NoGateways,
    /// 503 `not_ready`: no snapshot yet.
    NotReady,
}

/// Where the region came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RegionFrom {
    /// The `region` parameter.
    Query,
    /// A `[regions] cidrs` network (`region_cidr`).
    Cidr,
    /// `[regions] default`.
    Default,
    /// None: candidates come from any region.
    None,
}

/// The guard's verdict on the address, without charging any budget.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuardVerdict {
    /// The block entry refusing it (the longest network), if one does.
    pub blocked: Option<Listed>,
    /// The allow-list network exempting it from budgets, if one does.
    pub allowed: Option<IpNet>,
}

/// A node of the answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Answered {
    /// Node id.
    pub id: String,
    /// Its region.
    pub region: String,
    /// The registry (data centre) holding it.
    pub dc: Option<String>,
    /// Its ISP, as its record says.
    pub isp: Option<String>,
    /// The address and port offered.
    pub ip: IpAddr,
    /// The port for the protocol.
    pub port: u16,
    /// Projected load: reported connections and answers since, over capacity.
    pub load: f64,
    /// Reported load: connections over capacity.
    pub reported_load: f64,
    /// Where its region comes in the client's order.
    pub tier: &'static str,
    /// Held by protect or from a registry out of reach.
    pub held: bool,
}

/// A node left out of the answer, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PassedOver {
    /// Node id.
    pub id: String,
    /// Its region.
    pub region: String,
    /// The registry (data centre) holding it.
    pub dc: Option<String>,
    /// Its ISP, as its record says.
    pub isp: Option<String>,
    /// The selection rule that leaves it out.
    pub reason: Reason,
    /// The reason in words, with the numbers.
    pub detail: String,
    /// Projected load.
    pub load: f64,
    /// Reported load.
    pub reported_load: f64,
    /// Where its region comes in the client's order.
    pub tier: &'static str,
}

/// A record the router does not serve.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Invalid {
    /// Its key (prefixed `NAME:` when the router follows several registries).
    pub key: String,
    /// The node id, the key's last segment.
    pub id: String,
    /// `binding` (outside its node's binding), `duplicate` (an id another registry
    /// serves) or `record` (breaks the record contract).
    pub kind: &'static str,
    /// The router's reason.
    pub reason: String,
}

/// The explanation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    /// The address explained.
    pub ip: IpAddr,
    /// Its network for the herd budget (`[edge] network_prefix_v4/v6`).
    pub network: IpNet,
    /// Its network for the request budget (`[rate_limit] ipv4/ipv6_prefix_len`).
    pub request_network: IpNet,
    /// Block and allow lists.
    pub guard: GuardVerdict,
    /// The client's region, if any.
    pub region: Option<String>,
    /// The operator policy for the client's network, if one is in force.
    pub policy: Option<String>,
    /// Where it came from.
    pub region_from: RegionFrom,
    /// The `[regions] cidrs` network that gave it.
    pub region_cidr: Option<IpNet>,
    /// The region's fallbacks, in order (then any region).
    pub fallbacks: Vec<String>,
    /// The client's ISP: the one given, else its network's (`[regions] isp_cidrs`,
    /// then the ASN database); within each region its line comes first.
    pub isp: Option<String>,
    /// The protocol asked for.
    pub proto: Proto,
    /// Candidates asked for.
    pub count: usize,
    /// The address family asked for (4 or 6).
    pub ip_version: Option<u8>,
    /// What `/gateways` would answer.
    pub outcome: Outcome,
    /// The snapshot's registry revision.
    pub revision: Option<i64>,
    /// The answer would be marked stale.
    pub stale: bool,
    /// `max_load`.
    pub max_load: f64,
    /// The candidates, best first (also when the guard would block the client).
    pub answer: Vec<Answered>,
    /// Every other node, in id order.
    pub passed_over: Vec<PassedOver>,
    /// Records not served at all.
    pub invalid: Vec<Invalid>,
}

/// Explains what `/gateways` would do for `ask` with what `facts` hold. Counts no
/// answer and charges no budget.
pub fn explain(ask: &Ask, facts: &Facts<'_>) -> Explanation {
    let cfg = facts.reading.config;
    let ip = ask.ip.to_canonical();
    let (region, region_from, region_cidr) = region_of(ask, ip, facts.reading.regions);
    let fallbacks: &[String] = region
        .as_deref()
        .and_then(|r| cfg.regions.fallbacks.get(r))
        .map_or(&[], Vec::as_slice);
    let guard = guard_verdict(facts.guard, ip, facts.now_ms);
    // The ISP as `/gateways` finds it: the parameter, else the client's network's.
    let isp = ask
        .isp
        .clone()
        .or_else(|| facts.reading.regions.isp(ip).map(str::to_string));
    // The policy as the client's next answer would meet it, not counted.
    let policy = facts
        .reading
        .policies
        .for_network(region.as_deref(), isp.as_deref());
    let demoted = facts
        .reading
        .demotions
        .for_network(region.as_deref(), isp.as_deref());
    let query = Query {
        steer: policy.map_or(Steer::NONE, |p| p.peek()).demoting(demoted),
        proto: ask.proto,
        count: ask.count,
        region: region.as_deref(),
        isp: isp.as_deref(),
        family: ask.family,
    };
    let rules = Rules {
        max_load: cfg.max_load,
        fallbacks,
        herd: facts.herd,
    };
    let (answer, passed_over) = match facts.reading.snapshot {
        Some(snap) => nodes(snap, &query, rules),
        None => (Vec::new(), Vec::new()),
    };
    let outcome = match () {
        _ if facts.reading.snapshot.is_none() => Outcome::NotReady,
        _ if guard.blocked.is_some() => Outcome::Blocked,
        _ if answer.is_empty() => Outcome::NoGateways,
        _ => Outcome::Answered,
    };
    let stale = facts.reading.snapshot.is_some_and(|s| s.stale)
        || facts.lagging
        || answer.iter().any(|a| a.held);
    let prefix = |(v4, v6): (u8, u8)| {
        let len = if ip.is_ipv4() { v4 } else { v6 };
        IpNet::new(network_key(ip, (v4, v6)), len).unwrap_or_else(|_| IpNet::from(ip))
    };
    let rl = &cfg.rate_limit;
    Explanation {
        ip,
        network: prefix((cfg.edge.network_prefix_v4, cfg.edge.network_prefix_v6)),
        request_network: prefix((rl.ipv4_prefix_len, rl.ipv6_prefix_len)),
        guard,
        region_from,
        region_cidr,
        fallbacks: fallbacks.to_vec(),
        policy: policy.map(|p| p.name.clone()),
        isp,
        proto: ask.proto,
        count: ask.count,
        ip_version: ask.family.map(|f| if f == IpFamily::V4 { 4 } else { 6 }),
        outcome,
        revision: facts.reading.snapshot.map(|s| s.revision),
        stale,
        max_load: cfg.max_load,
        answer,
        passed_over,
        invalid: invalid(facts.invalid),
        region,
    }
}

/// The region as `/gateways` finds it: the parameter, else the longest `[regions]
/// cidrs` network, else the default.
fn region_of(
    ask: &Ask,
    ip: IpAddr,
    table: &RegionTable,
) -> (Option<String>, RegionFrom, Option<IpNet>) {
    if let Some(r) = &ask.region {
        return (Some(r.clone()), RegionFrom::Query, None);
    }
    if let Some((net, r)) = table.matching(ip) {
        return (Some(r.to_string()), RegionFrom::Cidr, Some(net));
    }
    match table.default_region() {
        Some(r) => (Some(r.to_string()), RegionFrom::Default, None),
        None => (None, RegionFrom::None, None),
    }
}

/// The block entry and allow network that apply to `ip` (the longest of each).
fn guard_verdict(guard: &Guard, ip: IpAddr, now_ms: u64) -> GuardVerdict {
    let lists = guard.lists();
    let listing = guard.listing(now_ms);
    let blocked = lists.blocked(ip).map(|reason| {
        listing
            .blocks
            .iter()
            .filter(|b| b.cidr.contains(&ip))
            .max_by_key(|b| b.cidr.prefix_len())
            .cloned()
            // Expired between the two reads: the lists still name the reason.
            .unwrap_or_else(|| Listed {
                cidr: IpNet::from(ip),
                source: "unknown",
                reason: reason.to_string(),
                by: String::new(),
                expires_ms: 0,
            })
    });
    let allowed = lists
        .allowed(ip)
        .then(|| {
            listing
                .allow
                .iter()
                .filter(|n| n.contains(&ip))
                .max_by_key(|n| n.prefix_len())
                .copied()
        })
        .flatten();
    GuardVerdict { blocked, allowed }
}

/// The answer and the nodes left out, from the snapshot.
fn nodes(snap: &Snapshot, query: &Query<'_>, rules: Rules<'_>) -> (Vec<Answered>, Vec<PassedOver>) {
    let x = schedule::explain(snap, query, rules);
    let answer = x
        .chosen
        .iter()
        .map(|c| {
            let e = &snap.nodes[c.index];
            let r = &e.record;
            let v = &x.nodes[c.index];
            Answered {
                id: r.id.clone(),
                region: r.region.clone(),
                dc: r.dc.as_deref().map(str::to_string),
                isp: r.isp.clone(),
                ip: c.ip,
                port: c.port,
                load: c.load,
                reported_load: r.load(),
                tier: tier_name(v.tier),
                held: e.held,
            }
        })
        .collect();
    let last = x.chosen.last().map(|c| &x.nodes[c.index]);
    let passed = x
        .nodes
        .iter()
        .filter_map(|v| {
            let reason = v.outcome.err()?;
            let r = &v.entry.record;
            Some(PassedOver {
                id: r.id.clone(),
                region: r.region.clone(),
                dc: r.dc.as_deref().map(str::to_string),
                isp: r.isp.clone(),
                reason,
                detail: detail(v, reason, query, rules, last),
                load: v.load,
                reported_load: r.load(),
                tier: tier_name(v.tier),
            })
        })
        .collect();
    (answer, passed)
}

fn tier_name(t: Tier) -> &'static str {
    match t {
        Tier::Region => "region",
        Tier::Fallback(_) => "fallback",
        Tier::Any => "any",
    }
}

/// Where a tier comes in the client's order, in words.
fn tier_words(t: Tier) -> String {
    match t {
        Tier::Region => "the client's region".into(),
        Tier::Fallback(k) => format!("fallback {} of the client's region", k + 1),
        Tier::Any => "another region (after the client's region and its fallbacks)".into(),
    }
}

/// `reason` in words, with the node's numbers; `last` is the answer's last node.
fn detail(
    v: &Verdict<'_>,
    reason: Reason,
    query: &Query<'_>,
    rules: Rules<'_>,
    last: Option<&Verdict<'_>>,
) -> String {
    let r = &v.entry.record;
    let (load, reported, max) = (v.load, r.load(), rules.max_load);
    let last_load = last.map_or(0.0, |l| l.load);
    match reason {
        Reason::Draining => "state draining: takes no new clients".into(),
        Reason::Unhealthy => "healthy false: its agent's health check fails".into(),
        Reason::NoPort => format!("no {} port", query.proto.as_str()),
        Reason::NoAddress => match query.family {
            Some(IpFamily::V6) => "no IPv6 address".into(),
            _ => "no IPv4 address".into(),
        },
        Reason::Full if v.entry.held => {
            format!("held, and its projected load {load:.3} is at or above max_load {max}")
        }
        Reason::Full => format!("reported load {reported:.3} is at or above max_load {max}"),
        Reason::ProjectedFull => format!(
            "projected load {load:.3} (reported {reported:.3}) is at or above max_load {max}: \
             offered after every other live node, and the answer was full first"
        ),
        Reason::Held => "held (it left without a drain, or its registry is out of reach): \
             offered after every live node, and the answer was full first"
            .into(),
        Reason::Capped => "in a group the policy caps for this client's network, held back in \
             this answer: offered after every other candidate, and the answer was full first"
            .into(),
        Reason::Demoted => "demoted for this client's network (its clients' connects to it \
             fail): offered after every other candidate, and the answer was full first"
            .into(),
        Reason::Excluded => format!(
            "in {}, which the policy for this client's network excludes",
            query
                .steer
                .exclude
                .iter()
                .find(|g| g.contains(r))
                .map_or_else(|| "-".to_string(), ToString::to_string)
        ),
        Reason::OtherIsp => format!(
            "on ISP line {}, not the client's: the client's line and the multi-line nodes of its region come first",
            v.entry.record.isp.as_deref().unwrap_or("-")
        ),
        Reason::OtherRegion => format!(
            "region {} is {}: the answer was full from regions that come first",
            r.region,
            tier_words(v.tier)
        ),
        Reason::Outranked => format!(
            "projected load {load:.3}; the answer's {} nodes rank first (its last at {last_load:.3})",
            query.count
        ),
    }
}

/// The invalid records, with their node id and kind.
fn invalid(map: &OrdMap<Arc<str>, String>) -> Vec<Invalid> {
    map.iter()
        .map(|(key, reason)| Invalid {
            key: key.to_string(),
            id: key.rsplit('/').next().unwrap_or(key).to_string(),
            kind: if reason.starts_with("binding:") {
                "binding"
            } else if reason.starts_with("duplicate node id") {
                "duplicate"
            } else {
                "record"
            },
            reason: reason.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests;
