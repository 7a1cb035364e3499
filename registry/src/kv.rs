//! The store abstraction: what the agent and the router need from etcd, and no more.

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;

/// A lease id (etcd's int64).
pub type LeaseId = i64;

/// Errors from a store.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// The store could not be reached or did not answer in time; retrying later helps.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// A watch asked for history that was compacted away; list again.
    #[error("watch revision {requested} was compacted (oldest kept: {compact_revision})")]
    Compacted {
        /// The revision the watch wanted.
        requested: i64,
        /// The oldest revision the store still has.
        compact_revision: i64,
    },
    /// The store cancelled a watch; list again.
    #[error("watch cancelled: {0}")]
    WatchCancelled(String),
    /// The lease no longer exists (expired or revoked).
    #[error("lease {0:x} not found")]
    LeaseNotFound(LeaseId),
    /// The store refused the request (bad argument, permission).
    #[error("registry refused the request: {0}")]
    Rejected(String),
}

/// A key and its value at a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The raw value.
    pub value: Vec<u8>,
    /// Revision of the last change to this key.
    pub mod_revision: i64,
}

/// The keys under a prefix, at one store revision.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Every key-value below the prefix.
    pub kvs: Vec<KeyValue>,
    /// The store revision the listing reflects.
    pub revision: i64,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvEvent {
    /// A key was created or changed.
    Put(KeyValue),
    /// A key was deleted (explicitly or by its lease expiring).
    Delete {
        /// The key.
        key: String,
        /// The revision of the delete.
        mod_revision: i64,
    },
}

/// Changes delivered together, and the store revision they bring the watcher to.
#[derive(Debug, Clone, Default)]
pub struct WatchBatch {
    /// The changes, in revision order.
    pub events: Vec<KvEvent>,
    /// The store revision after these changes.
    pub revision: i64,
}

/// A stream of watch batches; an `Err` item ends the watch and calls for a new listing.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchBatch, KvError>> + Send>>;

/// Why a request to the store failed, as an operator acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// etcd is out of its space quota (alarm NOSPACE): every write is refused until
    /// an operator compacts, defragments and disarms the alarm.
    NoSpace,
    /// The credentials lack the permission (or do not authenticate).
    PermissionDenied,
    /// The etcd cluster has no leader (lost quorum).
    NoLeader,
    /// The store cannot be reached.
    Unreachable,
    /// Anything else (a bad argument, a lease etcd no longer knows, ...).
    Other,
}

impl Cause {
    /// A short name for logs and labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::NoSpace => "NOSPACE",
            Cause::PermissionDenied => "permission denied",
            Cause::NoLeader => "no leader",
            Cause::Unreachable => "unreachable",
            Cause::Other => "other",
        }
    }

    /// What it means for the one who reads the log.
    pub fn meaning(self) -> &'static str {
        match self {
            Cause::NoSpace => "etcd is out of its space quota (alarm NOSPACE): writes are refused until an operator compacts, defragments and disarms the alarm (docs/runbooks.md)",
            Cause::PermissionDenied => "the registry refuses these credentials the permission",
            Cause::NoLeader => "the etcd cluster has no leader",
            Cause::Unreachable => "the registry cannot be reached",
            Cause::Other => "the registry refused the request",
        }
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl KvError {
    /// Why the request failed, from the kind and etcd's message.
    pub fn cause(&self) -> Cause {
        match self {
            KvError::Unavailable(m) | KvError::Rejected(m) | KvError::WatchCancelled(m) => {
                let m = m.to_ascii_lowercase();
                if m.contains("database space exceeded")
                    || m.contains("nospace")
                    || m.contains("resourceexhausted")
                {
                    Cause::NoSpace
                } else if m.contains("permission denied")
                    || m.contains("permissiondenied")
                    || m.contains("unauthenticated")
                    || m.contains("authentication failed")
                    || m.contains("invalid auth token")
                {
                    Cause::PermissionDenied
                } else if m.contains("no leader") {
                    Cause::NoLeader
                } else if matches!(self, KvError::Unavailable(_)) {
                    Cause::Unreachable
                } else {
                    Cause::Other
                }
            }
            KvError::Compacted { .. } | KvError::LeaseNotFound(_) => Cause::Other,
        }
    }
}

/// An alarm etcd raises on a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alarm {
    /// Out of its space quota (`--quota-backend-bytes`): writes are refused.
    NoSpace,
    /// A member's data is corrupt.
    Corrupt,
}

impl Alarm {
    /// Every alarm, in the order they are shown.
    pub const ALL: [Alarm; 2] = [Alarm::NoSpace, Alarm::Corrupt];

    /// Its name in labels and on `/ops`: `nospace` or `corrupt`.
    pub fn as_str(self) -> &'static str {
        match self {
            Alarm::NoSpace => "nospace",
            Alarm::Corrupt => "corrupt",
        }
    }
}

/// What the agent and the router need from a key-value store with leases.
#[async_trait]
pub trait Kv: Send + Sync + 'static {
    /// One key's value, if present.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, KvError>;
    /// Every key under `prefix`, with the revision the listing reflects.
    async fn list(&self, prefix: &str) -> Result<Listing, KvError>;
    /// Writes `value` at `key`, attached to `lease` when given. Returns the new revision.
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<i64, KvError>;
    /// Deletes `key`; true when it existed.
    async fn delete(&self, key: &str) -> Result<bool, KvError>;
    /// Grants a lease of `ttl` (whole seconds, at least 1).
    async fn grant(&self, ttl: Duration) -> Result<LeaseId, KvError>;
    /// Refreshes a lease once; [`KvError::LeaseNotFound`] when it already expired.
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, KvError>;
    /// Revokes a lease, deleting every key attached to it.
    async fn revoke(&self, lease: LeaseId) -> Result<(), KvError>;
    /// Watches `prefix` from `start_revision` (inclusive).
    async fn watch(&self, prefix: &str, start_revision: i64) -> Result<WatchStream, KvError>;
    /// The value at exactly `key`, and the store's revision (to watch from the next).
    /// Reads that one key, so a client allowed only that key may call it.
    async fn get_exact(&self, key: &str) -> Result<(Option<KeyValue>, i64), KvError> {
        let l = self.list(key).await?;
        Ok((l.kvs.into_iter().find(|e| e.key == key), l.revision))
    }
    /// Watches exactly `key` from `start_revision` (inclusive); like [`Kv::get_exact`],
    /// needs permission on that key alone.
    async fn watch_key(&self, key: &str, start_revision: i64) -> Result<WatchStream, KvError> {
        self.watch(key, start_revision).await
    }
    /// The alarms raised in the store (etcd's `alarm list`), each once whatever the
    /// members raising it. A store without alarms (the in-memory one) has none.
    async fn alarms(&self) -> Result<Vec<Alarm>, KvError> {
        Ok(Vec::new())
    }
}
