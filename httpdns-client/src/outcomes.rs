//! Connect outcomes reported to routers: what a sampled connect call saw at each
//! candidate of a router's answer it dialled (the gateway's id, how the attempt ended,
//! after how many milliseconds), kept in a small buffer and sent (`POST /outcomes`) to
//! the next router that answers, at most once per `Config::report_interval`, in the
//! background.

use std::sync::Mutex;
use std::time::Duration;

use gateway_api::{Outcome, OutcomeKind, OutcomeReport, MAX_OUTCOMES, MAX_REPORT_BYTES};
use tokio::time::Instant;

use crate::answer::Gateway;
use crate::error::{Failure, FailureKind};
use crate::race::{Lost, Won};

/// The longest gateway id reported: an outcome at a gateway with a longer id is not
/// recorded, so that [`MAX_OUTCOMES`] outcomes fit in [`MAX_REPORT_BYTES`].
pub(crate) const MAX_ID_BYTES: usize = 128;

/// The outcomes waiting for a router, and when the last report went.
#[derive(Debug, Default)]
pub(crate) struct Outcomes {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Oldest first; at most [`MAX_OUTCOMES`].
    waiting: Vec<Outcome>,
    /// When the last report was taken to be sent.
    last_report: Option<Instant>,
}

impl Outcomes {
    /// Adds `new` (oldest first) to the buffer; what does not fit in its
    /// [`MAX_OUTCOMES`] is dropped.
    pub(crate) fn record(&self, new: Vec<Outcome>) {
        if new.is_empty() {
            return;
        }
        let mut s = self.state.lock().expect("outcomes");
        let room = MAX_OUTCOMES.saturating_sub(s.waiting.len());
        s.waiting.extend(new.into_iter().take(room));
    }

    /// The whole buffer, when it holds any and no report was taken within
    /// `interval`; a report is counted from now.
    pub(crate) fn take_due(&self, interval: Duration) -> Option<Vec<Outcome>> {
        let mut s = self.state.lock().expect("outcomes");
        let now = Instant::now();
        let recent = s
            .last_report
            .is_some_and(|at| now.saturating_duration_since(at) < interval);
        if s.waiting.is_empty() || recent {
            return None;
        }
        s.last_report = Some(now);
        Some(std::mem::take(&mut s.waiting))
    }

    /// How many outcomes wait.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.state.lock().expect("outcomes").waiting.len()
    }
}

/// The outcomes of one race over `gateways`, oldest first: the failures in the order
/// they came, then the winner, then the attempts still running when it won (timed out,
/// after the time they had waited until `now`). Attempts never started are left out,
/// and so are candidates the app's domain pins refused (the client's choice, which
/// says nothing about the network) and gateways with ids over [`MAX_ID_BYTES`].
pub(crate) fn race_outcomes<S>(
    gateways: &[Gateway],
    raced: &Result<Won<S, Failure>, Lost<Failure>>,
    now: Instant,
) -> Vec<Outcome> {
    match raced {
        Ok(won) => outcomes_of(
            gateways,
            &won.failures,
            Some((won.index, won.took)),
            &won.pending,
            now,
        ),
        Err(lost) => outcomes_of(gateways, &lost.failures, None, &[], now),
    }
}

/// [`race_outcomes`] for any stream type (compiled once): the failures, the winner's
/// index and time, and the attempts it left running.
fn outcomes_of(
    gateways: &[Gateway],
    failures: &[(usize, Failure, Duration)],
    won: Option<(usize, Duration)>,
    pending: &[(usize, Instant)],
    now: Instant,
) -> Vec<Outcome> {
    let mut out = Vec::new();
    let mut add = |i: usize, result, took: Duration| {
        let Some(gw) = gateways.get(i).filter(|gw| gw.id.len() <= MAX_ID_BYTES) else {
            return;
        };
        out.push(Outcome {
            gateway: gw.id.clone(),
            result,
            ms: u32::try_from(took.as_millis()).unwrap_or(u32::MAX),
        });
    };
    for (i, f, took) in failures {
        if let Some(kind) = outcome_kind(&f.kind) {
            add(*i, kind, *took);
        }
    }
    if let Some((index, took)) = won {
        add(index, OutcomeKind::Ok, took);
    }
    for (i, at) in pending {
        add(*i, OutcomeKind::Timeout, now.saturating_duration_since(*at));
    }
    out
}

/// What a failed attempt reports; `None` for a domain outside the app's pins.
fn outcome_kind(kind: &FailureKind) -> Option<OutcomeKind> {
    match kind {
        FailureKind::DomainNotAllowed(_) => None,
        FailureKind::Refused => Some(OutcomeKind::Refused),
        FailureKind::TimedOut => Some(OutcomeKind::Timeout),
        FailureKind::Tls(_) => Some(OutcomeKind::Tls),
        _ => Some(OutcomeKind::Other),
    }
}

/// `report_sample` as a probability: clamped to 0..=1, NaN as 0.
pub(crate) fn sample_share(sample: f64) -> f64 {
    if sample.is_nan() {
        0.0
    } else {
        sample.clamp(0.0, 1.0)
    }
}

/// `outcomes` as a report body of at most [`MAX_REPORT_BYTES`]: an outcome that would
/// pass it is left out (ids are at most [`MAX_ID_BYTES`], but JSON escapes can make
/// one six times longer).
pub(crate) fn report_body(outcomes: Vec<Outcome>) -> Vec<u8> {
    let mut size = r#"{"outcomes":[]}"#.len();
    let mut kept = Vec::with_capacity(outcomes.len());
    for o in outcomes {
        let len = serde_json::to_vec(&o).map_or(usize::MAX, |v| v.len());
        let len = len.saturating_add(usize::from(!kept.is_empty()));
        if size.saturating_add(len) > MAX_REPORT_BYTES {
            continue;
        }
        size += len;
        kept.push(o);
    }
    serde_json::to_vec(&OutcomeReport { outcomes: kept }).expect("a report serializes")
}
