//! Sharing windows between routers: each router's window at `P/outcomes/{id}` under a
//! lease of its own, written every `share_ms`, and the others' read from the follower
//! of that prefix. A value is hostile input like any record: bounded in size and
//! pairs, each name bounded, the counts saturating; one that does not parse is left
//! out (logged once).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use registry::follow_map::MapView;
use registry::lease::{Lease, Renewal};
use registry::{Kv, KvError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Counts, Feedback, Network, Pair};
use crate::config::LiveConfig;
use crate::metrics::FeedbackMetrics;

/// The most pairs one router publishes (its busiest), and reads from another.
pub const MAX_SHARED_PAIRS: usize = 2_000;

/// The largest value read from another router.
pub const MAX_SHARE_BYTES: usize = 512 * 1024;

/// The longest region, ISP or gateway id in a shared value.
const MAX_NAME: usize = 128;

/// The most other routers whose windows are read.
const MAX_PEERS: usize = 256;

/// `P/outcomes/{router id}`: one router's window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShareValue {
    /// Its pairs with outcomes, most outcomes first.
    pub pairs: Vec<SharedPair>,
}

/// One pair of a [`ShareValue`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedPair {
    /// The clients' region (`""`: none).
    pub region: String,
    /// The clients' ISP (`""`: none).
    pub isp: String,
    /// The gateway's id.
    pub gateway: String,
    /// Connections made, in the window.
    pub ok: u64,
    /// Attempts failed, in the window.
    pub failed: u64,
}

impl ShareValue {
    /// The value of `own` (most outcomes first), at most [`MAX_SHARED_PAIRS`] pairs.
    pub fn encode(own: &[(Pair, Counts)]) -> Vec<u8> {
        let pairs = own
            .iter()
            .take(MAX_SHARED_PAIRS)
            .map(|(p, c)| SharedPair {
                region: p.network.region.to_string(),
                isp: p.network.isp.to_string(),
                gateway: p.gateway.to_string(),
                ok: c.ok,
                failed: c.failed,
            })
            .collect();
        serde_json::to_vec(&ShareValue { pairs }).expect("a share value serializes")
    }

    /// The pairs of another router's value, checked.
    pub fn parse(bytes: &[u8]) -> Result<Vec<(Pair, Counts)>, String> {
        if bytes.len() > MAX_SHARE_BYTES {
            return Err(format!("{} bytes, over {MAX_SHARE_BYTES}", bytes.len()));
        }
        let v: ShareValue = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if v.pairs.len() > MAX_SHARED_PAIRS {
            return Err(format!("{} pairs, over {MAX_SHARED_PAIRS}", v.pairs.len()));
        }
        v.pairs
            .into_iter()
            .map(|s| {
                if [&s.region, &s.isp, &s.gateway]
                    .iter()
                    .any(|n| n.len() > MAX_NAME)
                    || s.gateway.is_empty()
                {
                    return Err(format!("a name over {MAX_NAME} bytes, or no gateway"));
                }
                Ok((
                    Pair {
                        network: Network {
                            region: Arc::from(s.region),
                            isp: Arc::from(s.isp),
                        },
                        gateway: Arc::from(s.gateway),
                    },
                    Counts {
                        ok: s.ok,
                        failed: s.failed,
                    },
                ))
            })
            .collect()
    }
}

/// The other routers' windows in `view` (this router's own, `me`, left out).
fn peers(
    view: &MapView,
    me: &str,
    logged: &mut HashSet<(Arc<str>, Arc<[u8]>)>,
) -> Vec<(Pair, Counts)> {
    let mut out = Vec::new();
    for (key, value) in view
        .entries
        .iter()
        .filter(|(k, _)| &***k != me)
        .take(MAX_PEERS)
    {
        match ShareValue::parse(value) {
            Ok(pairs) => out.extend(pairs),
            Err(e) => {
                if logged.insert((key.clone(), value.clone())) {
                    warn!(router = %key, error = %e, "a router's shared outcomes skipped");
                }
            }
        }
    }
    out
}

/// Every `share_ms` until `cancel`: judges this router's window with the others'
/// (from `view`, the follower of `P/outcomes/`) and publishes its own at `key`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    kv: Arc<dyn Kv>,
    key: String,
    me: String,
    mut view: watch::Receiver<Arc<MapView>>,
    feedback: Arc<Feedback>,
    config: LiveConfig,
    metrics: FeedbackMetrics,
    cancel: CancellationToken,
) {
    let share = Duration::from_millis(config.load().feedback.share_ms);
    // Long enough to outlive a slow etcd for a few shares; a dead router's window
    // leaves with its lease.
    let ttl = (share * 3).max(Duration::from_secs(10));
    let mut lease = Lease::renewed_every(ttl, ttl / 3);
    let mut logged = HashSet::new();
    let mut published_empty = false;
    let mut failing = false;
    loop {
        let cfg = config.load().feedback.clone();
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(cfg.share_ms)) => {}
        }
        if !cfg.enabled {
            continue;
        }
        let others = peers(&view.borrow_and_update(), &me, &mut logged);
        let own = feedback.tick(tokio::time::Instant::now(), &cfg, others, &metrics);
        if own.is_empty() && published_empty && lease.id().is_some() {
            // Nothing heard, and the last value said so: renewing the lease is enough.
            match lease.renew(&*kv).await {
                Renewal::Failed(e) => debug!(error = %e, "outcomes lease renewal failed"),
                Renewal::Lost(why) => {
                    debug!(why, "outcomes lease lost; granting another");
                    lease.lost();
                }
                Renewal::NotDue | Renewal::Renewed => {}
            }
            continue;
        }
        let value = ShareValue::encode(&own);
        match publish(&*kv, &key, value, &mut lease).await {
            Ok(()) => {
                published_empty = own.is_empty();
                if failing {
                    info!("outcomes shared again");
                    failing = false;
                }
            }
            Err(e) => {
                if !failing {
                    warn!(error = %e, "cannot share this router's outcomes; judging with the last ones read");
                    failing = true;
                }
            }
        }
    }
    let _ = lease.revoke(&*kv, Duration::from_secs(2)).await;
}

/// Writes `value` at `key` under `lease`, granting it first when needed.
async fn publish(kv: &dyn Kv, key: &str, value: Vec<u8>, lease: &mut Lease) -> Result<(), KvError> {
    if lease.grant_due() {
        lease.register(kv, key, value).await?;
        return Ok(());
    }
    match lease.renew(kv).await {
        Renewal::NotDue | Renewal::Renewed => {}
        Renewal::Lost(why) => {
            lease.lost();
            return Err(KvError::Unavailable(format!("lease lost: {why}")));
        }
        Renewal::Failed(e) => return Err(e),
    }
    kv.put(key, value, lease.id()).await.map(|_| ())
}
