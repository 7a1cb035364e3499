//! The JSON a client receives from `GET /gateways`, in one place: each node's entry,
//! serialized once per report ([`NodeJson`]); the configuration's constant part,
//! serialized once ([`answer_tail`]); and the answer assembled from those pieces per
//! request ([`render_answer`]) without a serializer on the hot path.

use std::net::IpAddr;

use registry::record::is_name_char;
use registry::{NodeRecord, Proto};

use crate::config::FileConfig;

/// A node's entries in a `GET /gateways` answer, serialized once per report: for each
/// protocol it serves, everything up to the load,
/// `{"id":…,"ip":…,"port":…,"proto":…,"region":…[,"dc":…][,"isp":…][,"domain":…],"load":`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeJson {
    /// With the record's `ip`, by [`Proto`].
    pub primary: [Option<Box<str>>; 3],
    /// With the record's `ipv6`, for dual-stack nodes whose `ip` is IPv4, by [`Proto`].
    pub v6: [Option<Box<str>>; 3],
}

impl NodeJson {
    /// Serializes the record's entries.
    pub fn of(r: &NodeRecord) -> NodeJson {
        let quote = |s: &str| serde_json::to_string(s).expect("a string always serializes");
        let mut tail = format!(",\"region\":{}", quote(&r.region));
        if let Some(dc) = &r.dc {
            tail.push_str(",\"dc\":");
            tail.push_str(&quote(dc));
        }
        if let Some(isp) = &r.isp {
            tail.push_str(",\"isp\":");
            tail.push_str(&quote(isp));
        }
        if let Some(d) = &r.domain {
            tail.push_str(",\"domain\":");
            tail.push_str(&quote(d));
        }
        tail.push_str(",\"load\":");
        let id = quote(&r.id);
        let entries = |ip: &str| {
            Proto::ALL.map(|proto| {
                r.ports.get(proto).map(|port| {
                    format!(
                        "{{\"id\":{id},\"ip\":\"{ip}\",\"port\":{port},\"proto\":\"{}\"{tail}",
                        proto.as_str()
                    )
                    .into()
                })
            })
        };
        NodeJson {
            primary: entries(&r.ip.to_string()),
            v6: match (r.ip, r.ipv6) {
                (IpAddr::V4(_), Some(v6)) => entries(&v6.to_string()),
                _ => Default::default(),
            },
        }
    }

    /// The entry for `proto` answering with address `ip` (one of the record's).
    pub fn entry(&self, proto: Proto, ip: IpAddr) -> &str {
        let by_family = match ip {
            IpAddr::V6(_) if self.v6[proto as usize].is_some() => &self.v6,
            _ => &self.primary,
        };
        by_family[proto as usize]
            .as_deref()
            .expect("candidates have a port for the protocol")
    }
}

/// `,"ttl_secs":…,"heartbeat_secs":…,"backoff":{…}`: the configuration's constant part
/// of every answer, serialized once.
pub fn answer_tail(cfg: &FileConfig) -> String {
    format!(
        ",\"ttl_secs\":{},\"heartbeat_secs\":{},\"backoff\":{}",
        cfg.ttl_secs,
        cfg.heartbeat_secs,
        serde_json::to_string(&cfg.backoff).expect("backoff serializes")
    )
}

/// Appends a `GET /gateways` answer to `out` from pre-serialized pieces: each chosen
/// node's entry (see [`NodeJson::entry`]) with its load, then the region, `tail` (see
/// [`answer_tail`]), revision and staleness. A property test checks it equals what
/// serde writes.
pub fn render_answer<'a>(
    out: &mut Vec<u8>,
    entries: impl IntoIterator<Item = (&'a str, f64)>,
    region: Option<&str>,
    tail: &str,
    revision: i64,
    stale: bool,
) {
    out.extend_from_slice(b"{\"gateways\":[");
    for (i, (entry, load)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(entry.as_bytes());
        write_load(out, load);
        out.push(b'}');
    }
    out.extend_from_slice(b"],\"region\":");
    match region {
        // Names from the query and the configuration are plain: no escaping needed.
        Some(r) if r.chars().all(is_name_char) => {
            out.push(b'"');
            out.extend_from_slice(r.as_bytes());
            out.push(b'"');
        }
        Some(r) => serde_json::to_writer(&mut *out, r).expect("a string serializes"),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(tail.as_bytes());
    out.extend_from_slice(b",\"revision\":");
    out.extend_from_slice(itoa::Buffer::new().format(revision).as_bytes());
    out.extend_from_slice(if stale {
        b",\"stale\":true}"
    } else {
        b",\"stale\":false}"
    });
}

/// The load as answered: four decimals are plenty for ordering and dashboards.
fn rounded_load(load: f64) -> f64 {
    (load * 10_000.0).round() / 10_000.0
}

/// Writes [`rounded_load`] as serde_json would, without float formatting in the usual
/// range: the rounded value is `n / 10^4` for an integer `n`, whose shortest decimal
/// form is exactly that fraction, so integer formatting gives the same text.
fn write_load(out: &mut Vec<u8>, load: f64) {
    let scaled = (load * 10_000.0).round();
    if !(0.0..1e12).contains(&scaled) {
        serde_json::to_writer(out, &rounded_load(load)).expect("a finite load serializes");
        return;
    }
    let n = scaled as u64;
    out.extend_from_slice(itoa::Buffer::new().format(n / 10_000).as_bytes());
    out.push(b'.');
    let mut frac = n % 10_000;
    if frac == 0 {
        out.push(b'0');
        return;
    }
    let mut digits = 4;
    while frac % 10 == 0 {
        frac /= 10;
        digits -= 1;
    }
    let mut buf = [b'0'; 4];
    for slot in buf[..digits].iter_mut().rev() {
        *slot = b'0' + (frac % 10) as u8;
        frac /= 10;
    }
    out.extend_from_slice(&buf[..digits]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_api::{Gateway, GatewaysAnswer};
    use proptest::prelude::*;
    use registry::{NodeState, Ports};
    use std::sync::Arc;

    proptest! {
        /// The hand-assembled answer is exactly what serde would write.
        #[test]
        fn rendered_answer_equals_serde(
            nodes in proptest::collection::vec(("[a-z0-9._-]{1,12}", "\\PC{0,12}", proptest::option::of("\\PC{0,20}"), 0u64..2000, any::<bool>(), proptest::option::of("[a-z0-9-]{1,8}")), 1..6),
            region in proptest::option::of(prop_oneof!["[a-zA-Z0-9._-]{1,10}", "\\PC{0,10}"]),
            revision in any::<i64>(), stale in any::<bool>(), proto in 0usize..3,
        ) {
            let records: Vec<Arc<NodeRecord>> = nodes.iter().enumerate().map(|(i, (id, region, domain, conns, v6, dc))| Arc::new(NodeRecord {
                id: format!("{id}{i}"),
                ip: if *v6 { "2001:db8::1".parse().unwrap() } else { "192.0.2.1".parse().unwrap() },
                ports: Ports { tcp: Some(1), ws: Some(2), wss: Some(3) },
                region: region.clone(), capacity: 1000, connections: *conns,
                ipv6: (i % 2 == 0).then(|| "2001:db8::2".parse().unwrap()),
                domain: domain.clone(), zone: None, isp: dc.as_ref().filter(|_| i % 2 == 0).map(|d| format!("i{d}")), state: NodeState::Serving, healthy: true,
                updated_ms: None, sampled_ms: None, sample_age_ms: None, applied_command: None, hook: None, labels: Default::default(), dc: dc.as_deref().map(Into::into),
            })).collect();
            let proto = Proto::ALL[proto];
            let json: Vec<NodeJson> = records.iter().map(|r| NodeJson::of(r)).collect();
            // Dual-stack nodes answer in the family asked for; alternate between both.
            let chosen: Vec<(usize, IpAddr, f64)> = records.iter().enumerate().map(|(i, r)| (
                i,
                if i % 3 == 0 { r.addr_for(Some(registry::record::IpFamily::V6)).unwrap_or(r.ip) } else { r.ip },
                r.load(),
            )).collect();
            let cfg = FileConfig::default();
            let mut rendered = Vec::new();
            let entries = chosen.iter().map(|&(i, ip, load)| (json[i].entry(proto, ip), load));
            render_answer(&mut rendered, entries, region.as_deref(), &answer_tail(&cfg), revision, stale);
            let expected = GatewaysAnswer {
                gateways: chosen.iter().map(|&(i, ip, load)| {
                    let r = &records[i];
                    Gateway { id: r.id.clone(), ip, port: r.ports.get(proto).unwrap(), proto, region: r.region.clone(),
                              dc: r.dc.as_deref().map(Into::into), isp: r.isp.clone(), domain: r.domain.clone(), load: rounded_load(load) }
                }).collect(),
                region: region.clone(), ttl_secs: cfg.ttl_secs, heartbeat_secs: cfg.heartbeat_secs,
                backoff: cfg.backoff, revision, stale,
            };
            prop_assert_eq!(String::from_utf8(rendered).unwrap(), serde_json::to_string(&expected).unwrap());
        }
    }

    proptest! {
        /// Loads are written exactly as serde_json writes the rounded value.
        #[test]
        fn load_text_equals_serde(load in prop_oneof![
            0.0f64..2.0,
            (0u64..100_000_000).prop_map(|n| n as f64 / 10_000.0),
            (0u64..20_000).prop_map(|n| n as f64 / 10_000.0 + 0.00005),
            1e7f64..1e13,
        ]) {
            let mut out = Vec::new();
            write_load(&mut out, load);
            prop_assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&rounded_load(load)).unwrap());
        }
    }
}
