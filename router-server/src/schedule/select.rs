//! Selection: the best candidates of a snapshot for one query, by region tier, then
//! projected load, then the overflow the estimate alone put last, then held nodes.

use std::cell::Cell;
use std::net::IpAddr;

use registry::record::IpFamily;
use registry::{NodeRecord, Proto};

use crate::herd::HerdView;

use super::index::{Group, Index};
use super::line;
use super::order::Walker;
use super::snapshot::Snapshot;
use super::steer::Steer;

/// What a client asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Query<'a> {
    /// Protocol the client speaks.
    pub proto: Proto,
    /// Candidates wanted (1 to [`MAX_COUNT`]; `/gateways` allows 1-10).
    pub count: usize,
    /// The client's region, if known.
    pub region: Option<&'a str>,
    /// The client's ISP, if known: within each region, the nodes that serve it come
    /// first (see [`super::line`]).
    pub isp: Option<&'a str>,
    /// The address family the client can reach, if restricted.
    pub family: Option<IpFamily>,
    /// What operator policy decides for the client's network (see [`Steer`]).
    pub steer: Steer<'a>,
}

/// One chosen gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Index into [`Snapshot::nodes`].
    pub index: usize,
    /// The address for the requested family.
    pub ip: IpAddr,
    /// The port for the requested protocol.
    pub port: u16,
    /// Projected load when chosen.
    pub load: f64,
    /// The node's rank among equally loaded ones.
    pub tie: u64,
}

/// The candidates of one answer: the default three live on the stack.
pub type Chosen = smallvec::SmallVec<[Candidate; 3]>;

/// The scheduling parameters from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    /// Nodes at or above this projected load are skipped.
    pub max_load: f64,
    /// Fallback regions for the client's region.
    pub fallbacks: &'a [String],
    /// The herd counts as of this request.
    pub herd: HerdView,
}

/// The most candidates one answer can hold (`/gateways` allows 10; a DNS answer more).
pub const MAX_COUNT: usize = crate::config::MAX_CANDIDATES;

/// Up to `query.count` distinct eligible nodes, best first, and counts one client
/// against the first of them.
pub fn select(snap: &Snapshot, query: &Query<'_>, rules: Rules<'_>) -> Chosen {
    select_weighted(snap, query, rules, 1)
}

/// [`select`], counting `weight` clients against the first candidate: a DNS answer
/// reaches every client behind the resolver that asked.
pub fn select_weighted(
    snap: &Snapshot,
    query: &Query<'_>,
    rules: Rules<'_>,
    weight: u64,
) -> Chosen {
    select_budgeted(snap, query, rules, weight, SCAN_BUDGET)
}

/// [`select_weighted`], walking the herd-adjusted order after `budget` nodes of a scan
/// (benchmarks and tests compare the two ways).
pub fn select_budgeted(
    snap: &Snapshot,
    query: &Query<'_>,
    rules: Rules<'_>,
    weight: u64,
    budget: usize,
) -> Chosen {
    let fills = Fills {
        want: query.count.clamp(1, MAX_COUNT),
        budget,
        tiers: Tiers {
            first: query.region,
            fallbacks: rules.fallbacks,
        },
        uncounted: Cell::new(weight),
    };
    let mut out = Chosen::new();
    fill(snap, query, rules, &fills, &mut out);
    // Nodes held back or demoted for the client's network only when the answer is
    // short without them.
    if out.len() < fills.want && query.steer.has_last() {
        let last = Query {
            steer: query.steer.with_last(),
            ..query.clone()
        };
        fill(snap, &last, rules, &fills, &mut out);
    }
    // Unless the walk that chose it counted them (see [`Order::walk`]).
    if let Some(first) = out.first() {
        rules
            .herd
            .record_n(&snap.nodes[first.index].assigned, fills.uncounted.take());
    }
    out
}

/// What the fills of one answer share.
struct Fills<'a> {
    /// Candidates wanted.
    want: usize,
    /// Nodes a scan reads before the index's herd-adjusted order is walked instead.
    budget: usize,
    tiers: Tiers<'a>,
    /// The clients still to count against the answer's first candidate: taken (left
    /// 0) by whoever counts them.
    uncounted: Cell<u64>,
}

/// Adds to `out`, up to `want`, what `query` admits: a policy's group for this answer
/// first, then the rest, each with projected room; then the overflow; then held nodes.
fn fill(snap: &Snapshot, query: &Query<'_>, rules: Rules<'_>, f: &Fills<'_>, out: &mut Chosen) {
    let (want, tiers) = (f.want, f.tiers);
    let rest;
    let query = match query.steer.first {
        Some(_) => {
            main_pass(snap, query, rules, f, out);
            rest = Query {
                steer: query.steer.rest(),
                ..query.clone()
            };
            &rest
        }
        None => query,
    };
    main_pass(snap, query, rules, f, out);
    if out.len() < want {
        overflow_fill(snap, query, rules, want, tiers, out);
    }
    if out.len() < want && !snap.held.is_empty() {
        held_fill(snap, query, rules, want, tiers, out);
    }
}

/// Adds to `out`, up to `want`, the best nodes with projected room that `query`
/// admits: by region tier (the client's region, its fallbacks, any other), the
/// client's line first in each, then load.
fn main_pass(
    snap: &Snapshot,
    query: &Query<'_>,
    rules: Rules<'_>,
    f: &Fills<'_>,
    out: &mut Chosen,
) {
    let (want, tiers) = (f.want, f.tiers);
    let ordered = query
        .region
        .into_iter()
        .chain(rules.fallbacks.iter().map(String::as_str));
    let tier = |group: &Group, skip: Option<Tiers<'_>>, out: &mut Chosen| {
        // The client's line first, then the group's other lines.
        let line = group.line(query.isp).into_iter();
        for lists in line.chain([&group.all]) {
            if out.len() >= want {
                return;
            }
            best_of(snap, lists.get(query.proto), query, rules, f, skip, out);
        }
    };
    for (k, region) in ordered.enumerate() {
        if out.len() >= want {
            return;
        }
        if tiers.seen_before(k, region) {
            continue;
        }
        if let Some(group) = snap.by_region.get(region) {
            tier(group, None, out);
        }
    }
    if out.len() < want {
        tier(&snap.all, Some(tiers), out);
    }
}

/// Nodes per index that [`overflow_fill`] considers, least reported load first.
pub const OVERFLOW_SCAN: usize = 64;

/// Fills the rest of an answer from live nodes whose *reported* load leaves room but
/// whose projected load does not: the herd count is an estimate of clients that have
/// not connected yet (and some never will: an answer costs an asker nothing), so it
/// may put a node last, never out of the answer. Only reported load refuses.
///
/// By region tier (the client's region, its fallbacks in order, any other), the
/// client's line before the others in each, then projected load; each index is read
/// up to [`OVERFLOW_SCAN`] nodes by reported load, so the cost stays bounded while a
/// region is projected full.
fn overflow_fill(
    snap: &Snapshot,
    query: &Query<'_>,
    rules: Rules<'_>,
    want: usize,
    tiers: Tiers<'_>,
    out: &mut Chosen,
) {
    let mut found: Vec<(Rank, Candidate)> = Vec::new();
    let mut tier_of_index = |tier: usize, index: Index<'_>, skip: Option<Tiers<'_>>| {
        for &i in index.list.iter().take(OVERFLOW_SCAN) {
            let i = i as usize;
            let e = &snap.nodes[i];
            if e.reported_load >= rules.max_load {
                break;
            }
            let r = &e.record;
            if skip.is_some_and(|t| t.contains(&r.region))
                || !query.steer.admits(r)
                || out.iter().any(|c| c.index == i)
                || found.iter().any(|(_, c)| c.index == i)
            {
                continue;
            }
            let (Some(ip), Some(port)) = (r.addr_for(query.family), r.ports.get(query.proto))
            else {
                continue;
            };
            let load = e.projected_load(&rules.herd);
            found.push((
                (tier, !line::serves(r.isp.as_deref(), query.isp)),
                Candidate {
                    index: i,
                    ip,
                    port,
                    load,
                    tie: e.tie,
                },
            ));
        }
    };
    let ordered = query
        .region
        .into_iter()
        .chain(rules.fallbacks.iter().map(String::as_str));
    let mut tier = 0;
    for (k, region) in ordered.enumerate() {
        if tiers.seen_before(k, region) {
            continue;
        }
        if let Some(group) = snap.by_region.get(region) {
            for lists in group.line(query.isp).into_iter().chain([&group.all]) {
                tier_of_index(tier, lists.get(query.proto), None);
            }
        }
        tier += 1;
    }
    let group = &snap.all;
    for lists in group.line(query.isp).into_iter().chain([&group.all]) {
        tier_of_index(tier, lists.get(query.proto), Some(tiers));
    }
    take_best(found, want, out);
}

/// Where a node of a fill ranks before its load: its region's tier, then whether it
/// is on another line than the client's.
type Rank = (usize, bool);

/// Appends the best of `found` to `out`, up to `want` in all: by rank, then load, then
/// tie rank.
fn take_best(mut found: Vec<(Rank, Candidate)>, want: usize, out: &mut Chosen) {
    found.sort_by(|(ta, a), (tb, b)| {
        ta.cmp(tb)
            .then(a.load.total_cmp(&b.load))
            .then((a.tie, a.index).cmp(&(b.tie, b.index)))
    });
    let room = want - out.len();
    out.extend(found.into_iter().take(room).map(|(_, c)| c));
}

/// Fills the rest of an answer from the nodes protect holds, after every live
/// candidate: by region tier (the client's region, its fallbacks in order, any other),
/// the client's line first in each, then least loaded. A held node may be dead; it is only worth a try when no live
/// node can take the client.
fn held_fill(
    snap: &Snapshot,
    query: &Query<'_>,
    rules: Rules<'_>,
    want: usize,
    tiers: Tiers<'_>,
    out: &mut Chosen,
) {
    let tier = |region: &str| -> usize {
        if tiers.first == Some(region) {
            return 0;
        }
        tiers
            .fallbacks
            .iter()
            .position(|f| f == region)
            .map_or(usize::MAX, |k| k + 1)
    };
    let mut found: Vec<(Rank, Candidate)> = Vec::new();
    for &i in &snap.held {
        let i = i as usize;
        let e = &snap.nodes[i];
        let load = e.projected_load(&rules.herd);
        if load >= rules.max_load {
            continue;
        }
        let r = &e.record;
        if !query.steer.admits(r) || out.iter().any(|c| c.index == i) {
            continue;
        }
        let (Some(ip), Some(port)) = (r.addr_for(query.family), r.ports.get(query.proto)) else {
            continue;
        };
        found.push((
            (tier(&r.region), !line::serves(r.isp.as_deref(), query.isp)),
            Candidate {
                index: i,
                ip,
                port,
                load,
                tie: e.tie,
            },
        ));
    }
    take_best(found, want, out);
}

/// The regions a query tries before "any region": its own, then its fallbacks.
/// Borrowed, so a request allocates nothing to remember them.
#[derive(Debug, Clone, Copy)]
struct Tiers<'a> {
    first: Option<&'a str>,
    fallbacks: &'a [String],
}

impl Tiers<'_> {
    fn contains(&self, region: &str) -> bool {
        self.first == Some(region) || self.fallbacks.iter().any(|f| f == region)
    }

    /// True when the `k`-th region of the order already came up earlier in it.
    fn seen_before(&self, k: usize, region: &str) -> bool {
        match (self.first, k) {
            (Some(_), 0) => false,
            (Some(first), k) => {
                first == region || self.fallbacks[..k - 1].iter().any(|f| f == region)
            }
            (None, k) => self.fallbacks[..k].iter().any(|f| f == region),
        }
    }
}

/// Nodes a request reads in reported-load order before it walks the index's
/// herd-adjusted order instead. A quiet request reads `count` + 1.
pub const SCAN_BUDGET: usize = 32;

/// Appends the best of `index` (excluding the regions of `skip` and nodes already
/// chosen) to `out`, up to `f.want` in total, least loaded first.
fn best_of(
    snap: &Snapshot,
    index: Index<'_>,
    query: &Query<'_>,
    rules: Rules<'_>,
    f: &Fills<'_>,
    skip: Option<Tiers<'_>>,
    out: &mut Chosen,
) {
    let budget = f.budget;
    let mut keep = Keep {
        snap,
        query,
        rules,
        skip,
        start: out.len(),
        room: f.want - out.len(),
        // The first index of an answer chooses its first candidate.
        uncounted: out.is_empty().then_some(&f.uncounted),
        out,
    };
    // Mid-burst (a scan of this index ran past its budget lately), the order at once.
    if budget == usize::MAX || !index.order.levelled(&rules.herd) {
        if keep.scan(index.list, budget) {
            return;
        }
        // A levelled burst: the reported loads no longer tell where to stop.
        index.order.mark_levelled(&rules.herd);
        keep.out.truncate(keep.start);
    }
    if !index.order.walk(snap, index.list, &rules.herd, &mut keep) {
        keep.out.truncate(keep.start);
        keep.scan(index.list, usize::MAX);
    }
}

/// The candidates one index adds to an answer: `out[start..]`, at most `room` of them.
struct Keep<'a, 'q> {
    snap: &'a Snapshot,
    query: &'a Query<'q>,
    rules: Rules<'a>,
    skip: Option<Tiers<'a>>,
    start: usize,
    room: usize,
    /// The answer's [`Fills::uncounted`], when this index chooses its first candidate.
    uncounted: Option<&'a Cell<u64>>,
    out: &'a mut Chosen,
}

impl Walker for Keep<'_, '_> {
    fn done(&self, key: f64, tie: u64, i: u32) -> bool {
        key >= self.rules.max_load || !self.may_beat(key, tie, i as usize)
    }

    fn visit(&mut self, i: u32, tie: u64, record: &NodeRecord, load: f64) {
        self.consider(i as usize, tie, record, load);
    }

    fn first(&self) -> Option<(u32, u64)> {
        self.uncounted?;
        let first = self.out.first()?;
        Some((first.index as u32, first.tie))
    }

    fn take_uncounted(&mut self) -> u64 {
        self.uncounted.map_or(0, Cell::take)
    }
}

impl Keep<'_, '_> {
    /// Whether a node at `load` (or any load above it) could still be kept.
    fn may_beat(&self, load: f64, tie: u64, i: usize) -> bool {
        let full = self.out.len() - self.start == self.room;
        !full || beats(load, tie, i, &self.out[self.out.len() - 1])
    }

    /// Walks `list` by reported load. False when it read `budget` nodes and could not
    /// stop yet.
    fn scan(&mut self, list: &[u32], budget: usize) -> bool {
        for (n, &i) in list.iter().enumerate() {
            let i = i as usize;
            let e = &self.snap.nodes[i];
            // `list` is sorted by reported load (then tie rank), and the reported load
            // never exceeds the projected one: once a node's reported load cannot beat
            // the worst kept candidate (or reaches `max_load`), no later node can either.
            if e.reported_load >= self.rules.max_load || !self.may_beat(e.reported_load, e.tie, i) {
                return true;
            }
            if n == budget {
                return false;
            }
            // The herd counter is only read for contenders.
            let load = e.projected_load(&self.rules.herd);
            self.consider(i, e.tie, &e.record, load);
        }
        true
    }

    /// Keeps node `i` (tie rank `tie`, reporting `r`) at projected `load` if it serves
    /// the query and ranks among the best so far.
    fn consider(&mut self, i: usize, tie: u64, r: &NodeRecord, load: f64) {
        if load >= self.rules.max_load || !self.may_beat(load, tie, i) {
            return;
        }
        if self.skip.is_some_and(|t| t.contains(&r.region)) || !self.query.steer.admits(r) {
            return;
        }
        if self.out[..self.start].iter().any(|c| c.index == i) {
            return;
        }
        let Some(ip) = r.addr_for(self.query.family) else {
            return;
        };
        let Some(port) = r.ports.get(self.query.proto) else {
            return;
        };
        let cand = Candidate {
            index: i,
            ip,
            port,
            load,
            tie,
        };
        // Insertion into the kept tail, ordered by load then tie rank.
        let start = self.start;
        let pos = start + self.out[start..].partition_point(|c| !beats(load, tie, i, c));
        if self.out.len() - start == self.room {
            self.out.pop();
        }
        self.out.insert(pos, cand);
    }
}

/// True when a node at `load` with tie rank `tie` and index `i` ranks before candidate
/// `c`: less loaded, or equally loaded and earlier in the router's tie order.
fn beats(load: f64, tie: u64, i: usize, c: &Candidate) -> bool {
    load < c.load || (load == c.load && (tie, i) < (c.tie, c.index))
}
