//! The configuration file's metrics: reloads by outcome, whether the file on disk asks
//! for a restart, and the ISP database's loads.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::ReloadLabels;

/// What reloading the configuration (SIGHUP, `crate::reload`) counts.
#[derive(Clone, Default)]
pub struct ConfigMetrics {
    /// Reloads by result: `applied`, `invalid` (the file was refused; the running
    /// configuration stays).
    pub reloads: Family<ReloadLabels, Counter>,
    /// 1 while the last file read differs from the configuration in force in a key that
    /// only a restart applies.
    pub restart_needed: Gauge,
    /// ISP database loads by result: `applied` (a new file in force), `invalid` (the
    /// file was refused; the database in force stays).
    pub isp_db_loads: Family<ReloadLabels, Counter>,
}

impl ConfigMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        // Both series from the start: a first refusal must be an increase from 0,
        // which an alert on `increase()` sees, not a new series starting at 1.
        for result in ["applied", "invalid"] {
            drop(self.reloads.get_or_create(&ReloadLabels { result }));
            drop(self.isp_db_loads.get_or_create(&ReloadLabels { result }));
        }
        registry.register(
            "config_reloads",
            "Configuration reloads (SIGHUP) by result: applied, or invalid (the file was refused and the running configuration kept)",
            self.reloads.clone(),
        );
        registry.register(
            "config_restart_needed",
            "1 while the configuration file read last differs from the one in force in a key only a restart applies",
            self.restart_needed.clone(),
        );
        registry.register(
            "isp_db_loads",
            "ISP database ([regions] isp_db) loads by result: applied (a new file in force), or invalid (the file was refused and the database in force kept)",
            self.isp_db_loads.clone(),
        );
    }
}
