//! Test harness for end-to-end tests: real etcd processes and the real binaries.
//!
//! # Layout
//!
//! * `etcd`: [`Etcd`], one etcd member (or a 3-member cluster via [`Etcd::cluster`]) on
//!   free loopback ports with a temporary data dir; stopped and removed on drop, also
//!   when the test panics. Missing `etcd` fails the test with the install command.
//!   [`Etcd::secure`] runs it with TLS and authentication ([`EtcdTls`]).
//! * `process`: [`Proc`], a spawned binary with its output captured to a file, killed on
//!   drop; [`bin`], the path of a workspace binary, built once per test process so tests
//!   never run stale code; [`run`] and [`rss_kib`].
//! * `router`: [`RouterProc`], a `router-server` started with a test config and waited
//!   on until ready; [`router_ctl`] and [`gateway_ids`].
//! * `http`: [`http_get`], [`http_request`], [`get_json`], [`get_json_from`] and [`connect_from`], tiny
//!   std-only helpers for probing; [`HookServer`] receives the agent's hook POSTs.
//! * `metrics`: [`has_sample`] and [`sample`] read a Prometheus metrics text.
//! * `node`: [`NodeJson`] builds a node record's JSON; [`node_record`] reads one back.
//! * `ca`: [`TestCa`], a throwaway certificate authority; [`make_private`].
//! * `httpdns`: [`HttpDnsServer`], a fake HTTPDNS provider.
//! * `util`: [`wait_until`] polls a condition with a deadline instead of sleeping;
//!   [`free_port`] and [`which`].
//! * [`P`]: the registry's key prefix, as the binaries use it by default.
//! * [`gateway`]: TCP and TLS gateways for SDK tests.
//! * [`netns`]: a network of namespaces for partition tests; [`isps`]: two "ISPs" in
//!   namespaces, for what clients see. Both remove, first, what a killed test process
//!   left of its own (`leftovers`).
//!
//! Everything but [`gateway`], [`netns`] and [`isps`] is re-exported here, so tests name it
//! `harness::Etcd`, `harness::http_get` and so on.

mod ca;
pub mod clock;
mod etcd;
pub mod gateway;
mod http;
mod httpdns;
pub mod isps;
mod leftovers;
mod metrics;
pub mod netns;
mod node;
mod process;
mod router;
mod util;

pub use ca::{make_private, TestCa};
pub use etcd::{Etcd, EtcdTls};
pub use http::{
    client_network, connect_from, get_json, get_json_from, http_get, http_request, HookServer,
};
pub use httpdns::HttpDnsServer;
pub use metrics::{has_sample, sample};
pub use node::{node_record, NodeJson};
pub use process::{bin, rss_kib, run, Proc};
pub use router::{gateway_ids, router_ctl, RouterProc};
pub use util::{free_port, stdout_of, tool, wait_until, which};

/// The registry's key prefix (`--prefix` left at its default), for reading and writing
/// keys in etcd directly.
pub const P: &str = registry::DEFAULT_PREFIX;
