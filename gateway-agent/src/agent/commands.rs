//! Commands: following the node's command key, applying each command once, what the
//! node applied before a restart, and the hook worker's delivery statuses.

use std::sync::Arc;
use std::time::Duration;

use registry::backoff::Backoff;
use registry::kv::KvEvent;
use registry::{
    now_ms, Applied, Command, CommandAction, HookState, HookStatus, Kv, KvError, NodeRecord,
    NodeState,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Agent;
use crate::hook::MigrateSignal;
use crate::report::Dynamic;

impl Agent {
    /// What the node applied before: `P/applied/{id}`, or for a node last run by an
    /// agent that did not write it, a previous record still alive. Retried until etcd
    /// answers: applying commands without knowing this could apply one twice.
    pub(super) async fn previous(&self, node_key: &str, applied_key: &str) -> Option<Applied> {
        let mut backoff = Backoff::for_store();
        loop {
            let attempt = async {
                if let Some(kv) = self.kv.get(applied_key).await? {
                    match Applied::parse(&kv.value) {
                        Ok(a) => return Ok(Some(a)),
                        Err(e) => {
                            warn!(key = applied_key, error = %e, "unreadable applied record ignored")
                        }
                    }
                }
                let prev = self.kv.get(node_key).await?;
                Ok::<_, KvError>(prev.and_then(|kv| {
                    let prev = NodeRecord::parse(&self.config.node.id, &kv.value).ok()?;
                    Some(Applied {
                        command: prev.applied_command?,
                        action: match prev.state {
                            NodeState::Draining => CommandAction::Drain,
                            NodeState::Serving => CommandAction::Serve,
                        },
                        state: prev.state,
                        applied_ms: prev.updated_ms.unwrap_or(0),
                        hook: prev.hook,
                    })
                }))
            };
            match tokio::time::timeout(Duration::from_secs(3), attempt).await {
                Ok(Ok(a)) => return a,
                Ok(Err(e)) => {
                    warn!(error = %e, "cannot read what this node applied before; retrying")
                }
                Err(_) => warn!("reading what this node applied before timed out; retrying"),
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

/// Follows one command key; sends `Some(value)` for each write and `None` for deletes.
/// After any failure it lists again, so the current command is always re-sent; the
/// run loop applies each id once.
pub(super) async fn watch_command(
    kv: Arc<dyn Kv>,
    key: String,
    tx: mpsc::Sender<Option<Vec<u8>>>,
    cancel: CancellationToken,
) {
    use futures::StreamExt;
    let mut backoff = Backoff::for_store();
    loop {
        let attempt = async {
            // This key alone: an agent may read its own commands and no one else's.
            let (current, revision) = kv.get_exact(&key).await?;
            let current = current.map(|e| e.value);
            let mut stream = kv.watch_key(&key, revision + 1).await?;
            if tx.send(current).await.is_err() {
                return Ok(());
            }
            backoff.reset();
            while let Some(batch) = stream.next().await {
                for ev in batch?.events {
                    let msg = match ev {
                        KvEvent::Put(e) if e.key == key => Some(e.value),
                        KvEvent::Delete { key: k, .. } if k == key => None,
                        _ => continue,
                    };
                    if tx.send(msg).await.is_err() {
                        return Ok(());
                    }
                }
            }
            Err(KvError::Unavailable("command watch ended".into()))
        };
        let result: Result<(), KvError> = tokio::select! {
            _ = cancel.cancelled() => return,
            r = attempt => r,
        };
        match result {
            Ok(()) => return,
            Err(e) => {
                let delay = backoff.next_delay();
                debug!(error = %e, retry_in_ms = delay.as_millis() as u64, "command watch interrupted");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Applies a command once. A migrate or drain asks the gateway to move clients: the
/// hook worker gets the signal, replacing any signal still undelivered (superseded).
/// Returns the new applied record, or `None` when nothing was applied.
pub(super) fn apply_command(
    key: &str,
    value: Option<Vec<u8>>,
    d: &mut Dynamic,
    has_hook: bool,
    signals: &watch::Sender<Option<MigrateSignal>>,
) -> Option<Applied> {
    let Some(bytes) = value else {
        debug!(key, "command deleted");
        return None;
    };
    let cmd = match Command::parse(&bytes) {
        Ok(c) => c,
        Err(e) => {
            warn!(key, error = %e, "malformed command ignored");
            return None;
        }
    };
    if d.applied_command.as_deref() == Some(cmd.id.as_str()) {
        info!(command = %cmd.id, "command already applied; not applied again");
        return None;
    }
    match cmd.action {
        CommandAction::Drain => d.state = NodeState::Draining,
        CommandAction::Serve => d.state = NodeState::Serving,
        CommandAction::Migrate => {}
    }
    d.applied_command = Some(cmd.id.clone());
    let percent = cmd.move_percent();
    info!(command = %cmd.id, action = cmd.action.as_str(), percent, state = d.state.as_str(), "command applied");
    if percent > 0 {
        let status = |state| HookStatus {
            command: cmd.id.clone(),
            percent,
            state,
            since_ms: now_ms(),
            attempts: 0,
            error: None,
        };
        if has_hook {
            d.hook = Some(status(HookState::Delivering));
            signals.send_replace(Some(MigrateSignal {
                action: "migrate",
                percent,
                command: cmd.id.clone(),
            }));
        } else {
            info!(command = %cmd.id, "no hook configured; the gateway is not told to move clients");
            d.hook = Some(status(HookState::NoHook));
        }
    } else {
        // A serve replaces an undelivered signal too; the worker reports it superseded.
        signals.send_replace(None);
    }
    Some(Applied {
        command: cmd.id,
        action: cmd.action,
        state: d.state,
        applied_ms: now_ms(),
        hook: d.hook.clone(),
    })
}

/// Takes a status from the hook worker. A status of a command other than the one
/// `d.hook` follows is stale (its successor was applied meanwhile) and dropped.
pub(super) fn take_hook_status(d: &mut Dynamic, applied: &mut Option<Applied>, st: HookStatus) {
    if d.hook.as_ref().is_some_and(|h| h.command != st.command) {
        return;
    }
    d.hook = Some(st);
    if let Some(a) = applied.as_mut() {
        a.hook = d.hook.clone();
    }
}

/// Takes up the command the node applied before this start: its state, its id and its
/// hook status; a migrate signal the previous run did not finish delivering goes on.
pub(super) fn resume_applied(
    a: &Applied,
    d: &mut Dynamic,
    signals: &watch::Sender<Option<MigrateSignal>>,
) {
    d.state = a.state;
    d.applied_command = Some(a.command.clone());
    d.hook = a.hook.clone();
    info!(command = %a.command, state = d.state.as_str(), hook = a.hook.as_ref().map(|h| h.state.as_str()), "resuming after the last applied command");
    // A delivery the previous run did not finish goes on.
    if let Some(h) = a
        .hook
        .as_ref()
        .filter(|h| matches!(h.state, HookState::Delivering | HookState::Retrying))
    {
        info!(command = %h.command, percent = h.percent, "resuming an undelivered migrate signal");
        signals.send_replace(Some(MigrateSignal {
            action: "migrate",
            percent: h.percent,
            command: h.command.clone(),
        }));
    }
}
