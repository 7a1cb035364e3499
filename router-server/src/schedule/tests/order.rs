//! The herd-adjusted order across requests: the keys one request computes at a new
//! slot of the herd counts, and what another request of that slot does meanwhile.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{ids, node, q};
use crate::herd::{HerdView, SLOT_MS};
use crate::schedule::order;
use crate::schedule::{select_budgeted, Rules, Snapshot};

/// 1,000 levelled nodes in one region, 300 answers of a burst at `NOW` (each counts for
/// its first node: those 300 are then the most loaded), and the keys of the order.
struct Burst {
    s: Arc<Snapshot>,
    answered: std::collections::HashSet<String>,
}

const NOW: u64 = 1_800_000_000_000;

fn rules_at(ms: u64) -> Rules<'static> {
    Rules {
        max_load: 0.95,
        fallbacks: &[],
        herd: HerdView::at(ms, 8, 1),
    }
}

impl Burst {
    fn new() -> Burst {
        let fleet = (0..1_000).map(|i| Arc::new(node(&format!("gw-{i:04}"), "r0", 500, 1_000)));
        let s = Arc::new(Snapshot::build_holding(fleet, [], None, 1, false, 0, NOW));
        let mut answered = std::collections::HashSet::new();
        for _ in 0..300 {
            let c = select_budgeted(&s, &q(Some("r0"), 3), rules_at(NOW), 1, 0);
            answered.insert(ids(&s, &c)[0].clone());
        }
        assert_eq!(answered.len(), 300);
        Burst { s, answered }
    }

    /// A request at `ms` on a thread of its own, waiting up to `wait` for keys another
    /// computes; `hold` stops it inside a build of its own until it receives.
    /// Returns its walks and its answer.
    fn request(
        &self,
        ms: u64,
        wait: Duration,
        hold: Option<(Sender<()>, Receiver<()>)>,
    ) -> JoinHandle<(u64, Vec<String>)> {
        let s = self.s.clone();
        std::thread::spawn(move || {
            order::WAIT.with(|w| w.set(Some(wait)));
            if let Some((started, held)) = hold {
                order::BUILD_HOOK.with_borrow_mut(|h| {
                    *h = Some(Box::new(move || {
                        started.send(()).unwrap();
                        held.recv().unwrap();
                    }))
                });
            }
            let walks = order::WALKS.with(|w| w.get());
            let c = select_budgeted(&s, &q(Some("r0"), 3), rules_at(ms), 1, 0);
            (order::WALKS.with(|w| w.get()) - walks, ids(&s, &c))
        })
    }

    /// A request at the next slot whose build is held until the sender sends.
    fn held_build(&self) -> (Sender<()>, JoinHandle<(u64, Vec<String>)>) {
        let (started, building) = channel();
        let (release, held) = channel();
        let builder = self.request(LATER, BUILD_WAIT_LONG, Some((started, held)));
        building.recv().unwrap();
        (release, builder)
    }

    /// True when `answer` is three of the 700 least loaded nodes.
    fn least_loaded(&self, answer: &[String]) -> bool {
        answer.len() == 3 && answer.iter().all(|id| !self.answered.contains(id))
    }
}

/// Candidates as load, tie rank and index.
type Ranked = Vec<(f64, u64, usize)>;

/// The answer to `q` at `herd` (walking at once), and the three nodes the rules written
/// out put first, computed before it: least projected load, then the tie rank, then the
/// index.
fn answer_and_rules(
    s: &Snapshot,
    q: &crate::schedule::Query<'_>,
    herd: HerdView,
) -> (Ranked, Ranked) {
    let mut best: Ranked = (s.nodes.iter().enumerate())
        .map(|(i, e)| (e.projected_load(&herd), e.tie, i))
        .collect();
    best.sort_by(|a, b| a.0.total_cmp(&b.0).then((a.1, a.2).cmp(&(b.1, b.2))));
    best.truncate(3);
    let rules = Rules {
        herd,
        ..rules_at(NOW)
    };
    let answer = select_budgeted(s, q, rules, 1, 0)
        .iter()
        .map(|c| (c.load, c.tie, c.index))
        .collect();
    (answer, best)
}

const LATER: u64 = NOW + SLOT_MS;
/// Longer than any test waits for anything.
const BUILD_WAIT_LONG: Duration = Duration::from_secs(600);

/// At a new slot of the herd counts, one request computes the order's keys again; a
/// request of the same slot meanwhile waits for them and walks, instead of scanning
/// every node of the index, and answers from the least loaded nodes.
#[test]
fn a_request_waits_for_the_keys_another_is_computing() {
    let burst = Burst::new();
    let (release, builder) = burst.held_build();
    let waits = order::WAITS.load(Ordering::Relaxed);
    let waiter = burst.request(LATER, BUILD_WAIT_LONG, None);
    let deadline = Instant::now() + Duration::from_secs(10);
    while order::WAITS.load(Ordering::Relaxed) == waits {
        assert!(
            Instant::now() < deadline && !waiter.is_finished(),
            "the second request did not wait for the keys (it scanned)"
        );
        std::thread::yield_now();
    }
    release.send(()).unwrap();
    let (walked, first) = builder.join().unwrap();
    let (waited_walked, second) = waiter.join().unwrap();
    assert_eq!((walked, waited_walked), (1, 1), "both answered by walks");
    assert!(burst.least_loaded(&first), "{first:?}");
    assert!(burst.least_loaded(&second), "{second:?}");
}

/// A build that takes longer than the wait: the waiting request scans the index,
/// with the same answer, while the build is still held.
#[test]
fn a_request_scans_when_the_keys_take_too_long() {
    let burst = Burst::new();
    let (release, builder) = burst.held_build();
    let (walked, answer) = burst
        .request(LATER, Duration::from_millis(1), None)
        .join()
        .unwrap();
    assert_eq!(walked, 0, "answered by a scan");
    assert!(burst.least_loaded(&answer), "{answer:?}");
    release.send(()).unwrap();
    let (walked, answer) = builder.join().unwrap();
    assert_eq!(walked, 1);
    assert!(burst.least_loaded(&answer), "{answer:?}");
}

/// The window is the configured one plus the router's measured lag, so it grows and
/// shrinks by a slot when the lag crosses a slot's width. Requests over the longer
/// window walk the keys of the shorter one (they count every answer the keys count)
/// instead of scanning, and their repairs keep the keys right for the shorter one:
/// every answer is the three least loaded nodes as its own window counts them (ties
/// broken by the router's tie order).
#[test]
fn requests_of_a_longer_window_walk_the_keys_of_a_shorter_one() {
    let burst = Burst::new();
    let s = &burst.s;
    let q = q(Some("r0"), 3);
    // Nine slots after the burst: a window of 9 slots still counts its 300 answers, one
    // of 8 no longer does.
    let t = NOW + 9 * SLOT_MS;
    let walks = order::WALKS.with(|w| w.get());
    for k in 0..600u64 {
        let herd = HerdView::at(t + k / 10, 8 + k % 2, 1);
        let (answer, best) = answer_and_rules(s, &q, herd);
        assert_eq!(answer, best, "answer {k} (window {} slots)", 8 + k % 2);
    }
    assert_eq!(
        order::WALKS.with(|w| w.get()) - walks,
        600,
        "every request walked the order"
    );
    let longer = HerdView::at(t, 9, 1);
    let counted = s.nodes.iter().filter(|e| e.pending(&longer) > 0).count();
    assert!(
        counted >= 300,
        "the longer window counts the burst: {counted}"
    );
}

/// Mid-burst, the walk that chose an answer's first candidate counts it (once: the
/// caller no longer does) and raises its key at once, so the next walk reads `count`
/// nodes, not the one just answered as well only to find its key behind. Every answer
/// still equals the rules written out.
#[test]
fn a_walk_counts_its_first_candidate_and_the_next_reads_count_nodes() {
    let burst = Burst::new();
    let s = &burst.s;
    let q = q(Some("r0"), 3);
    let t = NOW + 2 * SLOT_MS;
    let total = |herd: &HerdView| s.nodes.iter().map(|e| e.pending(herd)).sum::<u64>();
    // The first request of the slot computes the keys.
    select_budgeted(s, &q, rules_at(t), 1, 0);
    let before = total(&HerdView::at(t, 8, 1));
    let (walks, visits) = (
        order::WALKS.with(|w| w.get()),
        order::VISITS.with(|v| v.get()),
    );
    for k in 0..200u64 {
        let (answer, best) = answer_and_rules(s, &q, HerdView::at(t + k / 10, 8, 1));
        assert_eq!(answer, best, "answer {k}");
    }
    assert_eq!(
        order::WALKS.with(|w| w.get()) - walks,
        200,
        "every request walked"
    );
    assert_eq!(
        order::VISITS.with(|v| v.get()) - visits,
        200 * 3,
        "each walk read the three nodes it answered, and no other"
    );
    assert_eq!(
        total(&HerdView::at(t + 20, 8, 1)) - before,
        200,
        "each answer counted once"
    );
}
