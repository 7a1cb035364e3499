//! How a follower applies what it lists and watches to its view: records admitted or
//! rejected (by the contract or their binding), departures remembered, bindings judged.

use std::collections::HashSet;
use std::sync::Arc;

use tracing::{info, warn};

use super::{Follower, DEPARTED_KEPT};
use crate::binding::{Binding, Refusal};
use crate::follow_map::MapView;
use crate::kv::KeyValue;
use crate::record::NodeRecord;

impl crate::follow_map::Applies for Follower {
    fn apply_put(&mut self, kv: &KeyValue) {
        Follower::apply_put(self, kv);
    }
    fn apply_delete(&mut self, key: &str) {
        Follower::apply_delete(self, key);
    }
    fn revision(&mut self) -> &mut i64 {
        &mut self.view.revision
    }
}

impl Follower {
    /// The id part of a key (the whole key when it is not below the prefix).
    fn id_of<'a>(&self, key: &'a str) -> &'a str {
        key.strip_prefix(self.nodes_prefix.as_str()).unwrap_or(key)
    }

    fn apply_put(&mut self, kv: &KeyValue) {
        let key = kv.key.as_str();
        let parsed = self
            .layout
            .node_id(key)
            .and_then(|id| NodeRecord::parse(id, &kv.value).map(|r| (id, r)));
        match parsed {
            Ok((id, record)) => {
                let id: Arc<str> = Arc::from(id);
                let record = Arc::new(record);
                if let Err(reason) = self.judge(&id, &record) {
                    self.reject(id, record, reason, key, kv.mod_revision);
                    return;
                }
                self.rejected.remove(&id);
                self.admit(id, record);
            }
            Err(e) => {
                let id: Arc<str> = Arc::from(self.id_of(key));
                self.rejected.remove(&id);
                self.view.nodes.remove(&id);
                self.view.invalid_seen_total += 1;
                if self.logged_invalid.insert(id.clone()) {
                    warn!(key = %key, revision = kv.mod_revision, error = %e, "invalid node record skipped");
                }
                self.view.invalid.insert(id, e.to_string());
            }
        }
    }

    /// Puts a valid record, inside its binding, into the view.
    fn admit(&mut self, id: Arc<str>, record: Arc<NodeRecord>) {
        self.view.invalid.remove(&id);
        self.logged_invalid.remove(&id);
        if self.view.departed.remove(&id).is_some() {
            self.departed_seq.remove(&id);
        }
        self.view.nodes.insert(id, record);
        self.peak_nodes = self.peak_nodes.max(self.view.nodes.len());
    }

    /// Marks a well-formed record invalid because of its binding, keeping it to judge
    /// again when the binding changes.
    fn reject(
        &mut self,
        id: Arc<str>,
        record: Arc<NodeRecord>,
        reason: Refusal,
        key: &str,
        revision: i64,
    ) {
        self.view.nodes.remove(&id);
        self.view.invalid_seen_total += 1;
        if self.logged_invalid.insert(id.clone()) {
            warn!(key = %key, revision, error = %reason, "node record outside its binding skipped");
        }
        self.view.invalid.insert(id.clone(), reason.to_string());
        self.rejected.insert(id, record);
    }

    /// Whether `record` is inside its node's binding; the reason it is not.
    fn judge(&self, id: &str, record: &NodeRecord) -> Result<(), Refusal> {
        match self.parsed.get(id) {
            None if self.require_bindings => Err(Refusal::Unbound),
            None => Ok(()),
            Some(Err(e)) => Err(Refusal::Broken {
                key: self.layout.binding_key(id),
                error: e.clone(),
            }),
            Some(Ok(b)) => Ok(b.check(record)?),
        }
    }

    /// Takes a new view of the bindings and judges again the nodes whose binding
    /// changed. True when the node view changed.
    pub(super) fn set_bindings(&mut self, bindings: Arc<MapView>) -> bool {
        let old = std::mem::replace(&mut self.bindings, bindings);
        let changed: Vec<Arc<str>> = old
            .entries
            .diff(&self.bindings.entries)
            .map(|d| match d {
                imbl::ordmap::DiffItem::Add(k, _)
                | imbl::ordmap::DiffItem::Remove(k, _)
                | imbl::ordmap::DiffItem::Update { new: (k, _), .. } => k.clone(),
            })
            .collect();
        let mut view_changed = false;
        for id in changed {
            match self.bindings.get(&id) {
                Some(raw) => {
                    let parsed = Binding::parse(raw).map(Arc::new);
                    if let Err(e) = &parsed {
                        warn!(key = %self.layout.binding_key(&id), error = %e, "binding does not parse; its node's records are refused");
                    }
                    self.parsed.insert(id.clone(), parsed);
                }
                None => {
                    self.parsed.remove(&id);
                }
            }
            view_changed |= self.rejudge(&id);
        }
        view_changed
    }

    /// Judges a node's last record again after its binding changed. True when the
    /// view changed.
    fn rejudge(&mut self, id: &Arc<str>) -> bool {
        let key = self.layout.node_key(id);
        if let Some(record) = self.view.nodes.get(id).cloned() {
            if let Err(reason) = self.judge(id, &record) {
                self.reject(id.clone(), record, reason, &key, self.view.revision);
                return true;
            }
            return false;
        }
        let Some(record) = self.rejected.get(id).cloned() else {
            return false;
        };
        match self.judge(id, &record) {
            Ok(()) => {
                info!(key = %key, "node record inside its binding again; admitted");
                self.rejected.remove(id);
                self.admit(id.clone(), record);
                true
            }
            Err(reason) => {
                // Still outside, perhaps for another reason: the listing says which.
                let reason = reason.to_string();
                if self.view.invalid.get(id) != Some(&reason) {
                    self.view.invalid.insert(id.clone(), reason);
                    return true;
                }
                false
            }
        }
    }

    fn apply_delete(&mut self, key: &str) {
        let id = self.id_of(key);
        if let Some((id, last)) = self.view.nodes.remove_with_key(id) {
            self.departures += 1;
            self.view.departed.insert(id.clone(), last);
            self.departed_seq.insert(id.clone(), self.departures);
            self.departed_order.push_back((self.departures, id));
            while self.departed_order.len() > DEPARTED_KEPT.max(self.peak_nodes) {
                let Some((seq, old)) = self.departed_order.pop_front() else {
                    break;
                };
                // Only an id's last departure forgets it.
                if self.departed_seq.get(&old) == Some(&seq) {
                    self.departed_seq.remove(&old);
                    self.view.departed.remove(&old);
                }
            }
        }
        self.view.invalid.remove(id);
        self.logged_invalid.remove(id);
        self.rejected.remove(id);
    }

    pub(super) fn load(&mut self, kvs: &[KeyValue], revision: i64) {
        self.view.nodes.clear();
        self.view.invalid.clear();
        // A listing says nothing of how nodes left: forget what the watch saw.
        self.view.departed.clear();
        self.departed_order.clear();
        self.departed_seq.clear();
        self.rejected.clear();
        let before: HashSet<Arc<str>> = std::mem::take(&mut self.logged_invalid);
        for kv in kvs {
            let id = self.id_of(&kv.key);
            // Keep the "already logged" mark across resyncs for values still invalid.
            if let Some(k) = before.get(id) {
                self.logged_invalid.insert(k.clone());
            }
            self.apply_put(kv);
        }
        self.view.revision = revision;
        self.view.loaded = true;
        self.view.connected = true;
        self.view.resyncs += 1;
    }
}
