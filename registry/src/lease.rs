//! One key kept alive under a lease: the agent's node record and a router's
//! registration (`P/routers/{id}`) both live this way.
//!
//! [`Lease`] is a small state machine the owner drives from its own loop, so the
//! owner keeps control of when it writes, and of cancellation:
//!
//! * [`Lease::register`] grants a lease of the TTL and writes the key under it. A write
//!   that fails revokes the fresh lease at once (no orphan left to expire), and the
//!   next grant waits for a jittered backoff ([`Lease::grant_due`]).
//! * [`Lease::resume`] takes up a lease granted before (by the previous run of an agent
//!   that restarted): one keep-alive on it, then the key written under it. A lease etcd
//!   no longer knows is [`KvError::LeaseNotFound`], and the owner registers anew.
//! * [`Lease::renew`] refreshes the lease when a renewal is due (every TTL/3 unless
//!   set otherwise). A lease etcd no longer knows is [`Renewal::Lost`]; so is one whose
//!   renewals kept failing for a whole TTL, since etcd has surely expired it by then.
//!   A failure short of that is retried soon ([`RETRY`]).
//! * [`Lease::lost`] is for the owner's own writes that found the lease gone.
//! * [`Lease::revoke`] deletes the key with its lease, within a deadline.
//!
//! Time is tokio's, so tests run it under a paused clock.

use std::time::Duration;

use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::kv::{Kv, KvError, LeaseId};

/// How soon a failed renewal is tried again.
pub const RETRY: Duration = Duration::from_millis(500);

/// What a call to [`Lease::renew`] did.
#[derive(Debug, Clone)]
pub enum Renewal {
    /// Nothing was due (or there is no lease).
    NotDue,
    /// The lease was refreshed.
    Renewed,
    /// The lease is gone: etcd said so, or renewals failed for a whole TTL. The key went
    /// with it; [`Lease::register`] again.
    Lost(String),
    /// This renewal failed; it is retried after [`RETRY`].
    Failed(KvError),
}

/// A lease of a fixed TTL and the renewal schedule that keeps it; see the module
/// documentation.
#[derive(Debug)]
pub struct Lease {
    ttl: Duration,
    every: Duration,
    id: Option<LeaseId>,
    last_ok: Instant,
    next_renew: Instant,
    next_grant: Instant,
    backoff: Backoff,
}

impl Lease {
    /// A lease of `ttl` (whole seconds, at least 1), renewed every third of it.
    pub fn new(ttl: Duration) -> Lease {
        Lease::renewed_every(ttl, ttl / 3)
    }

    /// A lease of `ttl` renewed every `every`.
    pub fn renewed_every(ttl: Duration, every: Duration) -> Lease {
        let now = Instant::now();
        Lease {
            ttl,
            every: every.max(Duration::from_millis(100)),
            id: None,
            last_ok: now,
            next_renew: now,
            next_grant: now,
            backoff: Backoff::for_store(),
        }
    }

    /// The lease held, if any.
    pub fn id(&self) -> Option<LeaseId> {
        self.id
    }

    /// The TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// True when there is no lease and the backoff after a failed grant is over.
    pub fn grant_due(&self) -> bool {
        self.id.is_none() && Instant::now() >= self.next_grant
    }

    /// When the next grant may be tried, after a failed one.
    pub fn next_grant(&self) -> Instant {
        self.next_grant
    }

    /// Grants a lease and writes `value` at `key` under it. On failure the fresh lease
    /// is revoked and the next grant is due after a backoff.
    pub async fn register(
        &mut self,
        kv: &dyn Kv,
        key: &str,
        value: Vec<u8>,
    ) -> Result<LeaseId, KvError> {
        let attempt = async {
            let id = kv.grant(self.ttl).await?;
            if let Err(e) = kv.put(key, value, Some(id)).await {
                // It would expire anyway; do not leave it for the TTL.
                let _ = kv.revoke(id).await;
                return Err(e);
            }
            Ok(id)
        };
        let result = attempt.await;
        self.settle(result)
    }

    /// Takes up lease `id`, granted before and perhaps still alive, and writes `value`
    /// at `key` under it. A lease etcd no longer knows is [`KvError::LeaseNotFound`]
    /// (call [`Lease::register`] at once); any other failure backs off like a failed
    /// grant. Nothing is revoked on failure: the key may still live under `id`.
    pub async fn resume(
        &mut self,
        kv: &dyn Kv,
        id: LeaseId,
        key: &str,
        value: Vec<u8>,
    ) -> Result<LeaseId, KvError> {
        let attempt = async {
            kv.keep_alive(id).await?;
            kv.put(key, value, Some(id)).await?;
            Ok(id)
        };
        match attempt.await {
            Err(KvError::LeaseNotFound(_)) => {
                self.next_grant = Instant::now();
                Err(KvError::LeaseNotFound(id))
            }
            result => self.settle(result),
        }
    }

    /// Holds the lease of a registration that succeeded, or backs off after a failure.
    fn settle(&mut self, result: Result<LeaseId, KvError>) -> Result<LeaseId, KvError> {
        match result {
            Ok(id) => {
                let now = Instant::now();
                self.id = Some(id);
                self.last_ok = now;
                self.next_renew = now + self.every;
                self.backoff.reset();
                Ok(id)
            }
            Err(e) => {
                self.next_grant = Instant::now() + self.backoff.next_delay();
                Err(e)
            }
        }
    }

    /// Renews the lease if a renewal is due; see [`Renewal`].
    pub async fn renew(&mut self, kv: &dyn Kv) -> Renewal {
        let Some(id) = self.id else {
            return Renewal::NotDue;
        };
        if Instant::now() < self.next_renew {
            return Renewal::NotDue;
        }
        match kv.keep_alive(id).await {
            Ok(_) => {
                self.last_ok = Instant::now();
                self.next_renew = self.last_ok + self.every;
                Renewal::Renewed
            }
            Err(KvError::LeaseNotFound(_)) => {
                self.lost();
                Renewal::Lost("etcd no longer knows the lease (expired)".into())
            }
            Err(e) if self.last_ok.elapsed() >= self.ttl => {
                self.lost();
                Renewal::Lost(format!(
                    "renewals failed for a whole TTL ({} s): lease presumed lost; last error: {e}",
                    self.ttl.as_secs()
                ))
            }
            Err(e) => {
                self.next_renew = Instant::now() + RETRY;
                Renewal::Failed(e)
            }
        }
    }

    /// Forgets the lease (a write under it found it gone); the next grant is due now.
    pub fn lost(&mut self) {
        self.id = None;
        self.next_grant = Instant::now();
    }

    /// Revokes the lease, deleting its keys, within `within`. Without a lease, nothing
    /// to do.
    pub async fn revoke(&mut self, kv: &dyn Kv, within: Duration) -> Result<(), KvError> {
        let Some(id) = self.id.take() else {
            return Ok(());
        };
        match tokio::time::timeout(within, kv.revoke(id)).await {
            Ok(r) => r,
            Err(_) => Err(KvError::Unavailable(format!(
                "no answer within {} ms",
                within.as_millis()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryKv;

    #[tokio::test(start_paused = true)]
    async fn keeps_the_key_alive_and_revokes_it() {
        let kv = MemoryKv::new();
        let mut lease = Lease::new(Duration::from_secs(3));
        assert!(lease.grant_due());
        lease.register(&*kv, "k", b"v".to_vec()).await.unwrap();
        assert!(!lease.grant_due());
        assert!(matches!(lease.renew(&*kv).await, Renewal::NotDue));
        // Renewed every second, for far longer than the TTL.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert!(matches!(lease.renew(&*kv).await, Renewal::Renewed));
        }
        assert!(kv.get("k").await.unwrap().is_some());
        lease.revoke(&*kv, Duration::from_secs(1)).await.unwrap();
        assert!(kv.get("k").await.unwrap().is_none());
        assert_eq!(lease.id(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_lease_is_lost_and_granted_again() {
        let kv = MemoryKv::new();
        let mut lease = Lease::new(Duration::from_secs(3));
        let first = lease.register(&*kv, "k", b"v".to_vec()).await.unwrap();
        // Not renewed for longer than the TTL: the store drops it.
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(kv.get("k").await.unwrap().is_none());
        assert!(matches!(lease.renew(&*kv).await, Renewal::Lost(_)));
        assert!(lease.grant_due());
        let second = lease.register(&*kv, "k", b"v".to_vec()).await.unwrap();
        assert_ne!(first, second);
        assert!(kv.get("k").await.unwrap().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn failing_renewals_are_retried_then_presumed_lost_after_a_ttl() {
        let kv = MemoryKv::new();
        let mut lease = Lease::new(Duration::from_secs(3));
        lease.register(&*kv, "k", b"v".to_vec()).await.unwrap();
        kv.set_available(false);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(matches!(lease.renew(&*kv).await, Renewal::Failed(_)));
        // Retried after RETRY, not after a whole interval.
        assert!(matches!(lease.renew(&*kv).await, Renewal::NotDue));
        tokio::time::sleep(RETRY).await;
        assert!(matches!(lease.renew(&*kv).await, Renewal::Failed(_)));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(matches!(lease.renew(&*kv).await, Renewal::Lost(_)));
        assert_eq!(lease.id(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_registration_backs_off_and_leaves_no_lease() {
        let kv = MemoryKv::new();
        kv.set_available(false);
        let mut lease = Lease::new(Duration::from_secs(3));
        assert!(lease.register(&*kv, "k", b"v".to_vec()).await.is_err());
        assert!(!lease.grant_due());
        assert_eq!(lease.id(), None);
        tokio::time::sleep_until(lease.next_grant()).await;
        assert!(lease.grant_due());
        kv.set_available(true);
        lease.register(&*kv, "k", b"v".to_vec()).await.unwrap();
        assert!(kv.get("k").await.unwrap().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_live_lease_is_taken_up_and_an_expired_one_is_not() {
        let kv = MemoryKv::new();
        let mut first = Lease::new(Duration::from_secs(3));
        let id = first.register(&*kv, "k", b"v1".to_vec()).await.unwrap();
        // The owner stops without revoking; a new owner takes the lease up.
        let _ = first;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut second = Lease::new(Duration::from_secs(3));
        assert_eq!(
            second.resume(&*kv, id, "k", b"v2".to_vec()).await.unwrap(),
            id
        );
        assert_eq!(second.id(), Some(id));
        // Kept alive past the first TTL by the new owner.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert!(matches!(second.renew(&*kv).await, Renewal::Renewed));
        }
        assert_eq!(kv.get("k").await.unwrap().unwrap().value, b"v2");
        // Left longer than the TTL: gone, and a new owner is told so and may grant now.
        let _ = second;
        tokio::time::sleep(Duration::from_secs(4)).await;
        let mut third = Lease::new(Duration::from_secs(3));
        let e = third.resume(&*kv, id, "k", b"v3".to_vec()).await;
        assert!(
            matches!(e, Err(KvError::LeaseNotFound(l)) if l == id),
            "{e:?}"
        );
        assert!(third.grant_due());
        assert!(kv.get("k").await.unwrap().is_none());
        let new = third.register(&*kv, "k", b"v3".to_vec()).await.unwrap();
        assert_ne!(new, id);
    }
}
