//! How far behind etcd this router's view of each registry is, measured on the
//! router's own monotonic clock, never by comparing clocks.
//!
//! Once a second the router writes a heartbeat to its own registration
//! (`P/routers/{id}`, under its lease: see [`crate::peers`]), notes the revision etcd
//! gave the write and when the write returned, and a watch on that key tells when the
//! revision is delivered. The time in between is the watch's lag: how long a write
//! that etcd has committed takes to reach this router. While a heartbeat is written
//! but not yet delivered, the lag is at least its age, so a watch that stalls shows a
//! lag that grows by the second.
//!
//! The lag is exported (`router_registry_lag_seconds{registry}`), shown on `/ops`,
//! marks answers `stale` past `max_lag_ms` (the router's own registry), and is taken
//! into account where reports are placed in time (see `schedule::Arrival`): a steady
//! lag is not a clock offset.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use registry::backoff::Backoff;
use registry::kv::KvEvent;
use registry::Kv;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Heartbeats written but not yet delivered, kept at most: the oldest bounds the lag.
const PENDING_KEPT: usize = 16;

/// One registry's lag.
#[derive(Debug)]
pub struct Lag {
    /// The registry's name.
    pub registry: Arc<str>,
    /// Notified each time a heartbeat write returns: the registry takes writes, so
    /// its node follower, if it is waiting to retry after a failure, tries at once.
    pub taken: Arc<tokio::sync::Notify>,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Heartbeats written and not yet delivered: (revision, when the write returned).
    pending: VecDeque<(i64, Instant)>,
    /// The last heartbeat's round trip, from the write's return to its delivery.
    last: Option<Duration>,
    /// Heartbeats written.
    beats: u64,
    /// The highest revision of the key delivered so far.
    delivered: i64,
}

impl Lag {
    /// A registry's lag, not measured yet.
    pub fn new(registry: Arc<str>) -> Lag {
        Lag {
            registry,
            taken: Arc::new(tokio::sync::Notify::new()),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The number of the next heartbeat.
    pub fn next_beat(&self) -> u64 {
        let mut i = self.lock();
        i.beats += 1;
        i.beats
    }

    /// A heartbeat write returned at `at` with `revision`.
    pub fn wrote(&self, revision: i64, at: Instant) {
        self.taken.notify_waiters();
        let mut i = self.lock();
        if revision <= i.delivered {
            // The watch delivered it before the write's answer came back: etcd sends
            // both at once, so the view is not behind at all.
            i.last = Some(Duration::ZERO);
            return;
        }
        if i.pending.len() < PENDING_KEPT {
            i.pending.push_back((revision, at));
        }
    }

    /// The watch delivered `revision` of the heartbeat key at `at`: every heartbeat
    /// up to it has arrived, and the latest of them measures the lag.
    pub fn seen(&self, revision: i64, at: Instant) {
        let mut i = self.lock();
        i.delivered = i.delivered.max(revision);
        let mut latest = None;
        while i.pending.front().is_some_and(|(r, _)| *r <= revision) {
            latest = i.pending.pop_front();
        }
        if let Some((_, written)) = latest {
            i.last = Some(at.saturating_duration_since(written));
        }
    }

    /// The last heartbeat's round trip: the steady lag, which places reports in time.
    pub fn measured(&self) -> Option<Duration> {
        self.lock().last
    }

    /// The lag at `now`: the last round trip, or the age of the oldest heartbeat not
    /// delivered yet when that is longer. `None` before the first heartbeat.
    pub fn current(&self, now: Instant) -> Option<Duration> {
        let i = self.lock();
        let waiting = i
            .pending
            .front()
            .map(|(_, t)| now.saturating_duration_since(*t));
        match (i.last, waiting) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Watches `key` (this router's registration) and tells `lag` when each heartbeat
/// arrives, until `cancel`. A lost watch starts again from the revision after the
/// last one seen, so a heartbeat written meanwhile is still delivered (or a later
/// one ends its wait).
pub async fn follow(kv: Arc<dyn Kv>, key: String, lag: Arc<Lag>, cancel: CancellationToken) {
    let mut backoff = Backoff::for_store();
    let mut from = 0i64;
    loop {
        let failed = async {
            let mut stream = kv.watch_key(&key, from).await?;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                let now = Instant::now();
                for e in &batch.events {
                    if let KvEvent::Put(p) = e {
                        if p.key == key {
                            lag.seen(p.mod_revision, now);
                            from = from.max(p.mod_revision + 1);
                        }
                    }
                }
                backoff.reset();
            }
            Ok::<(), registry::KvError>(())
        };
        let r = tokio::select! {
            _ = cancel.cancelled() => return,
            r = failed => r,
        };
        match r {
            Err(registry::KvError::Compacted { .. }) => from = 0,
            Err(e) => {
                debug!(registry = %lag.registry, error = %e, "heartbeat watch lost; watching again")
            }
            Ok(()) => {}
        }
        let wait = backoff.next_delay();
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::publish_lag as publish;
    use crate::state::AppState;
    use crate::testkv::TestKv;
    use std::sync::atomic::Ordering;

    /// Waits (15 s at most) until `f` holds.
    async fn wait_for(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !f() {
            assert!(Instant::now() < deadline, "{what}: not within 15 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The router's lag gauge as `/metrics` shows it, seconds.
    fn gauge(state: &AppState) -> Option<f64> {
        state
            .metrics
            .render()
            .lines()
            .find(|l| l.starts_with("router_registry_lag_seconds{registry=\"default\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// The real heartbeat (the router's registration, [`crate::peers`]), its watch and
    /// the gauge, over a store whose watch delivery the test holds back: the lag is
    /// small at once, grows to the delay when delivery is held back, passes
    /// `max_lag_ms` (answers stale) and comes back.
    #[tokio::test]
    async fn the_heartbeat_measures_a_held_back_watch() {
        let config = crate::config::FileConfig {
            max_lag_ms: 1_000,
            ..Default::default()
        };
        let state = AppState::new(config);
        let kv = Arc::new(TestKv::new());
        let layout = registry::Layout::new(registry::DEFAULT_PREFIX);
        let lag = Arc::new(Lag::new(Arc::from("default")));
        let cancel = CancellationToken::new();
        let id = "r1".to_string();
        let tasks = vec![
            tokio::spawn(crate::peers::run(
                id.clone(),
                kv.clone(),
                layout.clone(),
                crate::peers::Live::of(&state),
                crate::peers::Slot {
                    counts: Arc::new([std::sync::atomic::AtomicU64::new(1)]),
                    scales: Arc::new([std::sync::atomic::AtomicU64::new(crate::herd::SCALE_ONE)]),
                    index: 0,
                    public_addrs: Vec::new(),
                    lag: lag.clone(),
                },
                cancel.clone(),
            )),
            tokio::spawn(follow(
                kv.clone(),
                layout.router_key(&id),
                lag.clone(),
                cancel.clone(),
            )),
            tokio::spawn(publish(
                state.serving.clone(),
                state.metrics.registries.clone(),
                state.config.load().max_lag_ms,
                vec![lag.clone()],
                0,
                cancel.clone(),
            )),
        ];
        // A healthy store: measured within a couple of beats, and small.
        wait_for("a first round trip", || lag.measured().is_some()).await;
        assert!(
            lag.measured().unwrap() < Duration::from_millis(200),
            "{:?}",
            lag.measured()
        );
        // The gauge is published once a second: its first value may come a beat later.
        wait_for("the gauge", || gauge(&state).is_some()).await;
        assert!(
            gauge(&state).is_some_and(|g| g < 0.2),
            "{:?}",
            gauge(&state)
        );
        // Delivery held back by 1.5 s: the next beats measure it, the gauge shows it,
        // answers are marked stale (past max_lag_ms = 1 s), the herd window stretches.
        kv.set_delay(Duration::from_millis(1_500));
        wait_for("the lag of a watch held back 1.5 s", || {
            lag.measured().is_some_and(|d| {
                d >= Duration::from_millis(1_450) && d < Duration::from_millis(1_900)
            })
        })
        .await;
        wait_for("the gauge and the stale mark", || {
            gauge(&state).is_some_and(|g| g >= 1.45)
                && state.serving.lagging.load(Ordering::Relaxed)
        })
        .await;
        assert!(state.serving.herd_lag_ms.load(Ordering::Relaxed) >= 1_450);
        // Delivered at once again: the lag and the stale mark go.
        kv.set_delay(Duration::ZERO);
        wait_for("caught up", || {
            lag.measured()
                .is_some_and(|d| d < Duration::from_millis(200))
                && gauge(&state).is_some_and(|g| g < 0.2)
                && !state.serving.lagging.load(Ordering::Relaxed)
        })
        .await;
        cancel.cancel();
        for t in tasks {
            t.await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_round_trip_measures_the_lag_and_a_stall_grows_it() {
        let lag = Lag::new(Arc::from("dc"));
        let t0 = Instant::now();
        assert_eq!(lag.current(t0), None);
        lag.wrote(10, t0);
        assert_eq!(
            lag.current(t0 + Duration::from_millis(300)),
            Some(Duration::from_millis(300))
        );
        lag.seen(10, t0 + Duration::from_millis(40));
        assert_eq!(lag.measured(), Some(Duration::from_millis(40)));
        // Written again and not delivered: the wait shows as soon as it is longer.
        lag.wrote(12, t0 + Duration::from_secs(1));
        assert_eq!(
            lag.current(t0 + Duration::from_millis(1_020)),
            Some(Duration::from_millis(40))
        );
        assert_eq!(
            lag.current(t0 + Duration::from_secs(4)),
            Some(Duration::from_secs(3))
        );
        // A later revision delivers every heartbeat before it.
        lag.wrote(15, t0 + Duration::from_secs(2));
        lag.seen(16, t0 + Duration::from_millis(2_500));
        assert_eq!(lag.measured(), Some(Duration::from_millis(500)));
        assert_eq!(
            lag.current(t0 + Duration::from_secs(9)),
            Some(Duration::from_millis(500))
        );
        // Delivered before the write's own answer came back: no lag, and nothing left
        // waiting to grow.
        lag.seen(20, t0 + Duration::from_secs(10));
        lag.wrote(20, t0 + Duration::from_millis(10_002));
        assert_eq!(lag.measured(), Some(Duration::ZERO));
        assert_eq!(
            lag.current(t0 + Duration::from_secs(12)),
            Some(Duration::ZERO)
        );
    }
}
