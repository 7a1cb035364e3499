//! Why each node of a snapshot is, or is not, in the answer to one query: the rules of
//! `select.rs` named node by node, for operators (`GET /admin/explain`, `ctl explain`).
//!
//! The answer itself is [`select_budgeted`]'s, counting no client (weight 0) and never
//! walking the herd-adjusted orders (an unbounded scan): explaining records nothing a
//! request would see, and `/gateways` runs no code of this file. Every node left out is
//! then given the first rule of the selection that leaves it out, in the order the
//! selection applies them:
//!
//! 1. not indexed (`NodeEntry::eligible`): [`Reason::Draining`], [`Reason::Unhealthy`];
//! 2. no port for the protocol ([`Reason::NoPort`]) or no address of the family asked
//!    ([`Reason::NoAddress`]): `Keep::consider`, `overflow_fill`, `held_fill`; in a
//!    group an operator policy excludes for the client's network ([`Reason::Excluded`]);
//! 3. held by protect or in a demoted registry: offered after every live node
//!    (`held_fill`, [`Reason::Held`]), refused at a projected load of `max_load`
//!    ([`Reason::Full`]);
//! 4. a reported load at or above `max_load` ([`Reason::Full`]: the only refusal by load);
//! 5. the answer filled before the node's turn: its projected load is at `max_load`, so
//!    `overflow_fill` offers it after every other live node ([`Reason::ProjectedFull`]);
//!    its region comes later in the client's order, region then fallbacks then any
//!    ([`Reason::OtherRegion`]); it is in the answer's last region but on another ISP
//!    line than the client's ([`Reason::OtherIsp`]); or better-ranked nodes of its
//!    tier filled it ([`Reason::Outranked`]);
//! 6. in a group the policy caps and this answer holds back ([`Reason::Capped`]), or
//!    demoted for the client's network by its clients' reports ([`Reason::Demoted`]):
//!    offered after every other candidate, and the answer was full before its turn.

use serde::Serialize;

use registry::NodeState;

use super::entry::NodeEntry;
use super::select::{select_budgeted, Candidate, Chosen, Query, Rules};
use super::snapshot::Snapshot;

/// Why a node is not in the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// `state: draining`: takes no new clients.
    Draining,
    /// `healthy: false`: its agent's health check fails.
    Unhealthy,
    /// No port for the protocol asked.
    NoPort,
    /// No address of the family asked (`ip_version`).
    NoAddress,
    /// In a group an operator policy excludes for the client's network.
    Excluded,
    /// Reported load at or above `max_load` (a held node: its projected load).
    Full,
    /// Reported load below `max_load`, but the answers sent since its report are
    /// estimated to fill it: offered only after every other live node, and the answer
    /// was full before its turn.
    ProjectedFull,
    /// Held by protect (gone without a drain) or in a registry out of reach: offered
    /// only after every live node, and the answer was full before its turn.
    Held,
    /// In a region the client's order (its region, its fallbacks, any other) reaches
    /// after the answer was full.
    OtherRegion,
    /// In the answer's last region, but on another ISP line than the client's, which
    /// comes after the client's own line (and the multi-line nodes) there.
    OtherIsp,
    /// As eligible and in as good a region as the answer's nodes, but more loaded
    /// (or later in this router's order among equal loads).
    Outranked,
    /// In a group an operator policy caps for the client's network, held back in this
    /// answer: offered only after every other candidate, and the answer was full
    /// before its turn.
    Capped,
    /// Demoted for the client's network (its clients' connects to it fail): offered
    /// only after every other candidate, and the answer was full before its turn.
    Demoted,
}

impl Reason {
    /// Every reason, in the order the selection applies its rules.
    pub const ALL: [Reason; 13] = [
        Reason::Draining,
        Reason::Unhealthy,
        Reason::NoPort,
        Reason::NoAddress,
        Reason::Excluded,
        Reason::Full,
        Reason::ProjectedFull,
        Reason::Held,
        Reason::OtherRegion,
        Reason::OtherIsp,
        Reason::Outranked,
        Reason::Capped,
        Reason::Demoted,
    ];

    /// The name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Draining => "draining",
            Reason::Unhealthy => "unhealthy",
            Reason::NoPort => "no_port",
            Reason::NoAddress => "no_address",
            Reason::Excluded => "excluded",
            Reason::Full => "full",
            Reason::ProjectedFull => "projected_full",
            Reason::Held => "held",
            Reason::OtherRegion => "other_region",
            Reason::OtherIsp => "other_isp",
            Reason::Outranked => "outranked",
            Reason::Capped => "capped",
            Reason::Demoted => "demoted",
        }
    }
}

/// Where a node's region comes in the client's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    /// The client's region.
    Region,
    /// The client's region's fallback of this position (from 0).
    Fallback(usize),
    /// Any other region.
    Any,
}

/// The pass of the selection that offers a node: each comes after the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Pass {
    /// Projected load below `max_load`.
    Main,
    /// `overflow_fill`: reported load below `max_load`, projected not.
    Overflow,
    /// `held_fill`.
    Held,
}

/// One node of the snapshot, and what the selection made of it.
#[derive(Debug, Clone)]
pub struct Verdict<'a> {
    /// Its index in [`Snapshot::nodes`].
    pub index: usize,
    /// The node.
    pub entry: &'a NodeEntry,
    /// Its projected load (reported connections and answers since, over capacity).
    pub load: f64,
    /// Where its region comes in the client's order.
    pub tier: Tier,
    /// On another ISP line than the client's (see [`super::line::serves`]): after the
    /// client's own line in its region.
    pub other_isp: bool,
    /// Its place in the answer (from 0), or why it is not in it.
    pub outcome: Result<usize, Reason>,
}

/// The answer to one query and a verdict on every node of the snapshot.
#[derive(Debug, Clone)]
pub struct Explained<'a> {
    /// The candidates `/gateways` would answer, best first.
    pub chosen: Chosen,
    /// Every node, in the snapshot's order (by id).
    pub nodes: Vec<Verdict<'a>>,
}

/// The answer `snap` gives `query` under `rules`, without counting it against any
/// node, and the reason each other node is not in it.
pub fn explain<'a>(snap: &'a Snapshot, query: &Query<'_>, rules: Rules<'_>) -> Explained<'a> {
    // Weight 0 records no answer; an unbounded budget scans instead of walking (and
    // marking) the herd-adjusted orders that requests share.
    let chosen = select_budgeted(snap, query, rules, 0, usize::MAX);
    let tier_of = |region: &str| -> Tier {
        if query.region == Some(region) {
            return Tier::Region;
        }
        rules
            .fallbacks
            .iter()
            .position(|f| f == region)
            .map_or(Tier::Any, Tier::Fallback)
    };
    let pass_of = |e: &NodeEntry, load: f64| match () {
        _ if e.held => Pass::Held,
        _ if load >= rules.max_load => Pass::Overflow,
        _ => Pass::Main,
    };
    let other_isp = |e: &NodeEntry| !super::line::serves(e.record.isp.as_deref(), query.isp);
    // The worst candidate: where a node left out had to rank to get in.
    let last = chosen.last().map(|c: &Candidate| {
        let e = &snap.nodes[c.index];
        (pass_of(e, c.load), tier_of(&e.record.region), other_isp(e))
    });
    let full = chosen.len() >= query.count.clamp(1, super::MAX_COUNT);
    let nodes = snap
        .nodes
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            let load = entry.projected_load(&rules.herd);
            let tier = tier_of(&entry.record.region);
            let other_isp = other_isp(entry);
            let outcome = match chosen.iter().position(|c| c.index == index) {
                Some(rank) => Ok(rank),
                None => Err(reason(entry, query, rules, load, || {
                    let pass = pass_of(entry, load);
                    match last {
                        Some((last_pass, last_tier, last_other)) if full => {
                            if pass > last_pass {
                                by_pass(pass)
                            } else if pass == last_pass && tier > last_tier {
                                Reason::OtherRegion
                            } else if pass == last_pass
                                && tier == last_tier
                                && other_isp
                                && !last_other
                            {
                                Reason::OtherIsp
                            } else {
                                Reason::Outranked
                            }
                        }
                        // Room left, yet not offered: only `overflow_fill` reads a
                        // bounded number of nodes per index.
                        _ => by_pass(pass),
                    }
                })),
            };
            Verdict {
                index,
                entry,
                load,
                tier,
                other_isp,
                outcome,
            }
        })
        .collect();
    Explained { chosen, nodes }
}

/// The reason a node of this pass that ranked after the answer's last is left out.
fn by_pass(pass: Pass) -> Reason {
    match pass {
        Pass::Held => Reason::Held,
        Pass::Overflow => Reason::ProjectedFull,
        Pass::Main => Reason::Outranked,
    }
}

/// The first rule that keeps `e` (projected load `load`) out of any answer to
/// `query`; `ranked` when none does and it only ranked too low.
fn reason(
    e: &NodeEntry,
    query: &Query<'_>,
    rules: Rules<'_>,
    load: f64,
    ranked: impl FnOnce() -> Reason,
) -> Reason {
    let r = &e.record;
    if r.state == NodeState::Draining {
        Reason::Draining
    } else if !r.healthy {
        Reason::Unhealthy
    } else if r.ports.get(query.proto).is_none() {
        Reason::NoPort
    } else if r.addr_for(query.family).is_none() {
        Reason::NoAddress
    } else if query.steer.excludes(r) {
        Reason::Excluded
    } else if e.held && load >= rules.max_load {
        // `held_fill` refuses a held node by its projected load.
        Reason::Full
    } else if !e.held && e.reported_load >= rules.max_load {
        Reason::Full
    } else if query.steer.holds_back(r) {
        Reason::Capped
    } else if query.steer.demotes(r) {
        Reason::Demoted
    } else {
        ranked()
    }
}
