//! A connection's wake-up source: the flags that the table and the request path raise
//! for the connection's task (close it; re-arm its timer), behind one waker.
//!
//! The task polls it at every wake-up: each read, write and answer. A cancellation
//! token takes a mutex per poll and a `Notify` locks its wait list; the two cost
//! `GET /gateways` about a percent of its CPU. A poll here is one waker registration
//! and one load.

use std::future::poll_fn;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::Poll;

use futures::task::AtomicWaker;

/// Flags raised for one connection's task, and the task's waker.
#[derive(Debug, Default)]
pub(super) struct Signal {
    flags: AtomicU8,
    waker: AtomicWaker,
}

/// Close the connection (shed, shutdown, a request body out of time). Stays raised.
pub(super) const CLOSE: u8 = 1;
/// Re-arm the timer: a request or an HTTP/1 head began while the timer would fire
/// later than the limit that then applies. Cleared when a wait returns it.
pub(super) const NUDGE: u8 = 2;

impl Signal {
    /// Raises `flag` and wakes the task.
    pub(super) fn raise(&self, flag: u8) {
        self.flags.fetch_or(flag, Ordering::Release);
        self.waker.wake();
    }

    /// True when `flag` is raised.
    #[cfg(test)]
    pub(super) fn is_raised(&self, flag: u8) -> bool {
        self.flags.load(Ordering::Acquire) & flag != 0
    }

    /// Until one of the flags of `mask` is raised: those raised (a [`NUDGE`] among
    /// them is cleared). Only the connection's own task waits.
    pub(super) async fn wait(&self, mask: u8) -> u8 {
        poll_fn(|cx| {
            // Registered before the flags are read: a flag raised after the read
            // wakes this waker.
            self.waker.register(cx.waker());
            let raised = self.flags.load(Ordering::Acquire) & mask;
            if raised == 0 {
                return Poll::Pending;
            }
            if raised & NUDGE != 0 {
                self.flags.fetch_and(!NUDGE, Ordering::AcqRel);
            }
            Poll::Ready(raised)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_returns_what_was_raised_and_a_nudge_once() {
        let s = std::sync::Arc::new(Signal::default());
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.wait(CLOSE | NUDGE).await }
        });
        tokio::task::yield_now().await;
        s.raise(NUDGE);
        assert_eq!(waiter.await.unwrap(), NUDGE);
        assert!(!s.is_raised(NUDGE), "a nudge is taken by the wait");
        s.raise(CLOSE);
        assert_eq!(s.wait(CLOSE | NUDGE).await, CLOSE);
        assert_eq!(s.wait(CLOSE).await, CLOSE, "a close stays raised");
        let nudge_only = tokio::time::timeout(std::time::Duration::from_millis(20), s.wait(NUDGE));
        assert!(
            nudge_only.await.is_err(),
            "nothing of the mask raised: it waits"
        );
    }
}
