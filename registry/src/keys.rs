//! Key layout: `P/nodes/{id}`, `P/commands/{id}` and the rest, under a configurable prefix.

use crate::record::{validate_id, RecordError};

/// The contract's default prefix.
pub const DEFAULT_PREFIX: &str = "/gateway-router/v1";

/// Keys under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    prefix: String,
}

impl Default for Layout {
    fn default() -> Self {
        Layout::new(DEFAULT_PREFIX)
    }
}

impl Layout {
    /// A layout under `prefix`; a trailing `/` is ignored.
    pub fn new(prefix: &str) -> Layout {
        Layout {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    /// The prefix, without a trailing slash.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `P/nodes/`: every node record lives below it.
    pub fn nodes_prefix(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    /// `P/nodes/{id}`.
    pub fn node_key(&self, id: &str) -> String {
        format!("{}/nodes/{id}", self.prefix)
    }

    /// `P/routers/`: one key per live router, under its lease (an extension of the
    /// contract's layout; routers count each other through it).
    pub fn routers_prefix(&self) -> String {
        format!("{}/routers/", self.prefix())
    }

    /// `P/routers/{id}`.
    pub fn router_key(&self, id: &str) -> String {
        format!("{}/routers/{id}", self.prefix())
    }

    /// `P/outcomes/`: each router's window of its clients' connect outcomes, shared
    /// with the other routers (an extension of the contract's layout; the router's
    /// `feedback` module writes and reads it).
    pub fn outcomes_prefix(&self) -> String {
        format!("{}/outcomes/", self.prefix)
    }

    /// `P/outcomes/{router id}`.
    pub fn outcome_key(&self, router: &str) -> String {
        format!("{}/outcomes/{router}", self.prefix)
    }

    /// `P/commands/`.
    pub fn commands_prefix(&self) -> String {
        format!("{}/commands/", self.prefix)
    }

    /// `P/commands/{id}`.
    pub fn command_key(&self, id: &str) -> String {
        format!("{}/commands/{id}", self.prefix)
    }

    /// `P/applied/`: one key per node, without a lease, holding what its agent last
    /// applied and how its hook delivery went (an extension of the contract's layout:
    /// it outlives the node's record, so a restarted agent never runs a command twice).
    pub fn applied_prefix(&self) -> String {
        format!("{}/applied/", self.prefix)
    }

    /// `P/applied/{id}`.
    pub fn applied_key(&self, id: &str) -> String {
        format!("{}/applied/{id}", self.prefix)
    }

    /// `P/bindings/`: operator-owned limits on what each node's record may claim (an
    /// extension of the contract's layout, see [`crate::binding`]).
    pub fn bindings_prefix(&self) -> String {
        format!("{}/bindings/", self.prefix)
    }

    /// `P/bindings/{id}`.
    pub fn binding_key(&self, id: &str) -> String {
        format!("{}/bindings/{id}", self.prefix)
    }

    /// `P/audit/`: the audit trail (see [`crate::audit`]), written by operators and the
    /// routers' admin API.
    pub fn audit_prefix(&self) -> String {
        format!("{}/audit/", self.prefix)
    }

    /// `P/audit/{suffix}`.
    pub fn audit_key(&self, suffix: &str) -> String {
        format!("{}/audit/{suffix}", self.prefix)
    }

    /// `P/policy/`: operator policy (see [`crate::policy`]), written by operators.
    pub fn policy_prefix(&self) -> String {
        format!("{}/policy/", self.prefix)
    }

    /// `P/policy/{name}`.
    pub fn policy_key(&self, name: &str) -> String {
        format!("{}/policy/{name}", self.prefix)
    }

    /// `P/blocklist/`: client networks the routers refuse, written by operators.
    pub fn blocklist_prefix(&self) -> String {
        format!("{}/blocklist/", self.prefix)
    }

    /// `P/blocklist/{key}`.
    pub fn blocklist_key(&self, key: &str) -> String {
        format!("{}/blocklist/{key}", self.prefix)
    }

    /// The node id of a key below [`Layout::nodes_prefix`], if it is a valid id.
    pub fn node_id<'a>(&self, key: &'a str) -> Result<&'a str, RecordError> {
        let id = key
            .strip_prefix(self.prefix.as_str())
            .and_then(|k| k.strip_prefix("/nodes/"))
            .ok_or_else(|| RecordError::Invalid {
                field: "key",
                reason: format!("{key:?} is not below {}", self.nodes_prefix()),
            })?;
        validate_id(id)?;
        Ok(id)
    }
}

/// Why a key prefix given on a command line or in a file is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// The prefix is relative.
    #[error("prefix {0:?} must start with '/'")]
    NotAbsolute(String),
    /// The prefix has `//`, whitespace or a control character.
    #[error("prefix {0:?} has an empty segment or whitespace")]
    Malformed(String),
}

/// Validates a prefix given on a command line: absolute, no empty segments.
pub fn validate_prefix(prefix: &str) -> Result<(), PrefixError> {
    let trimmed = prefix.trim_end_matches('/');
    if !trimmed.starts_with('/') {
        return Err(PrefixError::NotAbsolute(prefix.to_string()));
    }
    if trimmed.contains("//") || trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(PrefixError::Malformed(prefix.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let l = Layout::new("/gw/");
        assert_eq!(l.node_key("a"), "/gw/nodes/a");
        assert_eq!(l.command_key("a"), "/gw/commands/a");
        assert_eq!(l.binding_key("a"), "/gw/bindings/a");
        assert!(l.binding_key("a").starts_with(&l.bindings_prefix()));
        assert_eq!(l.blocklist_key("k"), "/gw/blocklist/k");
        assert!(l.policy_key("k").starts_with(&l.policy_prefix()));
        assert!(l.blocklist_key("k").starts_with(&l.blocklist_prefix()));
        assert_eq!(l.node_id("/gw/nodes/a.b-c_1").unwrap(), "a.b-c_1");
        assert!(l.node_id("/gw/nodes/a/b").is_err());
        assert!(l.node_id("/other/nodes/a").is_err());
        assert_eq!(
            Layout::default().nodes_prefix(),
            "/gateway-router/v1/nodes/"
        );
        assert!(validate_prefix("/a/b").is_ok());
        assert_eq!(
            validate_prefix("a").unwrap_err().to_string(),
            "prefix \"a\" must start with '/'"
        );
        assert_eq!(
            validate_prefix("/a//b").unwrap_err().to_string(),
            "prefix \"/a//b\" has an empty segment or whitespace"
        );
    }
}
