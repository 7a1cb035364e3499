//! Lease renewals: one keep-alive stream per lease, kept open between renewals and
//! reopened (on another endpoint if need be) when it fails.

use std::time::Duration;

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};
use tracing::warn;

use super::errors::map_lease_err;
use super::EtcdKv;
use crate::kv::{KvError, LeaseId};

/// A lease's keep-alive stream, kept open between renewals.
pub(super) struct Keeper {
    endpoint: usize,
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
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

impl EtcdKv {
    /// [`Kv::keep_alive`](crate::kv::Kv::keep_alive): renews `lease` on its open stream,
    /// opening one first when there is none or it failed.
    pub(super) async fn keep_alive_on_stream(&self, lease: LeaseId) -> Result<Duration, KvError> {
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
}
