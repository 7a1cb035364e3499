//! The client SDK: find the router without trusting local DNS, get candidate gateways,
//! connect to one — and keep working when parts of that chain are down.
//!
//! # Quick start
//!
//! ```no_run
//! use std::time::Duration;
//! use httpdns_client::{Client, Config, Provider};
//!
//! # async fn run() -> Result<(), httpdns_client::Error> {
//! let mut config = Config::new("router.example.com");
//! config.dns.providers.push(
//!     Provider::alibaba(
//!         "100000",
//!         vec!["203.107.1.1:80".parse().unwrap(), "203.107.1.33:80".parse().unwrap()],
//!     )
//!     .with_secret("your-httpdns-secret"),
//! );
//! config.cache_file = Some("/data/app/gateways.json".into());
//! config.fallback_domain = Some("gw.example.com".into());
//! let client = Client::new(config)?;
//! let conn = client.connect_with_retry(5).await?;
//! println!("connected to {} via {:?}, heartbeat every {:?}", conn.gateway.id, conn.source, conn.heartbeat);
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! * [`dns`]: [`HttpDns`], the resolver. HTTPDNS providers (`dns::providers`:
//!   Alibaba-style, optionally signed; Tencent DNSPod; DNS-over-HTTPS), local DNS and
//!   bootstrap IPs, raced with a short stagger within the caller's deadline; IPv6
//!   asked for when the host has it; a bounded per-host cache (`dns::cache`) with
//!   clamped TTLs and one lookup in flight per host, that can serve an expired answer
//!   while it refreshes in the background, and keeps HTTPDNS answers on disk
//!   (`DnsConfig::answers_file`) so a cold start skips HTTPDNS; `HttpDnsResolver`
//!   for any `reqwest` client (feature `reqwest`).
//! * The SDK's own requests (routers, HTTPS providers) go through one small HTTP
//!   client on hyper (the `http` module): HTTP/1.1, HTTP/2 by ALPN with feature
//!   `http2`, connections kept per address and name.
//! * [`client`]: [`Client`], [`Config`]. `gateways()` asks a router (the `router`
//!   module: its address from `dns`, IPv6 and IPv4 interleaved, each client starting
//!   at its own address; its domain as Host / TLS name) within a time budget that
//!   counts resolution too. A router that refuses (503 `no_gateways`, 429) is an
//!   answer: [`Error::Refused`] with `Retry-After`. Only when no router can be
//!   reached: the last good answer in a cache file (written atomically; bounded age,
//!   same protocol), then a fallback gateway domain. The router's domain is
//!   pre-resolved when the client is built.
//! * Connecting: `connect()` races the candidates happy-eyeballs style;
//!   `connect_tls()` does the same with the TLS handshake inside the race (SNI and
//!   certificate name: the gateway's `domain`); `migrate()` leaves a gateway for
//!   another; the `*_with_retry` variants wait `Retry-After` or back off with the
//!   router's parameters. Every answer says where it came from ([`Source`],
//!   [`DnsSource`]). One staggered race (the `race` module) serves resolution and
//!   connecting alike.
//! * Trust: HTTPS to providers, routers and gateways trusts the platform's store
//!   (`rustls-platform-verifier`) plus `Config::extra_roots`.
//! * [`error`]: [`Error`], typed, each keeping its causes ([`Failure`],
//!   [`FailureKind`]: refused, timed out, TLS, HTTP status with the body).

mod cache_file;
pub mod client;
mod config;
mod connect;
pub mod dns;
pub mod error;
mod http;
pub mod limits;
mod race;
mod router;
mod trust;

pub use client::{
    BackoffParams, Client, Config, Connection, Gateway, Gateways, Proto, RouterAnswer, Source,
};
pub use connect::TlsConnection;
#[cfg(feature = "reqwest")]
pub use dns::HttpDnsResolver;
pub use dns::{DnsConfig, DnsSource, HttpDns, Ipv6Mode, Provider, ProviderKind, Resolved};
pub use error::{Error, Failure, FailureKind, Failures};
