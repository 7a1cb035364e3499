//! What a storm measured: the outcome of a run, and the max/mean of load it is
//! summed up by.

use super::fleet::Agent;

/// Max/mean per region at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Virtual ms since the start.
    pub at_ms: u64,
    /// Max/mean of load over each region's gateways (regions without gateways: 0).
    pub max_mean: Vec<f64>,
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Max/mean per region at the end (after the tail).
    pub max_mean: Vec<f64>,
    /// The worst region's max/mean at the end.
    pub worst_max_mean: f64,
    /// Max/mean of the whole fleet at the end.
    pub fleet_max_mean: f64,
    /// Over time.
    pub samples: Vec<Sample>,
    /// Connections that landed on a node already at or above `max_load` of capacity.
    pub over_max_load: u64,
    /// The highest load any node reached.
    pub peak_load: f64,
    /// Answers given.
    pub answers: u64,
    /// Clients that got no candidate.
    pub refused: u64,
    /// Answers naming a node that was not eligible in the answering router's view
    /// (must stay 0).
    pub ineligible_named: u64,
    /// Reports written by agents.
    pub reports: u64,
    /// A negative herd count seen (must stay false).
    pub negative_herd: bool,
    /// Per client, in arrival order, the answering router and the node id first named
    /// (kept when `record_answers` was asked).
    pub answers_log: Vec<(usize, usize)>,
    /// Connections per gateway at the end.
    pub final_connections: Vec<u64>,
}

/// Max/mean of `loads` (0 when there are none, or all are 0).
pub(super) fn max_mean(loads: impl Iterator<Item = f64>) -> f64 {
    let (mut max, mut sum, mut n) = (0.0f64, 0.0, 0usize);
    for l in loads {
        max = max.max(l);
        sum += l;
        n += 1;
    }
    if n == 0 || sum == 0.0 {
        0.0
    } else {
        max / (sum / n as f64)
    }
}

/// Max/mean of load over each region's gateways still up.
pub(super) fn per_region(agents: &[Agent], conns: &[u64], regions: usize) -> Vec<f64> {
    (0..regions)
        .map(|r| {
            max_mean(
                agents
                    .iter()
                    .zip(conns)
                    .filter(|(a, _)| a.region == r && !a.gone)
                    .map(|(a, &n)| n as f64 / a.capacity as f64),
            )
        })
        .collect()
}
