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
    use crate::{Agent, AgentConfig, AgentHandle, NodeSpec};
    use registry::memory::MemoryKv;
    use registry::{Kv, NodeState, Ports};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

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

    /// An agent for node `gw-r` on the in-memory store, with a state file.
    struct Restarts {
        kv: Arc<MemoryKv>,
        config: AgentConfig,
        path: PathBuf,
        key: String,
        cmd_key: String,
        _dir: tempfile::TempDir,
    }

    /// One run of the agent.
    struct Running {
        handle: AgentHandle,
        cancel: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    impl Restarts {
        fn new() -> Restarts {
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
            Restarts {
                kv,
                config,
                path,
                key,
                cmd_key,
                _dir: dir,
            }
        }

        fn run(&self, config: AgentConfig) -> Running {
            let (agent, handle) = Agent::new(self.kv.clone(), config);
            let cancel = CancellationToken::new();
            let task = tokio::spawn(agent.run(cancel.clone()));
            Running {
                handle,
                cancel,
                task,
            }
        }

        async fn command(&self, json: &[u8]) {
            self.kv
                .put(&self.cmd_key, json.to_vec(), None)
                .await
                .unwrap();
        }

        async fn record(&self) -> Option<registry::NodeRecord> {
            let kv = self.kv.get(&self.key).await.unwrap()?;
            Some(registry::NodeRecord::parse("gw-r", &kv.value).unwrap())
        }

        async fn present(&self) -> bool {
            self.kv.get(&self.key).await.unwrap().is_some()
        }

        fn kept(&self) -> Option<RestartState> {
            RestartState::load(&self.path, &self.key).unwrap()
        }
    }

    impl Running {
        async fn lease(&self) -> LeaseId {
            let mut st = self.handle.status();
            let s = st.wait_for(|s| s.lease.is_some()).await.unwrap();
            s.lease.unwrap()
        }

        async fn written(&self, what: impl Fn(&crate::report::Dynamic) -> bool) {
            let mut st = self.handle.status();
            st.wait_for(|s| s.written.as_ref().is_some_and(&what))
                .await
                .unwrap();
        }

        async fn stop(self) {
            self.cancel.cancel();
            self.task.await.unwrap();
        }
    }

    /// The whole agent on the in-memory store: a stop with a state file while the
    /// gateway serves keeps the record, the next start takes the same lease up and
    /// does not apply the last command again; a stop after a drain revokes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_agent_restart_keeps_the_lease_and_a_drained_stop_revokes() {
        let r = Restarts::new();
        let first = a_stop_while_serving_keeps_the_lease(&r).await;
        the_next_start_takes_the_lease_up(&r, first).await;
        another_ttl_moves_the_record_to_a_new_lease(&r, first).await;
        a_drained_stop_revokes(&r).await;
        a_stop_asked_to_leave_revokes(&r).await;
    }

    /// Returns the lease kept for the next start.
    async fn a_stop_while_serving_keeps_the_lease(r: &Restarts) -> LeaseId {
        let run = r.run(r.config.clone());
        let first = run.lease().await;
        r.command(br#"{"id":"m-1","action":"migrate","percent":10}"#)
            .await;
        run.written(|w| w.applied_command.as_deref() == Some("m-1"))
            .await;
        run.stop().await;
        assert!(r.present().await, "the record stays");
        let kept = r.kept().unwrap();
        assert_eq!((kept.lease, kept.ttl_secs), (first, 10));
        first
    }

    /// The next start takes the same lease up; m-1 is known as applied.
    async fn the_next_start_takes_the_lease_up(r: &Restarts, first: LeaseId) {
        let run = r.run(r.config.clone());
        assert_eq!(run.lease().await, first);
        assert_eq!(run.handle.status().borrow().registrations, 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rec = r.record().await.unwrap();
        assert_eq!(rec.applied_command.as_deref(), Some("m-1"));
        assert_eq!(rec.state, NodeState::Serving);
        run.stop().await;
    }

    /// A start with another TTL: a new lease, the record moved onto it without a gap,
    /// the old lease revoked.
    async fn another_ttl_moves_the_record_to_a_new_lease(r: &Restarts, first: LeaseId) {
        let mut shorter = r.config.clone();
        shorter.ttl = Duration::from_secs(5);
        let run = r.run(shorter);
        let second = run.lease().await;
        assert_ne!(second, first);
        assert!(matches!(
            r.kv.keep_alive(first).await,
            Err(registry::KvError::LeaseNotFound(_))
        ));
        assert!(r.present().await);
        run.stop().await;
        assert_eq!(r.kept().unwrap().lease, second);
    }

    /// A drain, then a stop: the node leaves, and the file goes.
    async fn a_drained_stop_revokes(r: &Restarts) {
        let run = r.run(r.config.clone());
        let _ = run.lease().await;
        r.command(br#"{"id":"d-1","action":"drain"}"#).await;
        run.written(|w| w.state == NodeState::Draining).await;
        run.stop().await;
        assert!(!r.present().await, "revoked");
        assert_eq!(r.kept(), None);
    }

    /// Asked to leave: revoked even though nothing else says so.
    async fn a_stop_asked_to_leave_revokes(r: &Restarts) {
        r.command(br#"{"id":"s-1","action":"serve"}"#).await;
        let run = r.run(r.config.clone());
        let _ = run.lease().await;
        run.handle.leave_on_stop();
        run.stop().await;
        assert!(!r.present().await, "revoked on leave");
        assert_eq!(r.kept(), None);
    }
}
