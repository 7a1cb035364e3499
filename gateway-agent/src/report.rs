//! When to write the record: on meaningful change, rate-limited, with a heartbeat floor.
//!
//! Pure logic over `now`, so the thresholds are tested without a clock. A write costs
//! etcd one revision that every router's watch then delivers, so the agent writes only
//! when something a router acts on changed: state, health, the applied command, or the
//! connection count by more than a threshold. A newly applied command is written at
//! once; everything else is spaced by `min_interval`. Liveness does not need writes: it rides
//! on the lease keep-alive, which creates no revision.

use std::time::Duration;

use registry::{HookStatus, NodeState};
use tokio::time::Instant;

/// Thresholds for writing load reports.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportPolicy {
    /// Never two writes closer than this (default 500 ms).
    pub min_interval: Duration,
    /// Always a write at least this often, even with no change (default 30 s).
    pub max_interval: Duration,
    /// A connection change counts as meaningful when it is at least this fraction of
    /// capacity (default 0.01); 0 reports every change.
    pub min_change: f64,
}

impl Default for ReportPolicy {
    fn default() -> Self {
        ReportPolicy {
            min_interval: Duration::from_millis(500),
            max_interval: Duration::from_secs(30),
            min_change: 0.01,
        }
    }
}

/// The parts of a record that change at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dynamic {
    /// Live connections.
    pub connections: u64,
    /// Health per the probe's hysteresis.
    pub healthy: bool,
    /// Serving or draining.
    pub state: NodeState,
    /// The last command applied.
    pub applied_command: Option<String>,
    /// How the last migrate signal's delivery stands.
    pub hook: Option<HookStatus>,
}

impl Dynamic {
    /// The hook status as a router acts on it: which command, which state, which
    /// cause (not the attempt count, which changes with every retry).
    fn hook_summary(&self) -> Option<(&str, registry::HookState, Option<&str>)> {
        self.hook
            .as_ref()
            .map(|h| (h.command.as_str(), h.state, h.error.as_deref()))
    }
}

impl ReportPolicy {
    /// Smallest connection change that is reported before the heartbeat floor.
    pub fn change_threshold(&self, capacity: u64) -> u64 {
        ((self.min_change * capacity as f64).ceil() as u64).max(1)
    }

    /// When the next write is due, given what was last written and when.
    /// `None` for `last` means nothing was written yet: due at once.
    pub fn due(
        &self,
        last: Option<(&Dynamic, Instant)>,
        current: &Dynamic,
        capacity: u64,
    ) -> Option<Instant> {
        let (last, at) = last?;
        // An operator's command (drain, serve, migrate) is written at once: routers
        // must stop sending clients to a drained node now, not after the spacing that
        // damps load churn. Commands are rare, so this cannot flood etcd.
        // So is a hook delivery that ended or began failing: operators watch it.
        let hook_moved =
            last.hook_summary().map(|h| (h.0, h.1)) != current.hook_summary().map(|h| (h.0, h.1));
        if last.applied_command != current.applied_command || hook_moved {
            return Some(at);
        }
        let significant = last.state != current.state
            || last.hook_summary() != current.hook_summary()
            || last.healthy != current.healthy
            || last.applied_command != current.applied_command
            || last.connections.abs_diff(current.connections) >= self.change_threshold(capacity);
        Some(if significant {
            at + self.min_interval
        } else {
            at + self.max_interval
        })
    }

    /// True when a write is due at `now`.
    pub fn should_write(
        &self,
        last: Option<(&Dynamic, Instant)>,
        current: &Dynamic,
        capacity: u64,
        now: Instant,
    ) -> bool {
        self.due(last, current, capacity).is_none_or(|t| t <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dynamic(c: u64) -> Dynamic {
        Dynamic {
            connections: c,
            healthy: true,
            state: NodeState::Serving,
            applied_command: None,
            hook: None,
        }
    }

    #[test]
    fn thresholds() {
        let p = ReportPolicy::default();
        let t0 = Instant::now();
        let last = dynamic(1000);
        assert!(
            p.should_write(None, &last, 100_000, t0),
            "first write at once"
        );
        // 1 % of 100 000 = 1 000.
        assert!(!p.should_write(
            Some((&last, t0)),
            &dynamic(1999),
            100_000,
            t0 + Duration::from_secs(5)
        ));
        assert!(p.should_write(
            Some((&last, t0)),
            &dynamic(2000),
            100_000,
            t0 + Duration::from_millis(500)
        ));
        assert!(!p.should_write(
            Some((&last, t0)),
            &dynamic(2000),
            100_000,
            t0 + Duration::from_millis(499)
        ));
        assert!(p.should_write(
            Some((&last, t0)),
            &dynamic(1001),
            100_000,
            t0 + Duration::from_secs(30)
        ));
        let mut drained = dynamic(1000);
        drained.state = NodeState::Draining;
        assert!(p.should_write(
            Some((&last, t0)),
            &drained,
            100_000,
            t0 + Duration::from_millis(500)
        ));
        let zero = ReportPolicy {
            min_change: 0.0,
            ..p
        };
        assert_eq!(zero.change_threshold(1_000_000), 1);
        assert!(zero.should_write(
            Some((&last, t0)),
            &dynamic(1001),
            100_000,
            t0 + Duration::from_millis(500)
        ));
    }

    fn arb_dynamic() -> impl Strategy<Value = Dynamic> {
        (
            0u64..2_000_000,
            any::<bool>(),
            any::<bool>(),
            proptest::option::of("[a-c]"),
        )
            .prop_map(|(connections, healthy, draining, cmd)| Dynamic {
                connections,
                healthy,
                state: if draining {
                    NodeState::Draining
                } else {
                    NodeState::Serving
                },
                applied_command: cmd,
                hook: None,
            })
    }

    proptest! {
        #[test]
        fn writes_are_spaced_and_bounded(last in arb_dynamic(), cur in arb_dynamic(),
                                         capacity in 1u64..2_000_000, ratio in 0.0f64..0.2,
                                         min_ms in 1u64..5_000, extra_ms in 0u64..60_000) {
            let p = ReportPolicy {
                min_interval: Duration::from_millis(min_ms),
                max_interval: Duration::from_millis(min_ms + extra_ms),
                min_change: ratio,
            };
            let t0 = Instant::now();
            let due = p.due(Some((&last, t0)), &cur, capacity).unwrap();
            prop_assert!(due <= t0 + p.max_interval, "never slower than max_interval");
            if last.applied_command != cur.applied_command {
                prop_assert_eq!(due, t0, "a new command is written at once");
            } else {
                prop_assert!(due >= t0 + p.min_interval, "never faster than min_interval");
                if last.state != cur.state || last.healthy != cur.healthy {
                    prop_assert_eq!(due, t0 + p.min_interval);
                }
            }
            if last == cur {
                prop_assert_eq!(due, t0 + p.max_interval);
            }
        }
    }
}
