//! Follows `P/blocklist/` of every registry the router follows into the [`Guard`]:
//! a change is in force as soon as the watch delivers it (well within the second the
//! contract allows), and entries expire on time without a change.

use std::sync::Arc;
use std::time::Duration;

use registry::blocklist::BlockEntry;
use registry::follow_map::MapView;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::Guard;

/// How often expiries are looked at when nothing changes.
const EXPIRY_CHECK: Duration = Duration::from_millis(250);

/// Keeps `guard`'s dynamic list equal to the union of `views` until `cancel`.
/// Entries that do not parse are skipped and logged once per key and revision.
pub async fn run(
    guard: Arc<Guard>,
    mut views: Vec<watch::Receiver<Arc<MapView>>>,
    cancel: CancellationToken,
) {
    let mut logged: std::collections::HashSet<(Arc<str>, Vec<u8>)> = Default::default();
    loop {
        let mut entries = Vec::new();
        for v in &mut views {
            let view = v.borrow_and_update().clone();
            for (key, value) in &view.entries {
                match BlockEntry::parse(value) {
                    Ok(e) => entries.push(e),
                    Err(e) => {
                        if logged.insert((key.clone(), value.to_vec())) {
                            warn!(key = %key, error = %e, "invalid block-list entry skipped");
                        }
                    }
                }
            }
        }
        guard.set_dynamic(entries);
        let changed = futures::future::select_all(views.iter_mut().map(|v| Box::pin(v.changed())));
        let mut tick = tokio::time::interval(EXPIRY_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(changed);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                (r, _, _) = &mut changed => {
                    if r.is_err() {
                        // A follower ended (shutdown): nothing more will change.
                        cancel.cancelled().await;
                        return;
                    }
                    break;
                }
                _ = tick.tick() => guard.expire(registry::now_ms()),
            }
        }
    }
}
