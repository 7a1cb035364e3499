//! An operator policy (`registry::policy`) as the selection applies it to one answer:
//! the groups its client is never sent to, and the group this answer's candidates
//! come from first.

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
}

impl<'a> Steer<'a> {
    /// No policy.
    pub const NONE: Steer<'static> = Steer {
        exclude: &[],
        first: None,
    };

    /// `policy`'s decision for its answer number `n` (see [`Policy::group_for`]).
    pub fn of(policy: &'a Policy, n: u64) -> Steer<'a> {
        Steer {
            exclude: &policy.exclude,
            first: policy.group_for(n),
        }
    }

    /// True when the node of `record` may be answered in this pass: not excluded, and
    /// in the group asked for first, while one is.
    pub fn admits(&self, record: &NodeRecord) -> bool {
        !self.excludes(record) && self.first.is_none_or(|g| g.contains(record))
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
