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
//! heartbeats tells which routers answered since the listing before. The scale is the
//! live routers less those that answered nothing for [`STALE_LISTINGS`] listings in a
//! row (at least 1). It is not the ratio of the counts: beats are a second apart and
//! not in phase, so in a burst shorter than a beat one router's count shows the burst
//! while another's does not yet, and the ratio would call the first alone (the storm
//! test of a burst overfilled so).
//!
//! * A router whose beat has stood still for [`STALE_LISTINGS`] listings answers
//!   nothing any more (it died, or lost etcd), provided this router's own heartbeat
//!   came back in time: with etcd slow for everyone, silence says nothing.
//! * A router whose beat moves and whose count does not (the balancer sends it
//!   nothing) counts out the same way.
//! * A new router, a counter that went back, or a registration without counts is
//!   counted.
//! * A registration is written by any router (or whoever holds its role): a liar can
//!   move the scale only within `1..=live routers`, and claiming it answers nothing
//!   is what a dead router does anyway.

use std::collections::HashMap;

/// The scale's unit: `SCALE_ONE` is one client per answer.
pub const SCALE_ONE: u64 = 1_000;

/// Listings in a row without a new answer after which a router counts as answering
/// nothing.
pub const STALE_LISTINGS: u32 = 2;

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
    /// Listings in a row that showed no new answer of it.
    quiet: u32,
    /// The last of them showed its beat standing still too.
    still: bool,
}

/// The heartbeats of one registry's routers, from one listing to the next.
#[derive(Debug, Default)]
pub struct Shares {
    seen: HashMap<Vec<u8>, Seen>,
}

impl Shares {
    /// One listing: every live router's heartbeat, `own` this router's key, and whether
    /// this router's own heartbeat came back in time. Returns the scale, in
    /// [`SCALE_ONE`]s: the live routers less those that answer nothing.
    pub fn observe(&mut self, listed: &[Heartbeat<'_>], own: &[u8], own_in_time: bool) -> u64 {
        let mut next = HashMap::with_capacity(listed.len());
        let mut out = 0u64;
        for h in listed {
            let Some((beat, answered)) = h.counts else {
                continue;
            };
            let now = match self.seen.get(h.key) {
                Some(s) if beat >= s.beat && answered == s.answered => Seen {
                    beat,
                    answered,
                    quiet: s.quiet.saturating_add(1),
                    still: beat == s.beat,
                },
                // New, answering, or a counter that went back: counted.
                _ => Seen {
                    beat,
                    answered,
                    quiet: 0,
                    still: false,
                },
            };
            // With this router's own heartbeat late too, a beat standing still says
            // nothing: etcd may be slow for everyone.
            if h.key != own && now.quiet >= STALE_LISTINGS && (own_in_time || !now.still) {
                out += 1;
            }
            next.insert(h.key.to_vec(), now);
        }
        self.seen = next;
        let live = listed.len().max(1) as u64;
        live.saturating_sub(out).max(1) * SCALE_ONE
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
    fn every_router_that_answers_counts_whatever_its_share() {
        let mut s = Shares::default();
        assert_eq!(
            s.observe(&list(&[("a", 1, 0), ("b", 7, 0)]), b"a", true),
            2_000
        );
        assert_eq!(
            s.observe(&list(&[("a", 2, 100), ("b", 8, 100)]), b"a", true),
            2_000
        );
        // The balancer sends b three times what it sends a; a burst shows in a's
        // count a beat before b's.
        assert_eq!(
            s.observe(&list(&[("a", 3, 200), ("b", 9, 400)]), b"a", true),
            2_000
        );
        assert_eq!(
            s.observe(&list(&[("a", 4, 1_200), ("b", 10, 400)]), b"a", true),
            2_000,
            "one listing without b's answers: it may be out of phase"
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

    /// The balancer stops sending to b, which stays up: a knows after two listings.
    #[test]
    fn a_router_that_stops_answering_counts_for_nothing() {
        let mut s = Shares::default();
        s.observe(&list(&[("a", 1, 0), ("b", 1, 0)]), b"a", true);
        s.observe(&list(&[("a", 2, 100), ("b", 2, 100)]), b"a", true);
        assert_eq!(
            s.observe(&list(&[("a", 3, 300), ("b", 3, 100)]), b"a", true),
            2_000
        );
        assert_eq!(
            s.observe(&list(&[("a", 4, 500), ("b", 4, 100)]), b"a", true),
            1_000
        );
        assert_eq!(
            s.observe(&list(&[("a", 5, 600), ("b", 5, 101)]), b"a", true),
            2_000,
            "answering again"
        );
    }

    #[test]
    fn what_cannot_be_measured_counts() {
        let mut s = Shares::default();
        s.observe(&list(&[("a", 1, 0), ("b", 1, 0)]), b"a", true);
        // A new router.
        assert_eq!(
            s.observe(&list(&[("a", 2, 5), ("b", 2, 5), ("c", 1, 0)]), b"a", true),
            3_000
        );
        // A counter that went back (or a liar).
        assert_eq!(
            s.observe(
                &list(&[("a", 3, 505), ("b", 3, 0), ("c", 2, 7)]),
                b"a",
                true
            ),
            3_000
        );
        // A registration without counts (an older router).
        let listed = [
            Heartbeat {
                key: b"a",
                counts: Some((4, 1505)),
            },
            Heartbeat {
                key: b"b",
                counts: None,
            },
        ];
        assert_eq!(s.observe(&listed, b"a", true), 2_000);
        // This router answering nothing never counts itself out.
        let mut s = Shares::default();
        for beat in 1..5 {
            assert_eq!(
                s.observe(&list(&[("a", beat, 0), ("b", beat, beat * 10)]), b"a", true),
                2_000
            );
        }
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
        s.observe(&list(&[("a", 3, 200), ("b", 3, u64::MAX)]), b"a", true);
        assert_eq!(
            s.observe(&list(&[("a", 4, 300), ("b", 4, u64::MAX)]), b"a", true),
            1_000,
            "claiming none, as a dead router would"
        );
    }
}
