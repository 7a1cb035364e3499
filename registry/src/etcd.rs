//! The [`Kv`] trait over a real etcd cluster, through `etcd-client`.
//!
//! The client keeps one balanced gRPC channel to every endpoint and reconnects by
//! itself; HTTP/2 keep-alives make a dead connection fail a watch within seconds
//! instead of leaving it silently stuck, which is what lets followers notice an outage.

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions, WatchResponse,
};
use futures::StreamExt;

use crate::kv::{KeyValue, Kv, KvError, KvEvent, LeaseId, Listing, WatchBatch, WatchStream};

/// Timeouts for talking to etcd.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// TCP connect timeout per endpoint.
    pub connect_timeout: Duration,
    /// Deadline for each unary request.
    pub request_timeout: Duration,
    /// HTTP/2 keep-alive interval; a connection that misses a ping for as long again
    /// is treated as dead.
    pub keep_alive: Duration,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(3),
            keep_alive: Duration::from_secs(2),
        }
    }
}

/// A store backed by etcd.
#[derive(Clone)]
pub struct EtcdKv {
    client: Client,
}

impl std::fmt::Debug for EtcdKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdKv").finish_non_exhaustive()
    }
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

fn map_err(e: etcd_client::Error) -> KvError {
    use etcd_client::Error as E;
    use tonic::Code;
    match e {
        E::GRpcStatus(status) => {
            let msg = status.message().to_string();
            if msg.contains("lease not found") {
                // The caller knows which lease it asked about and fills it in.
                return KvError::LeaseNotFound(0);
            }
            match status.code() {
                Code::InvalidArgument
                | Code::PermissionDenied
                | Code::Unauthenticated
                | Code::FailedPrecondition
                | Code::OutOfRange
                | Code::AlreadyExists
                | Code::Unimplemented => KvError::Rejected(format!("{:?}: {msg}", status.code())),
                code => KvError::Unavailable(format!("{code:?}: {msg}")),
            }
        }
        E::InvalidArgs(m) => KvError::Rejected(m),
        // etcd answers a keep-alive for an unknown lease with TTL 0, which the client
        // reports as this error.
        E::LeaseKeepAliveError(m) if m.contains("lease not found") => KvError::LeaseNotFound(0),
        other => KvError::Unavailable(other.to_string()),
    }
}

/// [`map_err`] for a call about `lease`: etcd's "lease not found" does not say which.
fn map_lease_err(e: etcd_client::Error, lease: LeaseId) -> KvError {
    match map_err(e) {
        KvError::LeaseNotFound(_) => KvError::LeaseNotFound(lease),
        other => other,
    }
}

impl EtcdKv {
    /// Connects to `endpoints`; the channel is lazy, so this succeeds while etcd is down
    /// and calls fail with [`KvError::Unavailable`] until it is back.
    pub async fn connect(endpoints: &[String], opts: &EtcdOptions) -> Result<EtcdKv, KvError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(opts.connect_timeout)
            .with_timeout(opts.request_timeout)
            .with_keep_alive(opts.keep_alive, opts.keep_alive)
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(map_err)?;
        Ok(EtcdKv { client })
    }
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
        let resp = self.client.clone().get(key, None).await.map_err(map_err)?;
        Ok(resp.kvs().first().and_then(to_kv))
    }

    async fn list(&self, prefix: &str) -> Result<Listing, KvError> {
        let resp = self
            .client
            .clone()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(map_err)?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        Ok(Listing {
            kvs: resp.kvs().iter().filter_map(to_kv).collect(),
            revision,
        })
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<i64, KvError> {
        let opts = lease.map(|l| PutOptions::new().with_lease(l));
        let resp = self
            .client
            .clone()
            .put(key, value, opts)
            .await
            .map_err(|e| map_lease_err(e, lease.unwrap_or_default()))?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
    }

    async fn delete(&self, key: &str) -> Result<bool, KvError> {
        let resp = self
            .client
            .clone()
            .delete(key, None)
            .await
            .map_err(map_err)?;
        Ok(resp.deleted() > 0)
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId, KvError> {
        let secs = ttl.as_secs().max(1) as i64;
        let resp = self
            .client
            .clone()
            .lease_grant(secs, None)
            .await
            .map_err(map_err)?;
        Ok(resp.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, KvError> {
        let mut client = self.client.clone();
        let not_found = |e| map_lease_err(e, lease);
        let (mut keeper, mut stream) = client.lease_keep_alive(lease).await.map_err(not_found)?;
        keeper.keep_alive().await.map_err(not_found)?;
        let resp = stream
            .message()
            .await
            .map_err(not_found)?
            .ok_or_else(|| KvError::Unavailable("keep-alive stream closed".into()))?;
        if resp.ttl() <= 0 {
            return Err(KvError::LeaseNotFound(lease));
        }
        Ok(Duration::from_secs(resp.ttl() as u64))
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), KvError> {
        self.client
            .clone()
            .lease_revoke(lease)
            .await
            .map_err(|e| map_lease_err(e, lease))?;
        Ok(())
    }

    async fn watch(&self, prefix: &str, start_revision: i64) -> Result<WatchStream, KvError> {
        let mut opts = WatchOptions::new().with_prefix().with_progress_notify();
        if start_revision > 0 {
            opts = opts.with_start_revision(start_revision);
        }
        let stream = self
            .client
            .clone()
            .watch(prefix, Some(opts))
            .await
            .map_err(map_err)?;
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
