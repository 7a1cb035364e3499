//! What one answer reads of the serving state, through the answering thread's caches.
//!
//! An answer reads five values that are swapped whole when they change: the snapshot,
//! the configuration, the region table, the policies and the demotions. A load of an
//! `ArcSwap` takes a debt slot of the thread's and checks it (the largest user-space
//! cost of a DNS query after the selection itself); an [`arc_swap::Cache`] kept per
//! thread compares one pointer, and refreshes itself when the value was swapped.

use std::cell::RefCell;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption, Cache};

use super::Serving;
use crate::config::{FileConfig, LiveConfig};
use crate::feedback::Demotions;
use crate::identity::RegionTable;
use crate::policy::Policies;
use crate::schedule::Snapshot;

/// The values one answer reads, as of its start.
#[derive(Clone, Copy)]
pub struct Reading<'a> {
    /// The served snapshot; `None` until the first full load.
    pub snapshot: Option<&'a Snapshot>,
    /// The configuration in force.
    pub config: &'a FileConfig,
    /// The client-region table.
    pub regions: &'a RegionTable,
    /// The operator policies.
    pub policies: &'a Policies,
    /// The gateways demoted per client network.
    pub demotions: &'a Demotions,
}

type Cached<T> = Cache<Arc<ArcSwap<T>>, Arc<T>>;

/// One thread's caches, of one router's handles (a process may run several: tests do).
struct Caches {
    snapshot: Cache<Arc<ArcSwapOption<Snapshot>>, Option<Arc<Snapshot>>>,
    config: Cached<FileConfig>,
    regions: Cached<RegionTable>,
    policies: Cached<Policies>,
    demotions: Cached<Demotions>,
}

impl Caches {
    fn of(serving: &Serving, config: &LiveConfig) -> Caches {
        Caches {
            snapshot: Cache::new(serving.snapshot.clone()),
            config: Cache::new(config.swap().clone()),
            regions: Cache::new(serving.regions.clone()),
            policies: Cache::new(serving.policies.clone()),
            demotions: Cache::new(serving.feedback.demotions.clone()),
        }
    }

    /// True when these are caches of exactly these handles. A cache holds its handle,
    /// so a handle it names cannot have been freed and its address reused.
    fn follow(&self, serving: &Serving, config: &LiveConfig) -> bool {
        std::ptr::eq(self.snapshot.arc_swap(), &*serving.snapshot)
            && std::ptr::eq(self.config.arc_swap(), &**config.swap())
            && std::ptr::eq(self.regions.arc_swap(), &*serving.regions)
            && std::ptr::eq(self.policies.arc_swap(), &*serving.policies)
            && std::ptr::eq(self.demotions.arc_swap(), &*serving.feedback.demotions)
    }
}

thread_local! {
    static CACHES: RefCell<Option<Caches>> = const { RefCell::new(None) };
}

impl Serving {
    /// `f` of what an answer reads now, `config` being the router's configuration:
    /// through this thread's caches, or loaded afresh when they are in use further up
    /// this thread's stack.
    pub fn read<R>(&self, config: &LiveConfig, f: impl FnOnce(&Reading<'_>) -> R) -> R {
        CACHES.with(|caches| match caches.try_borrow_mut() {
            Ok(mut caches) => {
                let c = match &mut *caches {
                    Some(c) if c.follow(self, config) => c,
                    slot => slot.insert(Caches::of(self, config)),
                };
                f(&Reading {
                    snapshot: c.snapshot.load().as_deref(),
                    config: c.config.load(),
                    regions: c.regions.load(),
                    policies: c.policies.load(),
                    demotions: c.demotions.load(),
                })
            }
            Err(_) => {
                let (snapshot, cfg) = (self.snapshot.load(), config.load());
                let (regions, policies) = (self.regions.load(), self.policies.load());
                let demotions = self.feedback.demotions.load();
                f(&Reading {
                    snapshot: snapshot.as_deref(),
                    config: &cfg,
                    regions: &regions,
                    policies: &policies,
                    demotions: &demotions,
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FileConfig;
    use crate::guard::Guard;
    use crate::metrics::Metrics;

    fn serving(config: &FileConfig) -> Serving {
        let guard = Guard::new(config, Default::default(), &Metrics::default());
        Serving::new(config, Arc::new(guard))
    }

    /// A value swapped after a thread cached it is what that thread reads next; a
    /// second router's handles are not read through the first one's caches; a read
    /// inside a read loads afresh, the same values.
    #[test]
    fn a_thread_reads_what_was_swapped_and_each_routers_own() {
        let config = FileConfig::parse("max_load = 0.5\n").unwrap();
        let (a, a_cfg) = (serving(&config), LiveConfig::new(config.clone()));
        let (b, b_cfg) = (serving(&config), LiveConfig::new(config));
        assert!(a.read(&a_cfg, |r| r.snapshot.is_none() && r.config.max_load == 0.5));
        a_cfg.store(FileConfig::parse("max_load = 0.75\n").unwrap());
        a.policies.store(Arc::new(Policies::default()));
        assert_eq!(a.read(&a_cfg, |r| r.config.max_load), 0.75);
        assert_eq!(b.read(&b_cfg, |r| r.config.max_load), 0.5);
        assert_eq!(a.read(&a_cfg, |r| r.config.max_load), 0.75);
        let nested = a.read(&a_cfg, |outer| {
            let inner = a.read(&a_cfg, |r| r.config.max_load);
            (outer.config.max_load, inner)
        });
        assert_eq!(nested, (0.75, 0.75));
    }
}
