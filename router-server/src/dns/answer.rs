//! The answer to one question, before it is put in a message: the zone's records, and
//! the gateways chosen from the snapshot for the client's (or the named) region.

use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::NS;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use registry::record::IpFamily;
use registry::Proto;
use smallvec::SmallVec;

use super::records::address;
use super::zone::Target;
use super::Dns;
use crate::schedule::{select_weighted, Query as Wanted, Rules};
use crate::state::Reading;

/// The answer to one question, before it is put in a message.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// The response code.
    pub rcode: ResponseCode,
    /// Answer records.
    pub answers: Vec<Record>,
    /// Authority records (the SOA of a negative answer).
    pub authority: Vec<Record>,
    /// True for names of the zone (the AA bit).
    pub authoritative: bool,
}

impl Found {
    fn refused() -> Found {
        Found {
            rcode: ResponseCode::Refused,
            answers: Vec::new(),
            authority: Vec::new(),
            authoritative: false,
        }
    }

    /// The smallest TTL of the answer (for HTTP caching), else of the authority.
    pub fn min_ttl(&self) -> Option<u32> {
        self.answers
            .iter()
            .chain(&self.authority)
            .map(Record::ttl)
            .min()
    }
}

impl Dns {
    /// Answers `name`/`qtype` for a client: `client` is the asker's address (the
    /// resolver's), `subnet` the client subnet it forwarded (EDNS Client Subnet).
    /// Gateways answered count `weight` clients each.
    pub fn lookup(
        &self,
        name: &Name,
        qtype: RecordType,
        client: IpAddr,
        subnet: Option<IpAddr>,
        weight: u64,
    ) -> Found {
        let Some(zone) = &self.zone else {
            return Found::refused();
        };
        let labels: smallvec::SmallVec<[&[u8]; 8]> = name.iter().collect();
        let target = zone.classify_labels(labels.iter().copied());
        let ttl = self.cfg.ttl;
        let mut found = Found {
            rcode: ResponseCode::NoError,
            answers: Vec::new(),
            authority: Vec::new(),
            authoritative: true,
        };
        let is_apex = matches!(
            target,
            Target::Gateways {
                region: None,
                proto: None
            }
        );
        match (&target, qtype) {
            (Target::Outside, _) => return Found::refused(),
            (Target::Missing, _) => found.rcode = ResponseCode::NXDomain,
            (_, RecordType::SOA) if is_apex => found.answers.push(self.soa(name.clone())),
            (_, RecordType::NS) if is_apex => {
                for ns in &self.nameservers {
                    found.answers.push(Record::from_rdata(
                        name.clone(),
                        ttl,
                        RData::NS(NS(ns.clone())),
                    ));
                }
            }
            (Target::NameServer, RecordType::A | RecordType::AAAA) => {
                let v6 = qtype == RecordType::AAAA;
                for ip in self.router_addrs() {
                    if ip.is_ipv6() == v6 {
                        found.answers.push(address(name, ttl, ip));
                    }
                }
            }
            (Target::Gateways { region, proto }, RecordType::A | RecordType::AAAA) => {
                match self.gateway_addrs(region.as_deref(), *proto, qtype, client, subnet, weight) {
                    Some(ips) => {
                        for ip in ips {
                            found.answers.push(address(name, ttl, ip));
                        }
                    }
                    None => found.rcode = ResponseCode::NXDomain,
                }
            }
            (Target::Gateways { region, .. }, _) => {
                if region.is_some()
                    && self
                        .serving
                        .read(&self.config, |r| {
                            self.with_region(r, region.as_deref(), client, None, |_| ())
                        })
                        .is_none()
                {
                    found.rcode = ResponseCode::NXDomain;
                }
            }
            (Target::NameServer, _) => {}
        }
        self.with_negative_soa(found)
    }

    /// `found`, with the zone's SOA as its authority when it answers nothing: negative
    /// answers (NXDOMAIN, no data) carry it for negative caching.
    pub(super) fn with_negative_soa(&self, mut found: Found) -> Found {
        if found.answers.is_empty() {
            if let Some(apex) = &self.apex {
                found.authority.push(self.soa(apex.clone()));
            }
        }
        found
    }

    /// The addresses answered for a gateway name (the `region`'s, else the client's by
    /// `subnet` or `client`; `proto`, else `dns.proto`), least loaded first, each once,
    /// counted in the herd accounting as `weight` clients each. `None` when the region
    /// named is not known (NXDOMAIN).
    pub(super) fn gateway_addrs(
        &self,
        region: Option<&str>,
        proto: Option<Proto>,
        qtype: RecordType,
        client: IpAddr,
        subnet: Option<IpAddr>,
        weight: u64,
    ) -> Option<SmallVec<[IpAddr; 8]>> {
        let family = if qtype == RecordType::AAAA {
            IpFamily::V6
        } else {
            IpFamily::V4
        };
        let proto = proto.unwrap_or(self.cfg.proto);
        self.serving.read(&self.config, |r| {
            self.with_region(r, region, client, subnet, |region| {
                let isp = r.regions.isp(subnet.unwrap_or(client));
                self.gateways(r, region, isp, proto, family, weight)
            })
        })
    }

    /// `f` of the region of an answer: the one named, when the fleet or the
    /// configuration knows it (`None` when not); else the client's, by its subnet or
    /// address.
    fn with_region<'r, R>(
        &self,
        r: &Reading<'r>,
        named: Option<&str>,
        client: IpAddr,
        subnet: Option<IpAddr>,
        f: impl FnOnce(Option<&'r str>) -> R,
    ) -> Option<R> {
        let Some(label) = named else {
            return Some(f(r.regions.lookup(subnet.unwrap_or(client))));
        };
        if let Some(region) = r.regions.named(label) {
            return Some(f(Some(region)));
        }
        let found = r
            .snapshot?
            .regions()
            .find(|region| region.eq_ignore_ascii_case(label));
        found.map(|region| f(Some(region)))
    }

    /// The addresses of up to `dns.count` gateways for `region` (`isp`'s line first),
    /// least loaded first, each once, counted in the herd accounting as `weight` clients.
    fn gateways(
        &self,
        r: &Reading<'_>,
        region: Option<&str>,
        isp: Option<&str>,
        proto: Proto,
        family: IpFamily,
        weight: u64,
    ) -> SmallVec<[IpAddr; 8]> {
        let mut ips = SmallVec::new();
        let Some(snap) = r.snapshot else {
            return ips;
        };
        let config = r.config;
        let fallbacks = region
            .and_then(|r| config.regions.fallbacks.get(r))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let steer = r
            .policies
            .steer(region, isp)
            .demoting(r.demotions.for_network(region, isp));
        let wanted = Wanted {
            proto,
            count: self.cfg.count,
            region,
            isp,
            family: Some(family),
            steer,
        };
        let rules = Rules {
            herd: self.serving.herd_view(),
            max_load: config.max_load,
            fallbacks,
        };
        for c in select_weighted(snap, &wanted, rules, weight) {
            // An RRset holds no duplicates (gateways may share an address).
            if !ips.contains(&c.ip) {
                ips.push(c.ip);
            }
        }
        ips
    }

    /// The live routers' public addresses (`--public-addr`), this router's data centre
    /// first.
    pub fn router_addrs(&self) -> Vec<IpAddr> {
        let all = self.serving.router_addrs.lock().expect("router_addrs lock");
        let mut out: Vec<IpAddr> = Vec::new();
        for ip in all.iter().flatten() {
            if !out.contains(ip) {
                out.push(*ip);
            }
        }
        out
    }
}
