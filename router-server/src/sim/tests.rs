//! The simulator's own tests: storms that land evenly, lagged views, a router killed
//! mid-storm, and the invariants over random lags, skews and curves.

use super::*;
use crate::schedule::Snapshot;
use proptest::prelude::*;
use registry::NodeRecord;

fn small() -> SimConfig {
    let mut c = SimConfig::sized(20_000, 40, 0.7, 0.1);
    c.duration_ms = 3_000;
    c.tail_ms = 1_000;
    c.routers = 3;
    c.regions = 2;
    c
}

/// A short storm, as CI runs it: 200,000 clients over 5 s, 8 routers, 200
/// gateways in 4 regions.
#[test]
fn a_short_storm_lands_evenly() {
    let mut c = SimConfig::sized(200_000, 200, 0.7, 0.2);
    c.duration_ms = 5_000;
    c.routers = 8;
    let o = run(&c, false);
    assert_eq!(o.ineligible_named, 0);
    assert!(!o.negative_herd);
    assert_eq!(o.refused, 0);
    assert!(o.worst_max_mean <= 1.05, "max/mean {:?}", o.max_mean);
    assert_eq!(o.over_max_load, 0, "peak load {}", o.peak_load);
}

/// A lagged storm: every router's view 3 s behind etcd, 300,000 clients over 8 s.
/// A router that knows its lag lands it evenly; one that reads the lag as a clock
/// offset takes the answers of those seconds for counted and overfills.
#[test]
fn a_lagged_storm_lands_evenly_when_routers_know_their_lag() {
    let mut c = SimConfig::sized(300_000, 200, 0.7, 0.2);
    c.duration_ms = 8_000;
    c.tail_ms = 4_000;
    c.routers = 8;
    c.router_lag_ms = vec![3_000; c.routers];
    let o = run(&c, false);
    assert_eq!(o.ineligible_named, 0);
    assert!(!o.negative_herd);
    assert_eq!(o.refused, 0);
    assert!(o.worst_max_mean <= 1.10, "max/mean {:?}", o.max_mean);
    assert_eq!(o.over_max_load, 0, "peak load {}", o.peak_load);
    c.routers_know_lag = false;
    let blind = run(&c, false);
    // (1.119 against 1.023 when this was written.)
    assert!(
        blind.worst_max_mean > o.worst_max_mean + 0.05,
        "a lag read as a clock offset overfills: {} vs {}",
        blind.worst_max_mean,
        o.worst_max_mean
    );
}

/// A router killed half-way through a storm, one of two: the survivor answers
/// everyone, and scales its answers by two routers until it learns it is alone:
/// from the heartbeats within about 3 s (`crate::herd::share`), or when the dead
/// router's lease runs out (10 s), as before. Gateways sample every 2 s (a gateway
/// holding many connections stretches its sampling so): 9,000 clients over 10 s
/// on twenty gateways of 300 to 700, filled to 0.9. Knowing within 3 s keeps the
/// storm even (1.008 when this was written); learning it from the lease alone left
/// it uneven (1.062). And at scale: 300,000 clients, 200 gateways, views 2 s
/// behind.
#[test]
fn a_router_killed_mid_storm_is_known_gone_before_it_overfills() {
    let mut c = SimConfig::sized(9_000, 20, 0.9, 0.0);
    c.capacities = [300, 400, 500, 600, 700].repeat(4);
    c.regions = 1;
    c.duration_ms = 10_000;
    c.connect_delay_ms = (1, 5);
    c.sample_interval_ms = 2_000;
    c.routers = 2;
    c.router_killed_at_ms = Some(5_000);
    c.router_gone_after_ms = 3_000;
    let known = run(&c, false);
    assert_eq!(known.ineligible_named, 0);
    assert!(!known.negative_herd);
    assert_eq!(known.refused, 0);
    assert!(
        known.worst_max_mean <= 1.03,
        "max/mean {:?}",
        known.max_mean
    );
    assert_eq!(known.over_max_load, 0, "peak load {}", known.peak_load);
    c.router_gone_after_ms = 10_000;
    let lease = run(&c, false);
    assert!(
        lease.worst_max_mean > known.worst_max_mean + 0.03,
        "learnt from the lease: {} vs {}",
        lease.worst_max_mean,
        known.worst_max_mean
    );
    let mut large = SimConfig::sized(300_000, 200, 0.9, 0.2);
    large.duration_ms = 8_000;
    large.tail_ms = 4_000;
    large.router_lag_ms = vec![2_000; 2];
    large.routers = 2;
    large.router_killed_at_ms = Some(4_000);
    large.router_gone_after_ms = 3_000;
    let o = run(&large, false);
    assert_eq!(o.ineligible_named, 0);
    assert_eq!(o.refused, 0);
    assert!(o.worst_max_mean <= 1.05, "max/mean {:?}", o.max_mean);
    assert_eq!(o.over_max_load, 0, "peak load {}", o.peak_load);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Whatever the lags, skews and curves: no answer names an ineligible node,
    /// herd counts never go negative, everyone is answered while there is room.
    #[test]
    fn invariants_hold(seed in 1u64..1_000, skew in 0i64..2_000, lag in 0u64..3_000,
                       curve in 0usize..4, routers in 1usize..5) {
        let mut c = small();
        c.seed = seed;
        c.agent_skew_ms = skew;
        c.routers = routers;
        c.router_lag_ms = vec![lag; routers];
        c.curve = [Curve::Uniform, Curve::Ramp, Curve::Burst { ms: 500 }, Curve::Failover { ms: 1_000 }][curve];
        let o = run(&c, false);
        prop_assert_eq!(o.ineligible_named, 0);
        prop_assert!(!o.negative_herd);
        prop_assert_eq!(o.answers, c.clients);
    }

    /// With no lag, one router and every client connecting at once, the simulated
    /// landing equals a direct replay of the selection on one snapshot and one
    /// counter: the simulator adds nothing of its own to what the router decides.
    #[test]
    fn with_zero_lag_the_balance_is_a_direct_replay_of_the_selection(seed in 1u64..1_000) {
        let mut c = small();
        c.seed = seed;
        c.routers = 1;
        c.clients = 3_000;
        c.never_connect = 0.0;
        c.connect_delay_ms = (1, 1);
        // Reports never arrive: the router decides on its own counts alone.
        c.router_lag_ms = vec![1_000_000];
        let o = run(&c, true);
        // The replay: one snapshot of the initial reports, each answer counted.
        let mut rng = SimRng(c.seed);
        let initial_conns = replay_initial(&c, &mut rng);
        let snap = Snapshot::build_holding(
            initial_conns.iter().cloned(), [], None, 1, false, 1, EPOCH_MS);
        let mut landed = vec![0u64; c.capacities.len()];
        for &(_, g) in &o.answers_log {
            landed[g] += 1;
        }
        let mut replay = vec![0u64; c.capacities.len()];
        let names: Vec<String> = (0..c.regions).map(region_name).collect();
        for (k, &(_, g)) in o.answers_log.iter().enumerate() {
            let region = &names[g % c.regions];
            let ms = answer_ms(&c, k);
            let herd = HerdView::at(EPOCH_MS + ms, c.herd_window_ms.div_ceil(SLOT_MS), 1);
            let q = Query { proto: Proto::Tcp, count: c.count, region: Some(region), isp: None, family: None, steer: crate::schedule::Steer::NONE };
            let chosen = select_weighted(&snap, &q, Rules { max_load: c.max_load, fallbacks: &[], herd }, 1);
            let id = &snap.nodes[chosen[0].index].record.id;
            replay[id[3..].parse::<usize>().unwrap()] += 1;
        }
        prop_assert_eq!(landed, replay);
    }
}

/// The initial records as [`run`] draws them (same draws, same order).
fn replay_initial(c: &SimConfig, rng: &mut SimRng) -> Vec<Arc<NodeRecord>> {
    let (agents, conns) = fleet(c, rng);
    agents
        .iter()
        .enumerate()
        .map(|(i, a)| Arc::new(record(i, a, conns[i], Some((EPOCH_MS - 1, EPOCH_MS - 1)))))
        .collect()
}

/// The ms at which the `k`-th client arrives under a uniform curve.
fn answer_ms(c: &SimConfig, k: usize) -> u64 {
    let mut ms = 0;
    while (c.clients as f64 * ((ms + 1) as f64 / c.duration_ms as f64)).round() as usize <= k {
        ms += 1;
    }
    ms
}
