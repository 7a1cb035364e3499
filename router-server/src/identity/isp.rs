//! The client's ISP from a MaxMind-format database (`[regions] isp_db`): the GeoLite2
//! or GeoIP2 ASN edition, or the ISP edition, both of which map a network to its
//! `autonomous_system_number`. `[regions] asn_isps` names the ISP of each ASN the
//! operator cares about; the rest are of no known ISP.
//!
//! The file is the operator's, but it is read as hostile input: at most
//! [`MAX_DB_BYTES`], its format checked when it is opened, a lookup that fails to
//! decode counts as no ISP. A file that changes is read again ([`follow_isp_db`]); a
//! broken new file is logged and the database in force stays.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The largest database read (the ISP edition is about 40 MB): a path pointed at
/// something else costs no more memory than this.
pub const MAX_DB_BYTES: u64 = 512 << 20;

/// An ASN database in force.
pub struct IspDb {
    reader: maxminddb::Reader<Vec<u8>>,
    /// The file it was read from, and its size and modification time then.
    pub stamp: FileStamp,
}

impl std::fmt::Debug for IspDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IspDb")
            .field("type", &self.database_type())
            .field("stamp", &self.stamp)
            .finish()
    }
}

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    /// The path.
    pub path: PathBuf,
    /// Its length in bytes.
    pub len: u64,
    /// Its modification time.
    pub modified: Option<SystemTime>,
}

impl FileStamp {
    /// The stamp of `path` now.
    pub fn of(path: &Path) -> std::io::Result<FileStamp> {
        let m = std::fs::metadata(path)?;
        Ok(FileStamp {
            path: path.to_path_buf(),
            len: m.len(),
            modified: m.modified().ok(),
        })
    }
}

/// Why a database could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IspDbError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Larger than [`MAX_DB_BYTES`].
    #[error("{path}: {len} bytes, more than the {max} an ASN or ISP database may have")]
    TooLarge {
        /// The file.
        path: String,
        /// Its size.
        len: u64,
        /// The most read.
        max: u64,
    },
    /// Not a MaxMind-format database, or not one that maps networks to ASNs.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

impl IspDb {
    /// Reads and checks the database at `path`.
    pub fn open(path: &Path) -> Result<IspDb, IspDbError> {
        IspDb::open_within(path, MAX_DB_BYTES)
    }

    /// [`IspDb::open`], refusing a file larger than `max` bytes.
    fn open_within(path: &Path, max: u64) -> Result<IspDb, IspDbError> {
        let shown = path.display().to_string();
        let unreadable = |source| IspDbError::Unreadable {
            path: shown.clone(),
            source,
        };
        let stamp = FileStamp::of(path).map_err(unreadable)?;
        if stamp.len > max {
            return Err(IspDbError::TooLarge {
                path: shown,
                len: stamp.len,
                max,
            });
        }
        let mut bytes = Vec::new();
        {
            use std::io::Read;
            let file = std::fs::File::open(path).map_err(unreadable)?;
            // The file may grow between the two reads: never more than `max`.
            file.take(max + 1)
                .read_to_end(&mut bytes)
                .map_err(unreadable)?;
        }
        let invalid = |reason: String| IspDbError::Invalid {
            path: shown.clone(),
            reason,
        };
        if bytes.len() as u64 > max {
            return Err(IspDbError::TooLarge {
                path: shown,
                len: bytes.len() as u64,
                max,
            });
        }
        let reader = maxminddb::Reader::from_source(bytes)
            .map_err(|e| invalid(format!("not a MaxMind-format database: {e}")))?;
        let kind = &reader.metadata().database_type;
        if !(kind.contains("ASN") || kind.contains("ISP")) {
            return Err(invalid(format!(
                "a {kind:?} database; an ASN or ISP edition is needed"
            )));
        }
        Ok(IspDb { reader, stamp })
    }

    /// The database's type, as its metadata names it (`GeoLite2-ASN`, ...).
    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }

    /// The ASN of the network `ip` is in, if the database knows it. MaxMind's files
    /// store it as a uint32, other writers in the smallest unsigned type that holds it;
    /// the reader converts any width to an `i64` (and refuses a `u32` from a
    /// uint16), so it is read as one, then checked.
    pub fn asn(&self, ip: IpAddr) -> Option<u32> {
        let found = self.reader.lookup(ip.to_canonical()).ok()?;
        let asn: i64 = found
            .decode_path(&[maxminddb::PathElement::Key("autonomous_system_number")])
            .ok()
            .flatten()?;
        u32::try_from(asn).ok()
    }
}

/// The database in force, shared by every version of the region table, so that a
/// reload of the configuration keeps it and a new file replaces it for all.
pub type IspDbSlot = Arc<ArcSwapOption<IspDb>>;

/// Reads the database at `path` and puts it in force in `slot` (see [`IspDb::open`]);
/// the one in force stays when the file is refused.
pub fn load_isp_db(slot: &IspDbSlot, path: &Path) -> Result<(), IspDbError> {
    let db = IspDb::open(path)?;
    info!(path = %path.display(), r#type = db.database_type(), "ISP database loaded");
    slot.store(Some(Arc::new(db)));
    Ok(())
}

/// Keeps `slot` loaded from the file `path` names, until `cancel`: checks the file every
/// `every` and reads it again ([`load_isp_db`]) when its size or modification time
/// changed. `path` is asked each time (the configuration in force), so a reload that
/// names another file is followed. `reloaded` is told each outcome (true: a new
/// database is in force; false: the new file was refused).
pub async fn follow_isp_db(
    slot: IspDbSlot,
    path: impl Fn() -> Option<PathBuf> + Send,
    every: Duration,
    cancel: CancellationToken,
    reloaded: impl Fn(bool) + Send,
) {
    // A broken file is not read again until it changes once more.
    let mut failed: Option<FileStamp> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let Some(path) = path() else {
            if slot.swap(None).is_some() {
                info!("ISP database unloaded: [regions] isp_db is no longer set");
            }
            continue;
        };
        let now = FileStamp::of(&path).ok();
        let current = slot.load().as_ref().map(|db| db.stamp.clone());
        if now.is_none() || now == current || now == failed {
            continue;
        }
        match load_isp_db(&slot, &path) {
            Ok(()) => reloaded(true),
            Err(e) => {
                warn!(error = %e, "ISP database not reloaded; keeping the one in force");
                reloaded(false);
                failed = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A test database (`scripts/make-test-mmdb.py` wrote them).
    pub(crate) fn data(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_asn_stored_in_a_narrower_type_is_read_too() {
        let db = IspDb::open(&data("asn-b.mmdb")).unwrap();
        assert_eq!(db.asn(ip("127.21.0.1")), Some(4134));
    }

    #[test]
    fn an_asn_database_names_the_asn_of_v4_v6_and_mapped_addresses() {
        let db = IspDb::open(&data("asn-a.mmdb")).unwrap();
        assert_eq!(db.database_type(), "GeoLite2-ASN");
        assert_eq!(db.asn(ip("127.20.9.9")), Some(4134));
        assert_eq!(db.asn(ip("127.21.0.1")), Some(9808));
        assert_eq!(db.asn(ip("::ffff:127.21.0.1")), Some(9808), "IPv4-mapped");
        assert_eq!(db.asn(ip("2001:db8:21::5")), Some(9808));
        assert_eq!(db.asn(ip("127.22.0.1")), None, "not in the database");
        assert_eq!(db.asn(ip("2001:db8:99::1")), None);
    }

    #[test]
    fn a_file_that_is_not_an_asn_database_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.mmdb");
        std::fs::write(&junk, b"not a database at all").unwrap();
        let e = IspDb::open(&junk).unwrap_err().to_string();
        assert!(e.contains("not a MaxMind-format database"), "{e}");
        // A valid file cut short: refused, not read past its end.
        let whole = std::fs::read(data("asn-a.mmdb")).unwrap();
        std::fs::write(&junk, &whole[..whole.len() / 2]).unwrap();
        assert!(IspDb::open(&junk).is_err());
        let e = IspDb::open(&dir.path().join("absent"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("absent"), "{e}");
        let e = IspDb::open_within(&data("asn-a.mmdb"), 100)
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than the 100"), "{e}");
    }

    /// The database follows its file: a new file is in force within a few checks; a
    /// broken one is refused once, and the one in force stays.
    #[tokio::test(start_paused = true)]
    async fn the_database_follows_its_file_and_keeps_the_last_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("asn.mmdb");
        std::fs::copy(data("asn-a.mmdb"), &path).unwrap();
        let slot = IspDbSlot::default();
        slot.store(Some(Arc::new(IspDb::open(&path).unwrap())));
        let (applied, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(follow_isp_db(
            slot.clone(),
            {
                let path = path.clone();
                move || Some(path.clone())
            },
            Duration::from_millis(50),
            cancel.clone(),
            {
                let (a, r) = (applied.clone(), refused.clone());
                move |ok| {
                    if ok { &a } else { &r }.fetch_add(1, Ordering::Relaxed);
                }
            },
        ));
        let asn = |s: &IspDbSlot| s.load().as_ref().and_then(|db| db.asn(ip("127.21.0.1")));
        assert_eq!(asn(&slot), Some(9808));
        // A new file (written aside, then renamed over: as a downloader does).
        let next = dir.path().join("next.mmdb");
        std::fs::copy(data("asn-b.mmdb"), &next).unwrap();
        std::fs::rename(&next, &path).unwrap();
        let mut checks = 0;
        while asn(&slot) != Some(4134) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            checks += 1;
            assert!(
                checks < 4,
                "the new database was not in force after {checks} checks"
            );
        }
        assert_eq!(applied.load(Ordering::Relaxed), 1);
        // A broken file: refused once, not again and again; the database stays.
        std::fs::write(&path, b"garbage").unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(refused.load(Ordering::Relaxed), 1);
        assert_eq!(asn(&slot), Some(4134));
        cancel.cancel();
        task.await.unwrap();
    }
}
