//! What the selection is told about one client network beyond the fleet: an operator
//! policy (`registry::policy`): the groups its client is never sent to and the group
//! this answer's candidates come from first; and the gateways its clients' reports
//! demoted (`crate::feedback`): answered only after every other candidate.

use registry::policy::{Group, Policy};
use registry::NodeRecord;

/// What a policy decides for one answer.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Steer<'a> {
    /// Groups never answered to the client.
    pub exclude: &'a [Group],
    /// The group the answer's candidates come from first (the rest, if it cannot
    /// fill the answer, from anywhere else).
    pub first: Option<&'a Group>,
    /// Nodes (by id) demoted for the client's network: left out of every pass, then
    /// taken, in the usual order, only if the answer is not full without them.
    pub demoted: &'a [std::sync::Arc<str>],
}

impl<'a> Steer<'a> {
    /// No policy.
    pub const NONE: Steer<'static> = Steer {
        exclude: &[],
        first: None,
        demoted: &[],
    };

    /// `policy`'s decision for its answer number `n` (see [`Policy::group_for`]).
    pub fn of(policy: &'a Policy, n: u64) -> Steer<'a> {
        Steer {
            exclude: &policy.exclude,
            first: policy.group_for(n),
            demoted: &[],
        }
    }

    /// The same, with `demoted` demoted.
    pub fn demoting(self, demoted: &'a [std::sync::Arc<str>]) -> Steer<'a> {
        Steer { demoted, ..self }
    }

    /// True when the node of `record` may be answered in this pass: not excluded, and
    /// in the group asked for first, while one is.
    pub fn admits(&self, record: &NodeRecord) -> bool {
        !self.excludes(record)
            && self.first.is_none_or(|g| g.contains(record))
            && !self.demotes(record)
    }

    /// True when the node of `record` is demoted for this network.
    pub fn demotes(&self, record: &NodeRecord) -> bool {
        self.demoted.iter().any(|d| **d == *record.id)
    }

    /// The same policy with the demoted nodes admitted: the last part of an answer.
    pub(super) fn with_demoted(self) -> Steer<'a> {
        Steer {
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
