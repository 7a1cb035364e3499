//! Connecting: endpoints from the command line, connect options from the security
//! files (reloaded when they change), and the check a binary makes at start.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tracing::{info, warn};

use super::errors::map_err;
use super::{Channels, EtcdKv, EtcdOptions, FileStamp, Inner};
use crate::kv::{Kv, KvError};
use crate::security::{EtcdSecurity, SecurityError};

/// Why a binary cannot start with its etcd settings: the one line it prints before
/// exiting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The TLS and credential flags are refused.
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// etcd at `endpoints` refuses these credentials or this client.
    #[error("etcd {endpoints}: {source}")]
    Etcd {
        /// The endpoints, comma-separated.
        endpoints: String,
        /// What etcd or the client said.
        #[source]
        source: KvError,
    },
}

/// Why an etcd endpoint list given on a command line or in a file is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointsError {
    /// Nothing but commas and spaces.
    #[error("no etcd endpoint given")]
    Empty,
    /// An endpoint that is not `http://HOST:PORT` (or `https://`).
    #[error("etcd endpoint {0:?} is not of the form http://HOST:PORT")]
    Malformed(String),
}

/// What a binary does at start: checks `opts.security` against `endpoints`, connects,
/// and reads `key` to see that etcd takes these credentials (an etcd that is down is
/// not an error: it may come back). The error is the one line to print before exiting.
pub async fn connect_at_start(
    endpoints: &[String],
    opts: EtcdOptions,
    key: &str,
) -> Result<EtcdKv, StartError> {
    opts.security.check(endpoints)?;
    let etcd = |source| StartError::Etcd {
        endpoints: endpoints.join(","),
        source,
    };
    let kv = EtcdKv::connect(endpoints, &opts).await.map_err(etcd)?;
    kv.check_access(key).await.map_err(etcd)?;
    Ok(kv)
}

/// Splits `URL[,URL...]` into endpoints, checking each looks like `http://host:port`.
pub fn parse_endpoints(spec: &str) -> Result<Vec<String>, EndpointsError> {
    let eps: Vec<String> = spec
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if eps.is_empty() {
        return Err(EndpointsError::Empty);
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
            return Err(EndpointsError::Malformed(e.clone()));
        }
    }
    Ok(eps)
}

/// How often the security files are looked at for a change.
const RELOAD_CHECK: Duration = Duration::from_secs(1);
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
fn connect_options(
    opts: &EtcdOptions,
    endpoints: &[String],
) -> Result<ConnectOptions, SecurityError> {
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
    pub(super) fn channels(&self) -> Arc<Channels> {
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
        let options =
            connect_options(opts, endpoints).map_err(|e| KvError::Rejected(e.to_string()))?;
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
                current: tokio::sync::watch::Sender::new(0),
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
}
