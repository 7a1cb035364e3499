//! The gateway agent: keeps one gateway node registered in the registry.
//!
//! # Layout
//!
//! * [`config`]: the command line (clap, every flag also an `AGENT_*` variable) and its
//!   validation into an [`AgentConfig`].
//! * [`agent`]: the run loop. It grants a lease, writes the [`registry::NodeRecord`]
//!   under it, keeps it alive, re-registers after a lost lease, applies commands, and
//!   revokes the lease on shutdown.
//! * [`report`]: the pure policy deciding when a load change is worth a write.
//! * [`load`]: connection-count sources (`static`, `file`, `tcp-port`, `http-json`).
//! * [`health`]: probes (`tcp:`, `http:`) and their hysteresis.
//! * [`metrics`]: the agent's own `/metrics`, `/healthz` and `/readyz` (`--metrics-listen`).
//! * [`restart`]: the state file that lets a restarted agent take up its lease.
//! * [`hook`]: how the gateway hears "move N % of your clients" (HTTP or callback).
//!
//! Embedding gateways build an [`AgentConfig`], call [`Agent::new`] and feed counts
//! through [`AgentHandle::set_connections`]; the binary does the same from flags.

pub mod agent;
pub mod blocklist;
pub mod config;
pub mod faults;
pub mod health;
pub mod hook;
pub mod load;
pub mod metrics;
pub mod report;
pub mod restart;
pub mod sockdiag;

pub use agent::{Agent, AgentConfig, AgentHandle, AgentStatus, NodeSpec};
pub use hook::{FnHook, Hook, HookError, HttpHook, MigrateSignal};
pub use report::ReportPolicy;
