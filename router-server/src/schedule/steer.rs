//! What the selection is told about one client network beyond the fleet: an operator
//! policy (`registry::policy`): the groups its client is never sent to, the group
//! this answer's candidates come from first, and the capped groups this answer holds
//! back; and the gateways its clients' reports demoted (`crate::feedback`). Held-back
//! and demoted nodes are answered only after every other candidate.

use std::sync::Arc;

use registry::policy::{Group, Policy, Ratio};
use registry::NodeRecord;

/// What a policy decides for one answer.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Steer<'a> {
    /// Groups never answered to the client.
    pub exclude: &'a [Group],
    /// The group the answer's candidates come from first (the rest, if it cannot
    /// fill the answer, from anywhere else).
    pub first: Option<&'a Group>,
    /// The policy's caps.
    pub caps: &'a [Ratio],
    /// The caps (bit `k`: `caps[k]`) whose group this answer holds back.
    pub held: u8,
    /// Nodes (by id) demoted for the client's network.
    pub demoted: &'a [Arc<str>],
}

impl<'a> Steer<'a> {
    /// No policy.
    pub const NONE: Steer<'static> = Steer {
        exclude: &[],
        first: None,
        caps: &[],
        held: 0,
        demoted: &[],
    };

    /// `policy`'s decision for its answer number `n` (see [`Policy::group_for`],
    /// [`Policy::held_back`]).
    pub fn of(policy: &'a Policy, n: u64) -> Steer<'a> {
        Steer {
            exclude: &policy.exclude,
            first: policy.group_for(n),
            caps: &policy.caps,
            held: policy.held_back(n),
            demoted: &[],
        }
    }

    /// The same, with `demoted` demoted.
    pub fn demoting(self, demoted: &'a [Arc<str>]) -> Steer<'a> {
        Steer { demoted, ..self }
    }

    /// True when the node of `record` may be answered in this pass: not excluded, in
    /// the group asked for first while one is, neither held back nor demoted.
    pub fn admits(&self, record: &NodeRecord) -> bool {
        !self.excludes(record)
            && self.first.is_none_or(|g| g.contains(record))
            && !self.last(record)
    }

    /// True when the node of `record` is in a capped group this answer holds back.
    pub fn holds_back(&self, record: &NodeRecord) -> bool {
        self.held != 0
            && self
                .caps
                .iter()
                .enumerate()
                .any(|(k, c)| self.held & (1 << k) != 0 && c.to.contains(record))
    }

    /// True when the node of `record` is demoted for this network.
    pub fn demotes(&self, record: &NodeRecord) -> bool {
        self.demoted.iter().any(|d| **d == *record.id)
    }

    /// True when the node of `record` comes after every other candidate.
    pub fn last(&self, record: &NodeRecord) -> bool {
        self.holds_back(record) || self.demotes(record)
    }

    /// True when some nodes may come last: the answer takes a last pass for them.
    pub(super) fn has_last(&self) -> bool {
        self.held != 0 || !self.demoted.is_empty()
    }

    /// The same exclusions and first group with every node admitted: the last pass.
    pub(super) fn with_last(self) -> Steer<'a> {
        Steer {
            held: 0,
            demoted: &[],
            ..self
        }
    }

    /// The same exclusions, with no group first: the rest of the answer.
    pub(super) fn rest(self) -> Steer<'a> {
        Steer {
            first: None,
            ..self
        }
    }

    /// True when the node of `record` is excluded outright.
    pub fn excludes(&self, record: &NodeRecord) -> bool {
        self.exclude.iter().any(|g| g.contains(record))
    }
}
