//! Names and ids in records: node ids, region, zone and ISP names, free text and DNS
//! host names, with the contract's length limits.

use super::{invalid, RecordError};

/// True for the characters of node ids and region names, `A-Z a-z 0-9 . _ -`: names
/// made of them need no escaping in keys, query strings or JSON.
pub fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Checks a node id against `[A-Za-z0-9._-]{1,64}`.
pub fn validate_id(id: &str) -> Result<(), RecordError> {
    if id.is_empty() || id.len() > 64 {
        return Err(invalid("id", format!("length {} is not 1-64", id.len())));
    }
    if let Some(c) = id.chars().find(|c| !is_name_char(*c)) {
        return Err(invalid(
            "id",
            format!("character {c:?} is not one of A-Z a-z 0-9 . _ -"),
        ));
    }
    Ok(())
}

/// The longest region, zone or ISP name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// The longest command id (and so `applied_command` and a hook's `command`), in bytes.
pub const MAX_COMMAND_ID: usize = 128;
/// The most labels a record carries.
pub const MAX_LABELS: usize = 32;
/// The longest label key, in bytes.
pub const MAX_LABEL_KEY: usize = 64;
/// The longest label value, in bytes.
pub const MAX_LABEL_VALUE: usize = 256;
/// The longest hook error message, in bytes.
pub const MAX_HOOK_ERROR: usize = 512;

/// Checks a region, zone or ISP name: 1-64 bytes of [`is_name_char`].
pub fn validate_name(field: &'static str, name: &str) -> Result<(), RecordError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(invalid(
            field,
            format!("length {} is not 1-{MAX_NAME_LEN}", name.len()),
        ));
    }
    if let Some(c) = name.chars().find(|c| !is_name_char(*c)) {
        return Err(invalid(
            field,
            format!("character {c:?} is not one of A-Z a-z 0-9 . _ -"),
        ));
    }
    Ok(())
}

/// The ISP name that marks a node multi-line (BGP): it serves every ISP.
pub const MULTI_LINE: &str = "bgp";
/// What separates the ISPs of a node on several lines (`isp: "ctcc,cmcc"`).
pub const ISP_SEPARATOR: char = ',';
/// The most ISPs one record names.
pub const MAX_ISPS: usize = 8;

/// The ISPs a record's `isp` names: one, or several separated by commas.
pub fn isps_named(isp: &str) -> impl Iterator<Item = &str> {
    isp.split(ISP_SEPARATOR)
}

/// Checks a record's `isp`: one ISP name, or at most [`MAX_ISPS`] distinct ones
/// separated by commas (a node on several lines).
pub fn validate_isps(isp: &str) -> Result<(), RecordError> {
    let mut seen = Vec::new();
    for name in isps_named(isp) {
        validate_name("isp", name)?;
        if seen.contains(&name) {
            return Err(invalid("isp", format!("{name:?} is named twice")));
        }
        seen.push(name);
    }
    if seen.len() > MAX_ISPS {
        return Err(invalid(
            "isp",
            format!("{} ISPs; at most {MAX_ISPS}", seen.len()),
        ));
    }
    Ok(())
}

/// Checks a free-form string: at most `max` bytes, no control characters (they would
/// reach logs, terminals and pages).
pub(super) fn validate_text(
    field: &'static str,
    s: &str,
    min: usize,
    max: usize,
) -> Result<(), RecordError> {
    if s.len() < min || s.len() > max {
        return Err(invalid(
            field,
            format!("length {} is not {min}-{max}", s.len()),
        ));
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(invalid(field, format!("control character {c:?}")));
    }
    Ok(())
}

/// Cuts `s` to at most `max` bytes on a character boundary, control characters
/// replaced by spaces: how an agent fits an error message into its record.
pub fn clip_text(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

/// Why a name is not a DNS host name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostNameError {
    /// The whole name is empty or longer than 253 bytes.
    #[error("length {0} is not 1-253")]
    Length(usize),
    /// A label is empty or longer than 63 bytes.
    #[error("label {0:?} is not 1-63 characters")]
    LabelLength(String),
    /// A character other than a letter, a digit or a hyphen.
    #[error("character {0:?} is not a letter, digit or hyphen")]
    Character(char),
    /// A label starts or ends with a hyphen.
    #[error("label {0:?} starts or ends with a hyphen")]
    Hyphen(String),
}

/// Checks a DNS host name: at most 253 bytes, dot-separated labels of 1-63 letters,
/// digits and hyphens, no label starting or ending with a hyphen. A trailing dot (the
/// root) is not accepted: names in records and bindings are written without it.
pub fn validate_host_name(name: &str) -> Result<(), HostNameError> {
    if name.is_empty() || name.len() > 253 {
        return Err(HostNameError::Length(name.len()));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(HostNameError::LabelLength(label.to_string()));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(HostNameError::Character(c));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(HostNameError::Hyphen(label.to_string()));
        }
    }
    Ok(())
}
