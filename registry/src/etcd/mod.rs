//! The [`Kv`](crate::Kv) trait over a real etcd cluster, through `etcd-client`.
//!
//! Built for a stock etcd and for clusters whose members come and go:
//!
//! * **One channel per endpoint, with failover.** A call goes to the endpoint that last
//!   answered; when it cannot be reached (connect error, no leader, no answer by the
//!   deadline) the next endpoint is tried at once, and the switch is logged with both
//!   names. (One balanced channel over all endpoints kept picking a dead member.)
//! * **Keep-alive pings a stock etcd accepts.** etcd's `--grpc-keepalive-min-time` is
//!   5 s and it refuses pings on connections without streams: a client pinging more
//!   often is sent GOAWAY `too_many_pings` and its watches drop. Pings go every 10 s
//!   (configurable) and only while a stream is open; a dead connection still fails its
//!   watch within interval + timeout.
//! * **One keep-alive stream per lease**, reused for every renewal.
//! * **A deadline on every call**, short for small requests (so a report stuck on a
//!   member that lost its leader is retried elsewhere within a second), longer for
//!   listing a whole fleet.
//! * **Errors classified by gRPC status code**, never by message text.

mod connect;
mod errors;
mod failover;
mod kv;
mod lease;
mod watch;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

use crate::kv::LeaseId;
use crate::security::EtcdSecurity;
use lease::Keeper;

pub use connect::{connect_at_start, parse_endpoints, EndpointsError, StartError};

/// Timeouts for talking to etcd.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// TCP connect timeout per endpoint.
    pub connect_timeout: Duration,
    /// Deadline of each small request (get, put, delete, lease calls, watch creation).
    pub request_timeout: Duration,
    /// Deadline of listing a prefix (a whole fleet's records).
    pub list_timeout: Duration,
    /// HTTP/2 keep-alive ping interval, sent only while a stream is open. Keep it above
    /// etcd's `--grpc-keepalive-min-time` (5 s by default).
    pub keep_alive: Duration,
    /// How long a ping may go unanswered before the connection is declared dead.
    pub keep_alive_timeout: Duration,
    /// Keys per page of a listing. A listing is read in pages at one revision (as
    /// Kubernetes' reflector does), so no answer goes over the client's 4 MB message
    /// limit; a page that would is asked again at half the size, and the rest of the
    /// listing keeps that size. 10,000 records of a typical 250-400 B fit one page.
    /// The number of pages is what a listing costs: a 100,000-node fleet is listed in
    /// 0.5-0.8 s in pages of 10,000 against 2.7-3.3 s in pages of 1,000.
    pub list_page: std::num::NonZeroU32,
    /// TLS and credentials.
    pub security: EtcdSecurity,
    /// How long a call keeps trying while every endpoint fails and at least one member
    /// is up and talking (a cluster between leaders: it answers "no leader", or cannot
    /// serve the call). It passes over the endpoints again, [`RETRY_PAUSE`] apart, the
    /// talking ones first, until one succeeds or this has passed. A cluster none of
    /// whose members talks (refused, silent) fails after one pass, and a refusal (a
    /// wrong password, no permission) at once. Zero (the default) is one pass: the
    /// agent and the router retry in their own loops. `ctl` waits out an election
    /// this way, so a command issued at a cut lands once the majority has a leader. A
    /// call sent again is the same request: a command written twice is one command
    /// (agents apply a command id once).
    pub retry_for: Duration,
}

/// The pause between passes over the endpoints within [`EtcdOptions::retry_for`].
pub const RETRY_PAUSE: Duration = Duration::from_millis(100);

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            list_timeout: Duration::from_secs(15),
            keep_alive: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(5),
            list_page: std::num::NonZeroU32::new(10_000).expect("not zero"),
            security: EtcdSecurity::default(),
            retry_for: Duration::ZERO,
        }
    }
}

/// The connect options made from the security files, and the clients made with them.
struct Channels {
    /// One client (one channel) per endpoint, in the order given, made on first use:
    /// with a user, making one authenticates, which needs that endpoint up.
    clients: Vec<tokio::sync::OnceCell<Client>>,
    options: ConnectOptions,
    /// What the security files looked like when these options were made.
    stamp: Vec<FileStamp>,
}

struct Inner {
    endpoints: Vec<String>,
    /// Replaced when a certificate, key, CA or password file changes: calls from then on
    /// connect with the new files (established connections keep going until they
    /// end, as TLS needs the files only at the handshake).
    channels: std::sync::RwLock<Arc<Channels>>,
    /// When the security files were last looked at.
    checked: std::sync::Mutex<std::time::Instant>,
    /// The endpoint calls go to first: the last one that answered. Watches opened on
    /// another endpoint end when it changes (see `watch_range`).
    current: tokio::sync::watch::Sender<usize>,
    /// Per endpoint: did its last call succeed? A long call (a listing) goes to an
    /// endpoint not known to answer only after a quick probe, so a blackholed member
    /// costs the short deadline, not the long one.
    answering: Vec<AtomicBool>,
    opts: EtcdOptions,
    keepers: tokio::sync::Mutex<HashMap<LeaseId, Keeper>>,
}

/// A store backed by etcd.
#[derive(Clone)]
pub struct EtcdKv {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EtcdKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdKv")
            .field("endpoints", &self.inner.endpoints)
            .finish_non_exhaustive()
    }
}

/// A file's modification time, size and inode (`None` when it cannot be read): a
/// rename over it, as certificate tools do, changes the inode.
type FileStamp = Option<(std::time::SystemTime, u64, u64)>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoints("http://127.0.0.1:2379, http://h:1")
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            parse_endpoints(" , ").unwrap_err().to_string(),
            "no etcd endpoint given"
        );
        assert_eq!(
            parse_endpoints("http://h").unwrap_err().to_string(),
            "etcd endpoint \"http://h\" is not of the form http://HOST:PORT"
        );
        assert!(parse_endpoints("").is_err());
        assert!(parse_endpoints("http://h").is_err());
        assert!(parse_endpoints("http://h:0").is_err());
        assert!(parse_endpoints("http://h:1/path").is_err());
        assert!(parse_endpoints("127.0.0.1:2379").is_ok());
    }
}
