//! Shutdown: stopping the tasks, letting a due migrate signal go out, and then leaving
//! (the node marked draining, the lease revoked) or keeping the lease for a restart.

use std::time::Duration;

use registry::{now_ms, HookState, LeaseId, NodeState};
use tokio::time::Instant;
use tracing::{info, warn};

use super::commands::take_hook_status;
use super::run::RunState;
use super::Agent;
use crate::report::Dynamic;

/// On shutdown, how long pending migrate signals and the agent's tasks may take.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

impl RunState {
    /// Stops the tasks, gives a migrate signal still due the grace to go out, records
    /// the applied command's outcome, then leaves: marks the node draining and revokes
    /// the lease, or (with a state file and a gateway that serves) keeps it for the
    /// next start.
    pub(super) async fn shutdown(mut self) {
        self.tasks.stop.cancel();
        self.tasks.tracker.close();
        self.tasks.hooks.close();
        self.agent.config.metrics.registered.set(0);
        // With a state file, a stop while the gateway serves is a restart of the agent
        // alone: the record stays under its lease for the next start to take up.
        let restart = self
            .agent
            .stays_for_restart(self.lease.id(), &self.d, &self.http)
            .await;
        // A planned departure, said before anything else: `draining` takes the node
        // out of every answer while it still runs, and routers count a node that left
        // draining as planned (a rolling restart is not a crash: it never trips their
        // protect threshold, nor is the node served again while they hold).
        let marked = match self.lease.id() {
            Some(id) if restart.is_none() => {
                self.agent.mark_leaving(&self.keys.node, id, &self.d).await
            }
            _ => None,
        };
        self.deliver_pending_signal().await;
        self.join_tasks().await;
        self.save_applied().await;
        if let (Some(state), Some(path)) = (restart, &self.agent.config.state_file) {
            let node_id = &self.agent.config.node.id;
            match state.save(path) {
                Ok(()) => {
                    info!(node_id = %node_id, lease = format_args!("{:x}", state.lease), ttl_secs = state.ttl_secs, file = %path.display(), "stopped for a restart: lease kept, the record stays until the next start takes it up or its TTL runs out")
                }
                Err(e) => {
                    warn!(node_id = %node_id, error = %e, "could not keep the lease for the next start; the record stays until its TTL runs out")
                }
            }
            return;
        }
        self.leave(marked).await;
    }

    /// Waits, up to [`SHUTDOWN_GRACE`], for a migrate signal still due: the hook worker
    /// ends once it is delivered (or replaced), or when the grace is over.
    async fn deliver_pending_signal(&mut self) {
        let pending = |d: &Dynamic| {
            d.hook
                .as_ref()
                .is_some_and(|h| matches!(h.state, HookState::Delivering | HookState::Retrying))
        };
        if self.has_hook && pending(&self.d) {
            info!(node_id = %self.agent.config.node.id, "delivering the pending migrate signal before exit");
        }
        let grace = tokio::time::sleep(SHUTDOWN_GRACE);
        tokio::pin!(grace);
        while self.has_hook && pending(&self.d) {
            tokio::select! {
                _ = &mut grace => {
                    warn!(node_id = %self.agent.config.node.id, "migrate signal still undelivered after the shutdown grace; the next start resumes it");
                    break;
                }
                st = self.links.hook_status.recv() => match st {
                    Some(st) => take_hook_status(&mut self.d, &mut self.applied, st),
                    None => break,
                },
            }
        }
    }

    /// Stops the hook worker, waits up to a second for every task, and takes the hook
    /// statuses still queued.
    async fn join_tasks(&mut self) {
        self.tasks.hooks_stop.cancel();
        if tokio::time::timeout(Duration::from_secs(1), async {
            self.tasks.tracker.wait().await;
            self.tasks.hooks.wait().await;
        })
        .await
        .is_err()
        {
            warn!(node_id = %self.agent.config.node.id, "tasks still running after the shutdown grace");
        }
        while let Ok(st) = self.links.hook_status.try_recv() {
            take_hook_status(&mut self.d, &mut self.applied, st);
        }
    }

    /// Writes the applied command's outcome as it stands, for the next start.
    async fn save_applied(&self) {
        if let Some(a) = self
            .applied
            .as_ref()
            .filter(|a| Some(*a) != self.applied_written.as_ref())
        {
            match tokio::time::timeout(
                Duration::from_secs(2),
                self.agent.kv.put(&self.keys.applied, a.to_json(), None),
            )
            .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    warn!(node_id = %self.agent.config.node.id, error = %e, "could not record the applied command's outcome")
                }
                Err(_) => {
                    warn!(node_id = %self.agent.config.node.id, "recording the applied command's outcome timed out")
                }
            }
        }
    }

    /// The node leaves: the state file goes, and once every router has had the grace
    /// to see the `draining` mark (written at `marked`), the lease is revoked.
    async fn leave(&mut self, marked: Option<Instant>) {
        let node_id = &self.agent.config.node.id;
        if let Some(path) = &self.agent.config.state_file {
            if let Err(e) = crate::restart::RestartState::remove(path) {
                warn!(node_id = %node_id, error = %e, "could not remove the state file");
            }
        }
        if self.lease.id().is_some() {
            // Every router has had the grace to see the `draining` mark.
            if let Some(at) = marked {
                tokio::time::sleep_until(at + self.agent.config.leave_grace).await;
            }
            match self
                .lease
                .revoke(&*self.agent.kv, Duration::from_secs(2))
                .await
            {
                Ok(()) => {
                    info!(node_id = %node_id, "lease revoked, node deregistered")
                }
                Err(e) => {
                    warn!(node_id = %node_id, error = %e, "lease revoke failed; the key expires with its TTL")
                }
            }
        }
    }
}

impl Agent {
    /// On a stop with a state file: the record to leave for the next start when this
    /// stop is a restart, or `None` when the node leaves. It leaves when it holds no
    /// lease, was asked to (`leave_on_stop`, a drain command), or its gateway is down:
    /// the health verdict is unhealthy or one last probe fails (an operator who stops
    /// the gateway and then the agent means the node to go).
    async fn stays_for_restart(
        &self,
        lease: Option<LeaseId>,
        d: &Dynamic,
        http: &reqwest::Client,
    ) -> Option<crate::restart::RestartState> {
        self.config.state_file.as_ref()?;
        let lease = lease?;
        let leave = |why: &str| {
            info!(node_id = %self.config.node.id, why, "leaving: the lease is revoked");
            None
        };
        if self.handle.leave.load(std::sync::atomic::Ordering::SeqCst) {
            return leave("asked to leave on stop");
        }
        if d.state == NodeState::Draining {
            return leave("the node was drained");
        }
        if !d.healthy {
            return leave("the gateway is unhealthy");
        }
        if let Some(probe) = &self.config.health {
            if let Err(e) = probe.check(http, Duration::from_secs(1)).await {
                return leave(&format!("the gateway is down ({e})"));
            }
        }
        Some(crate::restart::RestartState {
            node_id: self.config.node.id.clone(),
            node_key: self.config.layout.node_key(&self.config.node.id),
            lease,
            ttl_secs: self.config.ttl.as_secs(),
            stopped_ms: now_ms(),
        })
    }

    /// Writes the record as `draining` under `lease`; returns when, if it was written.
    async fn mark_leaving(&self, node_key: &str, lease: LeaseId, d: &Dynamic) -> Option<Instant> {
        let mut leaving = d.clone();
        leaving.state = NodeState::Draining;
        let value = self.record(&leaving).to_json();
        let put = self.kv.put(node_key, value, Some(lease));
        match tokio::time::timeout(Duration::from_secs(2), put).await {
            Ok(Ok(_)) => {
                info!(node_id = %self.config.node.id, grace_ms = self.config.leave_grace.as_millis() as u64, "marked draining before leaving");
                Some(Instant::now())
            }
            Ok(Err(e)) => {
                warn!(node_id = %self.config.node.id, error = %e, "could not mark the node draining before leaving");
                None
            }
            Err(_) => {
                warn!(node_id = %self.config.node.id, "marking the node draining before leaving timed out");
                None
            }
        }
    }
}
