//! The storm simulator's command line: the router's own selection and herd accounting
//! under a virtual clock (see `router_server::sim`).
//!
//! ```text
//! # The headline: ten million clients in 30 s, 16 routers, 2,000 gateways in 4 regions
//! cargo run --release -p router-server --example storm_sim -- --clients 10000000
//! # ... with every router's view 5 s stale
//! cargo run --release -p router-server --example storm_sim -- --clients 10000000 --lag-ms 5000
//! # The real-socket storm test's parameters (tests/tests/storm.rs)
//! cargo run --release -p router-server --example storm_sim -- --clients 2250 \
//!   --routers 2 --capacities 300,400,500,600,700 --regions 1 --initial 0 \
//!   --duration-ms 2800 --count 1 --connect-delay-ms 1,3 --never-connect 0 --etcd-delay-ms 2,20
//! ```

#![allow(missing_docs)]

use std::time::Instant;

use clap::Parser;
use router_server::sim::{run, Curve, SimConfig};

#[derive(Parser, Debug)]
struct Args {
    /// Clients arriving.
    #[arg(long, default_value_t = 10_000_000)]
    clients: u64,
    /// Over this many ms.
    #[arg(long, default_value_t = 30_000)]
    duration_ms: u64,
    /// uniform | ramp | burst:MS | failover:MS
    #[arg(long, default_value = "uniform")]
    curve: String,
    #[arg(long, default_value_t = 16)]
    routers: usize,
    #[arg(long, default_value_t = 2_000)]
    gateways: usize,
    /// Gateway capacities, comma-separated (overrides --gateways and --demand sizing).
    #[arg(long, value_delimiter = ',')]
    capacities: Vec<u64>,
    #[arg(long, default_value_t = 4)]
    regions: usize,
    /// The fleet's load at the end, as a share of capacity.
    #[arg(long, default_value_t = 0.7)]
    demand: f64,
    /// The fleet's load at the start (each gateway ±50 %).
    #[arg(long, default_value_t = 0.2)]
    initial: f64,
    /// Every router's view this much staler, ms.
    #[arg(long, default_value_t = 0)]
    lag_ms: u64,
    /// The routers take the lag for a clock offset (as they did before measuring it).
    #[arg(long)]
    ignore_lag: bool,
    /// Agents' clocks off by up to this much either way, ms.
    #[arg(long, default_value_t = 0)]
    skew_ms: i64,
    /// etcd's delivery delay, ms: LO,HI.
    #[arg(long, value_delimiter = ',', default_values_t = [5, 50])]
    etcd_delay_ms: Vec<u64>,
    /// Client connect delay after the answer, ms: LO,HI.
    #[arg(long, value_delimiter = ',', default_values_t = [100, 500])]
    connect_delay_ms: Vec<u64>,
    #[arg(long, default_value_t = 0.02)]
    never_connect: f64,
    #[arg(long, default_value_t = 3)]
    count: usize,
    /// The agents' --report-min-change.
    #[arg(long, default_value_t = 0.01)]
    report_min_change: f64,
    /// The agents' --report-min-interval-ms.
    #[arg(long, default_value_t = 500)]
    report_min_interval_ms: u64,
    #[arg(long, default_value_t = 5_000)]
    report_every_ms: u64,
    /// The routers' herd window (`herd_window_secs`), ms.
    #[arg(long, default_value_t = 5_000)]
    herd_window_ms: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() {
    let a = Args::parse();
    let mut c = SimConfig::sized(a.clients, a.gateways, a.demand, a.initial);
    if !a.capacities.is_empty() {
        c.capacities = a.capacities.clone();
    }
    c.duration_ms = a.duration_ms;
    c.curve = match a.curve.split_once(':') {
        None if a.curve == "uniform" => Curve::Uniform,
        None if a.curve == "ramp" => Curve::Ramp,
        Some(("burst", ms)) => Curve::Burst {
            ms: ms.parse().expect("burst:MS"),
        },
        Some(("failover", ms)) => Curve::Failover {
            ms: ms.parse().expect("failover:MS"),
        },
        _ => panic!("--curve uniform | ramp | burst:MS | failover:MS"),
    };
    c.routers = a.routers;
    c.regions = a.regions;
    c.initial_load = a.initial;
    c.router_lag_ms = vec![a.lag_ms; a.routers];
    c.routers_know_lag = !a.ignore_lag;
    c.agent_skew_ms = a.skew_ms;
    c.etcd_delay_ms = (a.etcd_delay_ms[0], *a.etcd_delay_ms.last().unwrap());
    c.connect_delay_ms = (a.connect_delay_ms[0], *a.connect_delay_ms.last().unwrap());
    c.never_connect = a.never_connect;
    c.count = a.count;
    c.policy.min_change = a.report_min_change;
    c.policy.min_interval = std::time::Duration::from_millis(a.report_min_interval_ms);
    c.report_every_ms = a.report_every_ms;
    c.herd_window_ms = a.herd_window_ms;
    c.seed = a.seed;
    let cap: u64 = c.capacities.iter().sum();
    println!(
        "{} clients over {} ms ({:?}), {} routers (views {} ms stale{}), {} gateways ({} capacity) in {} regions, start at {:.0} %, agents' clocks ±{} ms",
        c.clients, c.duration_ms, c.curve, c.routers, a.lag_ms,
        if a.ignore_lag { ", taken for a clock offset" } else { "" },
        c.capacities.len(), cap, c.regions,
        c.initial_load * 100.0, c.agent_skew_ms
    );
    let t = Instant::now();
    let o = run(&c, false);
    let took = t.elapsed();
    for s in &o.samples {
        println!(
            "  t={:>6} ms  max/mean per region {}",
            s.at_ms,
            fmt(&s.max_mean)
        );
    }
    println!("end: max/mean per region {}", fmt(&o.max_mean));
    println!(
        "max/mean: worst region {:.3}, whole fleet {:.3}; peak node load {:.3} (max_load {}); connections landing at or above max_load: {}; refused {}; answers {}; reports {}; ineligible named {}; simulated in {:.1?}",
        o.worst_max_mean, o.fleet_max_mean, o.peak_load, c.max_load, o.over_max_load, o.refused, o.answers, o.reports, o.ineligible_named, took
    );
}

fn fmt(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.3}"))
        .collect::<Vec<_>>()
        .join(" ")
}
