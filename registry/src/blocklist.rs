//! Block-list entries (`P/blocklist/{key}`): client networks every router refuses, and
//! every gateway that keeps the list in a file (`gateway-agent --blocklist-file`).
//!
//! ```json
//! {"cidr": "198.51.100.0/24", "reason": "scraper", "expires_ms": 0, "by": "alice", "at_ms": 1763700000000}
//! ```
//!
//! `expires_ms` 0 means until removed. The key is the network itself, written with `_`
//! for `/` ([`BlockEntry::key_for`]), so blocking a network twice replaces the entry.
//! Whoever can write the prefix decides who is refused, so the value is checked like
//! any other stored value: a bounded reason and author, a real network, no
//! surprises. An entry that does not parse is ignored (and reported) by its readers.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::record::{invalid, RecordError};

/// The longest `reason` accepted.
pub const MAX_REASON: usize = 256;
/// The longest `by` accepted.
pub const MAX_BY: usize = 128;
/// The shortest IPv4 prefix an entry may block (a /8 at most), so one mistyped entry
/// cannot refuse the whole internet.
pub const MIN_V4_PREFIX: u8 = 8;
/// The shortest IPv6 prefix an entry may block.
pub const MIN_V6_PREFIX: u8 = 16;

/// One blocked network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockEntry {
    /// The network refused; host bits are ignored.
    pub cidr: IpNet,
    /// Why, for whoever reads the list.
    pub reason: String,
    /// Wall-clock milliseconds when the entry stops counting; 0: until removed.
    #[serde(default)]
    pub expires_ms: u64,
    /// Who added it (an operator's name, or `auto:ROUTER` for a router's own).
    #[serde(default)]
    pub by: String,
    /// Wall-clock milliseconds when it was added.
    #[serde(default)]
    pub at_ms: u64,
}

/// Checks a text field: at most `max` bytes, no control characters.
fn text(field: &'static str, s: &str, max: usize) -> Result<(), RecordError> {
    if s.len() > max {
        return Err(invalid(field, format!("{} bytes; at most {max}", s.len())));
    }
    if s.chars().any(char::is_control) {
        return Err(invalid(field, "holds a control character"));
    }
    Ok(())
}

impl BlockEntry {
    /// Parses and validates a stored value.
    pub fn parse(value: &[u8]) -> Result<BlockEntry, RecordError> {
        crate::record::parse_checked(value, BlockEntry::validate)
    }

    /// Checks the rules serde's types do not: a network no wider than
    /// [`MIN_V4_PREFIX`] / [`MIN_V6_PREFIX`], a non-empty bounded reason, a bounded
    /// author.
    pub fn validate(&self) -> Result<(), RecordError> {
        let (len, min) = match self.cidr {
            IpNet::V4(n) => (n.prefix_len(), MIN_V4_PREFIX),
            IpNet::V6(n) => (n.prefix_len(), MIN_V6_PREFIX),
        };
        if len < min {
            return Err(invalid(
                "cidr",
                format!("/{len} is wider than the widest allowed (/{min})"),
            ));
        }
        crate::net::check_canonical(&self.cidr).map_err(|e| invalid("cidr", e.to_string()))?;
        if self.reason.trim().is_empty() {
            return Err(invalid("reason", "must not be empty"));
        }
        text("reason", &self.reason, MAX_REASON)?;
        text("by", &self.by, MAX_BY)?;
        Ok(())
    }

    /// Serializes the entry as stored.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a BlockEntry always serializes")
    }

    /// True while the entry counts at wall-clock `now_ms`.
    pub fn in_force(&self, now_ms: u64) -> bool {
        self.expires_ms == 0 || now_ms < self.expires_ms
    }

    /// True when `ip` is inside the blocked network.
    pub fn covers(&self, ip: IpAddr) -> bool {
        self.cidr.trunc().contains(&ip.to_canonical())
    }

    /// The key suffix under `P/blocklist/` for `cidr`: the network with host bits
    /// cleared, `/` written as `_` (`198.51.100.0_24`), so one network has one key.
    pub fn key_for(cidr: &IpNet) -> String {
        let n = cidr.trunc();
        format!("{}_{}", n.addr(), n.prefix_len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_and_are_checked() {
        let e = BlockEntry::parse(
            br#"{"cidr": "198.51.100.7/24", "reason": "scraper", "expires_ms": 5, "by": "alice"}"#,
        )
        .unwrap();
        assert!(e.covers("198.51.100.200".parse().unwrap()));
        assert!(
            e.covers("::ffff:198.51.100.1".parse().unwrap()),
            "IPv4-mapped"
        );
        assert!(!e.covers("198.51.101.1".parse().unwrap()));
        assert_eq!(BlockEntry::key_for(&e.cidr), "198.51.100.0_24");
        assert!(e.in_force(4) && !e.in_force(5));
        assert_eq!(BlockEntry::parse(&e.to_json()).unwrap(), e);
        let v6: IpNet = "2001:db8:1::/48".parse().unwrap();
        assert_eq!(BlockEntry::key_for(&v6), "2001:db8:1::_48");
        for (bad, field) in [
            (r#"{"cidr": "0.0.0.0/0", "reason": "all"}"#, "cidr"),
            (r#"{"cidr": "::/8", "reason": "all"}"#, "cidr"),
            (r#"{"cidr": "::ffff:10.0.0.0/104", "reason": "x"}"#, "cidr"),
            (r#"{"cidr": "10.0.0.0/8", "reason": " "}"#, "reason"),
            (
                r#"{"cidr": "10.0.0.0/8", "reason": "a\u001b[2Jb"}"#,
                "reason",
            ),
        ] {
            match BlockEntry::parse(bad.as_bytes()) {
                Err(RecordError::Invalid { field: f, .. }) => assert_eq!(f, field, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(matches!(
            BlockEntry::parse(br#"{"cidr": "nonsense", "reason": "x"}"#),
            Err(RecordError::Json(_))
        ));
        assert!(matches!(
            BlockEntry::parse(br#"{"cidr": "10.0.0.0/8", "reason": "x", "extra": 1}"#),
            Err(RecordError::Json(_))
        ));
        let long = format!(
            r#"{{"cidr": "10.0.0.0/8", "reason": "{}"}}"#,
            "x".repeat(300)
        );
        assert!(BlockEntry::parse(long.as_bytes()).is_err());
    }
}
