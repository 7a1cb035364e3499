//! Bounds on every time a router, an HTTPDNS provider or a file on disk may set: each
//! such value is clamped here before it becomes a [`Duration`] or meets an
//! [`Instant`], so a hostile or broken peer can neither panic the SDK (an overflowing
//! `Instant + Duration`, a NaN given to `Duration::from_secs_f64`) nor park it for
//! centuries.
//!
//! | value | from | bound |
//! |---|---|---|
//! | `Retry-After` | routers (429, 503), HTTPDNS providers | 0 ..= [`MAX_RETRY_AFTER`] (1 h) |
//! | `ttl_secs` | routers, the cache file | [`MIN_TTL`] (1 s) ..= [`MAX_TTL`] (1 day) |
//! | `ttl` | HTTPDNS answers, the answers file | ..= [`MAX_TTL`] (1 day), then `DnsConfig::min_ttl..=max_ttl` |
//! | `heartbeat_secs` | routers, the cache file | [`MIN_HEARTBEAT`] (1 s) ..= [`MAX_HEARTBEAT`] (1 h) |
//! | `backoff.base_ms`, `backoff.max_ms` | routers, the cache file | 1 ms ..= [`MAX_BACKOFF`] (10 min), base ≤ max |
//! | `backoff.factor` | routers, the cache file | 1 ..= [`MAX_BACKOFF_FACTOR`] (10); NaN: the default 1.6 |
//! | `backoff.jitter` | routers, the cache file | 0 ..= 1; NaN: the default 0.2 |
//! | `DnsConfig::max_stale` | the app | ..= [`MAX_STALE`] (7 days) |
//! | cache and answers files | disk | at most [`MAX_FILE_BYTES`] (1 MiB) read |

use std::time::Duration;

use tokio::time::Instant;

/// The longest `Retry-After` followed.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// The shortest reuse of a router's answer.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// The longest reuse of a router's answer or an HTTPDNS answer.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// The shortest heartbeat interval handed to the app.
pub const MIN_HEARTBEAT: Duration = Duration::from_secs(1);
/// The longest heartbeat interval handed to the app.
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(3600);
/// The longest backoff delay (`base_ms` and `max_ms` alike).
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// The largest backoff growth per attempt.
pub const MAX_BACKOFF_FACTOR: f64 = 10.0;
/// The longest an expired HTTPDNS answer may still be served.
pub const MAX_STALE: Duration = Duration::from_secs(7 * 24 * 3600);
/// The largest cache or answers file read; a larger one is ignored.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// The largest HTTP answer body read (router or HTTPDNS); a larger one is refused as
/// unusable.
pub const MAX_BODY: usize = 1 << 20;

/// A `Retry-After` header's value: delay-seconds, clamped to [`MAX_RETRY_AFTER`] (a
/// number too long for a `u64` included). `None` for anything else (an HTTP date, which
/// would need the peer's clock, or garbage).
pub fn retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs = v.parse::<u64>().unwrap_or(u64::MAX);
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// A router's `ttl_secs`, within [`MIN_TTL`] ..= [`MAX_TTL`].
pub fn ttl_secs(secs: u64) -> Duration {
    Duration::from_secs(secs).clamp(MIN_TTL, MAX_TTL)
}

/// An HTTPDNS answer's TTL in seconds, at most [`MAX_TTL`] (0 stays 0: "no TTL").
pub fn dns_ttl_secs(secs: u64) -> Duration {
    Duration::from_secs(secs).min(MAX_TTL)
}

/// A router's `heartbeat_secs`, within [`MIN_HEARTBEAT`] ..= [`MAX_HEARTBEAT`].
pub fn heartbeat_secs(secs: u64) -> Duration {
    Duration::from_secs(secs).clamp(MIN_HEARTBEAT, MAX_HEARTBEAT)
}

/// `start + d`, at most thirty years on (a configured `Duration::MAX`, say): never the
/// overflow panic of `Instant + Duration`.
pub(crate) fn later(start: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);
    start
        .checked_add(d.min(FAR))
        .or_else(|| start.checked_add(Duration::from_secs(24 * 3600)))
        .unwrap_or(start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn retry_after_is_clamped_and_dates_are_not_followed() {
        assert_eq!(retry_after("5"), Some(Duration::from_secs(5)));
        assert_eq!(retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(retry_after("18446744073709551615"), Some(MAX_RETRY_AFTER));
        assert_eq!(
            retry_after("99999999999999999999999999999"),
            Some(MAX_RETRY_AFTER),
            "longer than a u64"
        );
        for bad in ["", "-1", "1.5", "Wed, 21 Oct 2015 07:28:00 GMT", "+3", "٣"] {
            assert_eq!(retry_after(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ttls_and_heartbeats_are_clamped() {
        assert_eq!(ttl_secs(0), MIN_TTL);
        assert_eq!(ttl_secs(300), Duration::from_secs(300));
        assert_eq!(ttl_secs(u64::MAX), MAX_TTL);
        assert_eq!(dns_ttl_secs(0), Duration::ZERO);
        assert_eq!(dns_ttl_secs(u64::MAX), MAX_TTL);
        assert_eq!(heartbeat_secs(0), MIN_HEARTBEAT);
        assert_eq!(heartbeat_secs(240), Duration::from_secs(240));
        assert_eq!(heartbeat_secs(u64::MAX), MAX_HEARTBEAT);
        let now = Instant::now();
        assert!(later(now, Duration::MAX) > now + Duration::from_secs(86400));
        assert_eq!(
            later(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
    }

    proptest! {
        #[test]
        fn any_retry_after_number_is_within_the_bound(secs in any::<u64>()) {
            let d = retry_after(&secs.to_string()).expect("a number");
            prop_assert!(d <= MAX_RETRY_AFTER);
            prop_assert_eq!(d, Duration::from_secs(secs.min(3600)));
        }

        #[test]
        fn any_retry_after_text_is_within_the_bound(v in "\\PC*") {
            if let Some(d) = retry_after(&v) {
                prop_assert!(d <= MAX_RETRY_AFTER);
            }
        }

        #[test]
        fn any_ttl_or_heartbeat_is_within_the_bounds(secs in any::<u64>()) {
            let t = ttl_secs(secs);
            prop_assert!((MIN_TTL..=MAX_TTL).contains(&t));
            prop_assert!(dns_ttl_secs(secs) <= MAX_TTL);
            let h = heartbeat_secs(secs);
            prop_assert!((MIN_HEARTBEAT..=MAX_HEARTBEAT).contains(&h));
            // What the SDK then does with them cannot overflow.
            let now = Instant::now();
            prop_assert!(now + t + crate::limits::MAX_STALE > now);
            prop_assert!(later(now, Duration::from_secs(secs)) >= now);
        }
    }
}
