//! Files the SDK keeps on disk (the gateway cache file, the HTTPDNS answers file):
//! written atomically through a private temporary file, read back bounded in size,
//! stamped with the wall clock.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::limits::MAX_FILE_BYTES;

/// Writes `bytes` to `path` so a reader sees the old or the new file, never a part:
/// a new temporary file beside it, under a name no one can guess, created exclusively
/// (`O_EXCL`: a symlink or file planted at that name is never opened) and readable by
/// this user only (mode 0600 on Unix), synced, renamed over `path` (which replaces a
/// symlink there, never writes through it), then the directory synced so the rename
/// survives a crash.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomically_with(path, bytes, rand::random::<u64>)
}

/// [`write_atomically`] drawing the temporary names' random part from `draw`.
fn write_atomically_with(path: &Path, bytes: &[u8], draw: impl FnMut() -> u64) -> io::Result<()> {
    // A path without a file name ("/", "..") fails at the rename, and the temporary
    // file is removed.
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let (tmp, mut file) = create_private(dir, &name, draw)?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| {
            drop(file);
            std::fs::rename(&tmp, path)
        });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir);
    Ok(())
}

/// A new file `.{name}.{random}.tmp` in `dir`, created exclusively with mode 0600: an
/// existing entry at a drawn name (a planted symlink included) is passed over, never
/// opened.
fn create_private(
    dir: &Path,
    name: &str,
    mut draw: impl FnMut() -> u64,
) -> io::Result<(PathBuf, File)> {
    let mut tries = 0;
    loop {
        let tmp = dir.join(format!(".{name}.{:016x}.tmp", draw()));
        let mut open = OpenOptions::new();
        open.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
        match open.open(&tmp) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 7 => tries += 1,
            opened => return opened.map(|f| (tmp, f)),
        }
    }
}

/// Syncs a directory, so a rename in it is on disk (Unix; elsewhere a no-op). A
/// failure is ignored: the file itself is whole either way.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    let _ = File::open(dir).and_then(|d| d.sync_all());
    #[cfg(not(unix))]
    let _ = dir;
}

/// The bytes of the file at `path`, when it is a regular file of at most
/// [`MAX_FILE_BYTES`] (1 MiB); anything else is an error, never read (a FIFO or
/// `/dev/zero` planted there, a file grown without bound).
pub(crate) fn read_bounded(path: &Path) -> io::Result<Vec<u8>> {
    let meta = std::fs::metadata(path)?;
    let why = if !meta.is_file() {
        "not a regular file"
    } else if meta.len() > MAX_FILE_BYTES {
        "larger than 1 MiB"
    } else {
        return std::fs::read(path);
    };
    Err(io::Error::new(io::ErrorKind::InvalidData, why))
}

/// Milliseconds since the Unix epoch by the wall clock (0 before it).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn cache_files_are_private_and_never_written_through_a_planted_symlink() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let path = dir.path().join("gateways.json");

        // The name the old code wrote through (`gateways.tmp.PID`), and the first
        // temporary name this write will draw: both planted, neither followed.
        symlink(
            &victim,
            path.with_extension(format!("tmp.{}", std::process::id())),
        )
        .unwrap();
        let first = dir.path().join(format!(".gateways.json.{:016x}.tmp", 7));
        symlink(&victim, &first).unwrap();
        let mut draws = [7u64, 8].into_iter();
        write_atomically_with(&path, b"one", || draws.next().unwrap()).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(
            std::fs::symlink_metadata(&first)
                .unwrap()
                .file_type()
                .is_symlink(),
            "the planted link is left alone"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
        assert!(
            !dir.path()
                .join(format!(".gateways.json.{:016x}.tmp", 8))
                .exists(),
            "the temporary file was renamed"
        );

        // A symlink planted at the target itself is replaced, not written through.
        std::fs::remove_file(&path).unwrap();
        symlink(&victim, &path).unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_file());
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");

        // A file that was world-readable is replaced by a private one.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_atomically(&path, b"three").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");

        // Every drawn name taken: an error, and nothing written anywhere.
        let err = write_atomically_with(&path, b"four", || 7).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"three");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tmp") && !n.contains(&format!("{:016x}", 7)))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }
}
