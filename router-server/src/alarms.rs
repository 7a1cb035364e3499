//! Reads each registry's etcd alarms every few seconds and shows them: the
//! `router_etcd_alarm{registry,alarm}` gauge, the registry's line on `/ops`, and a log
//! line when one is raised or cleared.
//!
//! An etcd out of its space quota (NOSPACE) refuses every write: agents can no longer
//! report, and the fleet freezes at its last reports while reads go on as if nothing
//! were wrong. The alarm is the one place that says so.

use std::sync::Arc;
use std::time::Duration;

use registry::{Alarm, Kv};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::RegistryMetrics;
use crate::state::FleetStatus;

/// How often the alarms are read.
pub const EVERY: Duration = Duration::from_secs(3);

/// Reads `kv`'s alarms every `every` until `cancel`, keeping the fleet's `status` and
/// the `metrics` up to date for `registry`.
pub async fn run(
    registry: Arc<str>,
    kv: Arc<dyn Kv>,
    status: Arc<FleetStatus>,
    metrics: RegistryMetrics,
    every: Duration,
    cancel: CancellationToken,
) {
    let mut last: Option<Vec<Alarm>> = None;
    let mut failing = false;
    loop {
        let read = tokio::select! {
            _ = cancel.cancelled() => return,
            r = kv.alarms() => r,
        };
        match read {
            Ok(raised) => {
                failing = false;
                if last.as_ref() != Some(&raised) {
                    let before = last.as_deref().unwrap_or_default();
                    for a in Alarm::ALL {
                        match (before.contains(&a), raised.contains(&a)) {
                            (false, true) => {
                                warn!(registry = %registry, alarm = a.as_str(), "etcd alarm raised{}", meaning(a))
                            }
                            (true, false) => {
                                info!(registry = %registry, alarm = a.as_str(), "etcd alarm cleared")
                            }
                            _ => {}
                        }
                    }
                    metrics.set_etcd_alarms(&registry, &raised);
                    status
                        .alarms
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(registry.to_string(), raised.clone());
                    last = Some(raised);
                }
            }
            Err(e) => {
                // Unreachable is shown by the registry's own health; the last alarms
                // read stay shown.
                if !failing {
                    debug!(registry = %registry, error = %e, "cannot read the etcd alarms");
                    failing = true;
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

fn meaning(a: Alarm) -> &'static str {
    match a {
        Alarm::NoSpace => ": etcd is out of its space quota and refuses every write (agents cannot report); compact, defragment and disarm (docs/runbooks.md)",
        Alarm::Corrupt => ": a member's data is corrupt (docs/runbooks.md)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkv::TestKv;

    #[tokio::test]
    async fn a_raised_alarm_shows_in_the_gauge_and_clears() {
        let state = crate::state::AppState::new(crate::config::FileConfig::default());
        let kv = Arc::new(TestKv::new());
        *kv.raised.lock().unwrap() = vec![Alarm::NoSpace];
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(
            Arc::from("dc1"),
            kv.clone(),
            state.status.clone(),
            state.metrics.registries.clone(),
            Duration::from_millis(10),
            cancel.clone(),
        ));
        let gauge = |alarm: &str| {
            let line = format!("router_etcd_alarm{{registry=\"dc1\",alarm=\"{alarm}\"}}");
            state
                .metrics
                .render()
                .lines()
                .find(|l| l.starts_with(&line))
                .map(|l| l.rsplit(' ').next().unwrap().to_string())
        };
        while gauge("nospace").as_deref() != Some("1") {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(gauge("corrupt").as_deref(), Some("0"));
        assert_eq!(
            state.status.alarms.lock().unwrap().get("dc1"),
            Some(&vec![Alarm::NoSpace])
        );
        kv.raised.lock().unwrap().clear();
        while gauge("nospace").as_deref() != Some("0") {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            state.status.alarms.lock().unwrap().get("dc1"),
            Some(&vec![])
        );
        cancel.cancel();
        task.await.unwrap();
    }
}
