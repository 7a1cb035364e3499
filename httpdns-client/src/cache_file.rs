//! The gateway cache file: the last good router answer, kept on disk so that a cold
//! start with no router in reach still has candidates. Written atomically through a
//! private temporary file; read back bounded in size, only for the same router and
//! protocol, and within its age limit (through [`crate::files`], as the HTTPDNS
//! answers file).

use std::io;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::answer::{AnswerExt, InvalidAnswer, RouterAnswer};
use crate::config::Proto;
use crate::files::{now_ms, read_bounded};

/// Why the gateway cache file is not used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheFileError {
    /// There is no file yet.
    #[error("no cache file yet")]
    Missing,
    /// It cannot be read, is too large or is not a regular file.
    #[error(transparent)]
    Unreadable(#[from] io::Error),
    /// It is not the JSON of a cache file; serde's reason.
    #[error("{0}")]
    Json(String),
    /// It was written by another version of the SDK, or for another router.
    #[error("written by another version or for another router")]
    Foreign,
    /// The answer in it gives nothing to dial.
    #[error(transparent)]
    Answer(#[from] InvalidAnswer),
    /// It was saved for another protocol than the one asked for.
    #[error("saved for another protocol than {}", .0.as_str())]
    OtherProto(Proto),
    /// It is older than the age limit.
    #[error("{age_secs} s old, older than {max_secs} s")]
    TooOld {
        /// Its age, in seconds.
        age_secs: u64,
        /// The limit, in seconds.
        max_secs: u64,
    },
    /// Any of the others but [`CacheFileError::Missing`], [`CacheFileError::OtherProto`]
    /// and [`CacheFileError::TooOld`], as the client reports it.
    #[error("cache file corrupt or unreadable: {0}")]
    Corrupt(#[source] Box<CacheFileError>),
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CacheFile {
    pub(crate) version: u32,
    pub(crate) router_domain: String,
    pub(crate) saved_ms: u64,
    pub(crate) answer: RouterAnswer,
}

/// Reads a gateway cache file's bytes as the SDK does when no router answers: the
/// version, the router it was saved for, and every candidate are checked. Public for
/// tools and for fuzzing.
pub fn parse_cache_file(bytes: &[u8], domain: &str) -> Result<RouterAnswer, CacheFileError> {
    parse_cache_file_at(bytes, domain, None, None).map(|(a, _)| a)
}

/// [`parse_cache_file`], also refusing a file for another protocol than `proto` or,
/// with `age_limit = (max_age, now_ms)`, older than `max_age` at wall-clock `now_ms`.
/// Returns the answer and its age.
pub(crate) fn parse_cache_file_at(
    bytes: &[u8],
    domain: &str,
    proto: Option<Proto>,
    age_limit: Option<(Duration, u64)>,
) -> Result<(RouterAnswer, Duration), CacheFileError> {
    let f: CacheFile =
        serde_json::from_slice(bytes).map_err(|e| CacheFileError::Json(e.to_string()))?;
    if f.version != 1 || f.router_domain != domain {
        return Err(CacheFileError::Foreign);
    }
    f.answer.validate()?;
    let answer = f.answer.clamped();
    if let Some(p) = proto {
        if answer.gateways.iter().any(|g| g.proto != p) {
            return Err(CacheFileError::OtherProto(p));
        }
    }
    let mut age = Duration::ZERO;
    if let Some((max_age, now_ms)) = age_limit {
        age = Duration::from_millis(now_ms.saturating_sub(f.saved_ms));
        if age > max_age {
            return Err(CacheFileError::TooOld {
                age_secs: age.as_secs(),
                max_secs: max_age.as_secs(),
            });
        }
    }
    Ok((answer, age))
}

pub(crate) fn read_cache(
    path: &Path,
    domain: &str,
    proto: Proto,
    max_age: Duration,
) -> Result<RouterAnswer, CacheFileError> {
    let parsed = match read_bounded(path) {
        Ok(bytes) => parse_cache_file_at(&bytes, domain, Some(proto), Some((max_age, now_ms()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(CacheFileError::Missing),
        // Too large, not a regular file, unreadable: as unusable as a corrupt one.
        Err(e) => Err(e.into()),
    };
    match parsed {
        Ok((answer, _)) => Ok(answer),
        Err(e @ (CacheFileError::TooOld { .. } | CacheFileError::OtherProto(_))) => {
            warn!(path = %path.display(), reason = %e, "gateway cache file not used");
            Err(e)
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e, "gateway cache file is corrupt or unreadable; ignoring it (rewritten on the next good answer)");
            Err(CacheFileError::Corrupt(Box::new(e)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::BackoffExt;
    use crate::client::{BackoffParams, Gateway};
    use crate::files::write_atomically;
    use crate::limits::MAX_FILE_BYTES;

    #[test]
    fn corrupt_cache_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateways.json");
        std::fs::write(&path, b"{ truncated").unwrap();
        let week = Duration::from_secs(7 * 86400);
        assert!(read_cache(&path, "r.example", Proto::Tcp, week)
            .unwrap_err()
            .to_string()
            .contains("corrupt"));
        let good = CacheFile {
            version: 1,
            router_domain: "r.example".into(),
            saved_ms: 1,
            answer: RouterAnswer {
                gateways: vec![Gateway {
                    id: "g".into(),
                    ip: "192.0.2.1".parse().unwrap(),
                    port: 1,
                    proto: Proto::Tcp,
                    region: "r".into(),
                    domain: None,
                    dc: None,
                    isp: None,
                    load: 0.1,
                }],
                region: None,
                ttl_secs: 300,
                heartbeat_secs: 240,
                backoff: BackoffParams::default(),
                revision: 1,
                stale: false,
            },
        };
        write_atomically(&path, &serde_json::to_vec(&good).unwrap()).unwrap();
        assert!(
            read_cache(&path, "r.example", Proto::Tcp, week).is_err(),
            "saved at 1 ms after the epoch: too old"
        );
        let good = CacheFile {
            saved_ms: now_ms() - 3_600_000,
            ..good
        };
        write_atomically(&path, &serde_json::to_vec(&good).unwrap()).unwrap();
        assert_eq!(
            read_cache(&path, "r.example", Proto::Tcp, week).unwrap(),
            good.answer
        );
        let old = read_cache(&path, "r.example", Proto::Tcp, Duration::from_secs(60))
            .unwrap_err()
            .to_string();
        assert!(old.ends_with(" s old, older than 60 s"), "{old}");
        assert_eq!(
            read_cache(&path, "r.example", Proto::Ws, week)
                .unwrap_err()
                .to_string(),
            "saved for another protocol than ws",
            "saved for tcp, asked for ws"
        );
        assert!(
            read_cache(&path, "other.example", Proto::Tcp, week).is_err(),
            "another router's cache is not used"
        );
    }

    fn answer(ttl_secs: u64, heartbeat_secs: u64, backoff: BackoffParams) -> RouterAnswer {
        RouterAnswer {
            gateways: vec![Gateway {
                id: "g".into(),
                ip: "192.0.2.1".parse().unwrap(),
                port: 1,
                proto: Proto::Tcp,
                region: "r".into(),
                domain: None,
                dc: None,
                isp: None,
                load: 0.1,
            }],
            region: None,
            ttl_secs,
            heartbeat_secs,
            backoff,
            revision: 1,
            stale: false,
        }
    }

    #[test]
    fn a_cache_file_too_large_or_not_a_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateways.json");
        let week = Duration::from_secs(7 * 86400);
        let good = CacheFile {
            version: 1,
            router_domain: "r.example".into(),
            saved_ms: now_ms(),
            answer: answer(300, 240, BackoffParams::default()),
        };
        let mut bytes = serde_json::to_vec(&good).unwrap();
        write_atomically(&path, &bytes).unwrap();
        assert!(read_cache(&path, "r.example", Proto::Tcp, week).is_ok());
        // The same answer padded with whitespace past 1 MiB: valid JSON, not read.
        bytes.resize(MAX_FILE_BYTES as usize + 1, b' ');
        write_atomically(&path, &bytes).unwrap();
        let e = read_cache(&path, "r.example", Proto::Tcp, week)
            .unwrap_err()
            .to_string();
        assert!(e.contains("larger than 1 MiB"), "{e}");
        let e = read_cache(dir.path(), "r.example", Proto::Tcp, week)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn extreme_times_in_a_cache_file_are_clamped() {
        let file = CacheFile {
            version: 1,
            router_domain: "r.example".into(),
            saved_ms: u64::MAX,
            answer: answer(
                u64::MAX,
                u64::MAX,
                BackoffParams {
                    base_ms: u64::MAX,
                    max_ms: u64::MAX,
                    factor: 1e300,
                    jitter: -1e300,
                },
            ),
        };
        let bytes = serde_json::to_vec(&file).unwrap();
        let (a, age) = parse_cache_file_at(
            &bytes,
            "r.example",
            Some(Proto::Tcp),
            Some((Duration::MAX, u64::MAX)),
        )
        .unwrap();
        assert_eq!(age, Duration::ZERO);
        assert_eq!((a.ttl_secs, a.heartbeat_secs), (86_400, 3600));
        assert_eq!(a.backoff.max_ms, 600_000);
        let g = crate::answer::to_gateways(a, crate::Source::CacheFile, Duration::MAX);
        assert_eq!(g.ttl, crate::limits::MAX_TTL);
        assert_eq!(g.heartbeat, crate::limits::MAX_HEARTBEAT);
    }

    proptest::proptest! {
        #[test]
        fn any_times_in_a_cache_file_give_bounded_gateways(
            ttl in proptest::prelude::any::<u64>(),
            heartbeat in proptest::prelude::any::<u64>(),
            backoff in crate::answer::tests::any_backoff(),
            saved_ms in proptest::prelude::any::<u64>(),
            now in proptest::prelude::any::<u64>(),
            max_age in proptest::prelude::any::<u64>(),
        ) {
            let file = CacheFile {
                version: 1,
                router_domain: "r.example".into(),
                saved_ms,
                answer: answer(ttl, heartbeat, backoff),
            };
            // JSON has no NaN or infinity: those cannot come from a file.
            let Ok(bytes) = serde_json::to_vec(&file) else { return Ok(()) };
            let Ok((a, _)) = parse_cache_file_at(
                &bytes,
                "r.example",
                Some(Proto::Tcp),
                Some((Duration::from_millis(max_age), now)),
            ) else {
                return Ok(());
            };
            let g = crate::answer::to_gateways(a, crate::Source::CacheFile, Duration::from_secs(ttl));
            proptest::prop_assert!(g.ttl <= crate::limits::MAX_TTL);
            proptest::prop_assert!(
                (crate::limits::MIN_HEARTBEAT..=crate::limits::MAX_HEARTBEAT).contains(&g.heartbeat)
            );
            proptest::prop_assert!(g.backoff.delay(u32::MAX, 1.0) <= crate::limits::MAX_BACKOFF * 2);
        }
    }
}
