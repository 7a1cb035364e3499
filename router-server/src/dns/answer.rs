//! The answer to one question, before it is put in a message: the zone's records, and
//! the gateways chosen from the snapshot for the client's (or the named) region.

use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::NS;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use registry::record::IpFamily;
use registry::Proto;

use super::records::address;
use super::zone::Target;
use super::Dns;
use crate::schedule::{select_weighted, Query as Wanted, Rules};

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
                let family = if qtype == RecordType::A {
                    IpFamily::V4
                } else {
                    IpFamily::V6
                };
                match self.region_named(region.as_deref(), client, subnet) {
                    Some(region) => {
                        let proto = proto.unwrap_or(self.cfg.proto);
                        let regions = self.serving.regions.load();
                        let isp = regions.isp(subnet.unwrap_or(client));
                        let mut ips = self.gateways(region.as_deref(), isp, proto, family, weight);
                        // An RRset holds no duplicates (gateways may share an address).
                        let mut seen = std::collections::HashSet::with_capacity(ips.len());
                        ips.retain(|ip| seen.insert(*ip));
                        for ip in ips {
                            found.answers.push(address(name, ttl, ip));
                        }
                    }
                    None => found.rcode = ResponseCode::NXDomain,
                }
            }
            (Target::Gateways { region, .. }, _) => {
                if region.is_some() && self.region_named(region.as_deref(), client, None).is_none()
                {
                    found.rcode = ResponseCode::NXDomain;
                }
            }
            (Target::NameServer, _) => {}
        }
        if found.answers.is_empty() {
            // Negative answers (NXDOMAIN, no data) carry the SOA for negative caching.
            if let Some(apex) = &self.apex {
                found.authority.push(self.soa(apex.clone()));
            }
        }
        found
    }

    /// The region of an answer: the one named, when the fleet or the configuration
    /// knows it (`None` when not); else the client's, by its subnet or address.
    fn region_named(
        &self,
        named: Option<&str>,
        client: IpAddr,
        subnet: Option<IpAddr>,
    ) -> Option<Option<String>> {
        let Some(label) = named else {
            let ip = subnet.unwrap_or(client);
            return Some(self.serving.regions.load().lookup(ip).map(str::to_string));
        };
        if let Some(r) = self.serving.regions.load().named(label) {
            return Some(Some(r.to_string()));
        }
        let snap = self.serving.snapshot.load();
        let found = snap
            .as_deref()?
            .regions()
            .find(|r| r.eq_ignore_ascii_case(label))
            .map(|r| Some(r.to_string()));
        found
    }

    /// Up to `dns.count` gateways for `region` (`isp`'s line first), least loaded
    /// first, counted in the herd accounting as `weight` clients.
    fn gateways(
        &self,
        region: Option<&str>,
        isp: Option<&str>,
        proto: Proto,
        family: IpFamily,
        weight: u64,
    ) -> Vec<IpAddr> {
        let snap = self.serving.snapshot.load();
        let Some(snap) = snap.as_deref() else {
            return Vec::new();
        };
        let config = self.config.load();
        let fallbacks = region
            .and_then(|r| config.regions.fallbacks.get(r))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let policies = self.serving.policies.load();
        let demotions = self.serving.feedback.demotions.load();
        let steer = policies
            .steer(region, isp)
            .demoting(demotions.for_network(region, isp));
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
        select_weighted(snap, &wanted, rules, weight)
            .iter()
            .map(|c| c.ip)
            .collect()
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
