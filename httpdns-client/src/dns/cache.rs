//! The resolver's per-host cache: a bounded in-memory map whose entries outlive their
//! TTL by the stale window, and the answers file that keeps HTTPDNS answers across
//! restarts (written atomically; read once, at the first lookup).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::answer::DnsSource;
use crate::files::{now_ms, read_bounded, write_atomically};
use crate::limits::{MAX_STALE, MAX_TTL};

/// One host's answer.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) ips: Vec<IpAddr>,
    pub(crate) source: DnsSource,
    /// Fresh until then.
    pub(crate) expires: Instant,
    /// Servable (stale) until then.
    pub(crate) stale_until: Instant,
    /// Wall clock when the answer was obtained, and its TTL: what the answers file keeps.
    pub(crate) got_ms: u64,
    pub(crate) ttl: Duration,
}

impl Entry {
    /// An answer obtained now, fresh for `ttl` and servable `max_stale` longer.
    pub(crate) fn new(
        ips: Vec<IpAddr>,
        source: DnsSource,
        ttl: Duration,
        max_stale: Duration,
    ) -> Entry {
        let now = Instant::now();
        let ttl = ttl.min(MAX_TTL);
        let max_stale = max_stale.min(MAX_STALE);
        Entry {
            ips,
            source,
            expires: now + ttl,
            stale_until: now + ttl + max_stale,
            got_ms: now_ms(),
            ttl,
        }
    }
}

/// The answers file's format (`version` 1).
#[derive(Debug, Serialize, Deserialize)]
struct AnswersFile {
    version: u32,
    answers: Vec<Saved>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    host: String,
    ips: Vec<IpAddr>,
    saved_ms: u64,
    ttl_secs: u64,
}

/// The cache, with its optional file.
pub(crate) struct Cache {
    /// Host → answer. A plain map under a lock: an app resolves a handful of hosts, and
    /// no lock is held across an await.
    map: Arc<Mutex<HashMap<String, Entry>>>,
    max_entries: usize,
    file: Option<PathBuf>,
    max_stale: Duration,
    /// The file is read once, by the first lookup.
    loaded: std::sync::Once,
    /// One writer at a time; each writes the cache as it is when it runs.
    writing: Arc<Mutex<()>>,
}

impl Cache {
    pub(crate) fn new(max_entries: u64, max_stale: Duration, file: Option<PathBuf>) -> Cache {
        Cache {
            map: Arc::default(),
            max_entries: usize::try_from(max_entries.max(1)).unwrap_or(usize::MAX),
            file,
            max_stale: max_stale.min(MAX_STALE),
            loaded: std::sync::Once::new(),
            writing: Arc::new(Mutex::new(())),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock leaves a map that is still whole.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The entry for `host` while it is servable (fresh or stale), reading the answers
    /// file first when this is the first call.
    pub(crate) fn get(&self, host: &str) -> Option<Entry> {
        self.loaded.call_once(|| {
            if let Some(path) = &self.file {
                let read = read_answers(path, now_ms(), self.max_stale);
                let mut map = self.map();
                for (host, entry) in read {
                    map.entry(host).or_insert(entry);
                }
            }
        });
        let now = Instant::now();
        let mut map = self.map();
        match map.get(host) {
            Some(e) if e.stale_until >= now => Some(e.clone()),
            Some(_) => {
                map.remove(host);
                None
            }
            None => None,
        }
    }

    /// Keeps `entry` for `host`; an HTTPDNS answer is written to the answers file too.
    /// Past `max_entries` hosts, answers no longer servable go first, then the one
    /// closest to its end.
    pub(crate) fn insert(&self, host: &str, entry: Entry) {
        let persist = entry.source == DnsSource::HttpDns;
        {
            let mut map = self.map();
            map.insert(host.to_string(), entry);
            if map.len() > self.max_entries {
                let now = Instant::now();
                map.retain(|h, e| h == host || e.stale_until >= now);
            }
            while map.len() > self.max_entries {
                let Some(oldest) = map
                    .iter()
                    .filter(|(h, _)| *h != host)
                    .min_by_key(|(_, e)| e.stale_until)
                    .map(|(h, _)| h.clone())
                else {
                    break;
                };
                map.remove(&oldest);
            }
        }
        if persist {
            self.save();
        }
    }

    pub(crate) fn invalidate(&self, host: &str) {
        self.map().remove(host);
    }

    /// Drops every answer, the file's too (the network changed: what the providers
    /// answered may not hold on the new one).
    pub(crate) fn clear(&self) {
        self.map().clear();
        if let Some(path) = &self.file {
            let _guard = self.writing.lock().expect("answers writer");
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "could not remove the HTTPDNS answers file")
                }
            }
        }
    }

    /// Writes the HTTPDNS answers, off the caller's path.
    fn save(&self) {
        let Some(path) = self.file.clone() else {
            return;
        };
        let map = self.map.clone();
        let writing = self.writing.clone();
        tokio::task::spawn_blocking(move || {
            let _guard = writing.lock().expect("answers writer");
            let answers = map
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|(_, e)| e.source == DnsSource::HttpDns)
                .map(|(host, e)| Saved {
                    host: host.clone(),
                    ips: e.ips.clone(),
                    saved_ms: e.got_ms,
                    ttl_secs: e.ttl.as_secs(),
                })
                .collect();
            let file = AnswersFile {
                version: 1,
                answers,
            };
            let bytes = serde_json::to_vec(&file).expect("answers serialize");
            if let Err(e) = write_atomically(&path, &bytes) {
                warn!(path = %path.display(), error = %e, "could not write the HTTPDNS answers file");
            }
        });
    }
}

/// The usable answers of the file at `path` as entries: fresh for what remains of
/// their TTL, stale for what remains of TTL plus `max_stale`. A missing, corrupt or
/// foreign file gives nothing (logged); entries that are not IP literals cannot parse.
fn read_answers(path: &Path, now_ms: u64, max_stale: Duration) -> Vec<(String, Entry)> {
    let bytes = match read_bounded(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "HTTPDNS answers file unreadable; ignored");
            return Vec::new();
        }
    };
    let file: AnswersFile = match serde_json::from_slice(&bytes) {
        Ok(f) => f,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "HTTPDNS answers file is corrupt; ignored (rewritten on the next answer)");
            return Vec::new();
        }
    };
    if file.version != 1 {
        warn!(path = %path.display(), version = file.version, "HTTPDNS answers file of another version; ignored");
        return Vec::new();
    }
    let now = Instant::now();
    let max_stale = max_stale.min(MAX_STALE);
    let mut out = Vec::new();
    for s in file.answers {
        let ttl = crate::limits::dns_ttl_secs(s.ttl_secs);
        // A file from the future (the clock was set back) counts as just written.
        let age = Duration::from_millis(now_ms.saturating_sub(s.saved_ms));
        let ips: Vec<IpAddr> = s
            .ips
            .into_iter()
            .filter(|ip| super::providers::usable(*ip))
            .collect();
        if ips.is_empty() || s.host.is_empty() || age > ttl + max_stale {
            debug!(host = %s.host, age_s = age.as_secs(), "saved HTTPDNS answer not used");
            continue;
        }
        let fresh_for = ttl.saturating_sub(age);
        out.push((
            s.host,
            Entry {
                ips,
                source: DnsSource::HttpDns,
                expires: now + fresh_for,
                stale_until: now + (ttl + max_stale - age),
                got_ms: s.saved_ms,
                ttl,
            },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(host: &str, age_s: u64, ttl_s: u64, now: u64) -> Saved {
        Saved {
            host: host.into(),
            ips: vec!["192.0.2.1".parse().unwrap()],
            saved_ms: now - age_s * 1000,
            ttl_secs: ttl_s,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn saved_answers_are_fresh_stale_or_dropped_by_their_age() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("answers.json");
        let now = 10_000_000_000;
        let file = AnswersFile {
            version: 1,
            answers: vec![
                saved("fresh.example", 10, 60, now),
                saved("stale.example", 100, 60, now),
                saved("old.example", 200, 60, now),
            ],
        };
        std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
        let got = read_answers(&path, now, Duration::from_secs(100));
        let t = Instant::now();
        let by: std::collections::HashMap<_, _> = got.into_iter().collect();
        assert_eq!(
            by.len(),
            2,
            "160 s > 60 s TTL + 100 s stale window: dropped"
        );
        assert_eq!(by["fresh.example"].expires, t + Duration::from_secs(50));
        assert_eq!(by["stale.example"].expires, t, "expired");
        assert_eq!(
            by["stale.example"].stale_until,
            t + Duration::from_secs(60),
            "servable for what remains of TTL + stale window"
        );
        for bad in [&b"{ trunc"[..], br#"{"version":2,"answers":[]}"#, b""] {
            std::fs::write(&path, bad).unwrap();
            assert!(read_answers(&path, now, Duration::from_secs(100)).is_empty());
        }
        assert!(read_answers(&dir.path().join("none"), now, Duration::ZERO).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_map_holds_max_entries_dropping_the_unservable_then_the_nearest_end() {
        let c = Cache::new(2, Duration::from_secs(10), None);
        let ip = vec!["192.0.2.1".parse().unwrap()];
        let entry = |ttl_s| {
            Entry::new(
                ip.clone(),
                DnsSource::LocalDns,
                Duration::from_secs(ttl_s),
                Duration::from_secs(10),
            )
        };
        c.insert("short", entry(5));
        c.insert("long", entry(500));
        assert!(c.get("short").is_some() && c.get("long").is_some());
        // Full: the answer closest to its end makes room.
        c.insert("new", entry(50));
        assert!(c.get("short").is_none(), "nearest end dropped");
        assert!(c.get("long").is_some() && c.get("new").is_some());
        // Past TTL plus the stale window an answer is gone, and leaves room first.
        // (`long` now ends sooner than `third`, but `new` is dropped.)
        tokio::time::advance(Duration::from_secs(61)).await;
        c.insert("third", entry(1000));
        assert!(c.get("long").is_some() && c.get("third").is_some());
        assert!(c.get("new").is_none(), "past its stale window");
        c.invalidate("long");
        assert!(c.get("long").is_none());
    }

    #[tokio::test]
    async fn httpdns_answers_are_written_and_read_back_by_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("answers.json");
        let ttl = Duration::from_secs(60);
        let day = Duration::from_secs(86400);
        let c = Cache::new(10, day, Some(path.clone()));
        assert!(c.get("x").is_none());
        let ips = vec!["192.0.2.9".parse().unwrap()];
        c.insert(
            "r.example",
            Entry::new(ips.clone(), DnsSource::HttpDns, ttl, day),
        );
        c.insert(
            "local.example",
            Entry::new(ips.clone(), DnsSource::LocalDns, ttl, day),
        );
        // Written off the caller's path: wait for the file (renamed in whole).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !path.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "answers file never written"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let next = Cache::new(10, day, Some(path.clone()));
        let e = next.get("r.example").expect("read back");
        assert_eq!(e.ips, ips);
        assert!(e.expires > Instant::now(), "fresh");
        assert!(
            next.get("local.example").is_none(),
            "local DNS answers are not kept"
        );
        next.clear();
        assert!(!path.exists(), "cleared with the network change");
    }

    #[tokio::test]
    async fn extreme_times_in_the_answers_file_or_the_settings_do_not_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("answers.json");
        let now = now_ms();
        let file = AnswersFile {
            version: 1,
            answers: vec![
                Saved {
                    host: "far.example".into(),
                    ips: vec!["192.0.2.1".parse().unwrap()],
                    saved_ms: now,
                    ttl_secs: u64::MAX,
                },
                Saved {
                    host: "future.example".into(),
                    ips: vec!["192.0.2.2".parse().unwrap()],
                    saved_ms: u64::MAX,
                    ttl_secs: u64::MAX,
                },
            ],
        };
        std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
        let t = Instant::now();
        let got: HashMap<_, _> = read_answers(&path, now, Duration::MAX)
            .into_iter()
            .collect();
        assert_eq!(got.len(), 2);
        for e in got.values() {
            assert_eq!(e.ttl, MAX_TTL);
            assert!(e.expires <= t + MAX_TTL + Duration::from_secs(1));
            assert!(e.stale_until <= t + MAX_TTL + MAX_STALE + Duration::from_secs(1));
        }
        // The app's own settings too: an entry fresh "forever" is fresh for a day.
        let c = Cache::new(u64::MAX, Duration::MAX, None);
        let ip = vec!["192.0.2.1".parse().unwrap()];
        c.insert(
            "h",
            Entry::new(ip, DnsSource::HttpDns, Duration::MAX, Duration::MAX),
        );
        assert_eq!(c.get("h").unwrap().ttl, MAX_TTL);
    }

    #[test]
    fn an_answers_file_over_the_bound_or_not_a_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("answers.json");
        // A valid file padded past 1 MiB with whitespace.
        let mut bytes = br#"{"version":1,"answers":[]}"#.to_vec();
        bytes.resize(crate::limits::MAX_FILE_BYTES as usize + 1, b' ');
        std::fs::write(&path, &bytes).unwrap();
        assert!(read_answers(&path, now_ms(), Duration::ZERO).is_empty());
        std::fs::create_dir(dir.path().join("dir")).unwrap();
        assert!(read_answers(&dir.path().join("dir"), now_ms(), Duration::ZERO).is_empty());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn any_saved_times_give_bounded_entries(
            saved_ms in proptest::prelude::any::<u64>(),
            ttl_secs in proptest::prelude::any::<u64>(),
            now in proptest::prelude::any::<u64>(),
            stale_secs in proptest::prelude::any::<u64>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("answers.json");
            let file = AnswersFile {
                version: 1,
                answers: vec![Saved {
                    host: "h.example".into(),
                    ips: vec!["192.0.2.1".parse().unwrap()],
                    saved_ms,
                    ttl_secs,
                }],
            };
            std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
            let t = Instant::now();
            for (_, e) in read_answers(&path, now, Duration::from_secs(stale_secs)) {
                proptest::prop_assert!(e.ttl <= MAX_TTL);
                proptest::prop_assert!(e.expires <= e.stale_until);
                proptest::prop_assert!(e.stale_until <= t + MAX_TTL + MAX_STALE + Duration::from_secs(1));
            }
        }
    }
}
