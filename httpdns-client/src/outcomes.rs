//! Connect outcomes reported to routers: what a sampled connect call saw at each
//! candidate of a router's answer it dialled (the gateway's id, how the attempt ended,
//! after how many milliseconds), kept in a small buffer and sent (`POST /outcomes`) to
//! the next router that answers, at most once per `Config::report_interval`, in the
//! background.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use gateway_api::{Outcome, OutcomeKind, OutcomeReport, MAX_OUTCOMES, MAX_REPORT_BYTES};
use tokio::time::Instant;
use tracing::debug;

use crate::answer::{Gateway, Source};
use crate::client::Client;
use crate::error::{Failure, FailureKind};
use crate::http::Request;
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
fn sample_share(sample: f64) -> f64 {
    if sample.is_nan() {
        0.0
    } else {
        sample.clamp(0.0, 1.0)
    }
}

/// `outcomes` as a report body of at most [`MAX_REPORT_BYTES`]: an outcome that would
/// pass it is left out (ids are at most [`MAX_ID_BYTES`], but JSON escapes can make
/// one six times longer).
fn report_body(outcomes: Vec<Outcome>) -> Vec<u8> {
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

impl Client {
    /// Whether a connect call to candidates from `source` records its outcomes: only
    /// a router's candidates (the cache file's and the fallback domain's ids are not
    /// the router's), with `report_outcomes` on, for a `report_sample` share of calls.
    pub(crate) fn records_outcomes(&self, source: &Source) -> bool {
        let c = &self.inner.config;
        c.report_outcomes
            && matches!(source, Source::Router { .. })
            && rand::random::<f64>() < sample_share(c.report_sample)
    }

    /// After the router at `addr` answered: when a report is due, the waiting outcomes
    /// go to it (`POST /outcomes`) in the background. A report that fails is logged
    /// and dropped, never sent again.
    pub(crate) fn report_outcomes(&self, addr: SocketAddr) {
        let c = &self.inner.config;
        if !c.report_outcomes {
            return;
        }
        let Some(outcomes) = self.inner.outcomes.take_due(c.report_interval) else {
            return;
        };
        let n = outcomes.len();
        let request = Request::post_json("/outcomes", report_body(outcomes));
        let endpoint = self.routers().endpoint(addr);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let target = format!("router {addr}");
            let timeout = inner.config.router_attempt_timeout;
            let sent = tokio::time::timeout(timeout, inner.http.send(&endpoint, &request, &target));
            let failure = match sent.await {
                Ok(Ok(r)) if (200..300).contains(&r.status) => return,
                Ok(Ok(r)) => Failure::new(
                    target,
                    FailureKind::Status {
                        status: r.status,
                        body: String::from_utf8_lossy(&r.body).chars().take(200).collect(),
                    },
                ),
                Ok(Err(f)) => f,
                Err(_) => Failure::new(target, FailureKind::TimedOut),
            };
            debug!(error = %failure, dropped = n, "connect outcome report not delivered");
        });
    }
}

#[cfg(test)]
mod tests;
