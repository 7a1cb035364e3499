//! The simulated fleet: the gateways' agents, their records, and the seeded
//! randomness every draw of a run comes from.

use std::net::{IpAddr, Ipv4Addr};

use gateway_agent::report::Dynamic;
use registry::{NodeRecord, NodeState, Ports};

use super::SimConfig;

/// SplitMix64: small, seedable, good enough for a simulation.
#[derive(Debug, Clone)]
pub(super) struct SimRng(pub(super) u64);

impl SimRng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub(super) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    pub(super) fn range(&mut self, (lo, hi): (u64, u64)) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }
    pub(super) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Virtual wall clock: ms since the epoch at the simulation's start.
pub(super) const EPOCH_MS: u64 = 1_800_000_000_000;

/// A gateway's agent, as the simulation drives it.
pub(super) struct Agent {
    pub(super) capacity: u64,
    pub(super) region: usize,
    pub(super) phase: u64,
    pub(super) skew: i64,
    pub(super) last: Option<(Dynamic, u64)>,
    pub(super) gone: bool,
}

/// The name of region `r`.
pub(super) fn region_name(r: usize) -> String {
    format!("r{r}")
}

/// Gateway `id`'s record, reporting `connections`, stamped `(sampled_ms, updated_ms)`.
pub(super) fn record(
    id: usize,
    a: &Agent,
    connections: u64,
    stamp: Option<(u64, u64)>,
) -> NodeRecord {
    let mut r = NodeRecord::new(
        format!("gw-{id:06}"),
        IpAddr::V4(Ipv4Addr::new(
            10,
            (id >> 16) as u8,
            (id >> 8) as u8,
            id as u8,
        )),
        Ports {
            tcp: Some(9000),
            ws: None,
            wss: None,
        },
        region_name(a.region),
        a.capacity,
        connections,
    );
    if let Some((sampled, updated)) = stamp {
        r.sampled_ms = Some(sampled);
        r.updated_ms = Some(updated);
    }
    r
}

/// The agents and their initial connections (around `initial_load`, ±50 %), as drawn
/// from `rng`.
pub(super) fn fleet(c: &SimConfig, rng: &mut SimRng) -> (Vec<Agent>, Vec<u64>) {
    let regions = c.regions.max(1);
    let agents: Vec<Agent> = c
        .capacities
        .iter()
        .enumerate()
        .map(|(i, &capacity)| Agent {
            capacity: capacity.max(1),
            region: i % regions,
            phase: rng.below(c.sample_interval_ms.max(1)),
            skew: if c.agent_skew_ms > 0 {
                rng.below(2 * c.agent_skew_ms as u64 + 1) as i64 - c.agent_skew_ms
            } else {
                0
            },
            last: None,
            gone: false,
        })
        .collect();
    let conns = agents
        .iter()
        .map(|a| (c.initial_load * (0.5 + rng.unit()) * a.capacity as f64) as u64)
        .collect();
    (agents, conns)
}

/// What an agent compares to decide whether to write: a healthy, serving gateway's
/// `connections`.
pub(super) fn dynamic(connections: u64) -> Dynamic {
    Dynamic {
        connections,
        healthy: true,
        state: NodeState::Serving,
        applied_command: None,
        hook: None,
    }
}
