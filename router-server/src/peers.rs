//! Routers count each other, for herd safety across a balancer (see [`crate::herd`]).
//!
//! Each router registers `P/routers/{id}` under a lease of its own (an extension of the
//! contract's layout) and lists `P/routers/` every second; the number of keys is the
//! number of live routers. A router that dies disappears with its lease; one that
//! stops revokes it at once. While the registry is out of reach the last count stays.
//!
//! The registration is also the router's heartbeat: once a second (at most) its value
//! is written again with a growing `beat` and the clients its answers have counted
//! (`answered`). [`crate::lag`] times how long etcd takes to deliver each one back, and
//! [`crate::herd::share`] turns the listed counts into this router's share of the
//! answers, by which it scales its own. A router writes no key but its own.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use registry::backoff::Backoff;
use registry::lease::{Lease, Renewal};
use registry::{Kv, KvError, Layout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use prometheus_client::metrics::gauge::Gauge;

use crate::herd::share::{Heartbeat, Shares};
use crate::herd::SCALE_ONE;
use crate::metrics::RegistryMetrics;
use crate::state::{AppState, FleetStatus, Peer, Serving};

/// Lease of a router's key: a router that dies stops counting after this long.
const TTL: Duration = Duration::from_secs(10);
/// How often the lease is renewed.
const EVERY: Duration = Duration::from_secs(2);
/// How often the heartbeat is written and the routers counted: one write a second
/// per registry at most.
const BEAT: Duration = Duration::from_secs(1);

/// This router's id: host name and process id, plus a random part so two routers on
/// one host never share one.
pub fn router_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "router".into());
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if registry::record::is_name_char(c) {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    format!(
        "{host}-{}-{:06x}",
        std::process::id(),
        rand::random::<u32>() & 0xff_ffff
    )
}

/// What another router's registration says of it, as far as it can be believed: any
/// router (or whoever holds its role) writes its own, so strings are bounded and a
/// value that does not parse says nothing.
#[derive(Debug, Default, serde::Deserialize)]
struct Registration {
    #[serde(default)]
    id: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    commit: String,
    #[serde(default)]
    public_addrs: Vec<std::net::IpAddr>,
    #[serde(default)]
    beat: Option<u64>,
    #[serde(default)]
    answered: Option<u64>,
}

/// The longest id, version or commit shown from a registration.
const MAX_SHOWN: usize = 64;

/// `s` when it is short and printable, else `"?"`.
fn shown(s: &str) -> String {
    if s.is_empty() || s.len() > MAX_SHOWN || s.chars().any(|c| c.is_control()) {
        "?".into()
    } else {
        s.into()
    }
}

impl Registration {
    /// The registration `value` describes; empty when it does not parse (written by
    /// an older router, or by someone else).
    fn parse(value: &[u8]) -> Registration {
        serde_json::from_slice(value).unwrap_or_default()
    }

    /// The [`Peer`] it describes, its strings bounded.
    fn peer(&self) -> Peer {
        let version = if self.version.is_empty() {
            "?".to_string()
        } else {
            format!("{} ({})", shown(&self.version), shown(&self.commit))
        };
        Peer {
            id: shown(&self.id),
            version,
        }
    }
}

/// Where one registry's router count and herd scale go: `counts[index]`,
/// `scales[index]`. A router following several registries shows the largest count and
/// scales its answers by the largest scale.
pub struct Slot {
    /// One count per registry followed.
    pub counts: Arc<[std::sync::atomic::AtomicU64]>,
    /// One herd scale per registry followed, in [`SCALE_ONE`]s.
    pub scales: Arc<[std::sync::atomic::AtomicU64]>,
    /// This registry's.
    pub index: usize,
    /// This router's public addresses, published in its registration.
    pub public_addrs: Vec<std::net::IpAddr>,
    /// This registry's lag, which the heartbeats measure.
    pub lag: Arc<crate::lag::Lag>,
}

/// Where the live routers a registration finds are published, and nothing else of the
/// router's: their count and addresses (which answers read), their ids and versions
/// (the fleet page), the live-routers gauge.
#[derive(Clone)]
pub struct Live {
    /// The router count (herd scale) and the routers' public addresses.
    pub serving: Arc<Serving>,
    /// The peers' ids and versions.
    pub status: Arc<FleetStatus>,
    /// `router_routers_live`.
    pub routers_live: Gauge,
    /// `router_herd_scale`.
    pub herd_scale: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Live {
    /// The registrations' share of the router's handles.
    pub fn of(state: &AppState) -> Live {
        Live {
            serving: state.serving.clone(),
            status: state.status.clone(),
            routers_live: state.metrics.herd.routers_live.clone(),
            herd_scale: state.metrics.herd.scale.clone(),
        }
    }

    /// Publishes what one listing of `slot`'s registry found: `live` routers, their
    /// public `addrs` and `peers`, and this router's herd `scale`; the router count and
    /// the scale are the largest registry's.
    fn publish(&self, slot: &Slot, listing: Listing) {
        let Listing {
            live,
            addrs,
            peers,
            scale,
        } = listing;
        {
            let mut all = self.serving.router_addrs.lock().expect("router_addrs lock");
            if all.len() <= slot.index {
                all.resize(slot.index + 1, Vec::new());
            }
            all[slot.index] = addrs;
        }
        {
            let mut all = self.status.router_peers.lock().expect("router_peers lock");
            if all.len() <= slot.index {
                all.resize(slot.index + 1, Vec::new());
            }
            all[slot.index] = peers;
        }
        slot.counts[slot.index].store(live, Ordering::Relaxed);
        let live = largest(&slot.counts).unwrap_or(live);
        self.serving.routers.store(live, Ordering::Relaxed);
        self.routers_live.set(live as i64);
        slot.scales[slot.index].store(scale, Ordering::Relaxed);
        let scale = largest(&slot.scales).unwrap_or(scale);
        let before = self.serving.herd_scale.swap(scale, Ordering::Relaxed);
        if before / SCALE_ONE != scale / SCALE_ONE {
            info!(
                live,
                scale = scale as f64 / SCALE_ONE as f64,
                "live routers and this router's share: herd counts are scaled by {:.2}",
                scale as f64 / SCALE_ONE as f64
            );
        }
        self.herd_scale.set(scale as f64 / SCALE_ONE as f64);
    }
}

/// The largest of `values`.
fn largest(values: &[std::sync::atomic::AtomicU64]) -> Option<u64> {
    values.iter().map(|c| c.load(Ordering::Relaxed)).max()
}

/// What one listing of `P/routers/` found.
struct Listing {
    /// Live routers.
    live: u64,
    /// Their public addresses.
    addrs: Vec<std::net::IpAddr>,
    /// Their ids and versions.
    peers: Vec<Peer>,
    /// This router's herd scale, in [`SCALE_ONE`]s.
    scale: u64,
}

/// A router's registration: who it is, where clients reach it, and its heartbeat (its
/// number and the clients its answers have counted).
fn registration(
    id: &str,
    started_ms: u64,
    public_addrs: &[std::net::IpAddr],
    (beat, answered): (u64, u64),
) -> Vec<u8> {
    let build = registry::build_info!();
    let mut value = serde_json::json!({
        "id": id,
        "started_ms": started_ms,
        "beat": beat,
        "answered": answered,
        "version": build.version,
        "commit": build.commit,
    });
    if !public_addrs.is_empty() {
        value["public_addrs"] = serde_json::json!(public_addrs);
    }
    value.to_string().into_bytes()
}

/// Registers this router in one registry and keeps the live routers it finds published
/// through `out` until `cancel`, then revokes the registration.
pub async fn run(
    id: String,
    kv: Arc<dyn Kv>,
    layout: Layout,
    out: Live,
    slot: Slot,
    cancel: CancellationToken,
) {
    let key = layout.router_key(&id);
    let prefix = layout.routers_prefix();
    let started_ms = registry::now_ms();
    let lag = slot.lag.clone();
    let mut lease = Lease::renewed_every(TTL, EVERY);
    // A failing beat is tried again at most a beat later, as a working one is: its
    // first success after an outage (the store's first leader after an election) is
    // what wakes the node followers (see `Lag::taken`), so it must not wait out a
    // long backoff.
    let mut backoff = Backoff::new(Duration::from_millis(200), BEAT, 2.0, 0.2);
    let mut failing = false;
    let mut shares = Shares::default();
    loop {
        let result = async {
            let started = tokio::time::Instant::now();
            let heartbeat = (
                lag.next_beat(),
                out.serving.answered.load(Ordering::Relaxed),
            );
            let value = registration(&id, started_ms, &slot.public_addrs, heartbeat);
            if lease.grant_due() {
                let l = lease.register(&*kv, &key, value).await?;
                info!(router_id = %id, lease = format_args!("{l:x}"), "registered under {prefix}");
                lag.taken.notify_waiters();
                // The registration's own revision is not known here: the next beat
                // starts the measurement.
            } else {
                match lease.renew(&*kv).await {
                    Renewal::NotDue | Renewal::Renewed => {}
                    Renewal::Lost(why) => {
                        return Err(KvError::Unavailable(format!("registration lost: {why}")))
                    }
                    Renewal::Failed(e) => return Err(e),
                }
                let revision = kv.put(&key, value, lease.id()).await?;
                lag.wrote(revision, tokio::time::Instant::now());
            }
            let listed = kv.list(&prefix).await?.kvs;
            // This router's own heartbeat went and came back in time: a peer whose
            // beat stands still is not just held up by a slow etcd.
            let in_time = started.elapsed() < BEAT;
            // Each registration parsed once, for what it publishes, who it is and its
            // heartbeat.
            let regs: Vec<Registration> = listed
                .iter()
                .map(|kv| Registration::parse(&kv.value))
                .collect();
            let beats: Vec<Heartbeat<'_>> = listed
                .iter()
                .zip(&regs)
                .map(|(kv, r)| Heartbeat {
                    key: kv.key.as_bytes(),
                    counts: r.beat.zip(r.answered),
                })
                .collect();
            let scale = shares.observe(&beats, key.as_bytes(), in_time);
            let peers: Vec<Peer> = regs.iter().map(Registration::peer).collect();
            let addrs: Vec<std::net::IpAddr> =
                regs.into_iter().flat_map(|r| r.public_addrs).collect();
            Ok::<_, KvError>(Listing {
                live: listed.len().max(1) as u64,
                addrs,
                peers,
                scale,
            })
        };
        let wait = tokio::select! {
            _ = cancel.cancelled() => break,
            r = result => match r {
                Ok(listing) => {
                    if failing {
                        info!("router count readable again");
                        failing = false;
                    }
                    out.publish(&slot, listing);
                    backoff.reset();
                    BEAT
                }
                Err(e) => {
                    if matches!(e, KvError::LeaseNotFound(_)) {
                        lease.lost();
                    }
                    if !failing {
                        warn!(error = %e, "cannot count the live routers; keeping the last count");
                        failing = true;
                    } else {
                        debug!(error = %e, "router count still failing");
                    }
                    backoff.next_delay()
                }
            },
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    let held = lease.id().is_some();
    match lease.revoke(&*kv, Duration::from_secs(2)).await {
        Ok(()) if held => info!(router_id = %id, "router deregistered"),
        Ok(()) => {}
        Err(e) => debug!(error = %e, "router registration left to expire"),
    }
}
/// Publishes every registry's lag once a second until `cancel`: the gauge, the lag
/// the herd window is stretched by, and whether answers are marked stale (the
/// router's own registry past `max_lag_ms`): the gauge in `metrics`, the rest in
/// `serving`.
pub async fn publish_lag(
    serving: Arc<Serving>,
    metrics: RegistryMetrics,
    max_lag_ms: u64,
    lags: Vec<Arc<crate::lag::Lag>>,
    local: usize,
    cancel: CancellationToken,
) {
    let bound = Duration::from_millis(max_lag_ms);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_lagging = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = tokio::time::Instant::now();
        let mut steady = Duration::ZERO;
        for l in &lags {
            if let Some(d) = l.current(now) {
                metrics.set_lag(&l.registry, d);
            }
            steady = steady.max(l.measured().unwrap_or_default());
        }
        serving
            .herd_lag_ms
            .store(steady.as_millis() as u64, Ordering::Relaxed);
        let lagging = lags
            .get(local)
            .and_then(|l| l.current(now))
            .is_some_and(|d| d > bound);
        serving.lagging.store(lagging, Ordering::Relaxed);
        if lagging != was_lagging {
            let lag_ms = lags
                .get(local)
                .and_then(|l| l.current(now))
                .map_or(0, |d| d.as_millis());
            if lagging {
                tracing::warn!(
                    lag_ms,
                    max_lag_ms,
                    "this router's view is behind etcd past max_lag_ms: answers are marked stale"
                );
            } else {
                tracing::info!(lag_ms, "this router's view caught up with etcd");
            }
            was_lagging = lagging;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::AppState;
    use crate::testkv::TestKv;
    use std::sync::atomic::AtomicU64;

    /// One router's registration task over `kv`, and its state.
    fn router(id: &str, kv: &Arc<TestKv>) -> (AppState, tokio::task::JoinHandle<()>) {
        let lag = Arc::new(crate::lag::Lag::new(Arc::from("default")));
        router_with(id, kv, lag)
    }

    /// [`router`], measuring `lag`.
    fn router_with(
        id: &str,
        kv: &Arc<TestKv>,
        lag: Arc<crate::lag::Lag>,
    ) -> (AppState, tokio::task::JoinHandle<()>) {
        let state = AppState::new(crate::config::FileConfig::default());
        let slot = Slot {
            counts: Arc::new([AtomicU64::new(1)]),
            scales: Arc::new([AtomicU64::new(SCALE_ONE)]),
            index: 0,
            public_addrs: Vec::new(),
            lag,
        };
        let task = tokio::spawn(run(
            id.to_string(),
            kv.clone(),
            Layout::new(registry::DEFAULT_PREFIX),
            Live::of(&state),
            slot,
            CancellationToken::new(),
        ));
        (state, task)
    }

    async fn wait_for(what: &str, f: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// After a long outage the heartbeat is tried again within a beat (and a little
    /// jitter), so its first success, which wakes the node followers, comes at most
    /// that long after the store is back: after each of five outages of 20 s.
    #[tokio::test(start_paused = true)]
    async fn a_failing_heartbeat_tries_again_every_beat() {
        let kv = Arc::new(TestKv::new());
        let lag = Arc::new(crate::lag::Lag::new(Arc::from("default")));
        let (_state, task) = router_with("r1", &kv, lag.clone());
        let key = Layout::new(registry::DEFAULT_PREFIX).router_key("r1");
        while kv.inner.get(&key).await.unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for _ in 0..5 {
            kv.refusing_puts.store(true, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(20)).await;
            kv.refusing_puts.store(false, Ordering::Relaxed);
            let back = tokio::time::Instant::now();
            lag.taken.notified().await;
            let after = back.elapsed();
            assert!(
                after <= BEAT.mul_f64(1.2) + Duration::from_millis(1),
                "the heartbeat came back {after:?} after the store"
            );
        }
        task.abort();
    }

    /// Two routers answering scale by 2. When the balancer stops sending to one that
    /// stays up, the other knows within four listings; when one is killed (its task
    /// gone, its registration left to its lease), within three, while both still count
    /// as live.
    #[tokio::test(start_paused = true)]
    async fn a_router_scales_by_its_share_of_the_answers() {
        let kv = Arc::new(TestKv::new());
        let (a, _a_task) = router("a", &kv);
        let (b, b_task) = router("b", &kv);
        let b_answers = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let traffic = {
            let (a, b, b_answers) = (a.serving.clone(), b.serving.clone(), b_answers.clone());
            tokio::spawn(async move {
                loop {
                    a.answered.fetch_add(10, Ordering::Relaxed);
                    if b_answers.load(Ordering::Relaxed) {
                        b.answered.fetch_add(10, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        let scale = |s: &AppState| s.serving.herd_scale.load(Ordering::Relaxed);
        let live = |s: &AppState| s.serving.routers.load(Ordering::Relaxed);
        wait_for("an even split measured", || {
            live(&a) == 2 && (1_900..=2_000).contains(&scale(&a))
        })
        .await;
        b_answers.store(false, Ordering::Relaxed);
        let shifted = tokio::time::Instant::now();
        wait_for("the shift measured", || scale(&a) == SCALE_ONE).await;
        // The first listing after may show b's beat from before, the next one part of
        // a second of answers; then two listings without an answer of b's.
        assert!(
            shifted.elapsed() <= BEAT * (STALE + 2) + Duration::from_millis(100),
            "{:?}",
            shifted.elapsed()
        );
        b_answers.store(true, Ordering::Relaxed);
        wait_for("the even split again", || {
            (1_900..=2_000).contains(&scale(&a))
        })
        .await;
        // Killed: no revoke, the key stays.
        b_task.abort();
        b_answers.store(false, Ordering::Relaxed);
        let killed = tokio::time::Instant::now();
        wait_for("the silent router counted out", || scale(&a) == SCALE_ONE).await;
        assert!(
            killed.elapsed() <= BEAT * (STALE + 1) + Duration::from_millis(100),
            "{:?}",
            killed.elapsed()
        );
        assert_eq!(live(&a), 2, "its registration is still there");
        assert!(a
            .metrics
            .render()
            .lines()
            .any(|l| l == "router_herd_scale 1.0"));
        traffic.abort();
    }

    /// The listings in a row after which a silent router counts for nothing.
    const STALE: u32 = crate::herd::share::STALE_LISTINGS;
}
