//! Operator policy (`P/policy/{name}`): where the clients of one network, a region or
//! one ISP of a region, are sent beyond load and nearness.
//!
//! ```json
//! {"region": "cn-sh", "isp": "cmcc",
//!  "exclude": ["pool:cdn-a"],
//!  "ratios": [{"to": "dc:sh", "percent": 70}, {"to": "dc:hz", "percent": 30}],
//!  "caps": [{"to": "pool:edge", "percent": 20}],
//!  "by": "alice", "at_ms": 1763700000000}
//! ```
//!
//! * `exclude`: nodes of these groups are never answered to those clients (the seed's
//!   "blacklist a CDN for one region's carrier"); they keep serving everyone else.
//! * `ratios`: each answer's candidates come first from one group, drawn so that the
//!   groups get these shares of the answers ("cn-sh: 70 % sh, 30 % hz"); the rest of the
//!   answer, if that group cannot fill it, from anywhere, as without the policy.
//! * `caps`: a group may come first in at most this share of the answers; in the other
//!   answers its nodes come after every other candidate (they still fill an answer
//!   nothing else can).
//!
//! A group is a data centre (`dc:NAME`, the registry's name, which the router sets on
//! every record it follows, so a host cannot claim another) or a pool (`pool:NAME`, the
//! record's `pool` label, which its agent writes). A policy for a region and ISP is
//! used for that ISP's clients; one for the region alone for its other clients.
//! Whoever can write the prefix steers clients, so the value is checked like any
//! stored value; one that does not parse is ignored and reported by its readers.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::record::{invalid, validate_name, NodeRecord, RecordError};

/// The most groups one policy excludes.
pub const MAX_EXCLUDE: usize = 16;
/// The most groups one policy shares answers between.
pub const MAX_RATIOS: usize = 8;
/// The longest `by` accepted.
pub const MAX_BY: usize = 128;
/// The record label that names a node's pool.
pub const POOL_LABEL: &str = "pool";

/// A set of nodes a policy names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    /// The nodes of one data centre (registry), as the router names it.
    Dc(String),
    /// The nodes whose `pool` label is this.
    Pool(String),
}

impl Group {
    /// True when `record` is in the group.
    pub fn contains(&self, record: &NodeRecord) -> bool {
        match self {
            Group::Dc(d) => record.dc.as_deref() == Some(d.as_str()),
            Group::Pool(p) => record.labels.get(POOL_LABEL).map(String::as_str) == Some(p),
        }
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Group::Dc(d) => write!(f, "dc:{d}"),
            Group::Pool(p) => write!(f, "pool:{p}"),
        }
    }
}

impl std::str::FromStr for Group {
    type Err = RecordError;

    /// `dc:NAME` or `pool:NAME`, NAME 1-64 of `A-Z a-z 0-9 . _ -`.
    fn from_str(s: &str) -> Result<Group, RecordError> {
        let (kind, name) = s.split_once(':').ok_or_else(|| RecordError::Invalid {
            field: "group",
            reason: format!("{s:?} is not dc:NAME or pool:NAME"),
        })?;
        validate_name("group", name)?;
        match kind {
            "dc" => Ok(Group::Dc(name.to_string())),
            "pool" => Ok(Group::Pool(name.to_string())),
            _ => Err(RecordError::Invalid {
                field: "group",
                reason: format!("{s:?} is not dc:NAME or pool:NAME"),
            }),
        }
    }
}

impl Serialize for Group {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Group {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Group, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One group's share of the answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ratio {
    /// The group.
    pub to: Group,
    /// Its share, percent (1-100; a policy's shares add up to 100).
    pub percent: u8,
}

/// One policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The clients' region.
    pub region: String,
    /// The clients' ISP; absent: every client of the region that no policy of its own
    /// ISP covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isp: Option<String>,
    /// Groups never answered to these clients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<Group>,
    /// Shares of the answers between groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ratios: Vec<Ratio>,
    /// The most of the answers each of these groups may lead (1-99 %).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caps: Vec<Ratio>,
    /// Who wrote it (the etcd user, or an operator's name).
    #[serde(default)]
    pub by: String,
    /// Wall-clock milliseconds when it was written.
    #[serde(default)]
    pub at_ms: u64,
}

impl Policy {
    /// Parses and validates a stored value.
    pub fn parse(value: &[u8]) -> Result<Policy, RecordError> {
        crate::record::parse_checked(value, Policy::validate)
    }

    /// Checks what serde's types do not: names, bounded lists, shares that add up to
    /// 100 between distinct groups, no share for an excluded group, something to do.
    pub fn validate(&self) -> Result<(), RecordError> {
        validate_name("region", &self.region)?;
        if let Some(isp) = &self.isp {
            validate_name("isp", isp)?;
        }
        if self.exclude.is_empty() && self.ratios.is_empty() && self.caps.is_empty() {
            return Err(invalid(
                "exclude",
                "a policy excludes, shares or caps something",
            ));
        }
        if self.caps.len() > MAX_RATIOS {
            return Err(invalid(
                "caps",
                format!("{} groups; at most {MAX_RATIOS}", self.caps.len()),
            ));
        }
        let mut capped = std::collections::BTreeSet::new();
        for c in &self.caps {
            if !(1..=99).contains(&c.percent) {
                return Err(invalid(
                    "caps",
                    format!("{}: {} % is not 1-99", c.to, c.percent),
                ));
            }
            if !capped.insert(&c.to) {
                return Err(invalid("caps", format!("{} is given twice", c.to)));
            }
            if self.exclude.contains(&c.to) || self.ratios.iter().any(|r| r.to == c.to) {
                return Err(invalid(
                    "caps",
                    format!("{} is excluded or shared too", c.to),
                ));
            }
        }
        if self.exclude.len() > MAX_EXCLUDE {
            return Err(invalid(
                "exclude",
                format!("{} groups; at most {MAX_EXCLUDE}", self.exclude.len()),
            ));
        }
        if self.ratios.len() > MAX_RATIOS {
            return Err(invalid(
                "ratios",
                format!("{} groups; at most {MAX_RATIOS}", self.ratios.len()),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for r in &self.ratios {
            if !(1..=100).contains(&r.percent) {
                return Err(invalid(
                    "ratios",
                    format!("{}: {} % is not 1-100", r.to, r.percent),
                ));
            }
            if !seen.insert(&r.to) {
                return Err(invalid("ratios", format!("{} is given twice", r.to)));
            }
            if self.exclude.contains(&r.to) {
                return Err(invalid("ratios", format!("{} is excluded too", r.to)));
            }
        }
        let total: u32 = self.ratios.iter().map(|r| u32::from(r.percent)).sum();
        if !self.ratios.is_empty() && total != 100 {
            return Err(invalid(
                "ratios",
                format!("the shares add up to {total} %, not 100"),
            ));
        }
        if self.by.len() > MAX_BY || self.by.chars().any(char::is_control) {
            return Err(invalid(
                "by",
                format!("not a name of at most {MAX_BY} bytes"),
            ));
        }
        Ok(())
    }

    /// Serializes the policy as stored.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a Policy always serializes")
    }

    /// True when `record` is in a group this policy excludes.
    pub fn excludes(&self, record: &NodeRecord) -> bool {
        self.exclude.iter().any(|g| g.contains(record))
    }

    /// The share (its index in `ratios`) answer number `n` (counted from 0) goes to
    /// first: answers spread over the groups in their shares, exactly over every 100
    /// answers, interleaved rather than in runs (61 is prime to 100: `61 n mod 100`
    /// visits every percent once).
    pub fn share_for(&self, n: u64) -> Option<usize> {
        if self.ratios.is_empty() {
            return None;
        }
        let point = (n.wrapping_mul(61) % 100) as u32;
        let mut below = 0u32;
        for (k, r) in self.ratios.iter().enumerate() {
            below += u32::from(r.percent);
            if point < below {
                return Some(k);
            }
        }
        Some(self.ratios.len() - 1)
    }

    /// The caps (bit `k`: `caps[k]`) whose group answer number `n` holds back: a
    /// group capped at `p` % may lead exactly `p` of every 100 answers (the same
    /// `61 n mod 100` draw as the shares), and comes last in the others.
    pub fn held_back(&self, n: u64) -> u8 {
        let point = (n.wrapping_mul(61) % 100) as u8;
        self.caps
            .iter()
            .take(8)
            .enumerate()
            .filter(|(_, c)| point >= c.percent)
            .fold(0u8, |held, (k, _)| held | 1 << k)
    }

    /// The group answer number `n` goes to first (see [`Policy::share_for`]).
    pub fn group_for(&self, n: u64) -> Option<&Group> {
        self.share_for(n).map(|k| &self.ratios[k].to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(dc: Option<&str>, pool: Option<&str>) -> NodeRecord {
        let mut r = NodeRecord::new(
            "n",
            "192.0.2.1".parse().unwrap(),
            crate::Ports {
                tcp: Some(1),
                ws: None,
                wss: None,
            },
            "cn-sh",
            10,
            0,
        );
        r.dc = dc.map(Into::into);
        if let Some(p) = pool {
            r.labels.insert(POOL_LABEL.into(), p.into());
        }
        r
    }

    #[test]
    fn a_policy_parses_and_names_its_groups() {
        let p = Policy::parse(
            br#"{"region":"cn-sh","isp":"cmcc","exclude":["pool:cdn-a"],"ratios":[{"to":"dc:sh","percent":70},{"to":"dc:hz","percent":30}],"by":"alice"}"#,
        )
        .unwrap();
        assert!(p.excludes(&record(Some("sh"), Some("cdn-a"))));
        assert!(!p.excludes(&record(Some("sh"), Some("cdn-b"))));
        assert!(Group::Dc("sh".into()).contains(&record(Some("sh"), None)));
        assert!(!Group::Dc("sh".into()).contains(&record(None, None)));
        assert_eq!(Policy::parse(&p.to_json()).unwrap(), p);
        // Every 100 answers: exactly the shares, and never a long run of one group.
        let firsts: Vec<&Group> = (0..100).map(|n| p.group_for(n).unwrap()).collect();
        let sh = firsts
            .iter()
            .filter(|g| ***g == Group::Dc("sh".into()))
            .count();
        assert_eq!(sh, 70);
        let longest = firsts
            .chunk_by(|a, b| a == b)
            .map(<[_]>::len)
            .max()
            .unwrap();
        assert!(longest <= 4, "a run of {longest}");
    }

    /// A group capped at p % is let lead exactly p of every 100 answers; two caps are
    /// drawn independently of the order they are given in.
    #[test]
    fn a_cap_holds_its_group_back_in_the_rest_of_the_answers() {
        let p = Policy::parse(
            br#"{"region":"cn-sh","caps":[{"to":"pool:edge","percent":20},{"to":"dc:hz","percent":75}]}"#,
        )
        .unwrap();
        let allowed = |k: u8| (0..100).filter(|&n| p.held_back(n) & (1 << k) == 0).count();
        assert_eq!((allowed(0), allowed(1)), (20, 75));
        assert_eq!(Policy::parse(&p.to_json()).unwrap(), p);
        assert!(p.group_for(3).is_none());
    }

    #[test]
    fn bad_policies_name_their_field() {
        for (value, field) in [
            (r#"{"region":"cn-sh"}"#, "exclude"),
            (r#"{"region":"","exclude":["dc:a"]}"#, "region"),
            (r#"{"region":"a","isp":"x y","exclude":["dc:a"]}"#, "isp"),
            (r#"{"region":"a","exclude":["zone:a"]}"#, "dc:NAME"),
            (r#"{"region":"a","exclude":["dc:"]}"#, "group"),
            (
                r#"{"region":"a","ratios":[{"to":"dc:a","percent":60}]}"#,
                "add up to 60",
            ),
            (
                r#"{"region":"a","ratios":[{"to":"dc:a","percent":0},{"to":"dc:b","percent":100}]}"#,
                "not 1-100",
            ),
            (
                r#"{"region":"a","ratios":[{"to":"dc:a","percent":50},{"to":"dc:a","percent":50}]}"#,
                "twice",
            ),
            (
                r#"{"region":"a","exclude":["dc:a"],"ratios":[{"to":"dc:a","percent":100}]}"#,
                "excluded too",
            ),
            (
                r#"{"region":"a","exclude":["dc:a"],"extra":1}"#,
                "unknown field",
            ),
            (r#"{"region":"a","exclude":["dc:a"],"by":"a\u0007"}"#, "by"),
            (
                r#"{"region":"a","caps":[{"to":"pool:e","percent":100}]}"#,
                "not 1-99",
            ),
            (
                r#"{"region":"a","caps":[{"to":"pool:e","percent":10},{"to":"pool:e","percent":20}]}"#,
                "twice",
            ),
            (
                r#"{"region":"a","ratios":[{"to":"pool:e","percent":100}],"caps":[{"to":"pool:e","percent":20}]}"#,
                "shared too",
            ),
        ] {
            let e = Policy::parse(value.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(field), "{value}: {e}");
        }
        let many: Vec<String> = (0..=MAX_EXCLUDE).map(|i| format!("\"dc:d{i}\"")).collect();
        let value = format!(r#"{{"region":"a","exclude":[{}]}}"#, many.join(","));
        assert!(Policy::parse(value.as_bytes()).is_err());
    }
}
