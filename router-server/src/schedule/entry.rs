//! A [`NodeEntry`]: one node as the router serves it, made from its record once per
//! report.

use std::sync::Arc;

use registry::{NodeRecord, NodeState};

use crate::answer::NodeJson;
use crate::herd::{HerdCounter, HerdView};

use super::arrival::{sample_time, Delivery};

/// One node as the router serves it.
#[derive(Debug, Clone)]
pub struct NodeEntry {
    /// The record as last reported.
    pub record: Arc<NodeRecord>,
    /// This router's answers naming this node first, by time slot; kept across reports.
    pub assigned: Arc<HerdCounter>,
    /// When the reported count was sampled, and what the projected load is made of.
    pub basis: LoadBasis,
    /// The least delivery offset of this node's reports (see [`sample_time`]).
    delivery: Option<Delivery>,
    /// Rank among equally loaded nodes (a per-router random order).
    pub tie: u64,
    /// The node's answer fields, JSON-escaped once per report instead of per answer.
    pub json: Arc<NodeJson>,
    /// The reported load, inline: a lower bound of the projected load that lets the
    /// scan reject most nodes without following a pointer.
    pub(super) reported_load: f64,
    /// Gone from the registry without a drain and served only because protect holds
    /// it: offered after every live candidate (the node may well be dead).
    pub held: bool,
}

/// What a node's projected load is made of besides its herd counter: inline, so that
/// the scan and the herd-adjusted order (which keeps a copy beside each key) read it
/// without following a pointer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadBasis {
    /// When the reported count was sampled, on this router's clock (see
    /// [`sample_time`]). Later answers are not in it.
    pub sampled_ms: u64,
    /// The reported connections.
    connections: u64,
    /// `1 / capacity`: the scan multiplies instead of dividing for every node.
    inv_capacity: f64,
}

impl LoadBasis {
    /// The projected load, and a lower bound of it until the herd counts' slot ends
    /// (see [`HerdView::pending_floor`]), computed the same way.
    pub(super) fn loads(&self, assigned: &HerdCounter, herd: &HerdView) -> (f64, f64) {
        let (pending, floor) = herd.pending_and_floor(assigned, self.sampled_ms);
        (self.load(pending), self.load(floor))
    }

    /// The load with `pending` clients added to the reported ones. With none added it
    /// is the reported load exactly (no rounding difference at ties).
    fn load(&self, pending: u64) -> f64 {
        self.connections.saturating_add(pending) as f64 * self.inv_capacity
    }
}

impl NodeEntry {
    /// `(connections + answers not in the report) / capacity`.
    pub fn projected_load(&self, herd: &HerdView) -> f64 {
        self.basis.load(self.pending(herd))
    }

    /// The clients answered this node since its report was sampled (scaled to every
    /// router's answers).
    pub fn pending(&self, herd: &HerdView) -> u64 {
        herd.pending(&self.assigned, self.basis.sampled_ms)
    }

    /// [`LoadBasis::loads`] of this node.
    pub(super) fn loads(&self, herd: &HerdView) -> (f64, f64) {
        self.basis.loads(&self.assigned, herd)
    }
}

impl NodeEntry {
    /// The entry for a new report; `prev` is the same node's entry before it.
    pub(super) fn new(
        record: Arc<NodeRecord>,
        prev: Option<&NodeEntry>,
        tie: u64,
        received: u64,
    ) -> Self {
        let (sampled_ms, delivery) = sample_time(&record, prev.and_then(|e| e.delivery), received);
        let basis = LoadBasis {
            sampled_ms,
            connections: record.connections,
            inv_capacity: 1.0 / record.capacity as f64,
        };
        NodeEntry {
            assigned: prev.map(|e| e.assigned.clone()).unwrap_or_default(),
            basis,
            delivery,
            tie,
            json: Arc::new(NodeJson::of(&record)),
            // The projected load's own formula with nothing assigned, so it is an exact
            // lower bound.
            reported_load: basis.load(0),
            record,
            held: false,
        }
    }

    /// Serving and healthy.
    pub(super) fn eligible(&self) -> bool {
        self.record.state == NodeState::Serving && self.record.healthy
    }

    /// Eligible and live: the node is in the indexes of the protocols it has ports for.
    /// (Held nodes are kept apart, in [`super::Snapshot::held`].)
    pub(super) fn indexed(&self) -> bool {
        self.eligible() && !self.held
    }
}

impl NodeEntry {
    /// This entry for `record`, the same report it was made from (or an equal one),
    /// at tie rank `tie`: its herd counter and serialized fields kept.
    pub(super) fn same_report(&self, record: Arc<NodeRecord>, tie: u64) -> NodeEntry {
        NodeEntry {
            record,
            json: self.json.clone(),
            assigned: self.assigned.clone(),
            tie,
            held: false,
            ..*self
        }
    }
}
