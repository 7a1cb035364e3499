//! Who the client is: its address (behind trusted proxies), its region and ISP, its
//! network (the key every per-client budget is charged to). The bottom of the router's
//! layers: the edges (HTTP, DNS) ask it, the guards and the herd budgets key by it.

mod isp;

pub use isp::{follow_isp_db, load_isp_db, FileStamp, IspDb, IspDbError, IspDbSlot, MAX_DB_BYTES};

use std::collections::HashMap;
use std::net::IpAddr;
#[cfg(test)]
use std::path::Path;

use axum::http::{HeaderMap, HeaderName};
use ipnet::IpNet;
use prefix_trie::joint::map::JointPrefixMap;

/// True when `ip` is inside one of the `trusted` proxy networks.
pub fn is_trusted(trusted: &[IpNet], ip: IpAddr) -> bool {
    trusted.iter().any(|n| n.contains(&ip))
}

/// The client's address: the TCP peer, or — when the peer is one of the `trusted`
/// proxies — the right-most X-Forwarded-For entry that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if !is_trusted(trusted, peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>().map(|ip| ip.to_canonical()) {
            Ok(ip) if is_trusted(trusted, ip) => continue,
            Ok(ip) => return ip,
            // A forged or garbled entry: nothing left of it can be believed.
            Err(_) => return peer,
        }
    }
    peer
}

/// The header, parsed once: looked up by name on every request, whose parse as a string
/// showed in profiles.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// True when the request carries X-Forwarded-For from a peer that is not one of the
/// `trusted` proxies. The header is then ignored (anyone can write it); many such
/// requests from one peer mean a load balancer that `trusted_proxies` does not list,
/// so that every client behind it counts as the balancer.
pub fn forwarded_untrusted(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> bool {
    headers.contains_key(X_FORWARDED_FOR) && !is_trusted(trusted, peer)
}

/// The client-network table: `[regions] cidrs` and `isp_cidrs` as prefix tries
/// (longest prefix wins), so a lookup costs the same for a geo-IP table of 100,000
/// networks as for one; and the ASN database with its ASN → ISP names.
pub struct RegionTable {
    cidrs: JointPrefixMap<IpNet, String>,
    default: Option<String>,
    /// `[regions] isp_cidrs`.
    isps: JointPrefixMap<IpNet, String>,
    /// `[regions] asn_isps`: the ISP of each ASN the database may answer.
    asn_isps: HashMap<u32, String>,
    /// The ASN database in force (`[regions] isp_db`), shared with the task that
    /// reloads it.
    isp_db: IspDbSlot,
    /// Every region name the `[regions]` table mentions (networks, fallbacks,
    /// default), sorted: what DNS answers by name even with no node there yet.
    names: Vec<String>,
}

impl RegionTable {
    /// The table of `cidrs` (network → region), `default` (empty: none) for the rest.
    pub fn new<'a>(
        cidrs: impl IntoIterator<Item = (&'a IpNet, &'a String)>,
        default: &str,
    ) -> RegionTable {
        let mut table = JointPrefixMap::new();
        for (net, region) in cidrs {
            // Host bits are ignored, as `IpNet::contains` ignores them.
            table.insert(net.trunc(), region.clone());
        }
        RegionTable {
            cidrs: table,
            default: (!default.is_empty()).then(|| default.to_string()),
            isps: JointPrefixMap::new(),
            asn_isps: HashMap::new(),
            isp_db: IspDbSlot::default(),
            names: Vec::new(),
        }
    }

    /// This table, telling clients' ISPs by `cidrs` (network → ISP) first, then by
    /// the database `db` holds (when it holds one) through `asn_isps` (ASN → ISP).
    pub fn with_isps<'a>(
        self,
        cidrs: impl IntoIterator<Item = (&'a IpNet, &'a String)>,
        asn_isps: impl IntoIterator<Item = (u32, String)>,
        db: IspDbSlot,
    ) -> RegionTable {
        let mut isps = JointPrefixMap::new();
        for (net, isp) in cidrs {
            isps.insert(net.trunc(), isp.clone());
        }
        RegionTable {
            isps,
            asn_isps: asn_isps.into_iter().collect(),
            isp_db: db,
            ..self
        }
    }

    /// The ISP of `ip`: its `isp_cidrs` network's, else the one `asn_isps` names for
    /// its ASN in the database; `None` when neither knows it.
    pub fn isp(&self, ip: IpAddr) -> Option<&str> {
        let ip = ip.to_canonical();
        if let Some((_, isp)) = self.isps.get_lpm(&IpNet::from(ip)) {
            return Some(isp);
        }
        if self.asn_isps.is_empty() {
            return None;
        }
        let asn = self.isp_db.load().as_ref()?.asn(ip)?;
        self.asn_isps.get(&asn).map(String::as_str)
    }

    /// This table, knowing `names` as regions (see [`RegionTable::named`]).
    pub fn with_names(self, names: impl IntoIterator<Item = String>) -> RegionTable {
        let mut names: Vec<String> = names.into_iter().collect();
        names.sort();
        names.dedup();
        RegionTable { names, ..self }
    }

    /// The region `label` names, compared without case, if `[regions]` mentions it.
    pub fn named(&self, label: &str) -> Option<&str> {
        self.names
            .iter()
            .find(|r| r.eq_ignore_ascii_case(label))
            .map(String::as_str)
    }

    /// The region for `ip` (IPv4-mapped IPv6 addresses count as IPv4), else the default.
    pub fn lookup(&self, ip: IpAddr) -> Option<&str> {
        let ip = ip.to_canonical();
        self.cidrs
            .get_lpm(&IpNet::from(ip))
            .map(|(_, r)| r.as_str())
            .or(self.default.as_deref())
    }

    /// The `[regions] cidrs` network `ip` falls in (the longest), and its region;
    /// `None` when none does (then [`RegionTable::lookup`] answers the default).
    pub fn matching(&self, ip: IpAddr) -> Option<(IpNet, &str)> {
        self.cidrs
            .get_lpm(&IpNet::from(ip.to_canonical()))
            .map(|(net, r)| (net, r.as_str()))
    }

    /// The region of clients no network matches (`[regions] default`), if set.
    pub fn default_region(&self) -> Option<&str> {
        self.default.as_deref()
    }
}

/// One client network by default: a /24 (IPv4) or a /56 (IPv6), what one subscriber or
/// one small site is given.
pub const NETWORK_PREFIX: (u8, u8) = (24, 56);

/// The network of `ip`: its `v4` / `v6` leading bits, the rest zeroed (IPv4-mapped
/// IPv6 addresses count as IPv4). Every per-client budget is keyed by it.
pub fn network_key(ip: IpAddr, (v4, v6): (u8, u8)) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(a) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(v4.min(32)))
                .unwrap_or(0);
            IpAddr::V4((u32::from(a) & mask).into())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(v6.min(128)))
                .unwrap_or(0);
            IpAddr::V6((u128::from(a) & mask).into())
        }
    }
}

/// The network a client's connections are counted under (the per-network connection
/// caps of HTTP and DNS over TCP): its /24 (IPv4) or /56 (IPv6), the share one
/// subscriber or one small site is given. One function, so the rule can change in one
/// place.
pub fn connection_network(ip: IpAddr) -> IpAddr {
    network_key(ip, NETWORK_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_clients_isp_comes_from_its_network_then_from_its_asn() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/asn-a.mmdb");
        let slot = IspDbSlot::default();
        slot.store(Some(std::sync::Arc::new(IspDb::open(&path).unwrap())));
        let cidrs: Vec<(IpNet, String)> = vec![("127.20.5.0/24".parse().unwrap(), "cucc".into())];
        let table = RegionTable::new([], "").with_isps(
            cidrs.iter().map(|(n, i)| (n, i)),
            [(4134, "ctcc".to_string()), (9808, "cmcc".to_string())],
            slot.clone(),
        );
        let isp = |ip: &str| table.isp(ip.parse().unwrap());
        assert_eq!(isp("127.20.5.1"), Some("cucc"), "isp_cidrs first");
        assert_eq!(isp("127.20.6.1"), Some("ctcc"), "then the ASN");
        assert_eq!(isp("::ffff:127.21.0.9"), Some("cmcc"));
        assert_eq!(isp("2001:db8:20::1"), Some("ctcc"));
        assert_eq!(isp("127.22.0.1"), None, "no network, no ASN");
        // An ASN the table does not name: no known ISP.
        let unnamed =
            RegionTable::new([], "").with_isps([], [(4134, "ctcc".to_string())], slot.clone());
        assert_eq!(unnamed.isp("127.21.0.1".parse().unwrap()), None);
        // No database loaded: the networks alone.
        slot.store(None);
        assert_eq!(isp("127.20.6.1"), None);
        assert_eq!(isp("127.20.5.1"), Some("cucc"));
    }

    #[test]
    fn network_keys_group_addresses() {
        let key = |ip: &str, p| network_key(ip.parse().unwrap(), p).to_string();
        assert_eq!(key("203.0.113.77", (32, 64)), "203.0.113.77");
        assert_eq!(key("203.0.113.77", (24, 64)), "203.0.113.0");
        assert_eq!(key("203.0.113.77", (0, 64)), "0.0.0.0");
        assert_eq!(key("2001:db8:1:2:aaaa::1", (32, 64)), "2001:db8:1:2::");
        assert_eq!(
            key("2001:db8:1:2:aaaa::1", (32, 128)),
            "2001:db8:1:2:aaaa::1"
        );
        assert_eq!(key("2001:db8:1:2:aaaa::1", (32, 0)), "::");
        assert_eq!(
            key("::ffff:203.0.113.77", (32, 64)),
            "203.0.113.77",
            "IPv4-mapped"
        );
    }

    #[test]
    fn connection_networks_are_slash_24_and_slash_56() {
        let net = |ip: &str| connection_network(ip.parse().unwrap()).to_string();
        assert_eq!(net("127.0.0.1"), net("127.0.0.2"));
        assert_ne!(net("127.0.0.1"), net("127.0.1.1"));
        assert_eq!(net("2001:db8:0:ff::1"), "2001:db8::");
        assert_ne!(net("2001:db8:0:100::1"), "2001:db8::");
        assert_eq!(net("::ffff:198.51.100.9"), "198.51.100.0");
    }

    #[test]
    fn client_ip_trusts_only_configured_proxies() {
        let cfg: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "1.1.1.1, 2.2.2.2, 10.0.0.5".parse().unwrap(),
        );
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), &h, &cfg),
            "2.2.2.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip("9.9.9.9".parse().unwrap(), &h, &cfg),
            "9.9.9.9".parse::<IpAddr>().unwrap(),
            "untrusted peer"
        );
        h.insert("x-forwarded-for", "1.1.1.1, garbage".parse().unwrap());
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), &h, &cfg),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), &HeaderMap::new(), &cfg),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn region_lookup_takes_the_longest_prefix() {
        let cidrs: std::collections::BTreeMap<IpNet, String> = [
            ("10.0.0.0/8", "wide"),
            ("10.1.0.0/16", "narrow"),
            ("2001:db8::/32", "v6"),
        ]
        .into_iter()
        .map(|(n, r)| (n.parse().unwrap(), r.to_string()))
        .collect();
        let t = RegionTable::new(&cidrs, "d");
        let lookup = |ip: &str| t.lookup(ip.parse().unwrap());
        assert_eq!(lookup("10.1.2.3"), Some("narrow"));
        assert_eq!(lookup("10.2.2.3"), Some("wide"));
        assert_eq!(lookup("8.8.8.8"), Some("d"));
        assert_eq!(lookup("::ffff:10.1.2.3"), Some("narrow"), "IPv4-mapped");
        assert_eq!(lookup("2001:db8::1"), Some("v6"));
        let net = |ip: &str| {
            t.matching(ip.parse().unwrap())
                .map(|(n, r)| (n.to_string(), r))
        };
        assert_eq!(net("10.1.2.3"), Some(("10.1.0.0/16".into(), "narrow")));
        assert_eq!(net("8.8.8.8"), None, "the default is no network");
        assert_eq!(t.default_region(), Some("d"));
        let no_default = RegionTable::new(&cidrs, "");
        assert_eq!(no_default.lookup("8.8.8.8".parse().unwrap()), None);
        let no_default = RegionTable::new([], "");
        assert_eq!(no_default.lookup("10.1.2.3".parse().unwrap()), None);
    }

    proptest! {
        /// The trie answers what a scan of every network (longest prefix) answers.
        #[test]
        fn region_table_equals_a_scan(
            nets in proptest::collection::vec((any::<u32>(), 0u8..=32, 0u8..4), 0..40),
            probes in proptest::collection::vec(any::<u32>(), 1..40),
        ) {
            let mut cidrs = std::collections::BTreeMap::new();
            for (addr, len, region) in &nets {
                // Nets near each other, so that many nest.
                let addr = std::net::Ipv4Addr::from(addr & 0xff0f_0000);
                let net = IpNet::from(ipnet::Ipv4Net::new(addr, *len).unwrap());
                cidrs.insert(net, format!("r{region}"));
            }
            let t = RegionTable::new(&cidrs, "");
            for p in probes {
                let ip = IpAddr::from(std::net::Ipv4Addr::from(p & 0xff0f_ffff));
                let scan = cidrs.iter()
                    .filter(|(net, _)| net.contains(&ip))
                    .max_by_key(|(net, _)| net.prefix_len())
                    .map(|(_, r)| r.as_str());
                prop_assert_eq!(t.lookup(ip), scan, "{}", ip);
            }
        }
    }
}
