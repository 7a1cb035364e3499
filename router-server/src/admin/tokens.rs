//! The admin API's bearer tokens: `--admin-token` (named `admin-token`) and the
//! `name:token` lines of `--admin-token-file`, checked at start and compared in
//! constant time; a request is logged with the name of the token it presented.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use subtle::ConstantTimeEq;

/// The name given to the token of `--admin-token`.
pub const FLAG_TOKEN_NAME: &str = "admin-token";

/// Why a token, or a token file, is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token itself is unusable.
    #[error("the admin token {0}")]
    Token(String),
    /// The file cannot be read, or is readable by others.
    #[error("--admin-token-file {file}: {problem}")]
    File {
        /// The file.
        file: String,
        /// What is wrong.
        problem: String,
    },
    /// A line of the file is wrong.
    #[error("--admin-token-file {file}: line {line}: {problem}")]
    Line {
        /// The file.
        file: String,
        /// Its line number, from 1.
        line: usize,
        /// What is wrong.
        problem: String,
    },
}

/// One named token.
#[derive(Clone)]
struct Named {
    name: Arc<str>,
    secret: Box<[u8]>,
}

/// The admin tokens a router accepts; empty means the admin API is off.
#[derive(Clone, Default)]
pub struct Tokens(Arc<[Named]>);

impl fmt::Debug for Tokens {
    /// Names only: a secret never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|t| &*t.name))
            .finish()
    }
}

impl Tokens {
    /// The token of `--admin-token`, named [`FLAG_TOKEN_NAME`].
    pub fn flag(token: &str) -> Result<Tokens, TokenError> {
        crate::config::check_token(token).map_err(|e| TokenError::Token(e.to_string()))?;
        Ok(Tokens(Arc::from(vec![Named {
            name: Arc::from(FLAG_TOKEN_NAME),
            secret: token.as_bytes().into(),
        }])))
    }

    /// The tokens of a file's `text`: `name:token` lines; blank lines and lines
    /// starting with `#` are skipped. `file` names it in errors. A name is
    /// `[A-Za-z0-9._-]` (1-64), given once; a token follows [`crate::config::check_token`] and is given
    /// once; at least one line is required.
    pub fn parse(text: &str, file: &str) -> Result<Tokens, TokenError> {
        let mut out: Vec<Named> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |problem: String| TokenError::Line {
                file: file.to_string(),
                line: i + 1,
                problem,
            };
            let (name, token) = line
                .split_once(':')
                .ok_or_else(|| bad("not name:token".into()))?;
            let (name, token) = (name.trim(), token.trim());
            registry::record::validate_id(name)
                .map_err(|e| bad(format!("token name {name:?}: {e}")))?;
            crate::config::check_token(token)
                .map_err(|e| bad(format!("the token of {name} {e}")))?;
            if out.iter().any(|t| &*t.name == name) {
                return Err(bad(format!("the name {name} is given twice")));
            }
            if let Some(t) = out.iter().find(|t| &*t.secret == token.as_bytes()) {
                return Err(bad(format!(
                    "{name} has the same token as {}; each name needs its own",
                    t.name
                )));
            }
            out.push(Named {
                name: Arc::from(name),
                secret: token.as_bytes().into(),
            });
        }
        if out.is_empty() {
            return Err(TokenError::File {
                file: file.to_string(),
                problem: "no token in the file (one name:token a line)".into(),
            });
        }
        Ok(Tokens(out.into()))
    }

    /// Reads and parses `path`, which group and others must not be able to read.
    pub fn load(path: &Path) -> Result<Tokens, TokenError> {
        let file = path.display().to_string();
        let text = registry::security::read_secret(path).map_err(|problem| TokenError::File {
            file: file.clone(),
            problem: problem.to_string(),
        })?;
        Tokens::parse(&text, &file)
    }

    /// These tokens and `other`'s; a name or a token in both is refused.
    pub fn and(self, other: Tokens) -> Result<Tokens, TokenError> {
        let mut all: Vec<Named> = self.0.iter().cloned().collect();
        for t in other.0.iter() {
            if all.iter().any(|a| a.name == t.name || a.secret == t.secret) {
                return Err(TokenError::Token(format!(
                    "{} is given twice (by --admin-token and --admin-token-file)",
                    t.name
                )));
            }
            all.push(t.clone());
        }
        Ok(Tokens(all.into()))
    }

    /// True when there is no token (the admin API is off).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.0.iter().map(|t| &*t.name).collect()
    }

    /// The name of the token `presented` is, if any. Every token is compared, each in
    /// constant time, so the time taken says nothing of which one (or how much of
    /// one) matched.
    pub fn find(&self, presented: &[u8]) -> Option<Arc<str>> {
        let mut found = None;
        for t in self.0.iter() {
            if token_matches(presented, &t.secret) {
                found = Some(t.name.clone());
            }
        }
        found
    }
}

/// Compares in constant time. An empty configured token matches nothing: the
/// configuration refuses one, and this check does not rely on that.
pub(crate) fn token_matches(presented: &[u8], configured: &[u8]) -> bool {
    !configured.is_empty() && !presented.is_empty() && bool::from(presented.ct_eq(configured))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef";
    const B: &str = "fedcba9876543210-b";

    #[test]
    fn a_file_names_its_tokens() {
        let t = Tokens::parse(
            &format!("# operators\n\nalice:{A}\n  bob : {B}  \n"),
            "tokens",
        )
        .unwrap();
        assert_eq!(t.names(), ["alice", "bob"]);
        assert_eq!(t.find(A.as_bytes()).as_deref(), Some("alice"));
        assert_eq!(t.find(B.as_bytes()).as_deref(), Some("bob"));
        assert_eq!(t.find(b"0123456789abcde"), None);
        assert_eq!(t.find(b""), None);
        assert_eq!(
            format!("{t:?}"),
            r#"["alice", "bob"]"#,
            "no secret in Debug"
        );
    }

    #[test]
    fn bad_lines_are_named_with_their_number() {
        for (text, line, needle) in [
            (format!("alice {A}"), 1, "not name:token"),
            (format!("\n:{A}"), 2, "token name \"\""),
            (format!("al ice:{A}"), 1, "token name"),
            ("alice:short".to_string(), 1, "is 5 bytes; at least 16"),
            ("alice:".to_string(), 1, "is empty"),
            (format!("alice:{A} x"), 1, "one word"),
            (format!("alice:{A}\nalice:{B}"), 2, "alice is given twice"),
            (format!("alice:{A}\n#\nbob:{A}"), 3, "same token as alice"),
        ] {
            let e = Tokens::parse(&text, "/etc/t").unwrap_err();
            let msg = e.to_string();
            assert_eq!(
                e,
                TokenError::Line {
                    file: "/etc/t".into(),
                    line,
                    problem: match &e {
                        TokenError::Line { problem, .. } => problem.clone(),
                        _ => unreachable!(),
                    }
                },
                "{text:?}: {msg}"
            );
            assert!(msg.contains(needle), "{text:?}: {msg}");
            assert!(msg.starts_with("--admin-token-file /etc/t: line"), "{msg}");
            assert!(!msg.contains(A) && !msg.contains(B), "no secret in {msg}");
        }
        let e = Tokens::parse("# nothing\n\n", "/etc/t").unwrap_err();
        assert!(e.to_string().contains("no token in the file"), "{e}");
    }

    #[test]
    fn the_flag_token_must_be_long_enough() {
        assert!(Tokens::flag(A).is_ok());
        let e = Tokens::flag("s3cret").unwrap_err().to_string();
        assert!(e.contains("is 6 bytes; at least 16"), "{e}");
        assert!(Tokens::flag("  ")
            .unwrap_err()
            .to_string()
            .contains("empty"));
        let both = Tokens::flag(A)
            .unwrap()
            .and(Tokens::parse(&format!("bob:{B}"), "f").unwrap())
            .unwrap();
        assert_eq!(both.names(), [FLAG_TOKEN_NAME, "bob"]);
        let e = Tokens::flag(A)
            .unwrap()
            .and(Tokens::parse(&format!("bob:{A}"), "f").unwrap())
            .unwrap_err();
        assert!(e.to_string().contains("given twice"), "{e}");
    }

    #[test]
    fn an_empty_token_matches_nothing() {
        assert!(token_matches(b"s3cret", b"s3cret"));
        assert!(!token_matches(b"s3cre", b"s3cret"));
        assert!(!token_matches(b"", b""));
        assert!(!token_matches(b"x", b""));
    }
}
