//! Per registry (data centre): its watch, nodes, demotion, lag and etcd alarms.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{AlarmLabels, RegistryLabels};

/// Written by the snapshot updater (health), the lag's publication and the alarms'
/// reader.
#[derive(Clone, Default)]
pub struct RegistryMetrics {
    /// Per registry: 1 while its watch is live.
    pub up: Family<RegistryLabels, Gauge>,
    /// Per registry: its valid node records.
    pub nodes: Family<RegistryLabels, Gauge>,
    /// Per registry: 1 while its nodes are demoted (out of reach), 2 once dropped.
    pub demoted: Family<RegistryLabels, Gauge>,
    /// Per registry: how far behind etcd this router's view is (its heartbeat's round
    /// trip, or the wait of one not delivered yet), seconds.
    pub lag: Family<RegistryLabels, Gauge<f64, AtomicU64>>,
    /// Per registry and alarm: 1 while etcd has the alarm raised.
    pub etcd_alarm: Family<AlarmLabels, Gauge>,
}

impl RegistryMetrics {
    /// A registry's lag.
    pub fn set_lag(&self, registry: &str, lag: std::time::Duration) {
        self.lag
            .get_or_create(&RegistryLabels {
                registry: registry.to_string(),
            })
            .set(lag.as_secs_f64());
    }

    /// A registry's etcd alarms: every known alarm is set, 0 or 1.
    pub fn set_etcd_alarms(&self, registry: &str, raised: &[registry::Alarm]) {
        for alarm in registry::Alarm::ALL {
            self.etcd_alarm
                .get_or_create(&AlarmLabels {
                    registry: registry.to_string(),
                    alarm: alarm.as_str(),
                })
                .set(raised.contains(&alarm) as i64);
        }
    }

    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "registry_up",
            "1 while the registry's (DC's) watch is live",
            self.up.clone(),
        );
        registry.register(
            "registry_nodes",
            "Valid node records in the registry (DC)",
            self.nodes.clone(),
        );
        registry.register(
        "registry_demoted",
        "1 while the registry (DC) is out of reach and its nodes are offered last, 2 once they are dropped",
        self.demoted.clone(),
    );
        registry.register(
        "registry_lag_seconds",
        "How far behind etcd this router's view of the registry (DC) is: the round trip of its heartbeat through etcd, on its own clock",
        self.lag.clone(),
    );
        registry.register(
        "etcd_alarm",
        "1 while the registry's etcd has the alarm raised (nospace: out of its space quota, writes refused; corrupt: a member's data is corrupt)",
        self.etcd_alarm.clone(),
    );
    }
}
