//! The SDK for apps: [`httpdns_client`] behind a foreign-function interface that uniffi
//! turns into Kotlin (Android), Swift (iOS) and Python. `scripts/bindings.sh` builds
//! the library and generates the sources; `bindings/tests/` drives them on the JVM and
//! in Python against the real router.
//!
//! * [`GatewayClient`]: built from an [`SdkConfig`]; `gateways()`, `connect()`,
//!   `connect_tls()`, `migrate()`, their `*_with_retry` forms, `prefetch()`,
//!   `network_changed()`, and `lookup()` (the router's resolver for an app's own HTTP
//!   client: OkHttp's `Dns` is three lines over it).
//! * [`GatewayConnection`]: the connected gateway; the app reads and writes through it
//!   (plain or TLS), or takes the socket's file descriptor (plain only) for its own
//!   I/O.
//! * [`SdkError`]: the error's kind as the variant, with its message, its cause chain
//!   (outermost first) and the router's `Retry-After`.
//!
//! Async calls are suspend functions in Kotlin, `async` in Swift and awaitables in
//! Python. They run on one Tokio runtime the library owns (two worker threads), so the
//! app needs none.
//!
//! # The migration flow
//!
//! A gateway that drains or sheds `percent` % of its clients sends them its migration
//! signal, spread over a window (that spreading is the gateway's job). On the signal,
//! and when a gateway closes the connection on purpose, the app calls
//! `migrate(conn)` (or `migrate_with_retry`): a fresh router answer, never the gateway
//! being left. On failure it backs off with the router's parameters, as the
//! `*_with_retry` calls do. After a connection is simply lost, `connect()` again: it
//! asks a router afresh and uses the last answer only when no router can be reached.

uniffi::setup_scaffolding!("gateway_sdk");

mod client;
mod config;
mod connection;
mod error;
mod info;
mod runtime;

pub use client::GatewayClient;
pub use config::{Proto, ProviderConfig, ProviderKind, SdkConfig};
pub use connection::GatewayConnection;
pub use error::SdkError;
pub use info::{GatewayInfo, GatewaysInfo};
pub use runtime::settle;
