//! Why a configuration file is refused: one line naming the key (or the line) and the
//! problem, printed by `main` before it exits 2.

use std::path::PathBuf;

/// A configuration file the router refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A key's value breaks its rule.
    #[error("config: {key}: {reason}")]
    Invalid {
        /// The key, as written in the file (`backoff.max_ms`, `dns.zone`).
        key: String,
        /// What is wrong with its value.
        reason: String,
    },
    /// The TOML does not parse, or a value has the wrong type, at a known line.
    #[error("config: line {line} `{text}`: {reason}")]
    Syntax {
        /// The line, from 1.
        line: usize,
        /// Its text, trimmed.
        text: String,
        /// The parser's message.
        reason: String,
    },
    /// The TOML does not parse, at no particular line.
    #[error("config: {reason}")]
    Unparsed {
        /// The parser's message.
        reason: String,
    },
    /// The file cannot be read.
    #[error("config: cannot read {}: {reason}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The system's reason.
        reason: String,
    },
    /// Any of the above, in file `path`.
    #[error("{error} ({})", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong in it.
        error: Box<ConfigError>,
    },
}

impl ConfigError {
    /// [`ConfigError::Invalid`] for `key`.
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}
