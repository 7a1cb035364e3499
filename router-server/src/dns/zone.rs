//! The zone's names: what each name under the zone means.
//!
//! * the apex (`gw.example.com`): gateways for the client's region;
//! * `{region}.{zone}`: gateways for that region;
//! * `{proto}.{region}.{zone}`: the same, for one protocol (`tcp`, `ws`, `wss`);
//! * the zone's own in-zone name servers: the live routers' public addresses.
//!
//! Anything else under the zone does not exist; a name outside it is not ours.

use registry::Proto;

/// What a query name means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Outside the zone: refused, never recursed.
    Outside,
    /// Under the zone, but no such name.
    Missing,
    /// Gateways: for `region` (the client's when `None`), serving `proto`.
    Gateways {
        /// The region's label as asked (matched against region names without case).
        region: Option<String>,
        /// The protocol named, else the zone's default.
        proto: Option<Proto>,
    },
    /// One of the zone's own name-server names.
    NameServer,
}

/// The zone: its apex and in-zone name-server names, lower-cased, without the final dot.
#[derive(Debug, Clone)]
pub struct Zone {
    apex: String,
    nameservers: Vec<String>,
}

impl Zone {
    /// The zone at `apex`, whose name servers are `nameservers` (validated names).
    pub fn new(apex: &str, nameservers: &[String]) -> Zone {
        Zone {
            apex: apex.trim_end_matches('.').to_ascii_lowercase(),
            nameservers: nameservers
                .iter()
                .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
        }
    }

    /// The apex, lower-cased, without the final dot.
    pub fn apex(&self) -> &str {
        &self.apex
    }

    /// The meaning of `name` (any case, with or without the final dot).
    pub fn classify(&self, name: &str) -> Target {
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.eq_ignore_ascii_case(&self.apex) {
            return Target::Gateways {
                region: None,
                proto: None,
            };
        }
        let Some(sub) = strip_suffix_nocase(name, &self.apex)
            .and_then(|s| s.strip_suffix('.'))
            .filter(|s| !s.is_empty())
        else {
            return Target::Outside;
        };
        if self
            .nameservers
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
        {
            return Target::NameServer;
        }
        let mut labels = sub.rsplit('.');
        let region = labels.next().unwrap_or_default();
        let proto = labels.next();
        if labels.next().is_some() || region.is_empty() {
            return Target::Missing;
        }
        let proto = match proto {
            None => None,
            Some(p) => match Proto::ALL
                .into_iter()
                .find(|x| x.as_str().eq_ignore_ascii_case(p))
            {
                Some(p) => Some(p),
                None => return Target::Missing,
            },
        };
        Target::Gateways {
            region: Some(region.to_string()),
            proto,
        }
    }
}

/// `name` without `suffix`, compared without case.
fn strip_suffix_nocase<'a>(name: &'a str, suffix: &str) -> Option<&'a str> {
    let cut = name.len().checked_sub(suffix.len())?;
    (name.is_char_boundary(cut) && name[cut..].eq_ignore_ascii_case(suffix)).then(|| &name[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw(region: Option<&str>, proto: Option<Proto>) -> Target {
        Target::Gateways {
            region: region.map(str::to_string),
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
        assert_eq!(z.classify(".gw.example.com."), Target::Outside);
        assert_eq!(z.classify("é.gw.example.com."), gw(Some("é"), None));
    }
}
