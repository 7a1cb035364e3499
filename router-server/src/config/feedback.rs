//! `[feedback]`: what clients' connect outcomes (`POST /outcomes`) may do to the
//! answers of their network (see `crate::feedback`).

use serde::{Deserialize, Serialize};

use super::error::ConfigError;

/// `[feedback]`: when a gateway is demoted for one client network, for how long, and
/// how the routers share what they hear.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeedbackConfig {
    /// Take reports at all (`POST /outcomes` answers 404 `not_found` otherwise).
    pub enabled: bool,
    /// Reports are judged over the last this long (ms).
    pub window_ms: u64,
    /// Fewest outcomes of one (network, gateway) in a window, all routers together,
    /// before it is judged.
    pub min_reports: u64,
    /// A gateway whose share of successful connects from a network falls below this
    /// is demoted for that network: answered after every other candidate.
    pub demote_below: f64,
    /// How long a first demotion lasts (ms); each one that follows soon after the last
    /// lasts twice as long, up to `max_hold_ms`. At least `window_ms` and two
    /// `share_ms`, so that the failures that caused it are out of every router's
    /// window when it ends.
    pub hold_ms: u64,
    /// The longest demotion (ms).
    pub max_hold_ms: u64,
    /// How often each router publishes its window to the others through etcd and
    /// judges again (ms).
    pub share_ms: u64,
    /// Outcomes one client network may add to this router's window; beyond it they
    /// are dropped (and counted), so one network's clients weigh what they weigh and a
    /// liar moves only its own network's view, by a bounded amount.
    pub max_reports_per_network: u64,
    /// (network, gateway) pairs this router keeps; reports of a new pair beyond it are
    /// dropped.
    pub max_pairs: usize,
}

impl Default for FeedbackConfig {
    fn default() -> Self {
        FeedbackConfig {
            enabled: true,
            window_ms: 30_000,
            min_reports: 20,
            demote_below: 0.5,
            hold_ms: 60_000,
            max_hold_ms: 600_000,
            share_ms: 5_000,
            max_reports_per_network: 10_000,
            max_pairs: 100_000,
        }
    }
}

impl FeedbackConfig {
    /// The section's rules, each naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err =
            |key: &str, msg: String| Err(ConfigError::invalid(format!("feedback.{key}"), msg));
        if !(100..=3_600_000).contains(&self.share_ms) {
            return err("share_ms", format!("{} is not 100-3600000", self.share_ms));
        }
        if !(self.share_ms..=86_400_000).contains(&self.window_ms) {
            return err(
                "window_ms",
                format!("{} is not share_ms-86400000", self.window_ms),
            );
        }
        if self.min_reports == 0 {
            return err("min_reports", "must be at least 1".into());
        }
        if !(self.demote_below > 0.0 && self.demote_below <= 1.0) {
            return err(
                "demote_below",
                format!("{} is not in (0, 1]", self.demote_below),
            );
        }
        let least = self.window_ms + 2 * self.share_ms;
        if self.hold_ms < least {
            return err(
                "hold_ms",
                format!("{} is below window_ms + 2 share_ms ({least})", self.hold_ms),
            );
        }
        if self.max_hold_ms < self.hold_ms {
            return err("max_hold_ms", "is below hold_ms".into());
        }
        if self.max_reports_per_network == 0 || self.max_pairs == 0 {
            return err(
                "max_pairs",
                "max_pairs and max_reports_per_network must be at least 1".into(),
            );
        }
        Ok(())
    }
}
