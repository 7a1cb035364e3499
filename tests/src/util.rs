//! Small helpers the rest of the harness builds on: free loopback ports, polling with
//! a deadline instead of sleeping, finding programs on `PATH`, and running `ip` and other programs.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// A port that was free a moment ago on 127.0.0.1.
///
/// It is drawn at random from below the kernel's ephemeral range, so that the
/// thousands of outgoing connections other tests open at the same time can never take
/// it between this call and the bind of whoever asked for it (an etcd member, say).
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (lo, hi) = (10_000u16, ephemeral_low.max(10_001));
    for _ in 0..1000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let port = lo + (h.finish() % u64::from(hi - lo)) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes; panics naming `what`.
/// Returns how long it took.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The path of program `name` on `PATH`, if any.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// The path of `name` on PATH; a test that needs a missing tool fails, naming the
/// Debian `package` to install.
pub fn tool(name: &str, package: &str) -> PathBuf {
    which(name).unwrap_or_else(|| {
        panic!("`{name}` is needed: apt-get install {package} (scripts/deps.sh --test installs it)")
    })
}

/// What `program args`, which must run, wrote to its standard output.
pub fn stdout_of(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output();
    let out = out.unwrap_or_else(|e| panic!("run {program}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `ip args`, which must succeed.
pub(crate) fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}
