//! Each query counted in the metrics (`router_dns_*`) and the fleet page's totals, and
//! the labels it is counted under.

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use super::{Dns, Transport};
use crate::metrics::DnsLabels;

pub(super) const TRANSPORTS: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Https];

impl Dns {
    /// Counts one query in the metrics (`rcode` `None`: nothing was sent).
    pub fn count(&self, transport: Transport, qtype: &'static str, rcode: Option<&'static str>) {
        let m = &self.metrics;
        let rcode = rcode.unwrap_or("dropped");
        let (Some(q), Some(r)) = (
            crate::metrics::dns::qtype_index(qtype),
            crate::metrics::dns::rcode_index(rcode),
        ) else {
            return;
        };
        m.totals.add_at(q, r);
        let t = TRANSPORTS.iter().position(|x| *x == transport).unwrap_or(0);
        let i = (t * crate::metrics::dns::QTYPES.len() + q) * crate::metrics::dns::RCODES.len() + r;
        self.series[i]
            .get_or_init(|| {
                m.queries
                    .get_or_create(&DnsLabels {
                        transport: transport.as_str(),
                        qtype,
                        rcode,
                    })
                    .clone()
            })
            .inc();
    }
}

pub(super) fn rrl_label(action: &'static str) -> crate::metrics::DnsRrlLabels {
    crate::metrics::DnsRrlLabels { action }
}

/// The query type as a metrics label: the few the zone answers, else `other`.
pub fn qtype_label_of(t: RecordType) -> &'static str {
    match t {
        RecordType::A => "A",
        RecordType::AAAA => "AAAA",
        RecordType::SOA => "SOA",
        RecordType::NS => "NS",
        RecordType::ANY => "ANY",
        _ => "other",
    }
}

/// The response code as a metrics label.
pub fn rcode_label(c: ResponseCode) -> &'static str {
    match c {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        _ => "other",
    }
}
