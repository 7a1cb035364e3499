//! Candidate selection: the contract's scheduling rules as a pure function over an
//! immutable [`Snapshot`].
//!
//! * **Eligible**: serving, healthy, has the requested port and address family, and a
//!   *reported* load below `max_load`. Nodes whose projected load (below) is also below
//!   it come first; the others only after them (`overflow_fill`): the projected load
//!   is an estimate made from answers, which an asker gets for free, so it may reorder
//!   candidates but never empties an answer. Only reported load refuses.
//! * **Region order**: the client's region, then its fallbacks in order, then any.
//! * **Line order**: within each of those, the nodes on the client's ISP line (and the
//!   multi-line ones) before the region's other lines (see [`line`]).
//! * **Operator policy** ([`Steer`]): groups excluded for the client's network are
//!   never answered; with ratios, the answer's group comes first, by the rules above.
//! * **Least loaded first, herd-safe**: the load used is the *projected* load, the
//!   reported connections plus the clients the routers sent since the report's sample
//!   (see [`crate::herd`]). Each answer adds one client to its first candidate, so a
//!   reconnect storm fills nodes evenly instead of all landing on the node that was
//!   least loaded at the last report. The counter lives with the node across snapshots
//!   and reports.
//!
//! Static eligibility (state, health, port) is indexed once per snapshot, per region
//! and protocol, and each index is sorted by reported load. A request walks only the
//! nodes that can serve it, least reported load first, keeping the best `count`, and
//! stops as soon as the next node's reported load (a lower bound of its projected load)
//! cannot beat the worst kept one. Without a burst that is `count` + 1 nodes whatever
//! the fleet size. During a burst it would be every node whose projected load has been
//! levelled: past [`SCAN_BUDGET`] nodes the request walks the index's herd-adjusted
//! [`order`] instead, which reads about `count` nodes at any fleet size.
//!
//! Layout:
//!
//! * `arrival.rs`: when each report's count was sampled, on this router's clock
//!   ([`Arrival`], the agents' clock offsets, the registries' lag);
//! * `snapshot.rs`: the [`Snapshot`], built from the records;
//! * `entry.rs`: a [`NodeEntry`], one node as a snapshot serves it;
//! * `index.rs`: the sorted indexes, per region and every region, per ISP line and
//!   per protocol;
//! * `line.rs`: which nodes serve which ISP's clients;
//! * `patch.rs`: a snapshot patched with new reports of nodes it has;
//! * `select.rs`: [`select()`] and its variants, the overflow and held fills;
//! * `order.rs`: the herd-adjusted order an index is walked in during a burst;
//! * `steer.rs`: an operator policy as one answer applies it;
//! * `explain.rs`: the answer to one query without counting it, and why each other
//!   node is not in it (for operators; no request runs it);
//! * `tests/`: the tests by concern, and the rules written out the slow way that the
//!   property tests compare the selection with.

mod arrival;
mod entry;
mod explain;
mod index;
pub mod line;
mod order;
mod patch;
mod select;
mod snapshot;
mod steer;

pub use arrival::Arrival;
pub use entry::{LoadBasis, NodeEntry};
pub use explain::{explain, Explained, Reason, Tier, Verdict};
pub use select::{
    select, select_budgeted, select_weighted, Candidate, Chosen, Query, Rules, MAX_COUNT,
    OVERFLOW_SCAN, SCAN_BUDGET,
};
pub use snapshot::Snapshot;
pub use steer::Steer;

#[cfg(test)]
mod tests;
