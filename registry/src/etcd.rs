//! The [`Kv`] trait over a real etcd cluster, through `etcd-client`.
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

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions,
    WatchOptions, WatchResponse,
};
use futures::StreamExt;
use tracing::{info, warn};

use crate::kv::{Alarm, KeyValue, Kv, KvError, KvEvent, LeaseId, Listing, WatchBatch, WatchStream};
use crate::security::{chain, is_tls_refusal, EtcdSecurity};

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
    pub list_page: i64,
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
            list_page: 10_000,
            security: EtcdSecurity::default(),
            retry_for: Duration::ZERO,
        }
    }
}

/// A lease's keep-alive stream, kept open between renewals.
struct Keeper {
    endpoint: usize,
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
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
    /// The endpoint calls go to first: the last one that answered.
    current: AtomicUsize,
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

/// What a binary does at start: checks `opts.security` against `endpoints`, connects,
/// and reads `key` to see that etcd takes these credentials (an etcd that is down is
/// not an error: it may come back). The error is the one line to print before exiting.
pub async fn connect_at_start(
    endpoints: &[String],
    opts: EtcdOptions,
    key: &str,
) -> Result<EtcdKv, String> {
    opts.security.check(endpoints)?;
    let spec = endpoints.join(",");
    let kv = EtcdKv::connect(endpoints, &opts)
        .await
        .map_err(|e| format!("etcd {spec}: {e}"))?;
    kv.check_access(key)
        .await
        .map_err(|e| format!("etcd {spec}: {e}"))?;
    Ok(kv)
}

/// Splits `URL[,URL...]` into endpoints, checking each looks like `http://host:port`.
pub fn parse_endpoints(spec: &str) -> Result<Vec<String>, String> {
    let eps: Vec<String> = spec
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if eps.is_empty() {
        return Err("no etcd endpoint given".into());
    }
    for e in &eps {
        let rest = e
            .strip_prefix("http://")
            .or_else(|| e.strip_prefix("https://"))
            .unwrap_or(e);
        let ok = rest.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok || rest.contains('/') {
            return Err(format!(
                "etcd endpoint {e:?} is not of the form http://HOST:PORT"
            ));
        }
    }
    Ok(eps)
}

/// The end of the key range of `prefix` (etcd's convention: the prefix with its last
/// byte below 0xff incremented, the rest dropped; all keys from it when there is none).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Classifies an etcd error by its gRPC status code.
fn map_err(e: etcd_client::Error) -> KvError {
    use etcd_client::Error as E;
    use tonic::Code;
    match e {
        E::GRpcStatus(status) => {
            let msg = status.message().to_string();
            match status.code() {
                // etcd answers NotFound only for a lease it does not know; the caller
                // knows which lease it asked about and fills it in.
                Code::NotFound => KvError::LeaseNotFound(0),
                Code::InvalidArgument
                | Code::PermissionDenied
                | Code::Unauthenticated
                | Code::FailedPrecondition
                | Code::OutOfRange
                | Code::AlreadyExists
                | Code::Unimplemented => KvError::Rejected(format!("{:?}: {msg}", status.code())),
                code => {
                    let why = chain(&status);
                    if is_tls_refusal(&why) {
                        KvError::Rejected(format!("TLS: {why}"))
                    } else {
                        KvError::Unavailable(format!("{code:?}: {msg}"))
                    }
                }
            }
        }
        E::InvalidArgs(m) => KvError::Rejected(m),
        // The client's own verdict on a keep-alive answer with TTL 0 (not a gRPC
        // status): the lease is gone.
        E::LeaseKeepAliveError(_) => KvError::LeaseNotFound(0),
        other => {
            let why = chain(&other);
            if is_tls_refusal(&why) {
                KvError::Rejected(format!("TLS: {why}"))
            } else {
                KvError::Unavailable(why)
            }
        }
    }
}

/// [`map_err`] for a call about `lease`: etcd's "lease not found" does not say which.
fn map_lease_err(e: etcd_client::Error, lease: LeaseId) -> KvError {
    match map_err(e) {
        KvError::LeaseNotFound(_) => KvError::LeaseNotFound(lease),
        other => other,
    }
}

/// One renewal on a lease's open keep-alive stream, within `deadline`. A TTL of 0 means
/// etcd no longer knows the lease.
async fn renew(k: &mut Keeper, lease: LeaseId, deadline: Duration) -> Result<Duration, KvError> {
    let not_found = |e| map_lease_err(e, lease);
    let resp = tokio::time::timeout(deadline, async {
        k.keeper.keep_alive().await.map_err(not_found)?;
        k.stream
            .message()
            .await
            .map_err(not_found)?
            .ok_or_else(|| KvError::Unavailable("keep-alive stream closed".into()))
    })
    .await
    .unwrap_or_else(|_| {
        Err(KvError::Unavailable(format!(
            "keep-alive: no answer within {} ms",
            deadline.as_millis()
        )))
    })?;
    if resp.ttl() <= 0 {
        return Err(KvError::LeaseNotFound(lease));
    }
    Ok(Duration::from_secs(resp.ttl() as u64))
}

/// How often the security files are looked at for a change.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// A file's modification time, size and inode (`None` when it cannot be read): a
/// rename over it, as certificate tools do, changes the inode.
type FileStamp = Option<(std::time::SystemTime, u64, u64)>;

fn stamp(security: &EtcdSecurity) -> Vec<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    security
        .files()
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len(), m.ino()))
        })
        .collect()
}

/// Connect options from `opts`' security files.
fn connect_options(opts: &EtcdOptions, endpoints: &[String]) -> Result<ConnectOptions, String> {
    let loaded = opts.security.load(endpoints)?;
    let mut options = ConnectOptions::new()
        .with_connect_timeout(opts.connect_timeout)
        .with_timeout(opts.list_timeout)
        .with_keep_alive(opts.keep_alive, opts.keep_alive_timeout)
        .with_keep_alive_while_idle(false)
        .with_require_leader(true);
    if let Some(tls) = loaded.tls {
        options = options.with_tls(tls);
    }
    if let Some((user, password)) = loaded.user {
        // etcd's tokens expire (`--auth-token-ttl`): a call that finds its token
        // stale authenticates again and is retried, once.
        options = options
            .with_user(user, password)
            .with_auto_token_refresh(true);
    }
    Ok(options)
}

impl EtcdKv {
    /// The channels to use now; at most every [`RELOAD_CHECK`], first looks whether a
    /// security file changed and, if so, loads it for every call from now on. A file
    /// that does not load (half written, say) is logged and the old files stay in use.
    fn channels(&self) -> Arc<Channels> {
        let inner = &self.inner;
        let current = inner.channels.read().expect("channels lock").clone();
        if inner.opts.security.files().is_empty() {
            return current;
        }
        {
            let mut checked = inner.checked.lock().expect("reload clock");
            if checked.elapsed() < RELOAD_CHECK {
                return current;
            }
            *checked = std::time::Instant::now();
        }
        let now = stamp(&inner.opts.security);
        if now == current.stamp {
            return current;
        }
        match connect_options(&inner.opts, &inner.endpoints) {
            Ok(options) => {
                info!("etcd TLS or credential files changed; new connections use them");
                let fresh = Arc::new(Channels {
                    clients: inner
                        .endpoints
                        .iter()
                        .map(|_| tokio::sync::OnceCell::new())
                        .collect(),
                    options,
                    stamp: now,
                });
                *inner.channels.write().expect("channels lock") = fresh.clone();
                fresh
            }
            Err(e) => {
                warn!(error = %e, "etcd TLS or credential files changed but do not load; keeping the previous ones");
                current
            }
        }
    }

    /// Connects to `endpoints`; channels are lazy, so this succeeds while etcd is down
    /// and calls fail with [`KvError::Unavailable`] until it is back.
    pub async fn connect(endpoints: &[String], opts: &EtcdOptions) -> Result<EtcdKv, KvError> {
        if endpoints.is_empty() {
            return Err(KvError::Rejected("no etcd endpoint given".into()));
        }
        let options = connect_options(opts, endpoints).map_err(KvError::Rejected)?;
        Ok(EtcdKv {
            inner: Arc::new(Inner {
                endpoints: endpoints.to_vec(),
                channels: std::sync::RwLock::new(Arc::new(Channels {
                    clients: endpoints
                        .iter()
                        .map(|_| tokio::sync::OnceCell::new())
                        .collect(),
                    options,
                    stamp: stamp(&opts.security),
                })),
                checked: std::sync::Mutex::new(std::time::Instant::now()),
                current: AtomicUsize::new(0),
                answering: endpoints.iter().map(|_| AtomicBool::new(false)).collect(),
                opts: opts.clone(),
                keepers: tokio::sync::Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Checks that etcd takes this client's certificates and credentials by reading
    /// `key`: `Err(Rejected)` names a configuration problem (a wrong CA, an expired
    /// certificate, a wrong password, no permission), for one line at start. An etcd
    /// that cannot be reached is not an error here: it may come back.
    pub async fn check_access(&self, key: &str) -> Result<(), KvError> {
        // etcd refuses a client certificate after the TLS 1.3 handshake has completed
        // on the client's side, so the refusal may first show as a cancelled or reset
        // call: look again for a few seconds before calling it an outage.
        // (Up to 10 s: on a loaded machine the refusal can take a few attempts.)
        let until = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match self.get(key).await {
                Ok(_) => return Ok(()),
                Err(KvError::Rejected(m)) => {
                    return Err(KvError::Rejected(format!("reading {key}: {m}")))
                }
                // Down (refused, silent): it may come back; not a configuration error.
                Err(KvError::Unavailable(m))
                    if m.contains("refused")
                        || m.contains("no answer")
                        || m.contains("no connection")
                        || m.contains("tcp connect error")
                        || std::time::Instant::now() >= until =>
                {
                    return Ok(())
                }
                Err(KvError::Unavailable(_)) => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs `f` (an etcd call outside the [`Kv`] trait, e.g. the auth API) with the same
    /// endpoint failover and deadline as the trait's small requests.
    pub async fn with_client<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, KvError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let t = self.inner.opts.request_timeout;
        self.call(what, t, |c| {
            let fut = f(c);
            async move { fut.await.map_err(map_err) }
        })
        .await
        .map(|(v, _)| v)
    }

    /// The endpoints, in the order given.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// Runs `f` against the current endpoint, then each other one in turn while the
    /// failure is the endpoint's (unreachable, no leader, no answer by `deadline`).
    /// Returns the result and the endpoint that gave it.
    async fn call<T, F, Fut>(
        &self,
        what: &'static str,
        deadline: Duration,
        f: F,
    ) -> Result<(T, usize), KvError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, KvError>>,
    {
        let inner = &self.inner;
        let channels = self.channels();
        let n = channels.clients.len();
        let first = inner.current.load(Ordering::Relaxed) % n;
        let until = tokio::time::Instant::now() + inner.opts.retry_for;
        let mut order: Vec<usize> = (0..n).map(|a| (first + a) % n).collect();
        loop {
            let mut answered = Vec::new();
            let mut silent = Vec::new();
            let mut last = None;
            for &i in &order {
                match self.call_one(&channels, i, first, what, deadline, &f).await {
                    Attempt::Done(r) => return r,
                    Attempt::Failed { error, answered: a } => {
                        if a {
                            answered.push(i)
                        } else {
                            silent.push(i)
                        }
                        last = Some(error);
                    }
                }
            }
            let last = last.unwrap_or_else(|| KvError::Unavailable("no endpoint".into()));
            if answered.is_empty() || tokio::time::Instant::now() + RETRY_PAUSE >= until {
                return Err(last);
            }
            tokio::time::sleep(RETRY_PAUSE).await;
            answered.extend(silent);
            order = answered;
        }
    }

    /// One attempt of [`EtcdKv::call`] on endpoint `i`.
    async fn call_one<T, F, Fut>(
        &self,
        channels: &Channels,
        i: usize,
        first: usize,
        what: &'static str,
        deadline: Duration,
        f: &F,
    ) -> Attempt<T>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, KvError>>,
    {
        let inner = &self.inner;
        let n = channels.clients.len();
        let endpoint = &inner.endpoints[i];
        let short = inner.opts.request_timeout;
        let failed = |error, answered| Attempt::Failed { error, answered };
        let client = match tokio::time::timeout(short.max(Duration::from_secs(2)), async {
            channels.clients[i]
                .get_or_try_init(|| async {
                    Client::connect([endpoint.as_str()], Some(channels.options.clone())).await
                })
                .await
                .cloned()
                .map_err(map_err)
        })
        .await
        {
            Ok(Ok(c)) => c,
            // A wrong password or certificate: the same everywhere.
            Ok(Err(e @ KvError::Rejected(_))) => return Attempt::Done(Err(e)),
            Ok(Err(e)) => {
                return failed(KvError::Unavailable(format!("{endpoint}: {e}")), false);
            }
            Err(_) => {
                return failed(
                    KvError::Unavailable(format!(
                        "{endpoint}: no connection within {} ms",
                        short.max(Duration::from_secs(2)).as_millis()
                    )),
                    false,
                );
            }
        };
        // An endpoint not known to answer is probed first, so a dead member costs
        // `short` rather than the whole deadline before the next is tried. With one
        // endpoint there is no next: the call itself gets the whole deadline.
        if n > 1
            && deadline > short
            && !inner.answering[i].load(Ordering::Relaxed)
            && probe(&client, short).await != Probe::Serving
        {
            warn!(%endpoint, call = what, "etcd endpoint does not answer; trying the next");
            return failed(
                KvError::Unavailable(format!(
                    "{endpoint}: no answer within {} ms",
                    short.as_millis()
                )),
                false,
            );
        }
        let result = tokio::time::timeout(deadline, f(client.clone())).await;
        let ok = !matches!(result, Err(_) | Ok(Err(KvError::Unavailable(_))));
        inner.answering[i].store(ok, Ordering::Relaxed);
        let err = match result {
            Ok(Ok(v)) => {
                if i != first {
                    inner.current.store(i, Ordering::Relaxed);
                    info!(from = %inner.endpoints[first], to = %endpoint, "etcd: switched endpoint");
                }
                return Attempt::Done(Ok((v, i)));
            }
            Ok(Err(e @ KvError::Unavailable(_))) => e,
            Ok(Err(e)) => return Attempt::Done(Err(e)),
            Err(_) => KvError::Unavailable(format!("no answer within {} ms", deadline.as_millis())),
        };
        if n > 1 {
            warn!(%endpoint, call = what, error = %err, "etcd endpoint failed; trying the next");
        }
        // Worth asking again (and first) only if the member is up and talking: "no
        // leader", or a call its leader could not serve. Asked only of a call that may
        // try again: a refusing or silent member is not waited for.
        let answered =
            !inner.opts.retry_for.is_zero() && probe(&client, short).await != Probe::Silent;
        failed(KvError::Unavailable(format!("{endpoint}: {err}")), answered)
    }
}

/// What a member's status call says about it.
#[derive(Debug, PartialEq, Eq)]
enum Probe {
    /// It answered its status.
    Serving,
    /// It is up and talking, but refused with an error etcd itself sent (such as "no
    /// leader").
    Talking,
    /// Refused, broken or silent: no answer within the time given, or an error that
    /// carries the transport's error as its source.
    Silent,
}

/// Asks the member behind `client` for its status, within `within`.
async fn probe(client: &Client, within: Duration) -> Probe {
    let mut c = client.clone();
    match tokio::time::timeout(within, async move { c.status().await }).await {
        Ok(Ok(_)) => Probe::Serving,
        Ok(Err(etcd_client::Error::GRpcStatus(s))) if std::error::Error::source(&s).is_none() => {
            Probe::Talking
        }
        _ => Probe::Silent,
    }
}

/// What one attempt of a call on one endpoint came to.
enum Attempt<T> {
    /// A result to return: success, or a refusal no other endpoint would change.
    Done(Result<(T, usize), KvError>),
    /// The endpoint's failure; `answered` when the member is up and talking.
    Failed { error: KvError, answered: bool },
}

fn to_kv(kv: &etcd_client::KeyValue) -> Option<KeyValue> {
    Some(KeyValue {
        key: kv.key_str().ok()?.to_string(),
        value: kv.value().to_vec(),
        mod_revision: kv.mod_revision(),
    })
}

fn to_batch(resp: &WatchResponse, requested: i64) -> Result<Option<WatchBatch>, KvError> {
    if resp.canceled() {
        if resp.compact_revision() > 0 {
            return Err(KvError::Compacted {
                requested,
                compact_revision: resp.compact_revision(),
            });
        }
        return Err(KvError::WatchCancelled(resp.cancel_reason().to_string()));
    }
    // The confirmation of a new watch carries the current revision, which can be ahead
    // of events still to come; only event batches and progress notices advance it.
    if resp.created() && resp.events().is_empty() {
        return Ok(None);
    }
    let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
    let mut events = Vec::with_capacity(resp.events().len());
    for ev in resp.events() {
        let Some(kv) = ev.kv() else { continue };
        let Ok(key) = kv.key_str() else {
            // Not UTF-8: cannot be one of our keys.
            continue;
        };
        events.push(match ev.event_type() {
            EventType::Put => KvEvent::Put(KeyValue {
                key: key.to_string(),
                value: kv.value().to_vec(),
                mod_revision: kv.mod_revision(),
            }),
            EventType::Delete => KvEvent::Delete {
                key: key.to_string(),
                mod_revision: kv.mod_revision(),
            },
        });
    }
    Ok(Some(WatchBatch { events, revision }))
}

#[async_trait]
impl Kv for EtcdKv {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, KvError> {
        let t = self.inner.opts.request_timeout;
        let (resp, _) = self
            .call("get", t, |mut c| async move {
                c.get(key, None).await.map_err(map_err)
            })
            .await?;
        Ok(resp.kvs().first().and_then(to_kv))
    }

    async fn list(&self, prefix: &str) -> Result<Listing, KvError> {
        // Pages of `limit` keys from `from` to the end of the prefix's range, all at the
        // revision of the first page: one consistent listing, no answer too large.
        let t = self.inner.opts.list_timeout;
        let end = prefix_end(prefix.as_bytes());
        let mut from: Vec<u8> = prefix.as_bytes().to_vec();
        let mut limit = self.inner.opts.list_page.max(1);
        let mut revision = 0;
        let mut kvs = Vec::new();
        let started = std::time::Instant::now();
        loop {
            let page = self
                .call("list", t, |mut c| {
                    let (from, end) = (from.clone(), end.clone());
                    async move {
                        let opts = GetOptions::new()
                            .with_range(end)
                            .with_limit(limit)
                            .with_revision(revision);
                        c.get(from, Some(opts)).await.map_err(map_err)
                    }
                })
                .await;
            let resp = match page {
                Ok((resp, _)) => resp,
                // The client refuses an answer over its message limit: the same page,
                // smaller (a fleet of large records).
                Err(KvError::Rejected(m))
                    if m.contains("message length too large") && limit > 1 =>
                {
                    limit = (limit / 2).max(1);
                    warn!(
                        limit,
                        "etcd listing page too large for one message; asking for smaller pages"
                    );
                    continue;
                }
                Err(KvError::Rejected(m)) if m.contains("compacted") => {
                    return Err(KvError::Compacted {
                        requested: revision,
                        compact_revision: 0,
                    })
                }
                Err(e) => return Err(e),
            };
            if revision == 0 {
                revision = resp.header().map(|h| h.revision()).unwrap_or_default();
            }
            let got = resp.kvs();
            kvs.extend(got.iter().filter_map(to_kv));
            match got.last() {
                Some(last) if resp.more() => {
                    // The next page starts just after the last key.
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        if kvs.len() > self.inner.opts.list_page as usize {
            info!(
                keys = kvs.len(),
                revision,
                ms = started.elapsed().as_millis() as u64,
                "listed {prefix} in pages"
            );
        }
        Ok(Listing { kvs, revision })
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<i64, KvError> {
        let t = self.inner.opts.request_timeout;
        let (resp, _) = self
            .call("put", t, |mut c| {
                let value = value.clone();
                async move {
                    let opts = lease.map(|l| PutOptions::new().with_lease(l));
                    c.put(key, value, opts)
                        .await
                        .map_err(|e| map_lease_err(e, lease.unwrap_or_default()))
                }
            })
            .await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
    }

    async fn delete(&self, key: &str) -> Result<bool, KvError> {
        let t = self.inner.opts.request_timeout;
        let (resp, _) = self
            .call("delete", t, |mut c| async move {
                c.delete(key, None).await.map_err(map_err)
            })
            .await?;
        Ok(resp.deleted() > 0)
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId, KvError> {
        let secs = ttl.as_secs().max(1) as i64;
        let t = self.inner.opts.request_timeout;
        let (resp, _) = self
            .call("lease grant", t, |mut c| async move {
                c.lease_grant(secs, None).await.map_err(map_err)
            })
            .await?;
        Ok(resp.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, KvError> {
        let t = self.inner.opts.request_timeout;
        let mut keepers = self.inner.keepers.lock().await;
        // Renew on the lease's open stream; on any trouble but a lost lease, open a new
        // one (failing over to another endpoint if need be) and renew on that.
        if let Some(k) = keepers.get_mut(&lease) {
            match renew(k, lease, t).await {
                Ok(ttl) => return Ok(ttl),
                Err(e @ KvError::LeaseNotFound(_)) => {
                    keepers.remove(&lease);
                    return Err(e);
                }
                Err(e) => {
                    let endpoint = &self.inner.endpoints[k.endpoint];
                    warn!(%endpoint, error = %e, "lease keep-alive stream failed; reopening");
                    keepers.remove(&lease);
                }
            }
        }
        let ((keeper, stream), endpoint) = self
            .call("lease keep-alive", t, |mut c| async move {
                c.lease_keep_alive(lease)
                    .await
                    .map_err(|e| map_lease_err(e, lease))
            })
            .await?;
        let k = keepers.entry(lease).or_insert(Keeper {
            endpoint,
            keeper,
            stream,
        });
        let renewed = renew(k, lease, t).await;
        if renewed.is_err() {
            keepers.remove(&lease);
        }
        renewed
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), KvError> {
        self.inner.keepers.lock().await.remove(&lease);
        let t = self.inner.opts.request_timeout;
        self.call("lease revoke", t, |mut c| async move {
            c.lease_revoke(lease)
                .await
                .map_err(|e| map_lease_err(e, lease))
        })
        .await?;
        Ok(())
    }

    async fn get_exact(&self, key: &str) -> Result<(Option<KeyValue>, i64), KvError> {
        let t = self.inner.opts.request_timeout;
        let (resp, _) = self
            .call("get", t, |mut c| async move {
                c.get(key, None).await.map_err(map_err)
            })
            .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        Ok((resp.kvs().first().and_then(to_kv), revision))
    }

    async fn watch_key(&self, key: &str, start_revision: i64) -> Result<WatchStream, KvError> {
        self.watch_range(key, false, start_revision).await
    }

    async fn watch(&self, prefix: &str, start_revision: i64) -> Result<WatchStream, KvError> {
        self.watch_range(prefix, true, start_revision).await
    }

    async fn alarms(&self) -> Result<Vec<Alarm>, KvError> {
        use etcd_client::{AlarmAction, AlarmType};
        let t = self.inner.opts.request_timeout;
        let (resp, _) = self
            .call("alarm", t, |mut c| async move {
                c.alarm(AlarmAction::Get, AlarmType::None, None)
                    .await
                    .map_err(map_err)
            })
            .await?;
        let mut raised = Vec::new();
        for m in resp.alarms() {
            let alarm = match m.alarm() {
                AlarmType::Nospace => Alarm::NoSpace,
                AlarmType::Corrupt => Alarm::Corrupt,
                AlarmType::None => continue,
            };
            if !raised.contains(&alarm) {
                raised.push(alarm);
            }
        }
        Ok(raised)
    }
}

impl EtcdKv {
    /// Watches `key` (with `prefix`, every key below it) from `start_revision`.
    async fn watch_range(
        &self,
        prefix: &str,
        is_prefix: bool,
        start_revision: i64,
    ) -> Result<WatchStream, KvError> {
        let mut opts = WatchOptions::new().with_progress_notify();
        if is_prefix {
            opts = opts.with_prefix();
        }
        if start_revision > 0 {
            opts = opts.with_start_revision(start_revision);
        }
        let t = self.inner.opts.request_timeout;
        let (stream, _) = self
            .call("watch", t, |mut c| {
                let opts = opts.clone();
                async move { c.watch(prefix, Some(opts)).await.map_err(map_err) }
            })
            .await?;
        // Keep the request half alive inside the stream: dropping it would cancel the watch.
        let out = futures::stream::unfold(Some(stream), move |state| async move {
            let mut stream = state?;
            loop {
                match stream.message().await {
                    Ok(Some(resp)) => match to_batch(&resp, start_revision) {
                        Ok(Some(batch)) => return Some((Ok(batch), Some(stream))),
                        Ok(None) => continue,
                        Err(e) => return Some((Err(e), None)),
                    },
                    Ok(None) => {
                        let e = KvError::Unavailable("watch stream closed by etcd".into());
                        return Some((Err(e), None));
                    }
                    Err(e) => return Some((Err(map_err(e)), None)),
                }
            }
        });
        Ok(out.boxed())
    }
}

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
        assert!(parse_endpoints("").is_err());
        assert!(parse_endpoints("http://h").is_err());
        assert!(parse_endpoints("http://h:0").is_err());
        assert!(parse_endpoints("http://h:1/path").is_err());
        assert!(parse_endpoints("127.0.0.1:2379").is_ok());
    }
}
