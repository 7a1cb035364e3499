//! Watches: a key or a prefix from a revision, etcd's responses turned into
//! [`WatchBatch`]es, compaction and cancellation into errors.

use etcd_client::{EventType, WatchOptions, WatchResponse};
use futures::StreamExt;

use super::errors::map_err;
use super::EtcdKv;
use crate::kv::{KeyValue, KvError, KvEvent, WatchBatch, WatchStream};

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

impl EtcdKv {
    /// Watches `key` (with `prefix`, every key below it) from `start_revision`.
    pub(super) async fn watch_range(
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
        let (stream, at) = self
            .call("watch", t, |mut c| {
                let opts = opts.clone();
                async move { c.watch(prefix, Some(opts)).await.map_err(map_err) }
            })
            .await?;
        // When the other calls move to another endpoint (this one failed them: cut off
        // from its peers, say), the watch ends too, so its owner opens it again where
        // the calls go. A member cut off from its peers keeps a watch open and silent
        // for several election timeouts before etcd cancels it for want of a leader.
        let endpoint = self.inner.endpoints[at].clone();
        let moved = self.inner.current.subscribe();
        // Keep the request half alive inside the stream: dropping it would cancel the watch.
        let out = futures::stream::unfold(Some((stream, moved)), move |state| {
            let endpoint = endpoint.clone();
            async move {
                let (mut stream, mut moved) = state?;
                loop {
                    let message = tokio::select! {
                        m = stream.message() => m,
                        _ = moved.wait_for(|c| *c != at) => {
                            let e = KvError::Unavailable(format!(
                                "calls moved away from {endpoint}; the watch there is given up"
                            ));
                            return Some((Err(e), None));
                        }
                    };
                    match message {
                        Ok(Some(resp)) => match to_batch(&resp, start_revision) {
                            Ok(Some(batch)) => return Some((Ok(batch), Some((stream, moved)))),
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
            }
        });
        Ok(out.boxed())
    }
}
