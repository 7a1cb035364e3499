//! Operator policy in force: `P/policy/` of every registry the router follows (see
//! `registry::policy`), kept as [`Policies`] for the edges to look up per client
//! network. A change is in force as soon as the watch delivers it. A value that does
//! not parse is skipped and logged once per key and value; of two registries holding
//! one name, the router's own wins.
//!
//! Each policy counts the answers it steered, per group, for `/ops`; that count also
//! draws each answer's group (see `registry::policy::Policy::group_for`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use registry::follow_map::MapView;
use registry::policy::Policy;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::schedule::Steer;

/// The most policies followed (per registry): a prefix filled with thousands of keys
/// costs a bounded map, not the router's memory.
pub const MAX_POLICIES: usize = 10_000;

/// One policy in force.
#[derive(Debug)]
pub struct InForce {
    /// Its name (the key under `P/policy/`).
    pub name: String,
    /// The registry it was read from.
    pub registry: Arc<str>,
    /// What it says.
    pub policy: Policy,
    /// Answers it decided, ever: draws each answer's group.
    answers: AtomicU64,
    /// Answers per ratio group, in `policy.ratios`' order.
    by_group: Vec<AtomicU64>,
}

impl InForce {
    fn new(name: String, registry: Arc<str>, policy: Policy) -> InForce {
        let by_group = policy.ratios.iter().map(|_| AtomicU64::new(0)).collect();
        InForce {
            name,
            registry,
            policy,
            answers: AtomicU64::new(0),
            by_group,
        }
    }

    /// What this policy decides for the next answer, counted.
    pub fn steer(&self) -> Steer<'_> {
        let n = self.answers.fetch_add(1, Ordering::Relaxed);
        let steer = Steer::of(&self.policy, n);
        if let Some(first) = steer.first {
            if let Some(k) = self.policy.ratios.iter().position(|r| &r.to == first) {
                self.by_group[k].fetch_add(1, Ordering::Relaxed);
            }
        }
        steer
    }

    /// What this policy would decide for the next answer, not counted (explain).
    pub fn peek(&self) -> Steer<'_> {
        Steer::of(&self.policy, self.answers.load(Ordering::Relaxed))
    }

    /// Answers steered to each ratio group so far, in the policy's order.
    pub fn answers_by_group(&self) -> Vec<u64> {
        self.by_group
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect()
    }
}

/// Every policy in force, by the client network it covers.
#[derive(Debug, Default)]
pub struct Policies {
    /// By (region, ISP); a region's own policy under (region, `None`).
    by_network: HashMap<(String, Option<String>), Arc<InForce>>,
}

impl Policies {
    /// The policy for clients of `region` and `isp`: the one for that ISP of the region,
    /// else the region's own.
    pub fn for_network(&self, region: Option<&str>, isp: Option<&str>) -> Option<&InForce> {
        if self.by_network.is_empty() {
            return None;
        }
        let region = region?.to_string();
        if let Some(isp) = isp {
            if let Some(p) = self
                .by_network
                .get(&(region.clone(), Some(isp.to_string())))
            {
                return Some(p);
            }
        }
        self.by_network.get(&(region, None)).map(Arc::as_ref)
    }

    /// Every policy, by name.
    pub fn all(&self) -> Vec<&InForce> {
        let mut v: Vec<&InForce> = self.by_network.values().map(Arc::as_ref).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// True when no policy is in force.
    pub fn is_empty(&self) -> bool {
        self.by_network.is_empty()
    }
}

/// Builds the policies of `views` (one per registry, the router's own at `local`),
/// keeping the counters of those in `previous` that did not change. Values that do not
/// parse go to `skipped`.
fn build(
    views: &[(Arc<str>, Arc<MapView>)],
    local: usize,
    previous: &Policies,
    mut skipped: impl FnMut(&str, &[u8], String),
) -> Policies {
    // By name: the router's own registry first, so that it wins a name.
    let mut by_name: BTreeMap<&str, (Arc<str>, Policy)> = BTreeMap::new();
    let order = std::iter::once(local).chain((0..views.len()).filter(|&i| i != local));
    for i in order {
        let Some((registry, view)) = views.get(i) else {
            continue;
        };
        for (key, value) in view.entries.iter().take(MAX_POLICIES) {
            match Policy::parse(value) {
                Ok(p) => {
                    by_name.entry(key).or_insert_with(|| (registry.clone(), p));
                }
                Err(e) => skipped(key, value, e.to_string()),
            }
        }
    }
    let old: HashMap<&str, &Arc<InForce>> = previous
        .by_network
        .values()
        .map(|p| (p.name.as_str(), p))
        .collect();
    let mut by_network = HashMap::new();
    for (name, (registry, policy)) in by_name {
        let network = (policy.region.clone(), policy.isp.clone());
        let kept = old
            .get(name)
            .filter(|p| p.policy == policy && p.registry == registry)
            .map(|p| Arc::clone(p));
        let entry = kept.unwrap_or_else(|| Arc::new(InForce::new(name.into(), registry, policy)));
        // Two policies for one network: the first by name holds it; the other is
        // reported and ignored.
        if let Some(first) = by_network.get(&network) {
            let first: &Arc<InForce> = first;
            skipped(
                name,
                &[],
                format!("covers the same clients as policy {}; ignored", first.name),
            );
            continue;
        }
        by_network.insert(network, entry);
    }
    Policies { by_network }
}

/// Keeps `policies` equal to what `views` (one per registry, named, the router's own
/// at `local`) hold, until `cancel`.
pub async fn run(
    policies: Arc<ArcSwap<Policies>>,
    mut views: Vec<(Arc<str>, watch::Receiver<Arc<MapView>>)>,
    local: usize,
    cancel: CancellationToken,
) {
    let mut logged: std::collections::HashSet<(String, Vec<u8>)> = Default::default();
    loop {
        let now: Vec<(Arc<str>, Arc<MapView>)> = views
            .iter_mut()
            .map(|(name, v)| (name.clone(), v.borrow_and_update().clone()))
            .collect();
        let next = build(&now, local, &policies.load(), |key, value, error| {
            if logged.insert((key.to_string(), value.to_vec())) {
                warn!(key, error, "policy skipped");
            }
        });
        if !(next.is_empty() && policies.load().is_empty()) {
            info!(policies = next.by_network.len(), "policies in force");
        }
        policies.store(Arc::new(next));
        let any = futures::future::select_all(views.iter_mut().map(|(_, v)| Box::pin(v.changed())));
        tokio::select! {
            _ = cancel.cancelled() => return,
            (r, _, _) = any => {
                if r.is_err() {
                    // A follower ended (shutdown): nothing more will change.
                    cancel.cancelled().await;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(entries: &[(&str, &str)]) -> Arc<MapView> {
        let mut v = MapView::default();
        for (k, val) in entries {
            v.entries.insert(Arc::from(*k), Arc::from(val.as_bytes()));
        }
        Arc::new(v)
    }

    const SH: &str = r#"{"region":"cn-sh","exclude":["pool:a"]}"#;
    const SH_CMCC: &str = r#"{"region":"cn-sh","isp":"cmcc","ratios":[{"to":"dc:sh","percent":70},{"to":"dc:hz","percent":30}]}"#;

    #[test]
    fn a_clients_isp_policy_comes_before_its_regions() {
        let views = vec![(Arc::from("sh"), view(&[("sh", SH), ("sh-cmcc", SH_CMCC)]))];
        let p = build(&views, 0, &Policies::default(), |k, _, e| {
            panic!("{k}: {e}")
        });
        let name = |r, i| p.for_network(r, i).map(|p| p.name.as_str());
        assert_eq!(name(Some("cn-sh"), Some("cmcc")), Some("sh-cmcc"));
        assert_eq!(name(Some("cn-sh"), Some("ctcc")), Some("sh"));
        assert_eq!(name(Some("cn-sh"), None), Some("sh"));
        assert_eq!(name(Some("cn-bj"), Some("cmcc")), None);
        assert_eq!(name(None, Some("cmcc")), None);
        // Ratios: exactly the shares over 100 answers, counted per group.
        let cmcc = p.for_network(Some("cn-sh"), Some("cmcc")).unwrap();
        for _ in 0..100 {
            cmcc.steer();
        }
        assert_eq!(cmcc.answers_by_group(), [70, 30]);
    }

    #[test]
    fn bad_and_conflicting_values_are_skipped_and_the_own_registry_wins() {
        let own = view(&[("sh", SH), ("bad", r#"{"region":"cn-sh"}"#)]);
        let other = view(&[
            ("sh", r#"{"region":"cn-sh","exclude":["pool:other"]}"#),
            ("twin", r#"{"region":"cn-sh","exclude":["pool:b"]}"#),
            ("hz", r#"{"region":"cn-hz","exclude":["pool:b"]}"#),
        ]);
        let views = vec![(Arc::from("hz"), other), (Arc::from("sh"), own)];
        let mut skipped = Vec::new();
        let p = build(&views, 1, &Policies::default(), |k, _, e| {
            skipped.push(format!("{k}: {e}"))
        });
        let sh = p.for_network(Some("cn-sh"), None).unwrap();
        assert_eq!(
            (sh.name.as_str(), &*sh.registry),
            ("sh", "sh"),
            "own registry wins"
        );
        assert!(p.for_network(Some("cn-hz"), None).is_some());
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(skipped.iter().any(|s| s.starts_with("bad:")));
        assert!(skipped
            .iter()
            .any(|s| s.contains("same clients as policy sh")));
        // A rebuild keeps an unchanged policy's counters; a changed one starts again.
        sh.steer();
        let again = build(&views, 1, &p, |_, _, _| {});
        assert_eq!(
            again
                .for_network(Some("cn-sh"), None)
                .unwrap()
                .answers
                .load(Ordering::Relaxed),
            1
        );
    }
}
