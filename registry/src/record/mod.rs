//! NodeRecord and Command: the JSON values stored in etcd, parsed and validated.
//!
//! Parsing is strict about what the contract requires and lenient about what it does
//! not: unknown fields are ignored (newer agents may add some), while a missing
//! required field, a wrong type or an out-of-range value makes the value invalid with a
//! reason a person can act on.

mod command;
mod names;
mod node;
mod ports;
#[cfg(test)]
mod tests;

pub use command::{Applied, Command, CommandAction, HookState, HookStatus};
pub use gateway_api::Proto;
pub use names::{
    clip_text, is_name_char, isps_named, validate_host_name, validate_id, validate_isps,
    validate_name, HostNameError, ISP_SEPARATOR, MAX_COMMAND_ID, MAX_HOOK_ERROR, MAX_ISPS,
    MAX_LABELS, MAX_LABEL_KEY, MAX_LABEL_VALUE, MAX_NAME_LEN, MULTI_LINE,
};
pub use node::{IpFamily, NodeRecord, NodeState};
pub use ports::Ports;

/// Why a stored value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The value is not JSON of the expected shape (missing field, wrong type).
    #[error("malformed JSON: {0}")]
    Json(String),
    /// The JSON is well-formed but a value breaks the contract.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// A stored JSON value of type `T`, checked by `validate`: what every reader of a
/// stored value does first.
pub fn parse_checked<T: serde::de::DeserializeOwned>(
    value: &[u8],
    validate: impl FnOnce(&T) -> Result<(), RecordError>,
) -> Result<T, RecordError> {
    let v: T = serde_json::from_slice(value).map_err(|e| RecordError::Json(e.to_string()))?;
    validate(&v)?;
    Ok(v)
}

/// The error for `field` breaking a rule, with the reason.
pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> RecordError {
    RecordError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// True when `value` is a JSON object (the first non-blank byte is `{`): serde's derive
/// would also read a struct from an array of its fields in order.
fn is_json_object(value: &[u8]) -> bool {
    value.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
