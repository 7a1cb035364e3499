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
        let share = self.policy.share_for(n);
        if let Some(k) = share {
            self.by_group[k].fetch_add(1, Ordering::Relaxed);
        }
        Steer {
            exclude: &self.policy.exclude,
            first: share.map(|k| &self.policy.ratios[k].to),
            caps: &self.policy.caps,
            held: self.policy.held_back(n),
            demoted: &[],
        }
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
    /// By region: the region's own policy, and its ISPs' by ISP. Looked up by `&str`
    /// on every answer, so nothing is allocated to find a policy.
    by_region: HashMap<String, RegionPolicies>,
    /// How many are in force.
    count: usize,
}

/// The policies of one region.
#[derive(Debug, Default)]
struct RegionPolicies {
    own: Option<Arc<InForce>>,
    by_isp: HashMap<String, Arc<InForce>>,
}

impl Policies {
    /// The policy for clients of `region` and `isp`: the one for that ISP of the region,
    /// else the region's own.
    pub fn for_network(&self, region: Option<&str>, isp: Option<&str>) -> Option<&InForce> {
        if self.count == 0 {
            return None;
        }
        let r = self.by_region.get(region?)?;
        isp.and_then(|i| r.by_isp.get(i))
            .or(r.own.as_ref())
            .map(Arc::as_ref)
    }

    /// The policy covering exactly `network` (region, ISP), if any.
    fn exact(&self, (region, isp): &(String, Option<String>)) -> Option<&Arc<InForce>> {
        let r = self.by_region.get(region)?;
        match isp {
            Some(i) => r.by_isp.get(i),
            None => r.own.as_ref(),
        }
    }

    /// Adds `p` for `network`, which no policy covers yet.
    fn insert(&mut self, (region, isp): (String, Option<String>), p: Arc<InForce>) {
        let r = self.by_region.entry(region).or_default();
        match isp {
            Some(i) => r.by_isp.insert(i, p),
            None => r.own.replace(p),
        };
        self.count += 1;
    }

    /// Every policy in force, in no order.
    fn each(&self) -> impl Iterator<Item = &Arc<InForce>> {
        self.by_region
            .values()
            .flat_map(|r| r.own.iter().chain(r.by_isp.values()))
    }

    /// What operator policy decides for the next answer to a client of `region` and
    /// `isp`, counted: no policy, or the one [`Policies::for_network`] finds.
    pub fn steer(&self, region: Option<&str>, isp: Option<&str>) -> Steer<'_> {
        self.for_network(region, isp)
            .map_or(Steer::NONE, InForce::steer)
    }

    /// Every policy, by name.
    pub fn all(&self) -> Vec<&InForce> {
        let mut v: Vec<&InForce> = self.each().map(Arc::as_ref).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// True when no policy is in force.
    pub fn is_empty(&self) -> bool {
        self.count == 0
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
    let old: HashMap<&str, &Arc<InForce>> = previous.each().map(|p| (p.name.as_str(), p)).collect();
    let mut out = Policies::default();
    for (name, (registry, policy)) in by_name {
        let network = (policy.region.clone(), policy.isp.clone());
        let kept = old
            .get(name)
            .filter(|p| p.policy == policy && p.registry == registry)
            .map(|p| Arc::clone(p));
        let entry = kept.unwrap_or_else(|| Arc::new(InForce::new(name.into(), registry, policy)));
        // Two policies for one network: the first by name holds it; the other is
        // reported and ignored.
        if let Some(first) = out.exact(&network) {
            skipped(
                name,
                &[],
                format!("covers the same clients as policy {}; ignored", first.name),
            );
            continue;
        }
        out.insert(network, entry);
    }
    out
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
            info!(policies = next.count, "policies in force");
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
