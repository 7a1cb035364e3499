//! Writing the record under the lease: registration (taking up the previous run's
//! lease when it is still alive), keep-alive, and the reports the policy asks for.

use std::time::Duration;

use registry::lease::Renewal;
use registry::{now_ms, Kv, KvError, LeaseId};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::run::{or_cancel, RunState};
use super::Agent;

impl RunState {
    /// Without a lease, once a grant is due: writes the record under the previous
    /// run's lease if it is still alive, else under a new one. `None` when `cancel`
    /// fires meanwhile.
    pub(super) async fn register(&mut self) -> Option<()> {
        if !self.lease.grant_due() {
            return Some(());
        }
        let value = self.agent.record(&self.d).to_json();
        let taking_up = self.resume.is_some();
        let (lease, resume) = (&mut self.lease, &mut self.resume);
        let (kv, node_key) = (&*self.agent.kv, &self.keys.node);
        let attempt = async {
            if let Some(old) = *resume {
                match lease.resume(kv, old, node_key, value.clone()).await {
                    Err(KvError::LeaseNotFound(_)) => {
                        info!(
                            lease = format_args!("{old:x}"),
                            "the previous run's lease expired; granting a new one"
                        );
                        *resume = None;
                    }
                    other => return other,
                }
            }
            lease.register(kv, node_key, value).await
        };
        match or_cancel(&self.cancel, attempt).await? {
            Ok(id) => self.registered(id, taking_up).await,
            Err(e) => {
                self.agent.config.metrics.etcd_connected.set(0);
                let retry_in_ms = self
                    .lease
                    .next_grant()
                    .saturating_duration_since(Instant::now())
                    .as_millis() as u64;
                let node_id = &self.agent.config.node.id;
                if !self
                    .faults
                    .failed(node_id, &self.keys.node, "registration", &e)
                {
                    debug!(retry_in_ms, "registering again later");
                }
            }
        }
        Some(())
    }

    /// The record is written under lease `id`: counts and says so, and revokes the
    /// previous run's lease when this one replaced it.
    async fn registered(&mut self, id: LeaseId, taking_up: bool) {
        let m = &self.agent.config.metrics;
        self.faults.succeeded(&self.agent.config.node.id);
        m.reported();
        m.registrations.inc();
        m.registered.set(1);
        self.last_written = Some((self.d.clone(), Instant::now()));
        if let Some(old) = self.superseded.take() {
            // The record lives under the new lease now; the old one holds
            // nothing of ours. Revoked before the status names the new lease,
            // so whoever waits for that lease finds the old one gone.
            if let Err(e) = lease_revoke(&*self.agent.kv, old).await {
                debug!(error = %e, "revoking the previous run's lease failed; it expires with its TTL");
            }
        }
        self.agent.status.send_modify(|s| {
            s.registrations += 1;
            s.writes += 1;
            s.lease = Some(id);
            s.written = Some(self.d.clone());
        });
        let ttl = self.agent.config.ttl;
        if taking_up && self.resume == Some(id) {
            info!(node_id = %self.agent.config.node.id, lease = format_args!("{id:x}"), ttl_secs = ttl.as_secs(), "registered: took up the lease of the previous run");
        } else {
            info!(node_id = %self.agent.config.node.id, lease = format_args!("{id:x}"), ttl_secs = ttl.as_secs(), "registered");
        }
        self.resume = None;
    }

    /// Renews the lease when a renewal is due. `Some(false)` when the lease was lost
    /// (the next turn registers again), `None` when `cancel` fires meanwhile.
    pub(super) async fn keep_alive(&mut self) -> Option<bool> {
        let renewal = or_cancel(&self.cancel, self.lease.renew(&*self.agent.kv)).await?;
        let m = &self.agent.config.metrics;
        match renewal {
            Renewal::NotDue => {}
            Renewal::Renewed => {
                m.lease_renewals.inc();
                m.etcd_connected.set(1);
            }
            Renewal::Lost(why) => {
                m.registered.set(0);
                warn!(node_id = %self.agent.config.node.id, "lease lost ({why}), registering again");
                self.agent.status.send_modify(|s| s.lease = None);
                return Some(false);
            }
            Renewal::Failed(e) => {
                m.etcd_connected.set(0);
                let node_id = &self.agent.config.node.id;
                self.faults
                    .failed(node_id, &self.keys.node, "keep-alive", &e);
            }
        }
        Some(true)
    }

    /// Writes the record under the lease when the report policy asks for it. `None`
    /// when `cancel` fires meanwhile.
    pub(super) async fn report(&mut self) -> Option<()> {
        let Some(id) = self.lease.id() else {
            return Some(());
        };
        let last = self.last_written.as_ref().map(|(w, at)| (w, *at));
        let config = &self.agent.config;
        if config
            .policy
            .should_write(last, &self.d, config.node.capacity, Instant::now())
        {
            let value = self.agent.record(&self.d).to_json();
            let put = self.agent.kv.put(&self.keys.node, value, Some(id));
            let result = or_cancel(&self.cancel, put).await?;
            let m = &self.agent.config.metrics;
            match result {
                Ok(_) => {
                    self.faults.succeeded(&self.agent.config.node.id);
                    m.reported();
                    self.last_written = Some((self.d.clone(), Instant::now()));
                    self.agent.status.send_modify(|s| {
                        s.writes += 1;
                        s.written = Some(self.d.clone());
                    });
                    debug!(
                        connections = self.d.connections,
                        healthy = self.d.healthy,
                        state = self.d.state.as_str(),
                        "reported"
                    );
                }
                Err(KvError::LeaseNotFound(_)) => {
                    m.registered.set(0);
                    warn!(node_id = %self.agent.config.node.id, "lease expired, registering again");
                    self.lease.lost();
                    self.agent.status.send_modify(|s| s.lease = None);
                }
                Err(e) => {
                    m.etcd_connected.set(0);
                    let node_id = &self.agent.config.node.id;
                    self.faults.failed(node_id, &self.keys.node, "report", &e);
                }
            }
        }
        Some(())
    }
}

impl Agent {
    /// The lease the previous run left in the state file for this node, if any.
    pub(super) fn restart_state(&self, node_key: &str) -> Option<crate::restart::RestartState> {
        let path = self.config.state_file.as_ref()?;
        match crate::restart::RestartState::load(path, node_key) {
            Ok(Some(s)) => {
                info!(
                    lease = format_args!("{:x}", s.lease),
                    stopped_ms_ago = now_ms().saturating_sub(s.stopped_ms),
                    "found the lease of the previous run; taking it up"
                );
                Some(s)
            }
            Ok(None) => None,
            Err(e) => {
                warn!(error = %e, "state file set aside; registering under a new lease");
                None
            }
        }
    }
}

/// Revokes `lease` within 2 s.
async fn lease_revoke(kv: &dyn Kv, lease: LeaseId) -> Result<(), KvError> {
    tokio::time::timeout(Duration::from_secs(2), kv.revoke(lease))
        .await
        .unwrap_or_else(|_| Err(KvError::Unavailable("revoke: no answer within 2 s".into())))
}
