//! Reloading the configuration file on SIGHUP: the file is read and validated as at
//! start; a file that fails keeps the configuration in force (the error is logged and
//! counted). Of a valid file, the parts that can change while serving are applied at
//! once: `[regions]` (the region table, its names and fallbacks) and `[edge]`'s `block`
//! and `allow` lists. A change anywhere else is named in the log and in
//! `router_config_restart_needed`, and waits for a restart; until then the router
//! keeps its old value, so no half-applied setting is ever in force.

use std::path::Path;

use tracing::{error, info, warn};

use crate::config::{ConfigError, FileConfig};
use crate::metrics::ReloadLabels;
use crate::state::{region_table, AppState};

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub struct Reloaded {
    /// The reloadable keys that changed, now in force.
    pub applied: Vec<&'static str>,
    /// The keys that changed and wait for a restart.
    pub restart_needed: Vec<String>,
}

/// Reads `path` and applies it to `state`, logging and counting the outcome.
pub fn reload_file(path: &Path, state: &AppState) -> Result<Reloaded, ConfigError> {
    let outcome = FileConfig::load(path).map(|new| apply(state, new));
    let m = &state.metrics.config;
    match &outcome {
        Ok(r) => {
            m.reloads
                .get_or_create(&ReloadLabels { result: "applied" })
                .inc();
            m.restart_needed
                .set(i64::from(!r.restart_needed.is_empty()));
            info!(file = %path.display(), applied = ?r.applied, "configuration reloaded");
            if !r.restart_needed.is_empty() {
                warn!(keys = ?r.restart_needed, "configuration changes that need a restart are not in force");
            }
        }
        Err(e) => {
            m.reloads
                .get_or_create(&ReloadLabels { result: "invalid" })
                .inc();
            error!(file = %path.display(), error = %e, "configuration reload refused; the running configuration stays");
        }
    }
    outcome
}

/// Puts `new`'s reloadable parts in force in `state`; returns what changed.
pub fn apply(state: &AppState, new: FileConfig) -> Reloaded {
    let old = state.config.load_full();
    let mut next = (*old).clone();
    let mut applied = Vec::new();
    if new.regions != old.regions {
        next.regions = new.regions.clone();
        state
            .serving
            .regions
            .store(std::sync::Arc::new(region_table(
                &next.regions,
                &state.serving.isp_db,
            )));
        applied.push("regions");
    }
    if (&new.edge.block, &new.edge.allow) != (&old.edge.block, &old.edge.allow) {
        next.edge.block = new.edge.block.clone();
        next.edge.allow = new.edge.allow.clone();
        state
            .serving
            .guard
            .set_static(next.edge.block.clone(), next.edge.allow.clone());
        applied.push("edge.block/allow");
    }
    let restart_needed = differences(&next, &new);
    if !applied.is_empty() {
        state.config.store(next);
    }
    Reloaded {
        applied,
        restart_needed,
    }
}

/// The keys (`table.key`) whose values differ between `a` and `b`.
fn differences(a: &FileConfig, b: &FileConfig) -> Vec<String> {
    let (Ok(toml::Value::Table(a)), Ok(toml::Value::Table(b))) =
        (toml::Value::try_from(a), toml::Value::try_from(b))
    else {
        return vec!["(the configuration could not be compared)".into()];
    };
    let mut out = Vec::new();
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        match (a.get(k), b.get(k)) {
            (Some(toml::Value::Table(x)), Some(toml::Value::Table(y))) => {
                let inner: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                out.extend(
                    inner
                        .into_iter()
                        .filter(|i| x.get(*i) != y.get(*i))
                        .map(|i| format!("{k}.{i}")),
                );
            }
            (x, y) if x != y => out.push(k.clone()),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(toml: &str) -> AppState {
        AppState::new(FileConfig::parse(toml).unwrap())
    }

    #[test]
    fn regions_and_static_lists_apply_the_rest_waits_for_a_restart() {
        let s = state("[regions]\ncidrs = { \"198.51.100.0/24\" = \"cn-sh\" }\n");
        let ip = "198.51.100.7".parse().unwrap();
        assert_eq!(s.serving.regions.load().lookup(ip), Some("cn-sh"));
        // The same file twice: once it changes things, then nothing is left to apply.
        let file = "max_load = 0.8\n[regions]\ncidrs = { \"198.51.100.0/24\" = \"cn-bj\" }\nfallbacks = { cn-bj = [\"cn-sh\"] }\n[edge]\nblock = [\"203.0.113.0/24\"]\n[http]\nmax_uri_bytes = 3000\n";
        let new = FileConfig::parse(file).unwrap();
        let r = apply(&s, new);
        assert_eq!(r.applied, ["regions", "edge.block/allow"]);
        assert_eq!(r.restart_needed, ["http.max_uri_bytes", "max_load"]);
        assert_eq!(s.serving.regions.load().lookup(ip), Some("cn-bj"));
        assert_eq!(s.serving.regions.load().named("CN-SH"), Some("cn-sh"));
        let cfg = s.config.load();
        assert_eq!(cfg.regions.fallbacks["cn-bj"], ["cn-sh"]);
        assert_eq!(cfg.max_load, 0.95, "not applied");
        assert_ne!(cfg.http.max_uri_bytes, 3000, "not applied");
        assert!(s
            .serving
            .guard
            .blocked("203.0.113.9".parse().unwrap())
            .is_some());
        // The same file again: nothing to apply, the restart still needed.
        let again = apply(&s, FileConfig::parse(file).unwrap());
        assert!(again.applied.is_empty());
        assert_eq!(again.restart_needed.len(), 2);
    }

    #[test]
    fn an_invalid_file_changes_nothing_and_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("router.toml");
        std::fs::write(
            &path,
            "[regions]\ncidrs = { \"198.51.100.0/24\" = \"cn-sh\" }\n",
        )
        .unwrap();
        let s = AppState::new(FileConfig::load(&path).unwrap());
        std::fs::write(&path, "[regions]\ncidrs = { \"nope\" = \"cn-bj\" }\n").unwrap();
        let e = reload_file(&path, &s).unwrap_err().to_string();
        assert!(e.contains("cidrs"), "{e}");
        let ip = "198.51.100.7".parse().unwrap();
        assert_eq!(s.serving.regions.load().lookup(ip), Some("cn-sh"));
        let text = s.metrics.render();
        assert!(
            text.contains("router_config_reloads_total{result=\"invalid\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("router_config_reloads_total{result=\"applied\"} 0"),
            "both series exist from the start: {text}"
        );
        std::fs::write(
            &path,
            "[regions]\ncidrs = { \"198.51.100.0/24\" = \"cn-bj\" }\n",
        )
        .unwrap();
        reload_file(&path, &s).unwrap();
        assert_eq!(s.serving.regions.load().lookup(ip), Some("cn-bj"));
        assert!(s
            .metrics
            .render()
            .contains("router_config_reloads_total{result=\"applied\"} 1"));
        assert!(s
            .metrics
            .render()
            .contains("router_config_restart_needed 0"));
    }
}
