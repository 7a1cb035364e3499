//! This router's share of the clients, from the answer counts every router publishes in
//! its heartbeat (`P/routers/{id}`: `beat`, `answered`).
//!
//! The herd estimate scales a router's own answers by how many clients all the routers
//! answer for each of its own. Assuming the balancer splits evenly, that is the number
//! of live routers; but a router killed mid-storm stays "live" until its lease runs
//! out (10 s), and a balancer that stops sending to a router that is up never tells.
//! Either way the others scale their answers by one router too many while they take
//! its clients, and a node is then underestimated as soon as its report arrives, for
//! the length of a report interval. The storm simulator shows what that costs when
//! gateways sample every second (as one holding many connections does): max/mean 1.077
//! against 1.004 when the survivor knows within a second.
//!
//! So each heartbeat carries the router's answer count, and each listing of the
//! heartbeats gives every router's answers per beat since the listing before: the
//! scale is the total over this router's own, between 1 and the live routers.
//!
//! * A router whose beat has not moved for [`STALE_LISTINGS`] listings answers
//!   nothing any more (it died, or lost etcd), provided this router's own heartbeat
//!   came back in time: with etcd slow for everyone, silence says nothing.
//! * Whatever cannot be measured (a new router, a counter that went back, too few
//!   answers to tell, a registration without counts) falls back to the even split.
//! * A registration is written by any router (or whoever holds its role): a liar can
//!   move the scale only within `1..=live routers`, and claiming it answers nothing
//!   is what a dead router does anyway.

use std::collections::HashMap;

/// The scale's unit: `SCALE_ONE` is one client per answer.
pub const SCALE_ONE: u64 = 1_000;

/// Listings in a row without a new beat after which a router counts as answering
/// nothing.
pub const STALE_LISTINGS: u32 = 2;

/// Fewer answers per beat than this, across all routers, tell nothing: the even split.
pub const MIN_PER_BEAT: u64 = 20;

/// One registration as a listing shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat<'a> {
    /// The registration's key: who it is.
    pub key: &'a [u8],
    /// Its beat and answer count, when it publishes them.
    pub counts: Option<(u64, u64)>,
}

/// What the last listing showed of one router.
#[derive(Debug, Clone, Copy)]
struct Seen {
    beat: u64,
    answered: u64,
    /// Answers per beat, as last measured (`None`: not yet).
    rate: Option<u64>,
    /// Listings in a row that showed the same beat.
    stale: u32,
}

/// The heartbeats of one registry's routers, from one listing to the next.
#[derive(Debug, Default)]
pub struct Shares {
    seen: HashMap<Vec<u8>, Seen>,
}

impl Shares {
    /// One listing: every live router's heartbeat, `own` this router's key, and whether
    /// this router's own heartbeat came back in time. Returns the scale, in
    /// [`SCALE_ONE`]s.
    pub fn observe(&mut self, listed: &[Heartbeat<'_>], own: &[u8], own_in_time: bool) -> u64 {
        let live = listed.len().max(1) as u64;
        let even = live * SCALE_ONE;
        let mut known = true;
        let mut next = HashMap::with_capacity(listed.len());
        for h in listed {
            let seen = self.seen.get(h.key).copied();
            let now = match (h.counts, seen) {
                (Some((beat, answered)), Some(s)) if beat > s.beat && answered >= s.answered => {
                    Seen {
                        beat,
                        answered,
                        rate: Some((answered - s.answered) / (beat - s.beat)),
                        stale: 0,
                    }
                }
                (Some((beat, answered)), Some(s)) if beat == s.beat && answered == s.answered => {
                    let stale = s.stale.saturating_add(1);
                    let silent = stale >= STALE_LISTINGS && own_in_time && h.key != own;
                    Seen {
                        rate: if silent { Some(0) } else { s.rate },
                        stale,
                        ..s
                    }
                }
                (Some((beat, answered)), _) => Seen {
                    beat,
                    answered,
                    rate: None,
                    stale: 0,
                },
                (None, _) => {
                    known = false;
                    continue;
                }
            };
            known &= now.rate.is_some();
            next.insert(h.key.to_vec(), now);
        }
        self.seen = next;
        let own_rate = self.seen.get(own).and_then(|s| s.rate).unwrap_or(0);
        let total = self
            .seen
            .values()
            .filter_map(|s| s.rate)
            .fold(0u64, u64::saturating_add);
        if !known || own_rate == 0 || total < MIN_PER_BEAT {
            return even;
        }
        (total.saturating_mul(SCALE_ONE) / own_rate).clamp(SCALE_ONE, even)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lists routers `(key, beat, answered)`.
    fn list<'a>(rs: &'a [(&'a str, u64, u64)]) -> Vec<Heartbeat<'a>> {
        rs.iter()
            .map(|(k, b, a)| Heartbeat {
                key: k.as_bytes(),
                counts: Some((*b, *a)),
            })
            .collect()
    }

    #[test]
    fn an_even_split_scales_by_the_live_routers_and_an_uneven_one_by_the_share() {
        let mut s = Shares::default();
        assert_eq!(
            s.observe(&list(&[("a", 1, 0), ("b", 7, 0)]), b"a", true),
            2_000
        );
        assert_eq!(
            s.observe(&list(&[("a", 2, 100), ("b", 8, 100)]), b"a", true),
            2_000
        );
        // The balancer sends b three times what it sends a.
        assert_eq!(
            s.observe(&list(&[("a", 3, 200), ("b", 9, 400)]), b"a", true),
            2_000,
            "a's share is a quarter: 4, but never more than the live routers"
        );
        let mut s = Shares::default();
        s.observe(&list(&[("a", 1, 0), ("b", 7, 0)]), b"b", true);
        assert_eq!(
            s.observe(&list(&[("a", 2, 100), ("b", 8, 300)]), b"b", true),
            1_333,
            "b answers three of four"
        );
    }

    /// A router killed: its beat stops, and after two listings the survivor knows it
    /// answers alone, 8 s before the dead router's lease runs out.
    #[test]
    fn a_router_whose_beat_stops_answers_nothing() {
        let mut s = Shares::default();
        s.observe(&list(&[("a", 1, 0), ("b", 1, 0)]), b"a", true);
        s.observe(&list(&[("a", 2, 100), ("b", 2, 100)]), b"a", true);
        assert_eq!(
            s.observe(&list(&[("a", 3, 200), ("b", 2, 100)]), b"a", true),
            2_000,
            "one listing without a beat: it may be late"
        );
        assert_eq!(
            s.observe(&list(&[("a", 4, 400), ("b", 2, 100)]), b"a", true),
            1_000
        );
        // With this router's own heartbeat late too, silence says nothing.
        let mut late = Shares::default();
        late.observe(&list(&[("a", 1, 0), ("b", 1, 0)]), b"a", false);
        late.observe(&list(&[("a", 2, 100), ("b", 2, 100)]), b"a", false);
        late.observe(&list(&[("a", 3, 200), ("b", 2, 100)]), b"a", false);
        assert_eq!(
            late.observe(&list(&[("a", 4, 300), ("b", 2, 100)]), b"a", false),
            2_000
        );
    }

    /// The balancer stops sending to b, which stays up: a knows at the next listing.
    #[test]
    fn a_router_that_stops_answering_counts_for_nothing() {
        let mut s = Shares::default();
        s.observe(&list(&[("a", 1, 0), ("b", 1, 0)]), b"a", true);
        s.observe(&list(&[("a", 2, 100), ("b", 2, 100)]), b"a", true);
        assert_eq!(
            s.observe(&list(&[("a", 3, 300), ("b", 3, 100)]), b"a", true),
            1_000
        );
    }

    #[test]
    fn what_cannot_be_measured_is_the_even_split() {
        let mut s = Shares::default();
        s.observe(&list(&[("a", 1, 0), ("b", 1, 0)]), b"a", true);
        assert_eq!(
            s.observe(&list(&[("a", 2, 5), ("b", 2, 5)]), b"a", true),
            2_000,
            "too few answers"
        );
        // A new router: not measured until its second beat.
        assert_eq!(
            s.observe(
                &list(&[("a", 3, 505), ("b", 3, 5), ("c", 1, 0)]),
                b"a",
                true
            ),
            3_000
        );
        // A counter that went back (or a liar): not measured.
        assert_eq!(
            s.observe(
                &list(&[("a", 4, 1005), ("b", 4, 0), ("c", 2, 0)]),
                b"a",
                true
            ),
            3_000
        );
        // A registration without counts (an older router).
        let listed = [
            Heartbeat {
                key: b"a",
                counts: Some((5, 1505)),
            },
            Heartbeat {
                key: b"b",
                counts: None,
            },
        ];
        assert_eq!(s.observe(&listed, b"a", true), 2_000);
        // This router answering nothing: the even split (it has nothing to scale).
        let mut s = Shares::default();
        s.observe(&list(&[("a", 1, 0), ("b", 1, 0)]), b"a", true);
        assert_eq!(
            s.observe(&list(&[("a", 2, 0), ("b", 2, 500)]), b"a", true),
            2_000
        );
    }

    /// A liar can move the scale only within 1..=live routers.
    #[test]
    fn a_liar_moves_the_scale_only_within_its_bounds() {
        let mut s = Shares::default();
        s.observe(&list(&[("a", 1, 0), ("b", 1, 0)]), b"a", true);
        assert_eq!(
            s.observe(&list(&[("a", 2, 100), ("b", 2, u64::MAX)]), b"a", true),
            2_000,
            "claiming every answer there is"
        );
        assert_eq!(
            s.observe(&list(&[("a", 3, 200), ("b", 3, u64::MAX)]), b"a", true),
            1_000,
            "claiming none, as a dead router would"
        );
    }
}
