//! What one client network may cost the router, checked before any other work on
//! every route that answers strangers (`/gateways`, DoH, `/resolve`, `/d`, DNS):
//!
//! 1. **Block list**: static networks (`[edge] block`), entries followed from etcd
//!    (`P/blocklist/`, see [`follow`]) and networks the router blocked by itself.
//!    A blocked client gets 403 `blocked` or DNS REFUSED.
//! 2. **Allow list** (`[edge] allow`): trusted networks (a carrier's NAT) skip the
//!    budgets below and are never blocked automatically.
//! 3. **Request budget** (`[rate_limit]`): requests per second per network; over it,
//!    429 `rate_limited`. A network refused again and again (`[edge]
//!    auto_block_refusals_per_min`) is blocked for `auto_block_secs`, with reason
//!    `auto`; at most `auto_block_max` networks at once.
//! 4. **Herd budget** ([`crate::herd::budget`]): how many clients one network's
//!    answers may add to the herd estimate per window.
//!
//! Only sources that cannot be spoofed are charged to a budget or blocked
//! automatically (HTTP, DoH, DNS over TCP): a UDP source address is anyone's to forge,
//! so UDP is held to the block list and to response-rate limiting alone.
//!
//! The lists are one immutable [`Lists`] value behind an `ArcSwap`: a request makes two
//! longest-prefix lookups and no lock; a change (an etcd entry, an automatic block, an
//! expiry) builds a new value.

pub mod follow;
pub mod lists;

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use governor::clock::Clock;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use ipnet::IpNet;
use registry::blocklist::BlockEntry;

use crate::clock::LimiterClock;
use crate::config::FileConfig;
use crate::herd::budget::HerdBudget;
use crate::identity::network_key;
use crate::metrics::{EdgeMetrics, Metrics};
pub use lists::Lists;

use crate::clock::KeyedLimiter as Limiter;

/// Why a client is turned away.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// Its network is on the block list, for this reason.
    Blocked(Arc<str>),
    /// Over its request budget: retry after this many seconds.
    Limited(u64),
}

/// One block in force, as `GET /ops/blocks.json` lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Listed {
    /// The network refused.
    pub cidr: IpNet,
    /// Where the block comes from: `config` (`[edge] block`), `etcd` (`P/blocklist/`,
    /// `ctl block`) or `auto` (this router, for a network over its budget again and
    /// again).
    pub source: &'static str,
    /// Why.
    pub reason: String,
    /// Who added it (empty for `config`).
    pub by: String,
    /// Wall-clock milliseconds when it stops counting; 0: until removed.
    pub expires_ms: u64,
}

/// The lists in force, for operators.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Listing {
    /// Every block in force.
    pub blocks: Vec<Listed>,
    /// The allow list.
    pub allow: Vec<IpNet>,
}

/// A client let through, and what it is exempt from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// On the allow list: no budget applies.
    pub exempt: bool,
}

/// The guard: lists, budgets, automatic blocks.
pub struct Guard {
    lists: ArcSwap<Lists>,
    /// The static lists and the dynamic entries the current [`Lists`] was built from.
    sources: Mutex<Sources>,
    requests: Option<Limiter>,
    /// Prefix lengths of one request budget (IPv4, IPv6).
    request_prefix: (u8, u8),
    /// Counts each network's refusals; a network over it is blocked automatically.
    strikes: Option<Limiter>,
    auto_block_ms: u64,
    auto_block_max: usize,
    herd: HerdBudget,
    clock: LimiterClock,
    /// The edge's series (a clone counts into the same series as the registry's).
    metrics: EdgeMetrics,
}

/// What the lists are built from.
#[derive(Default)]
struct Sources {
    block: Vec<IpNet>,
    allow: Vec<IpNet>,
    /// Entries followed from etcd, by key.
    dynamic: Vec<BlockEntry>,
    /// Networks blocked automatically, with their expiry (wall-clock ms).
    auto: HashMap<IpNet, u64>,
}

impl Guard {
    /// The guard `cfg` describes, its limiters on `clock`, counting into `metrics`.
    pub fn new(cfg: &FileConfig, clock: LimiterClock, metrics: &Metrics) -> Guard {
        let rl = &cfg.rate_limit;
        let requests = NonZeroU32::new(rl.per_ip_per_sec).map(|rate| {
            let burst = NonZeroU32::new(rl.burst).unwrap_or(rate);
            RateLimiter::new(
                Quota::per_second(rate).allow_burst(burst),
                DefaultKeyedStateStore::default(),
                clock.clone(),
            )
        });
        let e = &cfg.edge;
        let strikes = NonZeroU32::new(e.auto_block_refusals_per_min).map(|n| {
            RateLimiter::new(
                Quota::per_minute(n),
                DefaultKeyedStateStore::default(),
                clock.clone(),
            )
        });
        let sources = Sources {
            block: e.block.clone(),
            allow: e.allow.clone(),
            ..Sources::default()
        };
        let lists = Lists::build(&sources.block, &sources.allow, &[], &sources.auto, 0);
        Guard {
            lists: ArcSwap::from_pointee(lists),
            sources: Mutex::new(sources),
            requests,
            request_prefix: (rl.ipv4_prefix_len, rl.ipv6_prefix_len),
            strikes,
            auto_block_ms: e.auto_block_secs.saturating_mul(1000),
            auto_block_max: e.auto_block_max,
            herd: HerdBudget::new(
                e.herd_budget,
                cfg.herd_window_secs * 1000,
                (e.network_prefix_v4, e.network_prefix_v6),
                clock.clone(),
            ),
            clock,
            metrics: metrics.edge.clone(),
        }
    }

    /// The lists in force.
    pub fn lists(&self) -> Arc<Lists> {
        self.lists.load_full()
    }

    /// True when `ip` is on the allow list (one atomic load, no refcount: the DNS
    /// path asks it for every UDP query).
    pub fn allowed(&self, ip: IpAddr) -> bool {
        self.lists.load().allowed(ip)
    }

    /// The reason `ip` is blocked, if it is (the only check for sources that can be
    /// spoofed: UDP).
    pub fn blocked(&self, ip: IpAddr) -> Option<Arc<str>> {
        let reason = self.lists.load().blocked(ip)?;
        self.metrics.blocked.inc();
        Some(reason)
    }

    /// The lists' verdict on `ip`, in one load of them: the reason it is blocked
    /// (counted), else whether the allow list exempts it from every budget.
    fn listed(&self, ip: IpAddr) -> Result<bool, Arc<str>> {
        let lists = self.lists.load();
        if let Some(reason) = lists.blocked(ip) {
            self.metrics.blocked.inc();
            return Err(reason);
        }
        Ok(lists.allowed(ip))
    }

    /// Lets `ip` through unless it is blocked, charging no budget: the check for
    /// sources that can be spoofed (UDP, whose budget is response-rate limiting).
    pub fn screen(&self, ip: IpAddr) -> Option<Pass> {
        let exempt = self.listed(ip).ok()?;
        Some(Pass { exempt })
    }

    /// Lets `ip` through or says why not, charging one request to its network's
    /// budget. For sources that cannot be spoofed.
    pub fn check(&self, ip: IpAddr) -> Result<Pass, Refusal> {
        if self.listed(ip).map_err(Refusal::Blocked)? {
            return Ok(Pass { exempt: true });
        }
        let Some(limiter) = &self.requests else {
            return Ok(Pass { exempt: false });
        };
        let key = network_key(ip, self.request_prefix);
        match limiter.check_key(&key) {
            Ok(()) => Ok(Pass { exempt: false }),
            Err(not_until) => {
                self.metrics.rate_limited.inc();
                let wait = not_until.wait_time_from(limiter.clock().now());
                if let Some(reason) = self.strike(key) {
                    return Err(Refusal::Blocked(reason));
                }
                Err(Refusal::Limited(wait.as_secs_f64().ceil().max(1.0) as u64))
            }
        }
    }

    /// Counts one refusal of `key`'s network; blocks it when it keeps coming back.
    fn strike(&self, key: IpAddr) -> Option<Arc<str>> {
        let strikes = self.strikes.as_ref()?;
        if strikes.check_key(&key).is_ok() {
            return None;
        }
        let len = match key {
            IpAddr::V4(_) => self.request_prefix.0,
            IpAddr::V6(_) => self.request_prefix.1,
        };
        let net = IpNet::new(key, len).expect("a prefix length the config validated");
        let now = registry::now_ms();
        let mut sources = self.sources.lock().expect("guard sources lock");
        if sources.auto.contains_key(&net) {
            return self.lists.load().blocked(key);
        }
        sources.auto.retain(|_, until| *until > now);
        if sources.auto.len() >= self.auto_block_max {
            return None;
        }
        sources.auto.insert(net, now + self.auto_block_ms);
        self.metrics.auto_blocks.inc();
        tracing::warn!(network = %net, secs = self.auto_block_ms / 1000, "network blocked automatically: over its request budget again and again");
        self.rebuild(&sources, now);
        self.lists.load().blocked(key)
    }

    /// The clients an answer of `weight` to `ip` adds to the herd counts: `weight`,
    /// or 0 once its network has used its share of the window. `routers` scales what
    /// each answer adds to the estimate (see [`crate::herd`]).
    pub fn herd_weight(&self, ip: IpAddr, pass: Pass, weight: u64, routers: u64) -> u64 {
        if pass.exempt || self.herd.charge(ip, weight.saturating_mul(routers.max(1))) {
            weight
        } else {
            self.metrics.herd_uncounted.inc();
            0
        }
    }

    /// Replaces the static lists (`[edge] block` and `allow`, on a reload).
    pub fn set_static(&self, block: Vec<IpNet>, allow: Vec<IpNet>) {
        let mut sources = self.sources.lock().expect("guard sources lock");
        sources.block = block;
        sources.allow = allow;
        self.rebuild(&sources, registry::now_ms());
    }

    /// Replaces the entries followed from etcd.
    pub fn set_dynamic(&self, entries: Vec<BlockEntry>) {
        let mut sources = self.sources.lock().expect("guard sources lock");
        sources.dynamic = entries;
        self.rebuild(&sources, registry::now_ms());
    }

    /// Drops what expired by `now_ms` (entries and automatic blocks): call it now and
    /// then. Builds new lists only when something did.
    pub fn expire(&self, now_ms: u64) {
        if self
            .lists
            .load()
            .next_expiry_ms()
            .is_none_or(|t| t > now_ms)
        {
            return;
        }
        let mut sources = self.sources.lock().expect("guard sources lock");
        sources.auto.retain(|_, until| *until > now_ms);
        self.rebuild(&sources, now_ms);
    }

    /// Every block in force at wall-clock `now_ms`, by source (`config`, `etcd`,
    /// `auto`), and the allow list: what `GET /ops/blocks.json` shows. The automatic
    /// blocks are this router's own: no other router or `ctl blocks` has them.
    pub fn listing(&self, now_ms: u64) -> Listing {
        let s = self.sources.lock().expect("guard sources lock");
        let mut blocks: Vec<Listed> = s
            .block
            .iter()
            .map(|n| Listed {
                cidr: n.trunc(),
                source: "config",
                reason: "config".into(),
                by: String::new(),
                expires_ms: 0,
            })
            .collect();
        blocks.extend(
            s.dynamic
                .iter()
                .filter(|e| e.in_force(now_ms))
                .map(|e| Listed {
                    cidr: e.cidr.trunc(),
                    source: "etcd",
                    reason: e.reason.clone(),
                    by: e.by.clone(),
                    expires_ms: e.expires_ms,
                }),
        );
        blocks.extend(
            s.auto
                .iter()
                .filter(|(_, until)| **until > now_ms)
                .map(|(n, until)| Listed {
                    cidr: *n,
                    source: "auto",
                    reason: "auto".into(),
                    by: "this router".into(),
                    expires_ms: *until,
                }),
        );
        blocks.sort_by(|a, b| (a.source, a.cidr).cmp(&(b.source, b.cidr)));
        Listing {
            blocks,
            allow: s.allow.iter().map(IpNet::trunc).collect(),
        }
    }

    /// The automatic blocks in force, with their expiry.
    pub fn auto_blocks(&self) -> Vec<(IpNet, u64)> {
        let sources = self.sources.lock().expect("guard sources lock");
        let mut v: Vec<(IpNet, u64)> = sources.auto.iter().map(|(n, t)| (*n, *t)).collect();
        v.sort();
        v
    }

    fn rebuild(&self, s: &Sources, now_ms: u64) {
        let lists = Lists::build(&s.block, &s.allow, &s.dynamic, &s.auto, now_ms);
        self.metrics.blocklist_entries.set(lists.len() as i64);
        self.lists.store(Arc::new(lists));
    }

    /// Forgets idle networks of the limiters, bounding their memory.
    pub fn retain_recent(&self) {
        for l in [&self.requests, &self.strikes].into_iter().flatten() {
            l.retain_recent();
            l.shrink_to_fit();
        }
        self.herd.retain_recent();
    }

    /// The clock the limiters run on.
    pub fn clock(&self) -> &LimiterClock {
        &self.clock
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::time::Duration;

    fn guard(toml: &str) -> (Guard, FakeRelativeClock, Metrics) {
        let cfg = FileConfig::parse(toml).unwrap();
        let clock = FakeRelativeClock::default();
        let m = Metrics::default();
        (
            Guard::new(&cfg, LimiterClock::Fake(clock.clone()), &m),
            clock,
            m,
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocked_before_allowed_and_allowed_before_budgets() {
        let (g, _, m) = guard(
            "[rate_limit]\nper_ip_per_sec = 1\nburst = 1\n[edge]\nblock = [\"198.51.100.0/24\"]\nallow = [\"198.51.0.0/16\", \"203.0.113.0/24\"]",
        );
        assert_eq!(
            g.check(ip("198.51.100.9")),
            Err(Refusal::Blocked(Arc::from("config")))
        );
        assert!(g.blocked(ip("198.51.100.9")).is_some(), "UDP too");
        for _ in 0..100 {
            assert_eq!(g.check(ip("203.0.113.5")), Ok(Pass { exempt: true }));
        }
        assert_eq!(g.check(ip("192.0.2.1")), Ok(Pass { exempt: false }));
        assert!(matches!(g.check(ip("192.0.2.1")), Err(Refusal::Limited(_))));
        assert!(m.render().contains("router_blocked_total 2"));
    }

    #[test]
    fn a_network_refused_again_and_again_is_blocked_until_it_expires() {
        let (g, clock, m) = guard(
            "[rate_limit]\nper_ip_per_sec = 1\nburst = 1\n[edge]\nauto_block_refusals_per_min = 5\nauto_block_secs = 60",
        );
        let abuser = ip("192.0.2.1");
        let mut outcomes = Vec::new();
        for _ in 0..10 {
            outcomes.push(g.check(abuser));
        }
        assert_eq!(outcomes[0], Ok(Pass { exempt: false }));
        assert!(
            matches!(outcomes[5], Err(Refusal::Limited(_))),
            "{outcomes:?}"
        );
        assert_eq!(
            outcomes[9],
            Err(Refusal::Blocked(Arc::from("auto"))),
            "{outcomes:?}"
        );
        assert_eq!(g.auto_blocks().len(), 1);
        let listed = g.listing(registry::now_ms());
        assert_eq!(listed.blocks.len(), 1);
        assert_eq!(listed.blocks[0].source, "auto");
        assert_eq!(listed.blocks[0].cidr.to_string(), "192.0.2.1/32");
        // Another address is untouched.
        assert_eq!(g.check(ip("192.0.2.2")), Ok(Pass { exempt: false }));
        // Much later (wall clock), the block expires.
        clock.advance(Duration::from_secs(120));
        g.expire(registry::now_ms() + 61_000);
        assert!(g.auto_blocks().is_empty());
        assert_eq!(g.check(abuser), Ok(Pass { exempt: false }));
        assert!(m.render().contains("router_auto_blocks_total 1"));
    }

    #[test]
    fn automatic_blocks_are_bounded_in_number() {
        let (g, _, _m) = guard(
            "[rate_limit]\nper_ip_per_sec = 1\nburst = 1\n[edge]\nauto_block_refusals_per_min = 1\nauto_block_max = 3",
        );
        for i in 0..10 {
            let a = ip(&format!("192.0.2.{i}"));
            for _ in 0..5 {
                let _ = g.check(a);
            }
        }
        assert_eq!(g.auto_blocks().len(), 3);
        assert!(
            matches!(g.check(ip("192.0.2.9")), Err(Refusal::Limited(_))),
            "past the bound a network is only limited"
        );
    }

    #[test]
    fn dynamic_entries_block_until_they_expire() {
        let (g, _, _m) = guard("");
        let now = registry::now_ms();
        g.set_dynamic(vec![
            BlockEntry {
                cidr: "192.0.2.0/24".parse().unwrap(),
                reason: "scraper".into(),
                expires_ms: now + 1000,
                by: "alice".into(),
                at_ms: now,
            },
            BlockEntry {
                cidr: "2001:db8::/32".parse().unwrap(),
                reason: "expired".into(),
                expires_ms: now - 1,
                by: "bob".into(),
                at_ms: 0,
            },
        ]);
        assert_eq!(
            g.check(ip("192.0.2.77")),
            Err(Refusal::Blocked(Arc::from("scraper")))
        );
        assert!(g.check(ip("2001:db8::1")).is_ok(), "already expired");
        g.expire(now + 1000);
        assert!(g.check(ip("192.0.2.77")).is_ok());
    }

    #[test]
    fn the_herd_budget_bounds_what_one_network_adds() {
        let (g, _, _m) = guard("[edge]\nherd_budget = 10\nallow = [\"203.0.113.0/24\"]");
        let pass = Pass { exempt: false };
        let counted: u64 = (0..100)
            .map(|i| g.herd_weight(ip(&format!("192.0.2.{i}")), pass, 1, 2))
            .sum();
        assert_eq!(
            counted, 5,
            "10 clients per window, each answer counting 2 routers"
        );
        // Another network has its own share.
        assert_eq!(g.herd_weight(ip("192.0.3.1"), pass, 1, 2), 1);
        let exempt = g.check(ip("203.0.113.1")).unwrap();
        let all: u64 = (0..100)
            .map(|_| g.herd_weight(ip("203.0.113.1"), exempt, 1, 2))
            .sum();
        assert_eq!(all, 100, "the allow list is exempt");
    }
}
