//! The fault schedule: what a seed draws, which faults may be in force together, and
//! what each is called in the report.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{AGENTS, MEMBERS, ROUTERS};

/// One fault, as the schedule draws it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// etcd member SIGKILLed; started again on its data.
    MemberKill(usize),
    /// etcd member cut off from its peers (its client port still answers); healed.
    MemberPartition(usize),
    /// Whichever member leads when it starts, cut off from its peers; healed.
    LeaderCut,
    /// etcd filled past its quota (alarm NOSPACE); space freed and the alarm disarmed.
    NoSpace,
    /// Router SIGKILLed mid-stream; started again on the same address.
    RouterKill(usize),
    /// Agent SIGSTOPped past its lease; SIGCONT.
    AgentFreeze(usize),
    /// Agent SIGKILLed; started again.
    AgentKill(usize),
    /// Agent restarted with its clock this many seconds off (libfaketime); restarted
    /// with the true clock at the end.
    ClockJump(usize, i64),
    /// `ctl drain`; `ctl serve` at the end.
    Drain(usize),
    /// `ctl migrate --percent N`.
    Migrate(usize, u8),
    /// A storm of clients on top of whatever else is going on; its balance is judged
    /// when it ends (see `crate::storm`).
    Storm,
}

/// Every kind, in the order the summary lists them.
pub(crate) const KINDS: [&str; 11] = [
    "member-kill",
    "member-partition",
    "leader-cut",
    "nospace",
    "router-kill",
    "agent-freeze",
    "agent-kill",
    "clock-jump",
    "drain",
    "migrate",
    "storm",
];

const CLOCK_OFFSETS: [i64; 6] = [-600, -30, -2, 2, 30, 600];
const PERCENTS: [u8; 4] = [10, 30, 50, 100];

impl Fault {
    /// The kind, as [`KINDS`] names it.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Fault::MemberKill(_) => KINDS[0],
            Fault::MemberPartition(_) => KINDS[1],
            Fault::LeaderCut => KINDS[2],
            Fault::NoSpace => KINDS[3],
            Fault::RouterKill(_) => KINDS[4],
            Fault::AgentFreeze(_) => KINDS[5],
            Fault::AgentKill(_) => KINDS[6],
            Fault::ClockJump(..) => KINDS[7],
            Fault::Drain(_) => KINDS[8],
            Fault::Migrate(..) => KINDS[9],
            Fault::Storm => KINDS[10],
        }
    }

    /// A fault of etcd's: one at a time, so that a majority is always up and joined
    /// (the product's promise holds while a majority exists).
    fn on_etcd(&self) -> bool {
        matches!(
            self,
            Fault::MemberKill(_) | Fault::MemberPartition(_) | Fault::LeaderCut | Fault::NoSpace
        )
    }

    /// The node a fault acts on: one fault per node at a time.
    pub(crate) fn node(&self) -> Option<usize> {
        match *self {
            Fault::AgentFreeze(k)
            | Fault::AgentKill(k)
            | Fault::ClockJump(k, _)
            | Fault::Drain(k)
            | Fault::Migrate(k, _) => Some(k),
            _ => None,
        }
    }

    /// Starting it writes to etcd (a new lease, a command): not while NOSPACE lasts.
    fn starts_with_a_write(&self) -> bool {
        matches!(
            self,
            Fault::ClockJump(..) | Fault::Drain(_) | Fault::Migrate(..)
        )
    }

    /// Ending it writes to etcd (a new lease, a command, a router's registration): it
    /// is held over while NOSPACE lasts, and ends once the space is back.
    pub(crate) fn ends_with_a_write(&self) -> bool {
        matches!(
            self,
            Fault::AgentFreeze(_)
                | Fault::AgentKill(_)
                | Fault::ClockJump(..)
                | Fault::Drain(_)
                | Fault::RouterKill(_)
        )
    }

    /// Whether it may not start while `other` is in force.
    pub(crate) fn clashes(&self, other: &Fault) -> bool {
        (self.on_etcd() && other.on_etcd())
            || matches!((self, other), (Fault::RouterKill(_), Fault::RouterKill(_)))
            || (*self == Fault::Storm && *other == Fault::Storm)
            || (self.node().is_some() && self.node() == other.node())
            || (*other == Fault::NoSpace && self.starts_with_a_write())
    }
}

/// The schedule: per step, the fault that starts then and how many steps it lasts.
/// The same seed gives the same schedule.
pub(crate) fn schedule(seed: u64, steps: usize) -> Vec<(Fault, usize)> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..steps)
        .map(|_| {
            let agent = rng.random_range(0..AGENTS);
            let fault = match rng.random_range(0..14) {
                0 => Fault::MemberKill(rng.random_range(0..MEMBERS)),
                1 => Fault::MemberPartition(rng.random_range(0..MEMBERS)),
                2 => Fault::LeaderCut,
                3 => Fault::NoSpace,
                4 | 5 => Fault::RouterKill(rng.random_range(0..ROUTERS)),
                6 => Fault::AgentFreeze(agent),
                7 => Fault::AgentKill(agent),
                8 => Fault::ClockJump(agent, CLOCK_OFFSETS[rng.random_range(0..6)]),
                9 => Fault::Drain(agent),
                10 | 11 => Fault::Storm,
                _ => Fault::Migrate(agent, PERCENTS[rng.random_range(0..4)]),
            };
            (fault, rng.random_range(1..=2))
        })
        .collect()
}
