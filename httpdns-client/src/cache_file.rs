//! The gateway cache file: the last good router answer, kept on disk so that a cold
//! start with no router in reach still has candidates. Written atomically; read back
//! only for the same router, protocol and within its age limit.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::client::{Proto, RouterAnswer};

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CacheFile {
    pub(crate) version: u32,
    pub(crate) router_domain: String,
    pub(crate) saved_ms: u64,
    pub(crate) answer: RouterAnswer,
}

/// Writes `bytes` to `path` so a reader sees the old or the new file, never a part.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Reads a gateway cache file's bytes as the SDK does when no router answers: the
/// version, the router it was saved for, and every candidate are checked. Public for
/// tools and for fuzzing.
pub fn parse_cache_file(bytes: &[u8], domain: &str) -> Result<RouterAnswer, String> {
    parse_cache_file_at(bytes, domain, None, None).map(|(a, _)| a)
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// [`parse_cache_file`], also refusing a file for another protocol than `proto` or,
/// with `age_limit = (max_age, now_ms)`, older than `max_age` at wall-clock `now_ms`.
/// Returns the answer and its age.
pub(crate) fn parse_cache_file_at(
    bytes: &[u8],
    domain: &str,
    proto: Option<Proto>,
    age_limit: Option<(Duration, u64)>,
) -> Result<(RouterAnswer, Duration), String> {
    let f: CacheFile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if f.version != 1 || f.router_domain != domain {
        return Err("written by another version or for another router".into());
    }
    f.answer.validate()?;
    if let Some(p) = proto {
        if f.answer.gateways.iter().any(|g| g.proto != p) {
            return Err(format!("saved for another protocol than {}", p.as_str()));
        }
    }
    let mut age = Duration::ZERO;
    if let Some((max_age, now_ms)) = age_limit {
        age = Duration::from_millis(now_ms.saturating_sub(f.saved_ms));
        if age > max_age {
            return Err(format!(
                "{} s old, older than {} s",
                age.as_secs(),
                max_age.as_secs()
            ));
        }
    }
    Ok((f.answer, age))
}

pub(crate) fn read_cache(
    path: &Path,
    domain: &str,
    proto: Proto,
    max_age: Duration,
) -> Result<RouterAnswer, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("no cache file yet".into())
        }
        Err(e) => return Err(format!("cache file {}: {e}", path.display())),
    };
    match parse_cache_file_at(&bytes, domain, Some(proto), Some((max_age, now_ms()))) {
        Ok((answer, _)) => Ok(answer),
        Err(e) if !e.contains("JSON") && (e.contains("old") || e.contains("protocol")) => {
            warn!(path = %path.display(), reason = %e, "gateway cache file not used");
            Err(e)
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e, "gateway cache file is corrupt; ignoring it (rewritten on the next good answer)");
            Err(format!("cache file corrupt: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{BackoffParams, Gateway};

    #[test]
    fn corrupt_cache_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateways.json");
        std::fs::write(&path, b"{ truncated").unwrap();
        let week = Duration::from_secs(7 * 86400);
        assert!(read_cache(&path, "r.example", Proto::Tcp, week)
            .unwrap_err()
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
        assert!(
            read_cache(&path, "r.example", Proto::Tcp, Duration::from_secs(60)).is_err(),
            "an hour old, the limit a minute"
        );
        assert!(
            read_cache(&path, "r.example", Proto::Ws, week).is_err(),
            "saved for tcp, asked for ws"
        );
        assert!(
            read_cache(&path, "other.example", Proto::Tcp, week).is_err(),
            "another router's cache is not used"
        );
    }
}
