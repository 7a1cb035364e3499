//! A reconnect-storm simulator that runs the router's own code under a virtual clock:
//! [`Snapshot`](crate::schedule::Snapshot) (built and patched from reports, as the
//! follower does), [`select_weighted`] and the herd accounting ([`HerdView`], the
//! nodes' counters), for `K` routers each with its own view, seed and lag.
//!
//! What is modelled, one virtual millisecond at a time:
//!
//! * **Agents** sample their gateway's connections every `sample_interval_ms` (each at
//!   its own phase), stamp `sampled_ms`/`updated_ms` on their own clock (off by up to
//!   `agent_skew_ms`), and write a record when [`ReportPolicy`] (the agent's own:
//!   `--report-min-change`, `--report-min-interval-ms`, the heartbeat floor) says so.
//! * **etcd** delivers each write to every router after `etcd_delay_ms` (a range); each
//!   router adds its own `router_lag_ms` (a stale view), which it knows (as its
//!   heartbeat measures it, `crate::lag`) unless `routers_know_lag` is off.
//! * **Clients** arrive along a [`Curve`], each at a random router, in a random region;
//!   each takes the first candidate and connects `connect_delay_ms` later, except a
//!   fraction `never_connect` that never does.
//!
//! It reports max/mean of load per region over time and at the end, and how often and
//! how far a node went above `max_load`.
//!
//! Here: the parameters and the storm's loop. `fleet`: the agents and the seeded
//! draws; `router`: the routers' views; `arrivals`: when clients come; `report`: what
//! a run measured.

mod arrivals;
mod fleet;
mod report;
mod router;

use std::sync::Arc;
use std::time::Duration;

use gateway_agent::report::ReportPolicy;
use registry::{NodeState, Proto};

use crate::herd::{HerdView, SLOT_MS};
use crate::schedule::{select_weighted, Query, Rules};
use arrivals::Arrivals;
use fleet::{dynamic, fleet, record, region_name, Agent, SimRng, EPOCH_MS};
use report::{max_mean, per_region};
pub use report::{Outcome, Sample};
use router::{initial_routers, Router};

/// How clients arrive over `duration_ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Curve {
    /// Evenly.
    Uniform,
    /// All within the first `ms`.
    Burst {
        /// The burst's length.
        ms: u64,
    },
    /// A rate growing linearly from zero.
    Ramp,
    /// A data centre fails at the start: its region's clients (region 0, whose
    /// gateways are gone) arrive in the first `ms` and are answered from the other
    /// regions; the others arrive evenly.
    Failover {
        /// How fast the failed region's clients come back.
        ms: u64,
    },
}

impl Curve {
    /// Share of arrivals by `t` in `[0, 1]`, for a client of the whole population.
    fn cdf(self, t: f64) -> f64 {
        let t = t.clamp(0.0, 1.0);
        match self {
            // A burst is uniform over its own, shorter span.
            Curve::Uniform | Curve::Failover { .. } | Curve::Burst { .. } => t,
            Curve::Ramp => t * t,
        }
    }
}

/// The simulation's parameters.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Clients arriving.
    pub clients: u64,
    /// Over this long.
    pub duration_ms: u64,
    /// After the last arrival, time for connects and reports to settle.
    pub tail_ms: u64,
    /// How they arrive.
    pub curve: Curve,
    /// Routers behind the balancer.
    pub routers: usize,
    /// Gateways' capacities (their count is the fleet size).
    pub capacities: Vec<u64>,
    /// Regions the gateways and clients are spread over (round robin).
    pub regions: usize,
    /// Connections each gateway holds at the start, as a fraction of its capacity.
    pub initial_load: f64,
    /// etcd's delivery delay of a write to a router, ms, uniform in the range.
    pub etcd_delay_ms: (u64, u64),
    /// Each router's extra lag, ms (its view is this much staler).
    pub router_lag_ms: Vec<u64>,
    /// Routers know their lag (as `crate::lag` measures it) and take it into account:
    /// reports are placed at the moment etcd had them, and the herd window is longer
    /// by the lag. False: the routers of before, which took a lag for a clock offset.
    pub routers_know_lag: bool,
    /// A router applies what etcd delivered every this many ms (a watch response and
    /// the snapshot patch after it), not per report.
    pub router_batch_ms: u64,
    /// Agents' clocks are off by a uniform amount in `-agent_skew_ms..=agent_skew_ms`.
    pub agent_skew_ms: i64,
    /// Agents sample their gateway this often.
    pub sample_interval_ms: u64,
    /// When agents write.
    pub policy: ReportPolicy,
    /// A client connects this long after its answer, ms, uniform in the range.
    pub connect_delay_ms: (u64, u64),
    /// Share of answered clients that never connect.
    pub never_connect: f64,
    /// Candidates per answer.
    pub count: usize,
    /// The routers' `max_load`.
    pub max_load: f64,
    /// The routers' herd window.
    pub herd_window_ms: u64,
    /// The first router is killed at this virtual ms (`None`: never); its clients go
    /// to the others from then on.
    pub router_killed_at_ms: Option<u64>,
    /// How long after the kill the others stop scaling their answers by it (its
    /// heartbeat standing still: about 3 s; its lease running out: 10 s).
    pub router_gone_after_ms: u64,
    /// Report max/mean every this many ms.
    pub report_every_ms: u64,
    /// Randomness.
    pub seed: u64,
}

impl SimConfig {
    /// `gateways` of equal capacity sized so that the storm brings the fleet to
    /// `demand` of its capacity (the initial load included).
    pub fn sized(clients: u64, gateways: usize, demand: f64, initial_load: f64) -> SimConfig {
        let per = (clients as f64 / ((demand - initial_load).max(0.01) * gateways as f64))
            .ceil()
            .max(1.0) as u64;
        SimConfig {
            clients,
            duration_ms: 30_000,
            tail_ms: 3_000,
            curve: Curve::Uniform,
            routers: 16,
            capacities: vec![per; gateways],
            regions: 4,
            initial_load,
            etcd_delay_ms: (5, 50),
            router_lag_ms: Vec::new(),
            routers_know_lag: true,
            router_batch_ms: 10,
            agent_skew_ms: 0,
            sample_interval_ms: 250,
            policy: ReportPolicy::default(),
            connect_delay_ms: (100, 500),
            never_connect: 0.02,
            count: 3,
            max_load: 0.95,
            herd_window_ms: 5_000,
            router_killed_at_ms: None,
            router_gone_after_ms: 10_000,
            report_every_ms: 5_000,
            seed: 1,
        }
    }
}

/// Runs a storm. `record_answers` keeps every answer's (router, node) in the outcome.
pub fn run(c: &SimConfig, record_answers: bool) -> Outcome {
    let mut storm = Storm::new(c, record_answers);
    let end = c.duration_ms + c.tail_ms;
    for ms in 0..end {
        storm.step(ms);
    }
    storm.finish(end)
}

/// A storm under way: what [`run`] keeps from one virtual millisecond to the next.
struct Storm<'c> {
    c: &'c SimConfig,
    record_answers: bool,
    rng: SimRng,
    regions: usize,
    region_names: Vec<String>,
    /// The region whose gateways are gone (a failover).
    failed_region: Option<usize>,
    agents: Vec<Agent>,
    /// Connections per gateway.
    conns: Vec<u64>,
    routers: Vec<Router>,
    window_slots: u64,
    /// The virtual clock's start, for the agents' report policy.
    base: tokio::time::Instant,
    /// Pending connects, by the ms they land: a wheel over the longest delay.
    wheel: Vec<Vec<u32>>,
    horizon: usize,
    arrivals: Arrivals,
    out: Outcome,
}

impl<'c> Storm<'c> {
    fn new(c: &'c SimConfig, record_answers: bool) -> Storm<'c> {
        let mut rng = SimRng(c.seed);
        let regions = c.regions.max(1);
        let failed_region = matches!(c.curve, Curve::Failover { .. }).then_some(0usize);
        let (mut agents, conns) = fleet(c, &mut rng);
        for a in &mut agents {
            a.gone = Some(a.region) == failed_region;
        }
        let routers = initial_routers(c, &mut agents, &conns);
        let window_slots = c.herd_window_ms.div_ceil(SLOT_MS);
        let base = tokio::time::Instant::now();
        let horizon = (c.connect_delay_ms.1 + 2) as usize;
        Storm {
            c,
            record_answers,
            rng,
            regions,
            region_names: (0..regions).map(region_name).collect(),
            failed_region,
            agents,
            conns,
            routers,
            window_slots,
            base,
            wheel: vec![Vec::new(); horizon],
            horizon,
            arrivals: Arrivals::new(c, regions),
            out: Outcome::default(),
        }
    }

    /// Virtual ms `ms` on the agents' clock.
    fn at(&self, ms: u64) -> tokio::time::Instant {
        self.base + Duration::from_millis(ms)
    }

    /// One virtual millisecond.
    fn step(&mut self, ms: u64) {
        let now_abs = EPOCH_MS + ms;
        // 1. etcd delivers to the routers, which apply it in batches.
        if ms % self.c.router_batch_ms.max(1) == 0 {
            for r in &mut self.routers {
                r.apply_due(ms, now_abs);
            }
        }
        // 2. Connects land.
        self.land_connects(ms);
        // 3. Agents sample and maybe write.
        self.sample_agents(ms, now_abs);
        // 4. Clients arrive and are answered.
        let (arriving, failed_now) = self.arrivals.during(ms);
        for k in 0..arriving {
            let region = if k < failed_now {
                self.failed_region.unwrap_or(0)
            } else {
                self.live_region()
            };
            self.answer(ms, now_abs, region);
        }
        let c = self.c;
        if c.report_every_ms > 0 && (ms + 1) % c.report_every_ms == 0 {
            self.out.samples.push(Sample {
                at_ms: ms + 1,
                max_mean: per_region(&self.agents, &self.conns, self.regions),
            });
        }
    }

    /// The connects due at `ms` land on their gateways.
    fn land_connects(&mut self, ms: u64) {
        for g in std::mem::take(&mut self.wheel[ms as usize % self.horizon]) {
            let g = g as usize;
            let capacity = self.agents[g].capacity as f64;
            if self.conns[g] as f64 >= self.c.max_load * capacity {
                self.out.over_max_load += 1;
            }
            self.conns[g] += 1;
            self.out.peak_load = self.out.peak_load.max(self.conns[g] as f64 / capacity);
        }
    }

    /// The agents whose sample falls at `ms` write a record when their policy says so;
    /// etcd will deliver it to every router.
    fn sample_agents(&mut self, ms: u64, now_abs: u64) {
        let c = self.c;
        let interval = c.sample_interval_ms.max(1);
        let (at_ms, base) = (self.at(ms), self.base);
        for (i, a) in self.agents.iter_mut().enumerate() {
            if a.gone || ms % interval != a.phase {
                continue;
            }
            let current = dynamic(self.conns[i]);
            let last = a
                .last
                .as_ref()
                .map(|(d, t)| (d, base + Duration::from_millis(*t)));
            if !c.policy.should_write(last, &current, a.capacity, at_ms) {
                continue;
            }
            let stamp = (now_abs as i64 + a.skew) as u64;
            let rec = Arc::new(record(i, a, self.conns[i], Some((stamp, stamp + 1))));
            let delay = self.rng.range(c.etcd_delay_ms);
            for r in &mut self.routers {
                r.deliver(ms + delay + r.lag, rec.clone());
            }
            a.last = Some((current, ms));
            self.out.reports += 1;
        }
    }

    /// A region for a client that is not the failed region's: any region that still
    /// has gateways.
    fn live_region(&mut self) -> usize {
        loop {
            let r = self.rng.below(self.regions as u64) as usize;
            if Some(r) != self.failed_region || self.regions == 1 {
                break r;
            }
        }
    }

    /// A client of `region` arrives at a random router, takes the first candidate and
    /// (unless it never connects) connects a little later.
    fn answer(&mut self, ms: u64, now_abs: u64, region: usize) {
        let c = self.c;
        let (first_live, live) = self.live_routers(ms);
        let k_router =
            first_live + self.rng.below((self.routers.len() - first_live) as u64) as usize;
        let router = &self.routers[k_router];
        let herd = HerdView::at(
            now_abs,
            self.window_slots + router.known_lag.div_ceil(SLOT_MS),
            live,
        );
        let query = Query {
            isp: None,
            steer: crate::schedule::Steer::NONE,
            proto: Proto::Tcp,
            count: c.count,
            region: Some(&self.region_names[region]),
            family: None,
        };
        let rules = Rules {
            max_load: c.max_load,
            fallbacks: &[],
            herd,
        };
        let chosen = select_weighted(&router.snap, &query, rules, 1);
        self.out.answers += 1;
        for cand in &chosen {
            let e = &router.snap.nodes[cand.index];
            if e.record.state != NodeState::Serving || !e.record.healthy {
                self.out.ineligible_named += 1;
            }
        }
        let Some(first) = chosen.first() else {
            self.out.refused += 1;
            return;
        };
        let id = &router.snap.nodes[first.index].record.id;
        let g: usize = id[3..].parse().expect("simulated ids");
        if self.record_answers {
            self.out.answers_log.push((k_router, g));
        }
        if self.rng.unit() < c.never_connect {
            return;
        }
        let delay = self.rng.range(c.connect_delay_ms).max(1);
        self.wheel[(ms + delay) as usize % self.horizon].push(g as u32);
    }

    /// At `ms`: the first router still answering, and the live routers the answering
    /// ones count (the killed one until its registration is gone).
    fn live_routers(&self, ms: u64) -> (usize, u64) {
        let all = self.routers.len();
        match self.c.router_killed_at_ms {
            Some(t) if ms >= t && all > 1 => {
                let counted = if ms >= t + self.c.router_gone_after_ms {
                    all - 1
                } else {
                    all
                };
                (1, counted as u64)
            }
            _ => (0, all as u64),
        }
    }

    /// The outcome at `end`: the herd counts checked, max/mean at the end.
    fn finish(mut self, end: u64) -> Outcome {
        let live = self.live_routers(end).1;
        let out = &mut self.out;
        // Herd counts are unsigned; a projected load below the reported one would mean
        // a count went negative.
        for r in &self.routers {
            let herd = HerdView::at(EPOCH_MS + end, self.window_slots, live);
            for e in r.snap.nodes.iter() {
                if e.projected_load(&herd) + 1e-12
                    < e.record.connections as f64 / e.record.capacity as f64
                {
                    out.negative_herd = true;
                }
            }
        }
        out.max_mean = per_region(&self.agents, &self.conns, self.regions);
        out.worst_max_mean = out.max_mean.iter().cloned().fold(0.0, f64::max);
        out.fleet_max_mean = max_mean(
            self.agents
                .iter()
                .zip(&self.conns)
                .filter(|(a, _)| !a.gone)
                .map(|(a, &n)| n as f64 / a.capacity as f64),
        );
        out.final_connections = self.conns;
        self.out
    }
}

#[cfg(test)]
mod tests;
