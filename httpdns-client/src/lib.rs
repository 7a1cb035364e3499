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
//! config.dns.providers.push(Provider {
//!     account: "100000".into(),
//!     addrs: vec!["203.107.1.1:80".parse().unwrap(), "203.107.1.33:80".parse().unwrap()],
//!     secret: Some("your-httpdns-secret".into()),
//!     https: false,
//!     tls_name: None,
//! });
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
//! * [`dns`]: [`HttpDns`], the resolver. HTTPDNS providers (Alibaba-style, optionally
//!   signed, several addresses with failover and a per-attempt timeout) → local DNS →
//!   bootstrap IPs; a per-host TTL cache that can serve an expired answer while it
//!   refreshes in the background; [`HttpDnsResolver`] for any `reqwest` client.
//! * [`client`]: [`Client`]. `gateways()` asks a router (its address from `dns`, its
//!   domain as Host / TLS name) within a time budget, then falls back to the last good
//!   answer in a cache file (written atomically), then to a fallback gateway domain.
//!   `connect()` races the candidates happy-eyeballs style; `connect_with_retry()` backs
//!   off with the router's parameters. Every answer says where it came from
//!   ([`Source`], [`DnsSource`]).
//! * [`error`]: [`Error`], with [`Error::is_retryable`].

pub mod client;
pub mod dns;
pub mod error;

pub use client::{
    BackoffParams, Client, Config, Connection, Gateway, Gateways, Proto, RouterAnswer, Source,
};
pub use dns::{DnsConfig, DnsSource, HttpDns, HttpDnsResolver, Provider, Resolved};
pub use error::Error;
