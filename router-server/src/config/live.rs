//! [`LiveConfig`]: the configuration in force, one atomic load per reader. SIGHUP
//! replaces it with the file's reloadable part applied (see `crate::reload`); every
//! other reader keeps seeing the values it started with, since nothing else changes.

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use super::FileConfig;

/// The validated configuration in force, shared by the edges and the tasks. Cloning
/// it shares it.
#[derive(Clone)]
pub struct LiveConfig(Arc<ArcSwap<FileConfig>>);

impl LiveConfig {
    /// `config`, validated by the caller.
    pub fn new(config: FileConfig) -> LiveConfig {
        LiveConfig(Arc::new(ArcSwap::from_pointee(config)))
    }

    /// The configuration now: hold it for one request or one step, not longer.
    pub fn load(&self) -> Guard<Arc<FileConfig>> {
        self.0.load()
    }

    /// The configuration now, to keep.
    pub fn load_full(&self) -> Arc<FileConfig> {
        self.0.load_full()
    }

    /// The handle itself, for a thread's cache of it (see
    /// [`crate::state::Serving::read`]).
    pub(crate) fn swap(&self) -> &Arc<ArcSwap<FileConfig>> {
        &self.0
    }

    /// Puts `config` in force.
    pub fn store(&self, config: FileConfig) {
        self.0.store(Arc::new(config));
    }
}

impl std::fmt::Debug for LiveConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.load().fmt(f)
    }
}
