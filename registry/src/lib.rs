//! The registry contract shared by `gateway-agent` and `router-server`.
//!
//! # Layout
//!
//! * [`record`]: [`NodeRecord`] and [`Command`], the JSON values stored in etcd, with
//!   the contract's validation (required fields, defaults, unknown fields ignored).
//! * [`binding`]: [`binding::Binding`], the operator's limits on what a node's record
//!   may claim (`P/bindings/{id}`), and the check of a record against them.
//! * [`keys`]: the key layout under a prefix (`P/nodes/{id}`, `P/commands/{id}`).
//! * [`kv`]: the [`Kv`] trait — get, put under a lease, leases, prefix watch — that
//!   both stores implement, so everything above it is written once.
//! * [`memory`]: an in-process store with etcd's lease and watch semantics, for the
//!   demo and for tests.
//! * [`etcd`]: the same trait over a real etcd cluster (`etcd-client`); with
//!   [`security`] (TLS and auth) and [`access`], behind the default feature `etcd`, so
//!   the contract alone builds without protoc.
//! * [`follow`]: list + watch + resync loop that turns a store into a stream of
//!   [`follow::NodeView`] snapshots; the router reads those.
//! * [`follow_map`]: the same loop for any prefix, publishing raw values
//!   ([`follow_map::MapView`]); operator keys (bindings, block list) are followed
//!   through it.
//! * [`lease`]: one key kept alive under a lease (the agent's record, a router's
//!   registration): grant, renew on schedule, presume lost, revoke.
//! * [`access`]: least-privilege roles and users for the key layout (`ctl auth`).
//! * [`backoff`]: jittered exponential backoff shared by every retry loop.
//! * [`cli`]: the binaries' shared command-line convention (one line, exit 2).
//! * [`net`]: client networks as written in lists and bindings (IPv4 as IPv4).
//!
//! Data flows one way: agents `put` records under their lease; `follow` lists the node
//! prefix, watches from the next revision, and publishes immutable views. Any watch
//! failure (compaction, cancellation, lost connection) ends in a fresh list, so a
//! follower never keeps a node the store no longer has.

#[cfg(feature = "etcd")]
pub mod access;
pub mod audit;
pub mod backoff;
pub mod binding;
pub mod blocklist;
pub mod build_info;
#[cfg(feature = "etcd")]
pub mod cli;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod follow;
pub mod follow_map;
pub mod keys;
pub mod kv;
pub mod lease;
pub mod memory;
pub mod metrics_text;
pub mod net;
pub mod policy;
pub mod record;
#[cfg(feature = "etcd")]
pub mod security;

pub use imbl;
pub use keys::{Layout, DEFAULT_PREFIX};
pub use kv::{Alarm, Cause, Kv, KvError, LeaseId};
pub use record::{
    now_ms, Applied, Command, CommandAction, HookState, HookStatus, NodeRecord, NodeState, Ports,
    Proto, RecordError,
};
