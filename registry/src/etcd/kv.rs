//! The [`Kv`] trait's calls on etcd: get, list in pages, put, delete, leases and
//! alarms.

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{GetOptions, PutOptions};
use tracing::{info, warn};

use super::errors::{map_err, map_lease_err};
use super::EtcdKv;
use crate::kv::{Alarm, KeyValue, Kv, KvError, LeaseId, Listing, WatchStream};

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

fn to_kv(kv: &etcd_client::KeyValue) -> Option<KeyValue> {
    Some(KeyValue {
        key: kv.key_str().ok()?.to_string(),
        value: kv.value().to_vec(),
        mod_revision: kv.mod_revision(),
    })
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
        let mut limit = i64::from(self.inner.opts.list_page.get());
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
        if kvs.len() > self.inner.opts.list_page.get() as usize {
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
        self.keep_alive_on_stream(lease).await
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
