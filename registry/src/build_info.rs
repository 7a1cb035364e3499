//! What a binary was built from: its crate version, the git commit and the build date,
//! in one place for `--version`, the start-up log line and the `*_build_info` metrics of
//! both binaries. The commit and date come from `build.rs`.

/// The short git commit the workspace was built from, or `unknown` without git.
pub const COMMIT: &str = env!("GATEWAY_BUILD_COMMIT");

/// The build date, `YYYY-MM-DD` (UTC; `SOURCE_DATE_EPOCH` when set).
pub const DATE: &str = env!("GATEWAY_BUILD_DATE");

/// A binary's version, commit and build date; [`build_info!`](crate::build_info!)
/// fills in the calling crate's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildInfo {
    /// The binary crate's version.
    pub version: &'static str,
    /// [`COMMIT`].
    pub commit: &'static str,
    /// [`DATE`].
    pub date: &'static str,
}

impl BuildInfo {
    /// The build of a crate of `version`.
    pub const fn of(version: &'static str) -> BuildInfo {
        BuildInfo {
            version,
            commit: COMMIT,
            date: DATE,
        }
    }

    /// `0.1.0 (commit 1a2b3c4, built 2026-12-06)`, for `--version` (clap wants a
    /// `'static` string: made once per call, at parse time).
    pub fn long_version(&self) -> &'static str {
        Box::leak(
            format!(
                "{} (commit {}, built {})",
                self.version, self.commit, self.date
            )
            .into_boxed_str(),
        )
    }

    /// The labels of a `*_build_info` metric: `version` and `commit`.
    pub fn labels(&self) -> Vec<(&'static str, &'static str)> {
        vec![("version", self.version), ("commit", self.commit)]
    }
}

/// The [`BuildInfo`] of the calling crate (its `CARGO_PKG_VERSION`).
#[macro_export]
macro_rules! build_info {
    () => {
        $crate::build_info::BuildInfo::of(env!("CARGO_PKG_VERSION"))
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_version_commit_and_date() {
        let info = crate::build_info!();
        assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
        assert!(!info.commit.is_empty());
        assert_eq!(info.date.len(), 10, "{}", info.date);
        assert_eq!(
            info.long_version(),
            format!(
                "{} (commit {}, built {})",
                info.version, info.commit, info.date
            )
        );
        assert_eq!(info.labels()[1], ("commit", info.commit));
    }
}
