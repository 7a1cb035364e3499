//! The DNS side's metrics (`router_dns_*`), and the totals of queries by type and
//! response code for the fleet page (`/ops`), which reads them without walking the
//! metrics families.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Serialize;

use super::{DnsLabels, DnsRrlLabels, DnsTcpLabels};

/// What the DNS side (`dns`, and DNS over HTTPS) counts.
#[derive(Clone, Default)]
pub struct DnsMetrics {
    /// DNS queries by transport, type and response code.
    pub queries: Family<DnsLabels, Counter>,
    /// DNS answers held back by the response-rate limit.
    pub rrl: Family<DnsRrlLabels, Counter>,
    /// DNS-over-TCP connections the server closed or refused, by reason.
    pub tcp_closed: Family<DnsTcpLabels, Counter>,
    /// The same DNS counts as totals, for the fleet page.
    pub totals: Arc<DnsTotals>,
}

impl DnsMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "dns_queries",
            "DNS queries by transport, query type and response code",
            self.queries.clone(),
        );
        registry.register(
            "dns_rrl",
            "DNS answers over the response-rate limit, dropped or sent truncated",
            self.rrl.clone(),
        );
        registry.register(
            "dns_tcp_closed_by_server",
            "DNS-over-TCP connections the server closed or refused, by reason",
            self.tcp_closed.clone(),
        );
    }
}

/// Query types as counted (see [`crate::dns::qtype_label_of`]), plus what is not a query.
pub const QTYPES: [&str; 9] = [
    "A",
    "AAAA",
    "SOA",
    "NS",
    "ANY",
    "other",
    "httpdns",
    "malformed",
    "response",
];
/// Response codes as counted (see [`crate::dns::rcode_label`]), plus `dropped`.
pub const RCODES: [&str; 8] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "other", "dropped",
];

/// The index of a query-type label in [`QTYPES`].
pub fn qtype_index(qtype: &str) -> Option<usize> {
    QTYPES.iter().position(|t| *t == qtype)
}

/// The index of a response-code label in [`RCODES`].
pub fn rcode_index(rcode: &str) -> Option<usize> {
    RCODES.iter().position(|c| *c == rcode)
}

/// Running totals since start.
#[derive(Debug, Default)]
pub struct DnsTotals {
    by_qtype: [AtomicU64; QTYPES.len()],
    by_rcode: [AtomicU64; RCODES.len()],
    rrl_dropped: AtomicU64,
    rrl_slipped: AtomicU64,
}

/// What the fleet page shows.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DnsStatus {
    /// The zone served.
    pub zone: String,
    /// Queries by type, since start (types never seen are left out).
    pub by_type: BTreeMap<&'static str, u64>,
    /// Queries by response code, since start (`dropped`: nothing was sent).
    pub by_rcode: BTreeMap<&'static str, u64>,
    /// Answers the response-rate limit dropped.
    pub rrl_dropped: u64,
    /// Answers the response-rate limit sent truncated.
    pub rrl_slipped: u64,
}

impl DnsTotals {
    /// Counts one query.
    pub fn add(&self, qtype: &str, rcode: &str) {
        if let (Some(q), Some(r)) = (qtype_index(qtype), rcode_index(rcode)) {
            self.add_at(q, r);
        }
    }

    /// Counts one query of type `QTYPES[q]` answered `RCODES[r]`.
    pub fn add_at(&self, q: usize, r: usize) {
        self.by_qtype[q].fetch_add(1, Ordering::Relaxed);
        self.by_rcode[r].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one answer held back by the rate limit (`slip`: sent truncated).
    pub fn rrl(&self, slip: bool) {
        let c = if slip {
            &self.rrl_slipped
        } else {
            &self.rrl_dropped
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The totals now, for `zone`.
    pub fn status(&self, zone: &str) -> DnsStatus {
        let pick = |names: &[&'static str], counts: &[AtomicU64]| {
            names
                .iter()
                .zip(counts)
                .map(|(n, c)| (*n, c.load(Ordering::Relaxed)))
                .filter(|(_, c)| *c > 0)
                .collect()
        };
        DnsStatus {
            zone: zone.to_string(),
            by_type: pick(&QTYPES, &self.by_qtype),
            by_rcode: pick(&RCODES, &self.by_rcode),
            rrl_dropped: self.rrl_dropped.load(Ordering::Relaxed),
            rrl_slipped: self.rrl_slipped.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_by_type_and_code() {
        let t = DnsTotals::default();
        t.add("A", "NOERROR");
        t.add("A", "NXDOMAIN");
        t.add("malformed", "FORMERR");
        t.add("bogus", "bogus");
        t.rrl(true);
        t.rrl(false);
        t.rrl(false);
        let s = t.status("gw.example.com");
        assert_eq!(s.by_type, BTreeMap::from([("A", 2), ("malformed", 1)]));
        assert_eq!(
            s.by_rcode,
            BTreeMap::from([("NOERROR", 1), ("NXDOMAIN", 1), ("FORMERR", 1)])
        );
        assert_eq!((s.rrl_dropped, s.rrl_slipped), (2, 1));
    }
}
