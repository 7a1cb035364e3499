//! The records the zone makes of its own: the SOA (serial: the registry revision) and
//! the A or AAAA record of an address.

use std::net::IpAddr;

use hickory_proto::rr::rdata::{A, AAAA, SOA};
use hickory_proto::rr::{Name, RData, Record};

use super::Dns;

impl Dns {
    pub(super) fn soa(&self, owner: Name) -> Record {
        let revision = self
            .serving
            .snapshot
            .load()
            .as_deref()
            .map_or(0, |s| s.revision);
        let mname = self
            .nameservers
            .first()
            .cloned()
            .unwrap_or_else(|| owner.clone());
        let rname = self.hostmaster.clone().unwrap_or_else(|| owner.clone());
        let ttl = self.cfg.ttl;
        Record::from_rdata(
            owner,
            ttl,
            RData::SOA(SOA::new(
                mname,
                rname,
                revision as u32,
                3600,
                600,
                86_400,
                ttl,
            )),
        )
    }
}

/// An A or AAAA record of `ip`.
pub(super) fn address(name: &Name, ttl: u32, ip: IpAddr) -> Record {
    let rdata = match ip {
        IpAddr::V4(a) => RData::A(A(a)),
        IpAddr::V6(a) => RData::AAAA(AAAA(a)),
    };
    Record::from_rdata(name.clone(), ttl, rdata)
}
