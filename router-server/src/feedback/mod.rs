//! What clients see, fed back: the connect outcomes clients report (`POST /outcomes`,
//! sent by the SDK to the router it asks next), judged per client network and
//! gateway, and the gateways demoted for a network whose clients cannot reach them.
//!
//! * **A network** is the client's region and ISP as the router identifies them from
//!   its address (`identity`), never from anything the report says: a client can only
//!   speak for its own network.
//! * **This router's window.** Each outcome of a gateway the router's view holds is
//!   counted for (network, gateway) in the current tick (`share_ms` long); the last
//!   `window_ms` of ticks are kept. A network adds at most `max_reports_per_network`
//!   outcomes to a window and the router keeps at most `max_pairs` pairs: beyond them
//!   outcomes are dropped and counted (`router_outcomes_total{result="over_bound"}`).
//!   So a liar moves only its own network's view, and at a bounded cost.
//! * **Shared.** Every tick each router publishes its window to `P/outcomes/{id}`
//!   (under a lease of its own, so a dead router's window leaves with it) and reads
//!   the others' ([`share`]). Each router judges the sum, so they all come to the same
//!   decision within a tick or two.
//! * **Judged.** A pair with at least `min_reports` outcomes whose share of successes
//!   is below `demote_below` is demoted for `hold_ms`: the network's answers name the
//!   gateway only after every other candidate (`schedule::Steer::demoted`), over
//!   HTTP, HTTPDNS and DNS alike. When the hold ends it is answered again; if its
//!   clients still fail, it is demoted again soon after, for twice as long (at most
//!   `max_hold_ms`). A hold is longer than a window and two ticks, so the failures
//!   that caused a demotion have left every router's window when it ends.
//! * **Shown** on `/ops` (per network) and in metrics (`router_demoted_gateways`).

mod share;
#[cfg(test)]
mod tests;
mod window;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use gateway_api::Outcome;
use serde::Serialize;
use tokio::time::Instant;
use tracing::info;

use crate::config::FeedbackConfig;
use crate::metrics::{FeedbackMetrics, NetworkLabels, OutcomeLabels};

pub use share::{run, ShareValue, MAX_SHARED_PAIRS, MAX_SHARE_BYTES};
pub use window::{Counts, Window};

/// The most gateways demoted for one network at once: what an answer scans.
pub const MAX_DEMOTED_PER_NETWORK: usize = 64;

/// A client network: its region and ISP as the router identifies them (`""`: none).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Network {
    /// The client's region.
    pub region: Arc<str>,
    /// The client's ISP.
    pub isp: Arc<str>,
}

impl Network {
    /// The network of a client of `region` and `isp`.
    pub fn of(region: Option<&str>, isp: Option<&str>) -> Network {
        Network {
            region: Arc::from(region.unwrap_or("")),
            isp: Arc::from(isp.unwrap_or("")),
        }
    }
}

/// A gateway as one client network sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pair {
    /// The clients' network.
    pub network: Network,
    /// The gateway's id.
    pub gateway: Arc<str>,
}

/// What became of the outcomes of one report.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Taken {
    /// Counted.
    pub accepted: u64,
    /// Of a gateway the router's view does not hold.
    pub unknown: u64,
    /// Over the network's share of the window, or a new pair over `max_pairs`.
    pub over_bound: u64,
}

/// A pair's demotion, current or past.
#[derive(Debug, Clone, Copy)]
struct Hold {
    /// When it ends; `None` once it has.
    until: Option<Instant>,
    /// Demotions in a row, each soon after the last one ended.
    strikes: u32,
    /// When it began, or when it ended once it has.
    since: Instant,
    /// How long it lasts.
    hold: Duration,
}

/// The gateways demoted for each network, as answers read them.
#[derive(Debug, Default)]
pub struct Demotions {
    /// By region, then ISP (`""`: none).
    by_region: HashMap<String, HashMap<String, Vec<Arc<str>>>>,
}

impl Demotions {
    /// The gateways demoted for clients of `region` and `isp`; nothing is allocated.
    pub fn for_network(&self, region: Option<&str>, isp: Option<&str>) -> &[Arc<str>] {
        if self.by_region.is_empty() {
            return &[];
        }
        self.by_region
            .get(region.unwrap_or(""))
            .and_then(|m| m.get(isp.unwrap_or("")))
            .map_or(&[], Vec::as_slice)
    }
}

/// One demotion in force, for `/ops`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Demoted {
    /// The clients' region (`""`: none).
    pub region: String,
    /// The clients' ISP (`""`: none).
    pub isp: String,
    /// The gateway's id.
    pub gateway: String,
    /// The outcomes that decided it, all routers together.
    pub ok: u64,
    /// The failed ones.
    pub failed: u64,
    /// Milliseconds until it ends.
    pub remaining_ms: u64,
    /// Demotions in a row before this one.
    pub strikes: u32,
}

#[derive(Debug, Default)]
struct Inner {
    /// The current tick.
    tick: u64,
    /// This router's counts per pair.
    own: HashMap<Pair, Window>,
    /// This router's outcomes per network, for `max_reports_per_network`.
    per_network: HashMap<Network, Window>,
    /// Demotions in force, and those that ended lately (for their strikes).
    holds: HashMap<Pair, Hold>,
    /// The counts last judged, all routers together, of the pairs in `holds`.
    judged: HashMap<Pair, Counts>,
}

/// This router's feedback: its window, the demotions, their publication.
#[derive(Default)]
pub struct Feedback {
    inner: Mutex<Inner>,
    /// What answers read (in an `Arc` so that request threads can keep a cache of it:
    /// see [`crate::state::Serving::read`]).
    pub demotions: Arc<ArcSwap<Demotions>>,
}

/// The ticks a window of `cfg` holds.
fn ticks(cfg: &FeedbackConfig) -> u64 {
    cfg.window_ms.div_ceil(cfg.share_ms.max(1)).max(1)
}

impl Feedback {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts `outcomes`, reported by a client of `network`, of the gateways `known`
    /// accepts, within `cfg`'s bounds.
    pub fn record(
        &self,
        network: &Network,
        outcomes: &[Outcome],
        known: impl Fn(&str) -> bool,
        cfg: &FeedbackConfig,
        metrics: &FeedbackMetrics,
    ) -> Taken {
        let mut taken = Taken::default();
        let w = ticks(cfg);
        let mut i = self.lock();
        let tick = i.tick;
        let mut room = {
            let used = i
                .per_network
                .get(network)
                .map_or(0, |win| win.sum(tick, w).total());
            cfg.max_reports_per_network.saturating_sub(used)
        };
        for o in outcomes {
            if !known(&o.gateway) {
                taken.unknown += 1;
                continue;
            }
            let pair = Pair {
                network: network.clone(),
                gateway: Arc::from(o.gateway.as_str()),
            };
            if room == 0 || (!i.own.contains_key(&pair) && i.own.len() >= cfg.max_pairs) {
                taken.over_bound += 1;
                continue;
            }
            room -= 1;
            let c = if o.result.is_ok() {
                Counts { ok: 1, failed: 0 }
            } else {
                Counts { ok: 0, failed: 1 }
            };
            i.own.entry(pair).or_default().add(tick, w, c);
            taken.accepted += 1;
        }
        if taken.accepted > 0 {
            let c = Counts {
                ok: taken.accepted,
                failed: 0,
            };
            i.per_network
                .entry(network.clone())
                .or_default()
                .add(tick, w, c);
        }
        drop(i);
        for (result, n) in [
            ("accepted", taken.accepted),
            ("unknown_gateway", taken.unknown),
            ("over_bound", taken.over_bound),
        ] {
            if n > 0 {
                metrics
                    .outcomes
                    .get_or_create(&OutcomeLabels { result })
                    .inc_by(n);
            }
        }
        taken
    }

    /// Ends the current tick at `now`: judges this router's window with `peers'`
    /// windows, publishes the demotions, and returns this router's window (the pairs
    /// with outcomes, most outcomes first) for the others.
    pub fn tick(
        &self,
        now: Instant,
        cfg: &FeedbackConfig,
        peers: impl IntoIterator<Item = (Pair, Counts)>,
        metrics: &FeedbackMetrics,
    ) -> Vec<(Pair, Counts)> {
        let w = ticks(cfg);
        let mut i = self.lock();
        let tick = i.tick;
        let mut own: Vec<(Pair, Counts)> = i
            .own
            .iter()
            .map(|(p, win)| (p.clone(), win.sum(tick, w)))
            .filter(|(_, c)| c.total() > 0)
            .collect();
        own.sort_by(|a, b| b.1.total().cmp(&a.1.total()).then(a.0.cmp(&b.0)));
        let mut all: HashMap<Pair, Counts> = own.iter().cloned().collect();
        for (p, c) in peers {
            let e = all.entry(p).or_default();
            *e = e.plus(c);
        }
        judge(&mut i, now, cfg, &all, metrics);
        i.tick += 1;
        let next = i.tick;
        i.own.retain(|_, win| {
            win.forget(next, w);
            !win.is_empty()
        });
        i.per_network.retain(|_, win| {
            win.forget(next, w);
            !win.is_empty()
        });
        let demotions = demotions(&i);
        drop(i);
        self.demotions.store(Arc::new(demotions));
        own
    }

    /// The demotions in force at `now`, by network then gateway.
    pub fn demoted(&self, now: Instant) -> Vec<Demoted> {
        let i = self.lock();
        let mut out: Vec<Demoted> = i
            .holds
            .iter()
            .filter_map(|(p, h)| {
                let until = h.until?;
                let c = i.judged.get(p).copied().unwrap_or_default();
                Some(Demoted {
                    region: p.network.region.to_string(),
                    isp: p.network.isp.to_string(),
                    gateway: p.gateway.to_string(),
                    ok: c.ok,
                    failed: c.failed,
                    remaining_ms: until.saturating_duration_since(now).as_millis() as u64,
                    strikes: h.strikes,
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.region, &a.isp, &a.gateway).cmp(&(&b.region, &b.isp, &b.gateway)));
        out
    }
}

/// Ends the holds due at `now` and demotes the pairs of `all` that fail.
fn judge(
    i: &mut Inner,
    now: Instant,
    cfg: &FeedbackConfig,
    all: &HashMap<Pair, Counts>,
    metrics: &FeedbackMetrics,
) {
    for (p, h) in i.holds.iter_mut() {
        if h.until.is_some_and(|u| u <= now) {
            h.until = None;
            h.since = now;
            info!(region = %p.network.region, isp = %p.network.isp, gateway = %p.gateway, "gateway answered again to its network: its demotion ended");
        }
    }
    let base = Duration::from_millis(cfg.hold_ms);
    let max = Duration::from_millis(cfg.max_hold_ms);
    for (p, c) in all {
        let prior = i.holds.get(p).copied();
        if prior.is_some_and(|h| h.until.is_some())
            || c.total() < cfg.min_reports
            || c.success().is_none_or(|s| s >= cfg.demote_below)
        {
            continue;
        }
        // Failing again soon after the last demotion ended: twice as long.
        let strikes = match prior {
            Some(h) if now.saturating_duration_since(h.since) < h.hold * 2 => {
                h.strikes.saturating_add(1)
            }
            _ => 0,
        };
        let hold = base.saturating_mul(1u32 << strikes.min(16)).min(max);
        i.holds.insert(
            p.clone(),
            Hold {
                until: Some(now + hold),
                strikes,
                since: now,
                hold,
            },
        );
        i.judged.insert(p.clone(), *c);
        metrics.demotions.inc();
        info!(
            region = %p.network.region, isp = %p.network.isp, gateway = %p.gateway,
            ok = c.ok, failed = c.failed, hold_ms = hold.as_millis() as u64,
            "gateway demoted for its network: its clients' connects to it fail"
        );
    }
    // A demotion long over no longer counts towards the next one's length.
    i.holds
        .retain(|_, h| h.until.is_some() || now.saturating_duration_since(h.since) < h.hold * 2);
    let holds = &i.holds;
    i.judged
        .retain(|p, _| holds.get(p).is_some_and(|h| h.until.is_some()));
    metrics.demoted.clear();
    let mut per: BTreeMap<&Network, i64> = BTreeMap::new();
    for (p, h) in holds {
        if h.until.is_some() {
            *per.entry(&p.network).or_default() += 1;
        }
    }
    for (n, k) in per {
        metrics
            .demoted
            .get_or_create(&NetworkLabels {
                region: n.region.to_string(),
                isp: n.isp.to_string(),
            })
            .set(k);
    }
}

/// The demotions in force, as answers read them.
fn demotions(i: &Inner) -> Demotions {
    let mut d = Demotions::default();
    let mut held: Vec<&Pair> = i
        .holds
        .iter()
        .filter(|(_, h)| h.until.is_some())
        .map(|(p, _)| p)
        .collect();
    held.sort();
    for p in held {
        let list = d
            .by_region
            .entry(p.network.region.to_string())
            .or_default()
            .entry(p.network.isp.to_string())
            .or_default();
        if list.len() < MAX_DEMOTED_PER_NETWORK {
            list.push(p.gateway.clone());
        }
    }
    d
}
