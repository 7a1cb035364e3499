//! The query nearly every client sends, answered without building a message: one
//! question, an A or AAAA of a gateway name, at most an OPT record beside it.
//!
//! Only the header, the question and the OPT record are decoded (by `hickory-proto`);
//! the answer is written into the caller's buffer from bytes fixed per query type and
//! TTL: the header, the question as it was sent, then per chosen gateway a record
//! whose name points at the question's (`C0 0C`), then our OPT. Only the addresses are
//! chosen per query. Anything else, and an answer that would not fit the client's UDP
//! size, goes to the full decoder and encoder in `query.rs`; the test
//! `fast_answers_equal_the_full_encoders` holds the two to the same bytes.

use std::borrow::Cow;
use std::net::IpAddr;

use smallvec::SmallVec;

use hickory_proto::op::{Edns, Header, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::EdnsCode;
use hickory_proto::rr::{DNSClass, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable};

use super::answer::Found;
use super::counts::qtype_label_of;
use super::edns::{client_subnet, reply_edns, udp_limit, MAX_UDP_PAYLOAD};
use super::zone::Target;
use super::{Dns, Transport};

/// Our OPT record when the query's asks for nothing back: the root name, type OPT,
/// our payload size, no extended code, version 0, no flags, no options.
const PLAIN_OPT: [u8; 11] = {
    let p = MAX_UDP_PAYLOAD.to_be_bytes();
    [0, 0, 41, p[0], p[1], 0, 0, 0, 0, 0, 0]
};

/// A query the fast path may answer, as read.
pub(super) struct Question<'a> {
    pub(super) header: Header,
    /// The question's bytes as sent (name, type, class), echoed in the answer.
    raw: &'a [u8],
    /// The name's labels, first to last, read in place.
    labels: SmallVec<[&'a [u8]; 8]>,
    /// A or AAAA.
    pub(super) qtype: RecordType,
    pub(super) edns: Option<Edns>,
}

/// What the fast path made of a query.
pub(super) enum Fast {
    /// Not its to answer: nothing was counted or chosen.
    Declined,
    /// Written, with its TTL.
    Written(u32),
    /// Chosen, with nothing to answer (an unknown region, or no gateway): the full
    /// encoder writes this negative answer.
    Found(Found),
}

impl<'a> Question<'a> {
    /// The query's parts when it is a standard query of one question of class IN for
    /// an A or AAAA record, with nothing beside it but an OPT record of version 0;
    /// `None` for anything else.
    pub(super) fn read(packet: &'a [u8]) -> Option<Question<'a>> {
        let mut d = BinDecoder::new(packet);
        let header = Header::read(&mut d).ok()?;
        if header.message_type() != MessageType::Query
            || header.op_code() != OpCode::Query
            || header.query_count() != 1
            || header.answer_count() != 0
            || header.name_server_count() != 0
            || header.additional_count() > 1
        {
            return None;
        }
        // The question is read in place: its name is labels only (a name compressed in
        // the question is legal but never seen, and the echo below copies the question
        // whole, so a pointer in it would point elsewhere).
        let start = d.index();
        let (labels, name_len) = plain_name(&packet[start..])?;
        let fixed = packet.get(start + name_len..start + name_len + 4)?;
        let raw = &packet[start..start + name_len + 4];
        let qtype = RecordType::from(u16::from_be_bytes([fixed[0], fixed[1]]));
        let class = DNSClass::from(u16::from_be_bytes([fixed[2], fixed[3]]));
        if class != DNSClass::IN || !matches!(qtype, RecordType::A | RecordType::AAAA) {
            return None;
        }
        d.read_slice(raw.len()).ok()?;
        let edns = match header.additional_count() {
            0 => None,
            _ => {
                let record = Record::read(&mut d).ok()?;
                if record.record_type() != RecordType::OPT {
                    return None;
                }
                let edns = Edns::from(&record);
                if edns.version() > 0 {
                    return None;
                }
                Some(edns)
            }
        };
        Some(Question {
            header,
            raw,
            labels,
            qtype,
            edns,
        })
    }

    /// The question as the full encoder takes it (decoded again: only an answer the
    /// fast path found nothing for needs it).
    pub(super) fn query(&self) -> Option<Query> {
        Query::read(&mut BinDecoder::new(self.raw)).ok()
    }
}

/// The labels of the name at the start of `raw`, first to last, and its length on the
/// wire; `None` unless it is labels only (no pointer), each of at most 63 bytes, the
/// whole at most 255 (RFC 1035 §3.1; the full decoder's limits too).
pub(super) fn plain_name(raw: &[u8]) -> Option<(SmallVec<[&[u8]; 8]>, usize)> {
    let mut labels = SmallVec::new();
    let mut i = 0;
    loop {
        let len = usize::from(*raw.get(i)?);
        if len == 0 {
            return (i < MAX_NAME).then_some((labels, i + 1));
        }
        // 0xC0 is a pointer, 0x40 and 0x80 are reserved: neither is a length.
        if len & 0xC0 != 0 || i + 1 + len >= MAX_NAME {
            return None;
        }
        labels.push(raw.get(i + 1..i + 1 + len)?);
        i += 1 + len;
    }
}

/// The longest name on the wire, its final root label included.
const MAX_NAME: usize = 255;

impl Dns {
    /// Answers `q` into `out` when it asks for a gateway name's addresses (and the
    /// answer fits the client's UDP size whatever is chosen).
    pub(super) fn answer_fast(
        &self,
        q: &Question<'_>,
        client: IpAddr,
        transport: Transport,
        pass: crate::guard::Pass,
        out: &mut Vec<u8>,
    ) -> Fast {
        let Some(zone) = &self.zone else {
            return Fast::Declined;
        };
        let Target::Gateways { region, proto } = zone.classify_labels(q.labels.iter().copied())
        else {
            return Fast::Declined;
        };
        // Our OPT: fixed, unless the client subnet is echoed.
        let opt: Cow<'_, [u8]> = match &q.edns {
            None => Cow::Borrowed(&[]),
            Some(e) if e.option(EdnsCode::Subnet).is_none() => Cow::Borrowed(&PLAIN_OPT),
            Some(e) => match reply_edns(e).to_bytes() {
                Ok(b) => Cow::Owned(b),
                Err(_) => return Fast::Declined,
            },
        };
        // It must fit whatever is chosen: else the full path decides what a client
        // that cannot take them all gets.
        let most = 12 + q.raw.len() + self.cfg.count * (12 + 16) + opt.len();
        if transport == Transport::Udp && most > udp_limit(q.edns.as_ref()) {
            return Fast::Declined;
        }
        let subnet = client_subnet(q.edns.as_ref());
        let weight = self.herd_weight(client, pass, self.transport_weight(transport));
        let qtype = q.qtype;
        let ips = self.gateway_addrs(region.as_deref(), proto, qtype, client, subnet, weight);
        let ips = match ips {
            Some(ips) if !ips.is_empty() => ips,
            // The region named is not known, or nothing to answer: the SOA goes with it.
            unanswered => {
                let rcode = match unanswered {
                    None => ResponseCode::NXDomain,
                    Some(_) => ResponseCode::NoError,
                };
                return Fast::Found(self.with_negative_soa(Found {
                    rcode,
                    answers: Vec::new(),
                    authority: Vec::new(),
                    authoritative: true,
                }));
            }
        };
        let h = &q.header;
        out.extend_from_slice(&h.id().to_be_bytes());
        // QR, opcode QUERY, AA, RD as asked; RA 0, AD 0, CD as asked, NOERROR.
        out.push(0x80 | 0x04 | u8::from(h.recursion_desired()));
        out.push(if h.checking_disabled() { 0x10 } else { 0 });
        for count in [1, ips.len() as u16, 0, u16::from(q.edns.is_some())] {
            out.extend_from_slice(&count.to_be_bytes());
        }
        out.extend_from_slice(q.raw);
        let ttl = self.cfg.ttl.to_be_bytes();
        for ip in &ips {
            // The name: a pointer to the question's, at offset 12. Class IN.
            out.extend_from_slice(&[0xC0, 0x0C]);
            let (rtype, v4, v6) = match ip {
                IpAddr::V4(a) => (RecordType::A, a.octets(), [0; 16]),
                IpAddr::V6(a) => (RecordType::AAAA, [0; 4], a.octets()),
            };
            let rdata: &[u8] = if ip.is_ipv4() { &v4 } else { &v6 };
            out.extend_from_slice(&u16::from(rtype).to_be_bytes());
            out.extend_from_slice(&[0, 1]);
            out.extend_from_slice(&ttl);
            out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            out.extend_from_slice(rdata);
        }
        out.extend_from_slice(&opt);
        self.count(transport, qtype_label_of(qtype), Some("NOERROR"));
        Fast::Written(self.cfg.ttl)
    }
}
