//! `--blocklist-file PATH`: the routers' block list (`P/blocklist/`) kept in a file for
//! the gateway, so one list serves routers and gateways: a gateway refuses a listed
//! address at `accept`.
//!
//! The file holds one network per line (CIDR), entries in force only, sorted, after a
//! `#` comment line; it is replaced atomically (a private temporary file in the same
//! directory, synced, renamed over the old one, the directory synced), so a gateway
//! reading it at any moment sees a whole list. It is rewritten when the list changes and
//! when an entry expires. Until the first full listing the file is left as it is.
//!
//! A gateway written in Rust reads it with [`BlockFile`]: ask [`BlockFile::refuses`]
//! right after `accept` and close the connection when it says so. Gateways in other
//! languages read the same format: skip `#` lines, one CIDR per line, reread when the
//! file is replaced (its inode changes on every write).

use std::collections::BTreeSet;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use registry::blocklist::BlockEntry;
use registry::follow_map::{follow_map, MapView};
use registry::{Kv, Layout};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The file's first line.
const HEADER: &str = "# gateway-router block list (P/blocklist/): one network per line\n";

/// The file's text for `view` at wall-clock `now_ms`, and when the first entry in it
/// expires. Entries that do not parse are left out.
pub fn render(view: &MapView, now_ms: u64) -> (String, Option<u64>) {
    let mut nets = BTreeSet::new();
    let mut next: Option<u64> = None;
    for value in view.entries.values() {
        let Ok(e) = BlockEntry::parse(value) else {
            continue;
        };
        if !e.in_force(now_ms) {
            continue;
        }
        if e.expires_ms != 0 {
            next = Some(next.map_or(e.expires_ms, |n| n.min(e.expires_ms)));
        }
        nets.insert(e.cidr.trunc());
    }
    let mut text = String::from(HEADER);
    for n in nets {
        text.push_str(&n.to_string());
        text.push('\n');
    }
    (text, next)
}

/// The networks of a block-list file (what a gateway reads); a line that is not a
/// network (or is an IPv4-mapped one, which no client matches) is skipped.
pub fn parse(text: &str) -> Vec<IpNet> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.parse().ok())
        .filter(|n| registry::net::check_canonical(n).is_ok())
        .collect()
}

/// True when `ip` is inside one of `nets`.
pub fn covers(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    nets.iter().any(|n| n.contains(&ip))
}

/// A gateway's copy of the block list: the networks in the file at `path`, reread when
/// the file is replaced, looked at no more often than every `recheck` (one `stat`), so
/// a storm of accepts costs no file reads.
///
/// A file that is missing or unreadable refuses nobody and keeps the last list read
/// (the agent writes it; until it has, nothing is known to be blocked).
pub struct BlockFile {
    path: PathBuf,
    recheck: Duration,
    checked: Option<std::time::Instant>,
    /// (inode, length, modified) of the file last read.
    stamp: Option<(u64, u64, std::time::SystemTime)>,
    nets: Vec<IpNet>,
}

impl BlockFile {
    /// The list at `path`, rechecked at most every 100 ms.
    pub fn new(path: impl Into<PathBuf>) -> BlockFile {
        BlockFile::with_recheck(path, Duration::from_millis(100))
    }

    /// The list at `path`, rechecked at most every `recheck`.
    pub fn with_recheck(path: impl Into<PathBuf>, recheck: Duration) -> BlockFile {
        BlockFile {
            path: path.into(),
            recheck,
            checked: None,
            stamp: None,
            nets: Vec::new(),
        }
    }

    /// True when the connection from `peer` must be closed at `accept`.
    pub fn refuses(&mut self, peer: IpAddr) -> bool {
        self.refresh();
        covers(&self.nets, peer)
    }

    /// The networks in force as last read.
    pub fn networks(&self) -> &[IpNet] {
        &self.nets
    }

    /// Rereads the file when its recheck time has come and it was replaced.
    pub fn refresh(&mut self) {
        let now = std::time::Instant::now();
        if self
            .checked
            .is_some_and(|t| now.duration_since(t) < self.recheck)
        {
            return;
        }
        self.checked = Some(now);
        let Ok(meta) = std::fs::metadata(&self.path) else {
            return;
        };
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let inode = 0;
        let stamp = (
            inode,
            meta.len(),
            meta.modified().ok().unwrap_or(std::time::UNIX_EPOCH),
        );
        if self.stamp == Some(stamp) {
            return;
        }
        if let Ok(text) = std::fs::read_to_string(&self.path) {
            self.nets = parse(&text);
            self.stamp = Some(stamp);
        }
    }
}

/// Replaces `path` with `text` atomically (readable by the gateway: 0644).
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    write_atomic_mode(path, text.as_bytes(), 0o644)
}

/// Replaces `path` with `bytes` atomically, with permissions `mode`: a temporary file
/// in the same directory, synced, renamed over `path`, and the directory synced.
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".gateway-agent")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Keeps `path` equal to the block list of `kv` until `cancel`.
pub async fn run(kv: Arc<dyn Kv>, layout: Layout, path: PathBuf, cancel: CancellationToken) {
    let (mut views, follower) = follow_map(kv, layout.blocklist_prefix(), cancel.clone());
    let mut written: Option<String> = None;
    let mut failing = false;
    loop {
        let view = views.borrow_and_update().clone();
        let mut wake = Duration::from_secs(3600);
        if view.loaded {
            let now = registry::now_ms();
            let (text, next) = render(&view, now);
            if let Some(t) = next {
                wake = Duration::from_millis(t.saturating_sub(now).max(1));
            }
            if written.as_deref() != Some(text.as_str()) {
                match write_atomic(&path, &text) {
                    Ok(()) => {
                        let n = text.lines().count() - 1;
                        info!(path = %path.display(), networks = n, "block list written");
                        written = Some(text);
                        failing = false;
                    }
                    Err(e) => {
                        if !failing {
                            warn!(path = %path.display(), error = %e, "cannot write the block list");
                        }
                        failing = true;
                        wake = wake.min(Duration::from_secs(1));
                    }
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            r = views.changed() => if r.is_err() { break },
            _ = tokio::time::sleep(wake) => {}
        }
    }
    let _ = follower.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use registry::imbl::OrdMap;

    fn view(entries: &[(&str, &str)]) -> MapView {
        let mut m = OrdMap::new();
        for (k, v) in entries {
            m.insert(Arc::from(*k), Arc::from(v.as_bytes()));
        }
        MapView {
            entries: m,
            loaded: true,
            ..MapView::default()
        }
    }

    #[test]
    fn the_file_lists_networks_in_force() {
        let v = view(&[
            ("a", r#"{"cidr": "198.51.100.7/24", "reason": "x"}"#),
            (
                "b",
                r#"{"cidr": "2001:db8::/32", "reason": "y", "expires_ms": 100}"#,
            ),
            (
                "c",
                r#"{"cidr": "192.0.2.0/24", "reason": "z", "expires_ms": 10}"#,
            ),
            ("d", r#"not json"#),
        ]);
        let (text, next) = render(&v, 50);
        assert_eq!(text, format!("{HEADER}198.51.100.0/24\n2001:db8::/32\n"));
        assert_eq!(next, Some(100));
        let nets = parse(&text);
        assert!(covers(&nets, "198.51.100.200".parse().unwrap()));
        assert!(covers(&nets, "::ffff:198.51.100.1".parse().unwrap()));
        assert!(!covers(&nets, "192.0.2.1".parse().unwrap()), "expired");
    }

    #[test]
    fn a_gateway_rereads_the_file_when_it_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blocked.txt");
        let mut file = BlockFile::with_recheck(&path, Duration::ZERO);
        let ip: IpAddr = "198.51.100.9".parse().unwrap();
        assert!(!file.refuses(ip), "no file yet: nobody refused");
        write_atomic(&path, &format!("{HEADER}198.51.100.0/24\n")).unwrap();
        assert!(file.refuses(ip));
        assert!(file.refuses("::ffff:198.51.100.1".parse().unwrap()));
        assert!(!file.refuses("192.0.2.1".parse().unwrap()));
        write_atomic(&path, HEADER).unwrap();
        assert!(!file.refuses(ip), "unblocked once the file is replaced");
        std::fs::remove_file(&path).unwrap();
        assert!(!file.refuses(ip), "a missing file keeps the last list");
        let mut slow = BlockFile::with_recheck(&path, Duration::from_secs(3600));
        write_atomic(&path, &format!("{HEADER}198.51.100.0/24\n")).unwrap();
        assert!(slow.refuses(ip), "the first look reads the file");
        write_atomic(&path, HEADER).unwrap();
        assert!(slow.refuses(ip), "not looked at again before its recheck");
        assert_eq!(slow.networks().len(), 1);
    }

    #[test]
    fn the_file_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blocked.txt");
        write_atomic(&path, "one\n").unwrap();
        write_atomic(&path, "two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left behind");
    }

    #[tokio::test]
    async fn the_file_follows_the_store() {
        let kv: Arc<dyn Kv> = registry::memory::MemoryKv::new();
        let layout = Layout::default();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blocked.txt");
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(
            kv.clone(),
            layout.clone(),
            path.clone(),
            cancel.clone(),
        ));
        let read = || std::fs::read_to_string(&path).unwrap_or_default();
        let wait = |want: &'static str| {
            let read = &read;
            async move {
                tokio::time::timeout(Duration::from_secs(10), async {
                    while !read().contains(want) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
                .await
                .unwrap_or_else(|_| panic!("{want} never written: {:?}", read()));
            }
        };
        wait("# gateway-router").await;
        kv.put(
            &layout.blocklist_key("198.51.100.0_24"),
            br#"{"cidr": "198.51.100.0/24", "reason": "x"}"#.to_vec(),
            None,
        )
        .await
        .unwrap();
        wait("198.51.100.0/24").await;
        kv.delete(&layout.blocklist_key("198.51.100.0_24"))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            while read().contains("198.51.100.0/24") {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the entry leaves the file");
        cancel.cancel();
        task.await.unwrap();
    }
}
