//! The router answers DNS for its fleet's zone, from the same snapshot as `/gateways`.
//!
//! * [`config`]: `[dns]` and `[httpdns]`.
//! * [`zone`]: what each name under the zone means.
//! * [`Dns`] (here): one query in, one answer out, whatever carried it. Gateways are
//!   chosen by [`crate::schedule::select_weighted`], under the same rules as
//!   `/gateways`, and each answer counts `dns.weight` clients in the herd accounting.
//! * [`server`]: UDP and TCP sockets. [`rrl`]: response-rate limiting on UDP.
//!   [`tcp_conns`]: the caps on DNS-over-TCP connections.
//! * [`stats`]: totals for the fleet page; the metrics are `router_dns_*`.
//! * [`http`]: DNS over HTTPS (RFC 8484), the JSON form (`/resolve`) and the
//!   Alibaba-style HTTPDNS answer (`/d`, `/sign_d`).
//!
//! The wire format is `hickory-proto`'s. The sockets are served here rather than by
//! `hickory-server`'s `ServerFuture`: that one sizes UDP answers to non-EDNS clients at
//! 4,096 bytes instead of 512 (so it never sets TC for them), reads each UDP socket
//! from one task, and logs every query at `info`.

pub mod rrl;
pub mod server;
pub mod tcp_conns;
pub mod zone;

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use registry::record::IpFamily;
use registry::Proto;

use crate::config::dns::{self as config, DnsConfig};
use crate::guard::Pass;
use crate::metrics::DnsLabels;
use crate::schedule::{select_weighted, Query as Wanted, Rules};
use crate::state::AppState;
use zone::{Target, Zone};

/// What carried a query: UDP answers are size-limited and rate-limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// DNS over UDP.
    Udp,
    /// DNS over TCP.
    Tcp,
    /// DNS over HTTPS, or the JSON form.
    Https,
}

impl Transport {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Https => "https",
        }
    }
}

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

/// The DNS side of one router.
pub struct Dns {
    state: Arc<AppState>,
    cfg: DnsConfig,
    zone: Option<Zone>,
    apex: Option<Name>,
    nameservers: Vec<Name>,
    hostmaster: Option<Name>,
    /// Region names of the configuration (CIDR map, fallbacks, default).
    configured_regions: Vec<String>,
    rrl: Option<rrl::Rrl>,
    /// `router_dns_queries_total` series by (transport, type, code), taken from the
    /// family once each, so a query does no map lookup under a lock.
    series: Box<[std::sync::OnceLock<prometheus_client::metrics::counter::Counter>]>,
}

const TRANSPORTS: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Https];

/// The largest UDP answer sent to a client that advertises more.
const MAX_UDP_PAYLOAD: u16 = 1232;

impl Dns {
    /// The DNS side of the router whose state is `state`.
    pub fn new(state: Arc<AppState>) -> Dns {
        Dns::with_limiter_clock(state, crate::clock::LimiterClock::default())
    }

    /// [`Dns::new`] with the response-rate limit on `clock` (tests pass a fake one).
    pub fn with_limiter_clock(state: Arc<AppState>, clock: crate::clock::LimiterClock) -> Dns {
        let cfg = state.config.dns.clone();
        let regions_cfg = &state.config.regions;
        let mut configured_regions: Vec<String> = regions_cfg
            .cidrs
            .values()
            .chain(regions_cfg.fallbacks.keys())
            .chain(regions_cfg.fallbacks.values().flatten())
            .cloned()
            .chain((!regions_cfg.default.is_empty()).then(|| regions_cfg.default.clone()))
            .collect();
        configured_regions.sort();
        configured_regions.dedup();
        let (zone, apex, nameservers, hostmaster) = if cfg.enabled() {
            let apex = config::parse_domain(&cfg.zone).expect("validated zone");
            let ns: Vec<String> = if cfg.nameservers.is_empty() {
                vec![format!("ns.{apex}")]
            } else {
                cfg.nameservers.clone()
            };
            let hostmaster = if cfg.hostmaster.is_empty() {
                format!("hostmaster.{apex}")
            } else {
                cfg.hostmaster.clone()
            };
            let fqdn = |n: &str| Name::from_ascii(format!("{}.", n.trim_end_matches('.')));
            (
                Some(Zone::new(&apex, &ns)),
                fqdn(&apex).ok(),
                ns.iter().filter_map(|n| fqdn(n).ok()).collect(),
                fqdn(&hostmaster).ok(),
            )
        } else {
            (None, None, Vec::new(), None)
        };
        Dns {
            rrl: rrl::Rrl::with_clock(&cfg, clock),
            state,
            cfg,
            zone,
            apex,
            nameservers,
            hostmaster,
            configured_regions,
            series: (0..TRANSPORTS.len()
                * crate::metrics::dns::QTYPES.len()
                * crate::metrics::dns::RCODES.len())
                .map(|_| std::sync::OnceLock::new())
                .collect(),
        }
    }

    /// The router's state.
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// The zone, when DNS is on.
    pub fn zone(&self) -> Option<&Zone> {
        self.zone.as_ref()
    }

    /// The response-rate limiter, when on.
    pub fn rrl(&self) -> Option<&rrl::Rrl> {
        self.rrl.as_ref()
    }

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
                        let mut ips = self.gateways(region.as_deref(), proto, family, weight);
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
            return Some(self.state.regions.lookup(ip).map(str::to_string));
        };
        if let Some(r) = self
            .configured_regions
            .iter()
            .find(|r| r.eq_ignore_ascii_case(label))
        {
            return Some(Some(r.clone()));
        }
        let snap = self.state.snapshot.load();
        let found = snap
            .as_deref()?
            .regions()
            .find(|r| r.eq_ignore_ascii_case(label))
            .map(|r| Some(r.to_string()));
        found
    }

    /// Up to `dns.count` gateways for `region`, least loaded first, counted in the herd
    /// accounting as `weight` clients.
    fn gateways(
        &self,
        region: Option<&str>,
        proto: Proto,
        family: IpFamily,
        weight: u64,
    ) -> Vec<IpAddr> {
        let snap = self.state.snapshot.load();
        let Some(snap) = snap.as_deref() else {
            return Vec::new();
        };
        let config = &self.state.config;
        let fallbacks = region
            .and_then(|r| config.regions.fallbacks.get(r))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let wanted = Wanted {
            proto,
            count: self.cfg.count,
            region,
            family: Some(family),
        };
        let rules = Rules {
            herd: self.state.herd_view(),
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
        let all = self.state.router_addrs.lock().expect("router_addrs lock");
        let mut out: Vec<IpAddr> = Vec::new();
        for ip in all.iter().flatten() {
            if !out.contains(ip) {
                out.push(*ip);
            }
        }
        out
    }

    fn soa(&self, owner: Name) -> Record {
        let revision = self
            .state
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

    /// One DNS message in, the answer out; `None` when nothing should be sent (a
    /// response, a packet too short to answer, or a drop of the rate limit).
    pub fn handle(&self, packet: &[u8], client: IpAddr, transport: Transport) -> Option<Vec<u8>> {
        self.handle_ttl(packet, client, transport)
            .map(|(bytes, _)| bytes)
    }

    /// [`Dns::handle`], with the smallest TTL of the answer (0 when it holds no record):
    /// how long an HTTP cache may keep it.
    pub fn handle_ttl(
        &self,
        packet: &[u8],
        client: IpAddr,
        transport: Transport,
    ) -> Option<(Vec<u8>, u32)> {
        let guard = &self.state.guard;
        let pass = match transport {
            // Anyone can forge a UDP source: the block list only, no budget (response-
            // rate limiting is UDP's budget).
            Transport::Udp => match guard.blocked(client) {
                Some(_) => None,
                None => Some(Pass {
                    exempt: guard.allowed(client),
                }),
            },
            _ => guard.check(client).ok(),
        };
        self.handle_checked(packet, client, transport, pass)
    }

    /// The clients an answer to `client` counts in the herd accounting: the
    /// transport's weight, within its network's share (see [`crate::herd::budget`]).
    pub fn herd_weight(&self, client: IpAddr, pass: Pass, weight: u64) -> u64 {
        let routers = self
            .state
            .routers
            .load(std::sync::atomic::Ordering::Relaxed);
        self.state.guard.herd_weight(client, pass, weight, routers)
    }

    /// [`Dns::handle_ttl`] for a client the guard already judged: `pass` is `None`
    /// when it refused it (the answer is then REFUSED, before any other work).
    pub fn handle_checked(
        &self,
        packet: &[u8],
        client: IpAddr,
        transport: Transport,
        pass: Option<Pass>,
    ) -> Option<(Vec<u8>, u32)> {
        let verdict = match (transport, &self.rrl) {
            (Transport::Udp, Some(rrl)) => rrl.check(client),
            _ => rrl::Verdict::Answer,
        };
        let m = &self.state.metrics;
        if verdict == rrl::Verdict::Drop {
            m.dns_rrl.get_or_create(&rrl_label("drop")).inc();
            m.dns_totals.rrl(false);
            return None;
        }
        let request = match Message::from_vec(packet) {
            Ok(r) => r,
            Err(_) => {
                let reply = form_error(packet);
                self.count(transport, "malformed", reply.as_ref().map(|_| "FORMERR"));
                return reply.map(|b| (b, 0));
            }
        };
        if request.message_type() != MessageType::Query {
            self.count(transport, "response", None);
            return None;
        }
        let mut reply = Message::new();
        reply
            .set_id(request.id())
            .set_message_type(MessageType::Response)
            .set_op_code(request.op_code())
            .set_recursion_desired(request.recursion_desired())
            .set_checking_disabled(request.checking_disabled());
        let request_edns = request.extensions().as_ref();
        if let Some(e) = request_edns {
            let mut edns = Edns::new();
            edns.set_max_payload(MAX_UDP_PAYLOAD);
            edns.set_dnssec_ok(false);
            if let Some(EdnsOption::Subnet(s)) = e.option(EdnsCode::Subnet) {
                // The answer holds for the client's whole subnet as it was sent.
                let mut scope = ClientSubnet::new(s.addr(), s.source_prefix(), 0);
                scope.set_scope_prefix(s.source_prefix());
                edns.options_mut().insert(EdnsOption::Subnet(scope));
            }
            reply.set_edns(edns);
        }
        let Some(pass) = pass else {
            reply.add_queries(request.queries().iter().take(1).cloned());
            reply.set_response_code(ResponseCode::Refused);
            self.count(transport, "other", Some("REFUSED"));
            return reply.to_vec().ok().map(|b| (b, 0));
        };
        let qtype_label;
        // The smallest TTL of what is answered (0 when no record is).
        let mut ttl = 0;
        if verdict == rrl::Verdict::Slip {
            m.dns_rrl.get_or_create(&rrl_label("slip")).inc();
            m.dns_totals.rrl(true);
            reply.add_queries(request.queries().iter().cloned());
            reply.set_truncated(true);
            return reply.to_vec().ok().map(|b| (b, 0));
        }
        if request.op_code() != OpCode::Query {
            reply.set_response_code(ResponseCode::NotImp);
            qtype_label = "other";
        } else if request.queries().len() != 1 || request.edns_version_bad() {
            reply.set_response_code(ResponseCode::FormErr);
            qtype_label = "other";
        } else {
            let q: &Query = &request.queries()[0];
            qtype_label = qtype_label_of(q.query_type());
            reply.add_query(q.clone());
            if q.query_class() != DNSClass::IN {
                reply.set_response_code(ResponseCode::Refused);
            } else {
                let subnet = request_edns.and_then(|e| match e.option(EdnsCode::Subnet) {
                    Some(EdnsOption::Subnet(s)) if s.source_prefix() > 0 => Some(s.addr()),
                    _ => None,
                });
                // A resolver's answer reaches many clients; one over HTTPS, one client.
                let weight = match transport {
                    Transport::Https => 1,
                    _ => self.cfg.weight,
                };
                let weight = self.herd_weight(client, pass, weight);
                let found = self.lookup(q.name(), q.query_type(), client, subnet, weight);
                ttl = found.min_ttl().unwrap_or(0);
                reply
                    .set_response_code(found.rcode)
                    .set_authoritative(found.authoritative)
                    .add_answers(found.answers)
                    .add_name_servers(found.authority);
            }
        }
        let mut bytes = reply.to_vec().ok()?;
        if transport == Transport::Udp {
            let limit =
                request_edns.map_or(512, |e| e.max_payload().clamp(512, MAX_UDP_PAYLOAD)) as usize;
            if bytes.len() > limit {
                reply.take_answers();
                reply.take_name_servers();
                reply.take_additionals();
                reply.set_truncated(true);
                bytes = reply.to_vec().ok()?;
            }
        }
        self.count(
            transport,
            qtype_label,
            Some(rcode_label(reply.response_code())),
        );
        Some((bytes, ttl))
    }

    /// Counts one query in the metrics (`rcode` `None`: nothing was sent).
    pub fn count(&self, transport: Transport, qtype: &'static str, rcode: Option<&'static str>) {
        let m = &self.state.metrics;
        let rcode = rcode.unwrap_or("dropped");
        let (Some(q), Some(r)) = (
            crate::metrics::dns::qtype_index(qtype),
            crate::metrics::dns::rcode_index(rcode),
        ) else {
            return;
        };
        m.dns_totals.add_at(q, r);
        let t = TRANSPORTS.iter().position(|x| *x == transport).unwrap_or(0);
        let i = (t * crate::metrics::dns::QTYPES.len() + q) * crate::metrics::dns::RCODES.len() + r;
        self.series[i]
            .get_or_init(|| {
                m.dns_queries
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

/// Whether the request asked for an EDNS version we do not speak.
trait EdnsVersion {
    fn edns_version_bad(&self) -> bool;
}

impl EdnsVersion for Message {
    fn edns_version_bad(&self) -> bool {
        self.extensions().as_ref().is_some_and(|e| e.version() > 0)
    }
}

/// An A or AAAA record of `ip`.
fn address(name: &Name, ttl: u32, ip: IpAddr) -> Record {
    let rdata = match ip {
        IpAddr::V4(a) => RData::A(A(a)),
        IpAddr::V6(a) => RData::AAAA(AAAA(a)),
    };
    Record::from_rdata(name.clone(), ttl, rdata)
}

/// FORMERR for a packet that does not parse, when its header does and it is a query;
/// nothing otherwise.
fn form_error(packet: &[u8]) -> Option<Vec<u8>> {
    let header = Header::read(&mut BinDecoder::new(packet)).ok()?;
    if header.message_type() != MessageType::Query {
        return None;
    }
    let mut reply = Header::response_from_request(&header);
    reply.set_response_code(ResponseCode::FormErr);
    reply.set_query_count(0);
    let mut m = Message::new();
    m.set_header(reply);
    m.to_vec().ok()
}

fn rrl_label(action: &'static str) -> crate::metrics::DnsRrlLabels {
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

#[cfg(test)]
mod tests;
