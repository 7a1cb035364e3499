//! The zone's names: what each name under the zone means.
//!
//! * the apex (`gw.example.com`): gateways for the client's region;
//! * `{region}.{zone}`: gateways for that region;
//! * `{proto}.{region}.{zone}`: the same, for one protocol (`tcp`, `ws`, `wss`);
//! * the zone's own in-zone name servers: the live routers' public addresses.
//!
//! Anything else under the zone does not exist; a name outside it is not ours.

use std::borrow::Cow;

use registry::Proto;

/// What a query name means (borrowing the query's region label when it is UTF-8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    /// Outside the zone: refused, never recursed.
    Outside,
    /// Under the zone, but no such name.
    Missing,
    /// Gateways: for `region` (the client's when `None`), serving `proto`.
    Gateways {
        /// The region's label as asked (matched against region names without case).
        region: Option<Cow<'a, str>>,
        /// The protocol named, else the zone's default.
        proto: Option<Proto>,
    },
    /// One of the zone's own name-server names.
    NameServer,
}

/// The zone: its apex and in-zone name-server names, lower-cased, as labels.
#[derive(Debug, Clone)]
pub struct Zone {
    apex_labels: Vec<Box<[u8]>>,
    nameservers: Vec<Vec<Box<[u8]>>>,
}

fn labels_of(name: &str) -> Vec<Box<[u8]>> {
    name.trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
        .map(|l| l.to_ascii_lowercase().into_bytes().into_boxed_slice())
        .collect()
}

impl Zone {
    /// The zone at `apex`, whose name servers are `nameservers` (validated names).
    pub fn new(apex: &str, nameservers: &[String]) -> Zone {
        Zone {
            apex_labels: labels_of(apex),
            nameservers: nameservers.iter().map(|n| labels_of(n)).collect(),
        }
    }

    /// The meaning of `name` (any case, with or without the final dot).
    pub fn classify<'a>(&self, name: &'a str) -> Target<'a> {
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() {
            return Target::Outside;
        }
        self.classify_labels(name.split('.').map(str::as_bytes))
    }

    /// The meaning of a name given by its labels, first to last (no root label); what
    /// a DNS query carries, read without copying.
    pub fn classify_labels<'a>(
        &self,
        labels: impl DoubleEndedIterator<Item = &'a [u8]> + Clone,
    ) -> Target<'a> {
        let mut rest = labels.clone();
        for apex in self.apex_labels.iter().rev() {
            match rest.next_back() {
                Some(l) if l.eq_ignore_ascii_case(apex) => {}
                _ => return Target::Outside,
            }
        }
        // `rest` holds the labels under the apex, read in place (no copy of the list).
        let mut under = rest.clone();
        let Some(first) = under.next() else {
            return Target::Gateways {
                region: None,
                proto: None,
            };
        };
        if rest.clone().any(<[u8]>::is_empty) {
            return Target::Missing;
        }
        let is_ns = |ns: &Vec<Box<[u8]>>| {
            ns.len() == labels.clone().count()
                && ns
                    .iter()
                    .zip(labels.clone())
                    .all(|(a, b)| a.eq_ignore_ascii_case(b))
        };
        if self.nameservers.iter().any(is_ns) {
            return Target::NameServer;
        }
        let (proto, region) = match (under.next(), under.next()) {
            (None, _) => (None, first),
            (Some(region), None) => {
                match Proto::ALL
                    .into_iter()
                    .find(|x| x.as_str().as_bytes().eq_ignore_ascii_case(first))
                {
                    Some(p) => (Some(p), region),
                    None => return Target::Missing,
                }
            }
            _ => return Target::Missing,
        };
        Target::Gateways {
            region: Some(String::from_utf8_lossy(region)),
            proto,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw(region: Option<&str>, proto: Option<Proto>) -> Target<'_> {
        Target::Gateways {
            region: region.map(Cow::Borrowed),
            proto,
        }
    }

    #[test]
    fn names_under_the_zone() {
        let z = Zone::new("gw.example.com", &["ns1.gw.example.com".into()]);
        assert_eq!(z.classify("gw.example.com."), gw(None, None));
        assert_eq!(z.classify("GW.Example.COM"), gw(None, None));
        assert_eq!(z.classify("eu.gw.example.com."), gw(Some("eu"), None));
        assert_eq!(
            z.classify("WSS.eu.gw.example.com."),
            gw(Some("eu"), Some(Proto::Wss))
        );
        assert_eq!(z.classify("ns1.gw.example.com."), Target::NameServer);
        assert_eq!(z.classify("udp.eu.gw.example.com."), Target::Missing);
        assert_eq!(z.classify("a.tcp.eu.gw.example.com."), Target::Missing);
        assert_eq!(z.classify("xgw.example.com."), Target::Outside);
        assert_eq!(z.classify("example.com."), Target::Outside);
        assert_eq!(z.classify("."), Target::Outside);
        assert_eq!(z.classify(".gw.example.com."), Target::Missing);
        assert_eq!(z.classify("gw.example.com.."), Target::Outside);
        assert_eq!(z.classify("é.gw.example.com."), gw(Some("é"), None));
    }
}
