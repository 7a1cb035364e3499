//! The block and allow lists as one immutable value: prefix tries (longest prefix
//! wins), built from the static lists, the entries followed from etcd and the
//! automatic blocks, at one moment.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use prefix_trie::joint::map::JointPrefixMap;
use registry::blocklist::BlockEntry;

/// The lists in force.
pub struct Lists {
    /// Blocked networks and the reason each was blocked.
    block: JointPrefixMap<IpNet, Arc<str>>,
    allow: JointPrefixMap<IpNet, ()>,
    /// Nothing listed: a lookup costs nothing (the common case).
    empty_block: bool,
    empty_allow: bool,
    /// The earliest expiry among the entries in force.
    next_expiry_ms: Option<u64>,
    entries: usize,
}

impl Lists {
    /// The lists at wall-clock `now_ms`: entries already expired are left out.
    pub fn build(
        block: &[IpNet],
        allow: &[IpNet],
        dynamic: &[BlockEntry],
        auto: &HashMap<IpNet, u64>,
        now_ms: u64,
    ) -> Lists {
        let mut b: JointPrefixMap<IpNet, Arc<str>> = JointPrefixMap::new();
        let mut next: Option<u64> = None;
        let config: Arc<str> = Arc::from("config");
        for net in block {
            b.insert(net.trunc(), config.clone());
        }
        let automatic: Arc<str> = Arc::from("auto");
        let mut expiring = |until: u64| next = Some(next.map_or(until, |n| n.min(until)));
        for e in dynamic.iter().filter(|e| e.in_force(now_ms)) {
            if e.expires_ms != 0 {
                expiring(e.expires_ms);
            }
            b.insert(e.cidr.trunc(), Arc::from(e.reason.as_str()));
        }
        for (net, until) in auto.iter().filter(|(_, until)| **until > now_ms) {
            expiring(*until);
            b.insert(net.trunc(), automatic.clone());
        }
        let mut a = JointPrefixMap::new();
        for net in allow {
            a.insert(net.trunc(), ());
        }
        let entries = b.iter().count();
        Lists {
            empty_block: entries == 0,
            empty_allow: allow.is_empty(),
            block: b,
            allow: a,
            next_expiry_ms: next,
            entries,
        }
    }

    /// Why `ip` is blocked, if it is.
    pub fn blocked(&self, ip: IpAddr) -> Option<Arc<str>> {
        if self.empty_block {
            return None;
        }
        self.block
            .get_lpm(&IpNet::from(ip.to_canonical()))
            .map(|(_, r)| r.clone())
    }

    /// True when `ip` is on the allow list.
    pub fn allowed(&self, ip: IpAddr) -> bool {
        !self.empty_allow
            && self
                .allow
                .get_lpm(&IpNet::from(ip.to_canonical()))
                .is_some()
    }

    /// When the first entry in force expires.
    pub fn next_expiry_ms(&self) -> Option<u64> {
        self.next_expiry_ms
    }

    /// Blocked networks in force.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// True when nothing is blocked.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_prefix_names_the_reason() {
        let dynamic = vec![BlockEntry {
            cidr: "10.1.0.0/16".parse().unwrap(),
            reason: "narrow".into(),
            expires_ms: 0,
            by: String::new(),
            at_ms: 0,
        }];
        let l = Lists::build(
            &["10.0.0.0/8".parse().unwrap()],
            &[],
            &dynamic,
            &HashMap::new(),
            5,
        );
        let why = |s: &str| l.blocked(s.parse().unwrap()).map(|r| r.to_string());
        assert_eq!(why("10.1.2.3").as_deref(), Some("narrow"));
        assert_eq!(why("10.2.2.3").as_deref(), Some("config"));
        assert_eq!(why("::ffff:10.2.2.3").as_deref(), Some("config"));
        assert_eq!(why("11.0.0.1"), None);
        assert_eq!(l.len(), 2);
        assert_eq!(l.next_expiry_ms(), None);
    }
}
