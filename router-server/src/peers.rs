//! Routers count each other, for herd safety across a balancer (see [`crate::herd`]).
//!
//! Each router registers `P/routers/{id}` under a lease of its own (an extension of the
//! contract's layout) and lists `P/routers/` every couple of seconds; the number of keys
//! is the number of live routers, by which each router scales its own answers. A
//! router that dies disappears with its lease; one that stops revokes it at once. While
//! the registry is out of reach the last count stays.
//!
//! The registration is also the router's heartbeat: once a second (at most) its value
//! is written again with a growing `beat`, and [`crate::lag`] times how long etcd
//! takes to deliver each one back. A router writes no key but its own.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use registry::backoff::Backoff;
use registry::lease::{Lease, Renewal};
use registry::{Kv, KvError, Layout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use prometheus_client::metrics::gauge::Gauge;

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

/// Where one registry's router count goes: `counts[index]`. A router following several
/// registries scales its answers by the largest count.
pub struct Slot {
    /// One count per registry followed.
    pub counts: Arc<[std::sync::atomic::AtomicU64]>,
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
}

impl Live {
    /// The registrations' share of the router's handles.
    pub fn of(state: &AppState) -> Live {
        Live {
            serving: state.serving.clone(),
            status: state.status.clone(),
            routers_live: state.metrics.herd.routers_live.clone(),
        }
    }

    /// Publishes what one listing of `slot`'s registry found: `live` routers, their
    /// public `addrs` and `peers`; the router count is the largest registry's.
    fn publish(&self, slot: &Slot, live: u64, addrs: Vec<std::net::IpAddr>, peers: Vec<Peer>) {
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
        let live = slot
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .max()
            .unwrap_or(live);
        let before = self.serving.routers.swap(live, Ordering::Relaxed);
        if before != live {
            info!(live, "live routers: herd counts are scaled by {live}");
        }
        self.routers_live.set(live as i64);
    }
}

/// A router's registration: who it is, where clients reach it, and its heartbeat.
fn registration(
    id: &str,
    started_ms: u64,
    public_addrs: &[std::net::IpAddr],
    beat: u64,
) -> Vec<u8> {
    let build = registry::build_info!();
    let mut value = serde_json::json!({
        "id": id,
        "started_ms": started_ms,
        "beat": beat,
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
    let mut backoff = Backoff::for_store();
    let mut failing = false;
    loop {
        let result = async {
            let value = registration(&id, started_ms, &slot.public_addrs, lag.next_beat());
            if lease.grant_due() {
                let l = lease.register(&*kv, &key, value).await?;
                info!(router_id = %id, lease = format_args!("{l:x}"), "registered under {prefix}");
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
            // Each registration parsed once, for both what it publishes and who it is.
            let regs: Vec<Registration> = listed
                .iter()
                .map(|kv| Registration::parse(&kv.value))
                .collect();
            let peers: Vec<Peer> = regs.iter().map(Registration::peer).collect();
            let addrs: Vec<std::net::IpAddr> =
                regs.into_iter().flat_map(|r| r.public_addrs).collect();
            Ok::<_, KvError>((listed.len().max(1) as u64, addrs, peers))
        };
        let wait = tokio::select! {
            _ = cancel.cancelled() => break,
            r = result => match r {
                Ok((live, addrs, peers)) => {
                    if failing {
                        info!("router count readable again");
                        failing = false;
                    }
                    out.publish(&slot, live, addrs, peers);
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
