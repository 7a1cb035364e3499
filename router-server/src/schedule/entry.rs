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
    /// When the reported count was sampled, on this router's clock (see
    /// [`sample_time`]). Later answers are not in it.
    pub sampled_ms: u64,
    /// The least delivery offset of this node's reports (see [`sample_time`]).
    delivery: Option<Delivery>,
    /// Rank among equally loaded nodes (a per-router random order).
    pub tie: u64,
    /// The node's answer fields, JSON-escaped once per report instead of per answer.
    pub json: Arc<NodeJson>,
    /// `1 / capacity`: the scan multiplies instead of dividing for every node.
    inv_capacity: f64,
    /// The reported load, inline: a lower bound of the projected load that lets the
    /// scan reject most nodes without following a pointer.
    pub(super) reported_load: f64,
    /// The reported connections, inline for the same reason.
    connections: u64,
    /// Gone from the registry without a drain and served only because protect holds
    /// it: offered after every live candidate (the node may well be dead).
    pub held: bool,
}

impl NodeEntry {
    /// `(connections + answers not in the report) / capacity`.
    pub fn projected_load(&self, herd: &HerdView) -> f64 {
        let conns = self
            .connections
            .saturating_add(herd.pending(&self.assigned, self.sampled_ms));
        conns as f64 * self.inv_capacity
    }

    /// The projected load, and a lower bound of it until the herd counts' slot ends
    /// (see [`HerdView::pending_floor`]), computed the same way.
    pub(super) fn loads(&self, herd: &HerdView) -> (f64, f64) {
        let (pending, floor) = herd.pending_and_floor(&self.assigned, self.sampled_ms);
        let load = |p: u64| self.connections.saturating_add(p) as f64 * self.inv_capacity;
        (load(pending), load(floor))
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
        NodeEntry {
            assigned: prev.map(|e| e.assigned.clone()).unwrap_or_default(),
            sampled_ms,
            delivery,
            tie,
            json: Arc::new(NodeJson::of(&record)),
            inv_capacity: 1.0 / record.capacity as f64,
            // The projected load's own formula with nothing assigned, so it is an exact
            // lower bound (no rounding difference at ties).
            reported_load: record.connections as f64 * (1.0 / record.capacity as f64),
            connections: record.connections,
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
