//! [`Serving`]: what answering a client reads (the snapshot, the answer's constant
//! tail, the region table, the guard, the herd's inputs, the stale mark, the routers'
//! own addresses), for `/gateways`, DNS, DoH, `/resolve` and `/d`.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::config::{FileConfig, RegionsConfig};
use crate::guard::Guard;
use crate::herd::{HerdView, SCALE_ONE};
use crate::identity::{IspDbSlot, RegionTable};
use crate::policy::Policies;
use crate::schedule::Snapshot;

/// What every answer reads. Its writers: the snapshot updater (`membership`: the
/// snapshot), the router registrations (`peers`: the router count, the routers'
/// addresses), the lag's publication (`peers::publish_lag`: the herd lag, the stale
/// mark) and the guard's followers (its lists). The rest is fixed at start.
pub struct Serving {
    /// The served snapshot; `None` until the first full load. In an `Arc` so that
    /// request threads can keep a cache of it (see [`Serving::read`]).
    pub snapshot: Arc<ArcSwapOption<Snapshot>>,
    /// The constant part of every answer, serialized once (see [`crate::answer::answer_tail`]).
    pub answer_tail: String,
    /// The client-region table (`[regions]`), for `/gateways` and DNS; replaced when
    /// a reload changes `[regions]`. In an `Arc`, as the snapshot.
    pub regions: Arc<ArcSwap<RegionTable>>,
    /// The ASN database in force (`[regions] isp_db`): every version of `regions`
    /// reads it, and a new file replaces it for all (see `identity::follow_isp_db`).
    pub isp_db: IspDbSlot,
    /// The operator policies in force, by client network (see [`crate::policy`]).
    pub policies: Arc<ArcSwap<Policies>>,
    /// Clients' connect outcomes, and the gateways demoted for each network (see
    /// [`crate::feedback`]).
    pub feedback: Arc<crate::feedback::Feedback>,
    /// What one client network may cost: block and allow lists, budgets.
    pub guard: Arc<Guard>,
    /// This router's order among equally loaded nodes (see `Snapshot::build_seeded`),
    /// for the snapshot's builder.
    pub tie_seed: u64,
    /// Live routers sharing the registry (this one included), from `P/routers/`.
    pub routers: AtomicU64,
    /// What each of this router's answers is scaled by in the herd estimate, in
    /// [`SCALE_ONE`]s: the live routers that are answering (see
    /// [`crate::herd::share`]).
    pub herd_scale: AtomicU64,
    /// The clients this router's answers have counted in the herd estimate, ever: its
    /// heartbeat publishes it, for the other routers' shares.
    pub answered: AtomicU64,
    /// The steady lag (the largest registry's last heartbeat round trip), ms: the
    /// herd window is longer by it, since a connection shows in a report that much
    /// later.
    pub herd_lag_ms: AtomicU64,
    /// `herd_window_secs`, ms.
    herd_window_ms: u64,
    /// True while this router's view of its own registry is behind etcd by more than
    /// `max_lag_ms`: answers are marked stale.
    pub lagging: AtomicBool,
    /// Per registry followed, the public addresses its live routers publish
    /// (`--public-addr`), for the routers' own domain in DNS and HTTPDNS.
    pub router_addrs: Mutex<Vec<Vec<IpAddr>>>,
}

/// The client-network table of `[regions]`, knowing every region it names, reading
/// the ASN database in `isp_db`.
pub fn region_table(regions: &RegionsConfig, isp_db: &IspDbSlot) -> RegionTable {
    RegionTable::new(&regions.cidrs, &regions.default)
        .with_names(regions.names())
        .with_isps(&regions.isp_cidrs, regions.asn_isps(), isp_db.clone())
}

impl Serving {
    /// Nothing served yet, under `config`, with `guard`.
    pub fn new(config: &FileConfig, guard: Arc<Guard>) -> Serving {
        let isp_db = IspDbSlot::default();
        Serving {
            snapshot: Arc::new(ArcSwapOption::empty()),
            answer_tail: crate::answer::answer_tail(config),
            regions: Arc::new(ArcSwap::from_pointee(region_table(
                &config.regions,
                &isp_db,
            ))),
            isp_db,
            policies: Arc::default(),
            feedback: Arc::default(),
            guard,
            tie_seed: rand::random::<u64>() | 1,
            routers: AtomicU64::new(1),
            herd_scale: AtomicU64::new(SCALE_ONE),
            answered: AtomicU64::new(0),
            herd_lag_ms: AtomicU64::new(0),
            herd_window_ms: config.herd_window_secs * 1000,
            lagging: AtomicBool::new(false),
            router_addrs: Mutex::new(Vec::new()),
        }
    }

    /// The herd counts as a request sees them now.
    pub fn herd_view(&self) -> HerdView {
        HerdView::now_scaled(
            self.herd_window_ms + self.herd_lag_ms.load(Ordering::Relaxed),
            self.herd_scale.load(Ordering::Relaxed),
        )
    }

    /// The clients an answer of `weight` to `ip` counts in the herd estimate (`weight`
    /// within its network's share: see [`Guard::herd_weight`]), counted in
    /// [`Serving::answered`].
    pub fn herd_weight(&self, ip: IpAddr, pass: crate::guard::Pass, weight: u64) -> u64 {
        let per_answer = self.herd_scale.load(Ordering::Relaxed).div_ceil(SCALE_ONE);
        let counted = self.guard.herd_weight(ip, pass, weight, per_answer);
        self.answered.fetch_add(counted, Ordering::Relaxed);
        counted
    }
}
