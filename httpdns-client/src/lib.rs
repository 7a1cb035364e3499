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
//!   reached: the last good answer in a cache file (written atomically and privately;
//!   bounded age and size, same protocol), then a fallback gateway domain. The router's domain is
//!   pre-resolved when the client is built.
//! * Connecting: `connect()` races the candidates happy-eyeballs style;
//!   `connect_tls()` does the same with the TLS handshake inside the race (SNI and
//!   certificate name: the gateway's `domain`); `migrate()` leaves a gateway for
//!   another; the `*_with_retry` variants wait `Retry-After` or back off with the
//!   router's parameters. Every answer says where it came from ([`Source`],
//!   [`DnsSource`]). One staggered race (the `race` module) serves resolution and
//!   connecting alike.
//! * Connect outcomes (the `outcomes` module): a sampled share of connect calls
//!   (`Config::report_sample`, 25 %) records, for each candidate of a router's answer
//!   it started dialling, the gateway's id, how the attempt ended (connected, refused,
//!   timed out, TLS, other) and after how many milliseconds — no address, device or
//!   user. The next router that answers gets them (`POST /outcomes`) in the
//!   background, at most once per `Config::report_interval` (30 s), at most 32 at a
//!   time (newer ones are dropped while 32 wait; a failed report is dropped, never
//!   sent again); `Config::report_outcomes = false` records and sends nothing.
//! * Trust: HTTPS to providers, routers and gateways trusts the platform's store
//!   (`rustls-platform-verifier`) plus `Config::extra_roots`. With
//!   `Config::gateway_domain_suffixes` (empty by default) the app pins the gateway
//!   domains `connect_tls()` accepts: a candidate whose `domain` does not end with one
//!   of them on a label boundary (`.gw.example.com` allows `a.gw.example.com`, not
//!   `evilgw.example.com`) is passed over ([`FailureKind::DomainNotAllowed`]) and the
//!   next one tried, so a router cannot pick the name the certificate is checked
//!   against.
//! * [`limits`]: what strangers send is bounded before it is used. Routers, HTTPDNS
//!   providers and files on disk may be hostile or broken; their times are clamped
//!   before any `Duration` or `Instant` arithmetic: `Retry-After` to 1 h (also
//!   18446744073709551615), a router's `ttl_secs` to 1 s..1 day, `heartbeat_secs` to
//!   1 s..1 h, the backoff to `base_ms`/`max_ms` of 1 ms..10 min, `factor` 1..10 and
//!   `jitter` 0..1 (NaN takes the default), HTTPDNS TTLs to 1 day and `max_stale` to 7
//!   days. A router answer holds at most the `count` candidates asked for.
//! * Files: the cache file and the HTTPDNS answers file are written through a new
//!   temporary file in the same directory with an unguessable name, created
//!   exclusively (`O_EXCL`: a symlink planted there is never followed) with mode 0600,
//!   synced, renamed over the target (a symlink at the target is replaced, not written
//!   through), and the directory synced. They are read only when they are regular
//!   files of at most 1 MiB; a larger, malformed or foreign file is ignored with a log
//!   line, never a panic.
//! * [`error`]: [`Error`], typed, each keeping its causes ([`Failure`],
//!   [`FailureKind`]: refused, timed out, TLS, HTTP status with the body).

mod answer;
mod cache_file;
pub mod client;
mod config;
mod connect;
pub mod dns;
pub mod error;
mod files;
mod http;
pub mod limits;
mod outcomes;
mod race;
mod report;
mod router;
mod trust;

pub use client::{
    BackoffExt, BackoffParams, Client, Config, Connection, Gateway, Gateways, Proto, RouterAnswer,
    Source,
};
pub use connect::TlsConnection;
#[cfg(feature = "reqwest")]
pub use dns::HttpDnsResolver;
pub use dns::{DnsConfig, DnsSource, HttpDns, Ipv6Mode, Provider, ProviderKind, Resolved};
pub use error::{Error, Failure, FailureKind, Failures};
