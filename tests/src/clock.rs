//! Clocks off by a chosen offset, through libfaketime (Debian's `faketime`), set on the
//! process itself rather than through the `faketime` wrapper, which would stand between
//! a test and the process it signals.

use std::path::Path;

/// The environment that puts a process's clocks `offset_secs` seconds off (`+` ahead,
/// `-` behind). A missing libfaketime fails the test with how to install it.
pub fn clock_off(offset_secs: i64) -> Vec<(&'static str, String)> {
    let lib = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .unwrap_or_else(|| {
        panic!("libfaketime is missing: apt-get install faketime (scripts/deps.sh --test does)")
    });
    vec![
        ("LD_PRELOAD", lib.to_string()),
        ("FAKETIME", format!("{offset_secs:+}")),
    ]
}
