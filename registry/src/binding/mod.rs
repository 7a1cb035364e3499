//! Node bindings: the operator-owned limits on what a node's record may claim.
//!
//! An agent writes its own record, and a compromised gateway host can write anything
//! there: a capacity that puts it first everywhere, another region, a victim's address,
//! a domain it holds a certificate for. `P/bindings/{id}`, written by operators only,
//! says what the node `{id}` may claim; the router judges every record against it and
//! treats a record outside its binding as invalid.
//!
//! ```json
//! {"ips": ["203.0.113.0/28", "2001:db8::/64"], "regions": ["cn-sh"],
//!  "isps": ["ctcc", "bgp"], "max_capacity": 1000000,
//!  "domain_suffixes": [".gw.example.com"]}
//! ```
//!
//! Every key is optional; a key left out leaves that claim unbound. An empty list is
//! refused rather than read as "anything" or "nothing": leave the key out instead.
//! Parsing is strict (unknown fields, oversized lists and strings are errors), as the
//! value is written by people and tools that should hear about a typo.

use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU64;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::record::{is_name_char, validate_host_name, HostNameError, NodeRecord};

/// The most entries in each list of a binding.
pub const MAX_LIST: usize = 64;
/// The longest string in a binding, in bytes (a DNS name's limit).
pub const MAX_STRING: usize = 253;
/// The longest region or ISP name, in bytes (as in node records).
pub const MAX_NAME: usize = 64;
/// The largest binding value, in bytes: more than the bounded lists can need.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Why a binding value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BindingError {
    /// The value is not a JSON object of the binding's shape (unknown field, wrong
    /// type, too large).
    #[error("malformed binding: {0}")]
    Json(String),
    /// The JSON is well-formed but a value is not acceptable.
    #[error("invalid binding {field}: {reason}")]
    Invalid {
        /// The offending key.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> BindingError {
    BindingError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// What a node's record may claim. `None` leaves a claim unbound.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Binding {
    /// Address ranges that must hold the record's `ip` and `ipv6`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ips: Option<Vec<IpNet>>,
    /// Regions the record may name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regions: Option<Vec<String>>,
    /// ISPs the record may name (a record naming none passes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub isps: Option<Vec<String>>,
    /// The largest `capacity` the record may claim (never 0: that would allow no
    /// record, and records claim at least 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_capacity: Option<NonZeroU64>,
    /// Domains the record's `domain` must fall under, each written with a leading dot
    /// (`.gw.example.com`), lower-case.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain_suffixes: Option<Vec<String>>,
}

/// The stored form, before its values are checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBinding {
    #[serde(default)]
    ips: Option<Vec<String>>,
    #[serde(default)]
    regions: Option<Vec<String>>,
    #[serde(default)]
    isps: Option<Vec<String>>,
    #[serde(default)]
    max_capacity: Option<u64>,
    #[serde(default)]
    domain_suffixes: Option<Vec<String>>,
}

/// Checks a list's length and each string's length; returns the list.
fn bounded_list(
    field: &'static str,
    list: Option<Vec<String>>,
) -> Result<Option<Vec<String>>, BindingError> {
    let Some(list) = list else { return Ok(None) };
    if list.is_empty() {
        return Err(invalid(
            field,
            "an empty list allows nothing; leave the key out to leave it unbound",
        ));
    }
    if list.len() > MAX_LIST {
        return Err(invalid(
            field,
            format!("{} entries, at most {MAX_LIST}", list.len()),
        ));
    }
    if let Some(s) = list.iter().find(|s| s.len() > MAX_STRING) {
        return Err(invalid(
            field,
            format!("an entry of {} bytes, at most {MAX_STRING}", s.len()),
        ));
    }
    Ok(Some(list))
}

/// Checks region and ISP names: the characters and length node records allow.
fn names(
    field: &'static str,
    list: Option<Vec<String>>,
) -> Result<Option<Vec<String>>, BindingError> {
    let list = bounded_list(field, list)?;
    for name in list.iter().flatten() {
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(invalid(
                field,
                format!("{name:?}: length {} is not 1-{MAX_NAME}", name.len()),
            ));
        }
        if let Some(c) = name.chars().find(|c| !is_name_char(*c)) {
            return Err(invalid(
                field,
                format!("{name:?}: character {c:?} is not one of A-Z a-z 0-9 . _ -"),
            ));
        }
    }
    Ok(list)
}

/// Why an entry of a binding's `ips` or `domain_suffixes` (or of `ctl bind`'s
/// `--ip` and `--domain-suffix`) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// Not a CIDR range.
    #[error("{0:?} is not a CIDR range such as 203.0.113.0/28 or 2001:db8::/64")]
    NotCidr(String),
    /// A range written in the IPv4-mapped form, which no client is compared with.
    #[error(transparent)]
    Mapped(#[from] crate::net::MappedNetwork),
    /// Not a host name after its leading dot.
    #[error("{suffix:?} is not a domain suffix: {source}")]
    NotSuffix {
        /// The suffix as written.
        suffix: String,
        /// What is wrong with the name.
        #[source]
        source: HostNameError,
    },
}

/// Parses one address range: a CIDR (`203.0.113.0/28`, `2001:db8::/64`).
pub fn parse_cidr(s: &str) -> Result<IpNet, EntryError> {
    let net = s
        .parse::<IpNet>()
        .map_err(|_| EntryError::NotCidr(s.to_string()))?;
    crate::net::check_canonical(&net)?;
    Ok(net)
}

/// Normalises a domain suffix: lower-case, one leading dot, a valid host name after it.
pub fn normalize_suffix(s: &str) -> Result<String, EntryError> {
    let bare = s.strip_prefix('.').unwrap_or(s).to_ascii_lowercase();
    validate_host_name(&bare).map_err(|source| EntryError::NotSuffix {
        suffix: s.to_string(),
        source,
    })?;
    Ok(format!(".{bare}"))
}

impl Binding {
    /// Parses and checks a stored value.
    pub fn parse(value: &[u8]) -> Result<Binding, BindingError> {
        if value.len() > MAX_VALUE_BYTES {
            return Err(BindingError::Json(format!(
                "{} bytes, at most {MAX_VALUE_BYTES}",
                value.len()
            )));
        }
        if value.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(BindingError::Json("a binding must be a JSON object".into()));
        }
        let raw: RawBinding =
            serde_json::from_slice(value).map_err(|e| BindingError::Json(e.to_string()))?;
        let ips = bounded_list("ips", raw.ips)?
            .map(|l| {
                l.iter()
                    .map(|s| parse_cidr(s).map_err(|e| invalid("ips", e.to_string())))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let regions = names("regions", raw.regions)?;
        let isps = names("isps", raw.isps)?;
        let max_capacity = raw
            .max_capacity
            .map(|max| {
                NonZeroU64::new(max).ok_or_else(|| {
                    invalid("max_capacity", "0 allows no record (capacity must be > 0)")
                })
            })
            .transpose()?;
        let domain_suffixes = bounded_list("domain_suffixes", raw.domain_suffixes)?
            .map(|l| {
                l.iter()
                    .map(|s| {
                        normalize_suffix(s).map_err(|e| invalid("domain_suffixes", e.to_string()))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        Ok(Binding {
            ips,
            regions,
            isps,
            max_capacity,
            domain_suffixes,
        })
    }

    /// Serializes for storage; [`Binding::parse`] reads it back unchanged.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a binding always serializes")
    }

    /// True when the binding binds nothing (every key left out).
    pub fn is_empty(&self) -> bool {
        *self == Binding::default()
    }

    /// Whether `record` stays inside this binding; the first claim outside it if not.
    pub fn check(&self, record: &NodeRecord) -> Result<(), Violation> {
        if let Some(ranges) = &self.ips {
            let addrs = std::iter::once(record.ip).chain(record.ipv6.map(IpAddr::V6));
            for addr in addrs {
                if !ranges.iter().any(|r| r.contains(&addr)) {
                    return Err(Violation::Ip {
                        addr,
                        allowed: ranges.clone(),
                    });
                }
            }
        }
        if let Some(regions) = &self.regions {
            if !regions.contains(&record.region) {
                return Err(Violation::Region {
                    region: record.region.clone(),
                    allowed: regions.clone(),
                });
            }
        }
        if let (Some(isps), Some(isp)) = (&self.isps, &record.isp) {
            // A node on several lines: each must be allowed.
            if let Some(bad) = crate::record::isps_named(isp).find(|i| !isps.iter().any(|a| a == i))
            {
                return Err(Violation::Isp {
                    isp: bad.to_string(),
                    allowed: isps.clone(),
                });
            }
        }
        if let Some(max) = self.max_capacity {
            if record.capacity > max.get() {
                return Err(Violation::Capacity {
                    capacity: record.capacity,
                    max: max.get(),
                });
            }
        }
        if let (Some(suffixes), Some(domain)) = (&self.domain_suffixes, &record.domain) {
            if !suffixes.iter().any(|s| domain_is_under(domain, s)) {
                return Err(Violation::Domain {
                    domain: domain.clone(),
                    allowed: suffixes.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Why a router refuses a well-formed record because of its node's binding, or the
/// lack of one: followers list it as the record's reason, `/ops` and tools say the
/// same.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// No binding for the node, and `require_bindings` is set.
    #[error("binding: none for this node and require_bindings is set")]
    Unbound,
    /// The node's binding at `key` does not parse.
    #[error("binding: {key} is broken, so the record is refused: {error}")]
    Broken {
        /// The binding's key.
        key: String,
        /// Why it does not parse.
        #[source]
        error: BindingError,
    },
    /// The record claims something outside its binding.
    #[error("binding: {0}")]
    Outside(#[from] Violation),
}

/// The reason given for a record refused because of `v`: routers and tools say the same.
pub fn refusal(v: &Violation) -> String {
    format!("binding: {v}")
}

/// The reason given for a record whose binding at `key` does not parse (`error`).
pub fn broken_refusal(key: &str, error: &dyn fmt::Display) -> String {
    format!("binding: {key} is broken, so the record is refused: {error}")
}

/// The reason given for a record of a node without a binding under `require_bindings`
/// ([`Refusal::Unbound`]'s).
pub const UNBOUND_REFUSAL: &str = "binding: none for this node and require_bindings is set";

/// True when `domain` is the suffix's name or a name below it, compared on a label
/// boundary and without regard to case: `.gw.example.com` takes `gw.example.com` and
/// `a.gw.example.com`, never `evilgw.example.com`.
pub fn domain_is_under(domain: &str, suffix: &str) -> bool {
    let bare = suffix.strip_prefix('.').unwrap_or(suffix);
    if domain.eq_ignore_ascii_case(bare) {
        return true;
    }
    let (d, s) = (domain.as_bytes(), bare.as_bytes());
    d.len() > s.len()
        && d[d.len() - s.len() - 1] == b'.'
        && d[d.len() - s.len()..].eq_ignore_ascii_case(s)
}

/// A claim of a record outside its node's binding.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// `ip` or `ipv6` is in none of the ranges.
    Ip {
        /// The address claimed.
        addr: IpAddr,
        /// The ranges allowed.
        allowed: Vec<IpNet>,
    },
    /// The region is not one of those allowed.
    Region {
        /// The region claimed.
        region: String,
        /// The regions allowed.
        allowed: Vec<String>,
    },
    /// The ISP is not one of those allowed.
    Isp {
        /// The ISP claimed.
        isp: String,
        /// The ISPs allowed.
        allowed: Vec<String>,
    },
    /// The capacity is above the binding's maximum.
    Capacity {
        /// The capacity claimed.
        capacity: u64,
        /// The maximum allowed.
        max: u64,
    },
    /// The domain is under none of the suffixes.
    Domain {
        /// The domain claimed.
        domain: String,
        /// The suffixes allowed.
        allowed: Vec<String>,
    },
}

/// Writes a list, the first few entries only: a reason stays one readable line.
fn write_list<T: fmt::Display>(f: &mut fmt::Formatter<'_>, items: &[T]) -> fmt::Result {
    const SHOWN: usize = 4;
    for (i, item) in items.iter().take(SHOWN).enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{item}")?;
    }
    if items.len() > SHOWN {
        write!(f, " and {} more", items.len() - SHOWN)?;
    }
    Ok(())
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Claimed strings come from an agent: printed with escapes ({:?}), so a
        // reason never carries a control character into a log or a terminal.
        match self {
            Violation::Ip { addr, allowed } => {
                write!(f, "ip {addr} is outside ")?;
                write_list(f, allowed)
            }
            Violation::Region { region, allowed } => {
                write!(f, "region {region:?} is not one of ")?;
                write_list(f, allowed)
            }
            Violation::Isp { isp, allowed } => {
                write!(f, "isp {isp:?} is not one of ")?;
                write_list(f, allowed)
            }
            Violation::Capacity { capacity, max } => {
                write!(f, "capacity {capacity} is above max_capacity {max}")
            }
            Violation::Domain { domain, allowed } => {
                write!(f, "domain {domain:?} is not under ")?;
                write_list(f, allowed)
            }
        }
    }
}

impl std::error::Error for Violation {}

#[cfg(test)]
mod tests;
