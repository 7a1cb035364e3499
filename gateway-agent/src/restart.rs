//! The restart record (`--state-file`): what an agent that stops while its gateway
//! still serves leaves for its next start, so that start takes up the same lease and
//! the node never leaves the registry.
//!
//! The file holds one JSON object: the node's id and key, the lease id, its TTL and
//! when the agent stopped. It is replaced atomically (a temporary file in the same
//! directory, synced, renamed; mode 0600) and removed when the agent revokes its lease
//! instead. A record for another node, or one that cannot be read, is set aside with a
//! warning: the agent then registers under a new lease as without the file.

use std::path::{Path, PathBuf};

use registry::LeaseId;
use serde::{Deserialize, Serialize};

/// What a stopped agent left for its next start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartState {
    /// The node's id.
    pub node_id: String,
    /// The key the record lives at (`P/nodes/{id}`): a file kept across a change of
    /// prefix is not taken up.
    pub node_key: String,
    /// The lease the record lives under.
    pub lease: LeaseId,
    /// The lease's TTL in seconds: a start with another `--ttl` grants a new lease.
    pub ttl_secs: u64,
    /// Wall-clock ms when the agent stopped.
    pub stopped_ms: u64,
}

/// Why the state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// Reading, writing or removing it failed.
    #[error("state file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// It is not a restart record.
    #[error("state file {path}: not a restart record: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        source: serde_json::Error,
    },
    /// It was written for another node (or another prefix).
    #[error("state file {path}: written for {found}, not for this node ({expected})")]
    OtherNode {
        /// The file.
        path: PathBuf,
        /// The node key it names.
        found: String,
        /// This node's key.
        expected: String,
    },
}

impl RestartState {
    /// Reads the record at `path` for the node at `node_key`; `None` when there is no
    /// file (a first start, or the last stop revoked the lease).
    pub fn load(path: &Path, node_key: &str) -> Result<Option<RestartState>, StateFileError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateFileError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let state: RestartState =
            serde_json::from_slice(&bytes).map_err(|source| StateFileError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        if state.node_key != node_key {
            return Err(StateFileError::OtherNode {
                path: path.to_path_buf(),
                found: state.node_key,
                expected: node_key.to_string(),
            });
        }
        Ok(Some(state))
    }

    /// Writes the record to `path` atomically, readable by its owner alone (0600).
    pub fn save(&self, path: &Path) -> Result<(), StateFileError> {
        let mut text = serde_json::to_vec_pretty(self).expect("a restart record serializes");
        text.push(b'\n');
        crate::blocklist::write_atomic_mode(path, &text, 0o600).map_err(|source| {
            StateFileError::Io {
                path: path.to_path_buf(),
                source,
            }
        })
    }

    /// Removes the record at `path`, if there is one.
    pub fn remove(path: &Path) -> Result<(), StateFileError> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateFileError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> RestartState {
        RestartState {
            node_id: "gw-1".into(),
            node_key: "/p/nodes/gw-1".into(),
            lease: 0x1234,
            ttl_secs: 10,
            stopped_ms: 1,
        }
    }

    #[test]
    fn saved_with_mode_0600_read_back_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.state");
        assert_eq!(RestartState::load(&path, "/p/nodes/gw-1").unwrap(), None);
        state().save(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(
            RestartState::load(&path, "/p/nodes/gw-1").unwrap(),
            Some(state())
        );
        // Only the file itself is left in the directory (no temporary files).
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        RestartState::remove(&path).unwrap();
        RestartState::remove(&path).unwrap();
        assert_eq!(RestartState::load(&path, "/p/nodes/gw-1").unwrap(), None);
    }

    #[test]
    fn another_nodes_or_a_garbled_record_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.state");
        state().save(&path).unwrap();
        let e = RestartState::load(&path, "/p/nodes/gw-2").unwrap_err();
        assert!(matches!(e, StateFileError::OtherNode { .. }), "{e}");
        std::fs::write(&path, "{not json").unwrap();
        let e = RestartState::load(&path, "/p/nodes/gw-1").unwrap_err();
        assert!(e.to_string().contains("not a restart record"), "{e}");
    }

    /// The whole agent on the in-memory store: a stop with a state file while the
    /// gateway serves keeps the record, the next start takes the same lease up and
    /// does not apply the last command again; a stop after a drain revokes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_agent_restart_keeps_the_lease_and_a_drained_stop_revokes() {
        use crate::{Agent, AgentConfig, NodeSpec};
        use registry::memory::MemoryKv;
        use registry::{Kv, NodeState, Ports};
        use std::time::Duration;
        use tokio_util::sync::CancellationToken;

        let mut ports = Ports::default();
        ports.set(registry::Proto::Tcp, 8000);
        let spec = NodeSpec {
            id: "gw-r".into(),
            ip: "10.0.0.1".parse().unwrap(),
            ports,
            region: "r".into(),
            capacity: 100,
            ipv6: None,
            domain: None,
            zone: None,
            isp: None,
            labels: Default::default(),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.state");
        let kv = MemoryKv::new();
        let mut config = AgentConfig::new(spec);
        config.state_file = Some(path.clone());
        let key = config.layout.node_key("gw-r");
        let cmd_key = config.layout.command_key("gw-r");

        let run = |config: AgentConfig| {
            let (agent, handle) = Agent::new(kv.clone(), config);
            let cancel = CancellationToken::new();
            let task = tokio::spawn(agent.run(cancel.clone()));
            (handle, cancel, task)
        };
        let lease_of = |handle: &crate::AgentHandle| {
            let mut st = handle.status();
            async move {
                let s = st.wait_for(|s| s.lease.is_some()).await.unwrap();
                s.lease.unwrap()
            }
        };

        let (handle, cancel, task) = run(config.clone());
        let first = lease_of(&handle).await;
        kv.put(
            &cmd_key,
            br#"{"id":"m-1","action":"migrate","percent":10}"#.to_vec(),
            None,
        )
        .await
        .unwrap();
        let mut st = handle.status();
        st.wait_for(|s| {
            s.written
                .as_ref()
                .is_some_and(|w| w.applied_command.as_deref() == Some("m-1"))
        })
        .await
        .unwrap();
        cancel.cancel();
        task.await.unwrap();
        assert!(kv.get(&key).await.unwrap().is_some(), "the record stays");
        let kept = RestartState::load(&path, &key).unwrap().unwrap();
        assert_eq!((kept.lease, kept.ttl_secs), (first, 10));

        // The next start takes the same lease up; m-1 is known as applied.
        let (handle, cancel, task) = run(config.clone());
        assert_eq!(lease_of(&handle).await, first);
        assert_eq!(handle.status().borrow().registrations, 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = registry::NodeRecord::parse("gw-r", &kv.get(&key).await.unwrap().unwrap().value)
            .unwrap();
        assert_eq!(r.applied_command.as_deref(), Some("m-1"));
        assert_eq!(r.state, NodeState::Serving);
        cancel.cancel();
        task.await.unwrap();

        // A start with another TTL: a new lease, the record moved onto it without a gap,
        // the old lease revoked.
        let mut shorter = config.clone();
        shorter.ttl = Duration::from_secs(5);
        let (handle, cancel, task) = run(shorter);
        let second = lease_of(&handle).await;
        assert_ne!(second, first);
        assert!(matches!(
            kv.keep_alive(first).await,
            Err(registry::KvError::LeaseNotFound(_))
        ));
        assert!(kv.get(&key).await.unwrap().is_some());
        cancel.cancel();
        task.await.unwrap();
        assert_eq!(
            RestartState::load(&path, &key).unwrap().unwrap().lease,
            second
        );
        let (handle, cancel, task) = run(config.clone());
        let _ = lease_of(&handle).await;

        // A drain, then a stop: the node leaves, and the file goes.
        kv.put(&cmd_key, br#"{"id":"d-1","action":"drain"}"#.to_vec(), None)
            .await
            .unwrap();
        let mut st = handle.status();
        st.wait_for(|s| {
            s.written
                .as_ref()
                .is_some_and(|w| w.state == NodeState::Draining)
        })
        .await
        .unwrap();
        cancel.cancel();
        task.await.unwrap();
        assert!(kv.get(&key).await.unwrap().is_none(), "revoked");
        assert_eq!(RestartState::load(&path, &key).unwrap(), None);

        // Asked to leave: revoked even though nothing else says so.
        kv.put(&cmd_key, br#"{"id":"s-1","action":"serve"}"#.to_vec(), None)
            .await
            .unwrap();
        let (handle, cancel, task) = run(config);
        let _ = lease_of(&handle).await;
        handle.leave_on_stop();
        cancel.cancel();
        task.await.unwrap();
        assert!(kv.get(&key).await.unwrap().is_none(), "revoked on leave");
        assert_eq!(RestartState::load(&path, &key).unwrap(), None);
    }
}
