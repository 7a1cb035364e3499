//! Build script: the git commit (short) and the build date that `registry::build_info`
//! embeds for every binary's `--version`, start-up log line and `*_build_info` metric.
//! Without git (a source tarball) the commit is `unknown`; the build never fails on it.

use std::path::Path;
use std::process::Command;

/// `git ARGS`, trimmed, when git runs and answers.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// The civil date (year, month, day) of `days` since 1970-01-01 (H. Hinnant's
/// algorithm), so no date crate is needed at build time.
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rerun-if-env-changed=GATEWAY_BUILD_COMMIT");
    // A packager without the repository may say which commit it builds.
    let commit = std::env::var("GATEWAY_BUILD_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| git(&["rev-parse", "--short", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    // Built again when HEAD moves: HEAD itself (a checkout) and the branch it names (a
    // commit), where those files exist (in a worktree they live in the common dir).
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    let watched = [
        git(&["rev-parse", "--git-path", "HEAD"]),
        branch.and_then(|b| git(&["rev-parse", "--git-path", &b])),
    ];
    for path in watched.into_iter().flatten() {
        if Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    // Reproducible builds set SOURCE_DATE_EPOCH; otherwise today.
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        });
    let (y, m, d) = civil(secs.div_euclid(86_400));
    println!("cargo:rustc-env=GATEWAY_BUILD_COMMIT={commit}");
    println!("cargo:rustc-env=GATEWAY_BUILD_DATE={y:04}-{m:02}-{d:02}");
}
