//! Names why writes to etcd fail, once per change of cause: a warning when writes
//! start failing or fail for a new reason (NOSPACE, permission denied, no leader,
//! unreachable), one line when they succeed again, and nothing per attempt between.
//!
//! Without it an agent whose etcd ran out of its space quota retried its reports
//! silently for as long as the alarm stood.

use registry::{Cause, KvError};
use tracing::{debug, info, warn};

/// The state of one agent's writes.
#[derive(Debug, Default)]
pub struct WriteFaults {
    /// Why the last write failed; `None` while writes succeed.
    current: Option<Cause>,
}

impl WriteFaults {
    /// Why writes are failing now, if they are.
    pub fn current(&self) -> Option<Cause> {
        self.current
    }

    /// A write (`what`: registration, report, keep-alive) failed with `e`: warns when
    /// the cause changed, and returns true then.
    pub fn failed(&mut self, node_id: &str, key: &str, what: &'static str, e: &KvError) -> bool {
        let cause = e.cause();
        if self.current == Some(cause) {
            debug!(node_id, key, error = %e, cause = cause.as_str(), "{what} failed again");
            return false;
        }
        self.current = Some(cause);
        warn!(node_id, key, error = %e, cause = cause.as_str(), "writes to etcd failing: {what} failed: {cause}: {}", cause.meaning());
        true
    }

    /// A write succeeded: says so once after failures. True when it did.
    pub fn succeeded(&mut self, node_id: &str) -> bool {
        match self.current.take() {
            Some(was) => {
                info!(node_id, was = was.as_str(), "writes to etcd succeed again");
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_change_of_cause() {
        let nospace = KvError::Unavailable(
            "http://127.0.0.1:2379: registry unavailable: ResourceExhausted: etcdserver: mvcc: database space exceeded".into(),
        );
        let denied = KvError::Rejected("PermissionDenied: etcdserver: permission denied".into());
        let no_leader = KvError::Unavailable("Unavailable: etcdserver: no leader".into());
        let down = KvError::Unavailable("transport error: connection refused".into());
        assert_eq!(nospace.cause(), Cause::NoSpace);
        assert_eq!(denied.cause(), Cause::PermissionDenied);
        assert_eq!(no_leader.cause(), Cause::NoLeader);
        assert_eq!(down.cause(), Cause::Unreachable);

        let mut f = WriteFaults::default();
        assert!(!f.succeeded("n"), "nothing to say while writes succeed");
        assert!(f.failed("n", "k", "report", &nospace));
        for _ in 0..10 {
            assert!(
                !f.failed("n", "k", "report", &nospace),
                "not once per attempt"
            );
        }
        assert!(
            !f.failed("n", "k", "registration", &nospace),
            "the same cause, whatever the write"
        );
        assert_eq!(f.current(), Some(Cause::NoSpace));
        assert!(
            f.failed("n", "k", "report", &denied),
            "a new cause is named"
        );
        assert!(f.failed("n", "k", "report", &no_leader));
        assert!(f.failed("n", "k", "report", &down));
        assert!(f.succeeded("n"));
        assert!(!f.succeeded("n"));
        assert!(
            f.failed("n", "k", "report", &nospace),
            "failing again is news"
        );
    }
}
