//! The staggered race both halves of the SDK use: resolution races its sources
//! (provider addresses, local DNS), connecting races its candidates (happy eyeballs,
//! RFC 8305). Attempts start in order, each `stagger` after the previous one or at
//! once when the previous one failed; the first success wins and the others are
//! cancelled.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

/// One attempt of a race.
pub(crate) type Attempt<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// How a race was won.
#[derive(Debug)]
pub(crate) struct Won<T, E> {
    /// The winner's value.
    pub(crate) value: T,
    /// The winner's index.
    pub(crate) index: usize,
    /// How long the winning attempt took.
    pub(crate) took: Duration,
    /// The failures before the win, in the order they came: the attempt's index, its
    /// error and how long it ran.
    pub(crate) failures: Vec<(usize, E, Duration)>,
    /// The attempts started and still running when the winner came (cancelled since),
    /// by index, with their start times.
    pub(crate) pending: Vec<(usize, Instant)>,
}

/// How a race ended without a winner.
#[derive(Debug)]
pub(crate) struct Lost<E> {
    /// The failures, in the order they came: the attempt's index, its error and how
    /// long it ran.
    pub(crate) failures: Vec<(usize, E, Duration)>,
    /// Attempts never started because the deadline came first.
    pub(crate) untried: Vec<usize>,
    /// True when the deadline ended the race (some attempts may still have been running).
    pub(crate) timed_out: bool,
}

/// Runs `attempts` staggered by `stagger` until one succeeds, every one failed, or
/// `give_up` passes. Returns the winner, with what the other started attempts did.
pub(crate) async fn staggered<T, E>(
    attempts: Vec<Attempt<T, E>>,
    stagger: Duration,
    give_up: Option<Instant>,
) -> Result<Won<T, E>, Lost<E>>
where
    T: Send + 'static,
    E: Send + 'static,
{
    let total = attempts.len();
    let mut pending = attempts.into_iter().enumerate();
    let mut running: JoinSet<(usize, Result<T, E>, Duration)> = JoinSet::new();
    let mut failures = Vec::new();
    // When each attempt started, while it runs.
    let mut started: Vec<Option<Instant>> = vec![None; total];
    let start_next = |running: &mut JoinSet<_>,
                      pending: &mut std::iter::Enumerate<_>,
                      started: &mut Vec<Option<Instant>>| {
        if let Some((i, a)) = Iterator::next(pending) {
            let a: Attempt<T, E> = a;
            let at = Instant::now();
            started[i] = Some(at);
            running.spawn(async move {
                let r = a.await;
                (i, r, at.elapsed())
            });
        }
    };
    start_next(&mut running, &mut pending, &mut started);
    let deadline = async {
        match give_up {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    loop {
        if running.is_empty() && pending.len() == 0 {
            return Err(Lost {
                failures,
                untried: Vec::new(),
                timed_out: false,
            });
        }
        let stagger_timer = tokio::time::sleep(stagger);
        tokio::select! {
            joined = running.join_next(), if !running.is_empty() => match joined {
                Some(Ok((index, Ok(value), took))) => {
                    started[index] = None;
                    let pending = started
                        .iter()
                        .enumerate()
                        .filter_map(|(i, at)| Some((i, (*at)?)))
                        .collect();
                    return Ok(Won { value, index, took, failures, pending });
                }
                Some(Ok((i, Err(e), took))) => {
                    started[i] = None;
                    failures.push((i, e, took));
                    start_next(&mut running, &mut pending, &mut started);
                }
                Some(Err(join)) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
                Some(Err(_)) | None => {}
            },
            _ = stagger_timer, if pending.len() > 0 => {
                start_next(&mut running, &mut pending, &mut started)
            }
            _ = &mut deadline => {
                let untried = pending.map(|(i, _)| i).collect();
                return Err(Lost { failures, untried, timed_out: true });
            }
        }
        debug_assert!(failures.len() <= total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(ms: u64, ok: bool, v: u32) -> Attempt<u32, u32> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            if ok {
                Ok(v)
            } else {
                Err(v)
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_first_attempt_is_raced_past_after_the_stagger() {
        let t0 = Instant::now();
        let won = staggered(
            vec![after(10_000, true, 0), after(20, true, 1)],
            Duration::from_millis(250),
            None,
        )
        .await
        .unwrap();
        assert_eq!((won.value, won.index), (1, 1));
        assert_eq!(t0.elapsed(), Duration::from_millis(270));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_starts_the_next_at_once_and_all_failures_are_kept() {
        let t0 = Instant::now();
        let won = staggered(
            vec![after(5, false, 0), after(5, false, 1), after(5, true, 2)],
            Duration::from_secs(1),
            None,
        )
        .await
        .unwrap();
        assert_eq!((won.value, won.index), (2, 2));
        assert_eq!(t0.elapsed(), Duration::from_millis(15));
        let lost = staggered(
            vec![after(5, false, 7), after(5, false, 8)],
            Duration::from_secs(1),
            None,
        )
        .await
        .unwrap_err();
        let five = Duration::from_millis(5);
        assert_eq!(lost.failures, vec![(0, 7, five), (1, 8, five)]);
        assert!(!lost.timed_out);
    }

    #[tokio::test(start_paused = true)]
    async fn a_win_names_the_failures_before_it_and_the_attempts_still_running() {
        let t0 = Instant::now();
        // 0 stalls; 1 starts at 100 ms and fails 30 ms later, so 2 starts at once
        // (130 ms) and stalls; 3 starts at 230 ms and wins at 250 ms; 4 never starts.
        let won = staggered(
            vec![
                after(10_000, true, 0),
                after(30, false, 1),
                after(10_000, true, 2),
                after(20, true, 3),
                after(1, true, 4),
            ],
            Duration::from_millis(100),
            None,
        )
        .await
        .unwrap();
        let ms = Duration::from_millis;
        assert_eq!((won.value, won.index, won.took), (3, 3, ms(20)));
        assert_eq!(won.failures, vec![(1, 1, ms(30))]);
        assert_eq!(won.pending, vec![(0, t0), (2, t0 + ms(130))]);
        let waited: Vec<_> = won.pending.iter().map(|(_, at)| at.elapsed()).collect();
        assert_eq!(waited, vec![ms(250), ms(120)]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_names_what_was_never_started() {
        let lost = staggered(
            vec![
                after(10_000, true, 0),
                after(10_000, true, 1),
                after(1, true, 2),
            ],
            Duration::from_millis(400),
            Some(Instant::now() + Duration::from_millis(500)),
        )
        .await
        .unwrap_err();
        assert!(lost.timed_out);
        assert_eq!(lost.untried, vec![2]);
    }
}
