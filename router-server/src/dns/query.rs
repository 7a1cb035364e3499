//! One DNS message in, the answer out, whatever carried it: the guard's and the rate
//! limit's verdicts, the request's checks, EDNS, and the UDP size limit.

use std::net::IpAddr;

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::DNSClass;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use super::answer::Found;
use super::counts::{qtype_label_of, rcode_label, rrl_label};
use super::edns::{client_subnet, reply_edns, udp_limit, EdnsVersion};
use super::fast::{Fast, Question};
use super::{rrl, Dns};
use crate::guard::Pass;

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

impl Dns {
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
        let pass = self.pass(client, transport);
        self.handle_checked(packet, client, transport, pass)
    }

    /// The guard's verdict on a query of `client`'s: `None` when it is refused.
    pub fn pass(&self, client: IpAddr, transport: Transport) -> Option<Pass> {
        let guard = &self.serving.guard;
        match transport {
            // Anyone can forge a UDP source: the block list only, no budget (response-
            // rate limiting is UDP's budget).
            Transport::Udp => guard.screen(client),
            _ => guard.check(client).ok(),
        }
    }

    /// The clients an answer to `client` counts in the herd accounting: the
    /// transport's weight, within its network's share (see [`crate::herd::budget`]).
    pub fn herd_weight(&self, client: IpAddr, pass: Pass, weight: u64) -> u64 {
        self.serving.herd_weight(client, pass, weight)
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
        let mut out = Vec::with_capacity(512);
        let ttl = self.answer_into(packet, client, transport, pass, &mut out)?;
        Some((out, ttl))
    }

    /// [`Dns::handle_checked`], the answer written into `out` (cleared first; a server
    /// reuses it for every query): `Some(ttl)` when there is one to send.
    pub fn answer_into(
        &self,
        packet: &[u8],
        client: IpAddr,
        transport: Transport,
        pass: Option<Pass>,
        out: &mut Vec<u8>,
    ) -> Option<u32> {
        self.answer_with(packet, client, transport, pass, out, true)
    }

    /// [`Dns::answer_into`]; `fast` false sends every query through the full decoder
    /// and encoder (the tests compare the two).
    pub(super) fn answer_with(
        &self,
        packet: &[u8],
        client: IpAddr,
        transport: Transport,
        pass: Option<Pass>,
        out: &mut Vec<u8>,
        fast: bool,
    ) -> Option<u32> {
        out.clear();
        let verdict = match (transport, &self.rrl) {
            (Transport::Udp, Some(rrl)) => rrl.check(client),
            _ => rrl::Verdict::Answer,
        };
        let m = &self.metrics;
        if verdict == rrl::Verdict::Drop {
            m.rrl.get_or_create(&rrl_label("drop")).inc();
            m.totals.rrl(false);
            return None;
        }
        if let (true, rrl::Verdict::Answer, Some(pass)) = (fast, verdict, pass) {
            if let Some(q) = Question::read(packet) {
                match self.answer_fast(&q, client, transport, pass, out) {
                    Fast::Written(ttl) => return Some(ttl),
                    Fast::Found(found) => {
                        let mut reply = reply_to(&q.header, q.edns.as_ref());
                        // The name was read whole by the fast path: it decodes.
                        reply.add_query(q.query()?);
                        let label = qtype_label_of(q.qtype);
                        return self.finish(reply, found, q.edns.as_ref(), transport, label, out);
                    }
                    Fast::Declined => {}
                }
            }
        }
        let request = match Message::from_vec(packet) {
            Ok(r) => r,
            Err(_) => {
                let reply = form_error(packet);
                self.count(transport, "malformed", reply.as_ref().map(|_| "FORMERR"));
                out.extend_from_slice(&reply?);
                return Some(0);
            }
        };
        if request.message_type() != MessageType::Query {
            self.count(transport, "response", None);
            return None;
        }
        let request_edns = request.extensions().as_ref();
        let mut reply = reply_to(request.header(), request_edns);
        let Some(pass) = pass else {
            reply.add_queries(request.queries().iter().take(1).cloned());
            reply.set_response_code(ResponseCode::Refused);
            self.count(transport, "other", Some("REFUSED"));
            out.extend_from_slice(&reply.to_vec().ok()?);
            return Some(0);
        };
        if verdict == rrl::Verdict::Slip {
            m.rrl.get_or_create(&rrl_label("slip")).inc();
            m.totals.rrl(true);
            reply.add_queries(request.queries().iter().cloned());
            reply.set_truncated(true);
            out.extend_from_slice(&reply.to_vec().ok()?);
            return Some(0);
        }
        let mut found = Found {
            rcode: ResponseCode::NoError,
            answers: Vec::new(),
            authority: Vec::new(),
            authoritative: false,
        };
        let qtype_label = if request.op_code() != OpCode::Query {
            found.rcode = ResponseCode::NotImp;
            "other"
        } else if request.queries().len() != 1 || request.edns_version_bad() {
            found.rcode = ResponseCode::FormErr;
            "other"
        } else {
            let q: &Query = &request.queries()[0];
            reply.add_query(q.clone());
            if q.query_class() != DNSClass::IN {
                found.rcode = ResponseCode::Refused;
            } else {
                let subnet = client_subnet(request_edns);
                let weight = self.herd_weight(client, pass, self.transport_weight(transport));
                found = self.lookup(q.name(), q.query_type(), client, subnet, weight);
            }
            qtype_label_of(q.query_type())
        };
        self.finish(reply, found, request_edns, transport, qtype_label, out)
    }

    /// The clients one answer reaches before the herd budget: a resolver's answer
    /// many (`dns.weight`); one over HTTPS, one.
    pub(super) fn transport_weight(&self, transport: Transport) -> u64 {
        match transport {
            Transport::Https => 1,
            _ => self.cfg.weight,
        }
    }

    /// Writes `reply` with `found` into `out`, cut to the client's UDP size (the TC
    /// bit then), and counts it: `Some` of the smallest TTL answered (0 for none).
    fn finish(
        &self,
        mut reply: Message,
        found: Found,
        request_edns: Option<&Edns>,
        transport: Transport,
        qtype_label: &'static str,
        out: &mut Vec<u8>,
    ) -> Option<u32> {
        let ttl = found.min_ttl().unwrap_or(0);
        reply
            .set_response_code(found.rcode)
            .set_authoritative(found.authoritative)
            .add_answers(found.answers)
            .add_name_servers(found.authority);
        let mut bytes = reply.to_vec().ok()?;
        if transport == Transport::Udp && bytes.len() > udp_limit(request_edns) {
            reply.take_answers();
            reply.take_name_servers();
            reply.take_additionals();
            reply.set_truncated(true);
            bytes = reply.to_vec().ok()?;
        }
        self.count(
            transport,
            qtype_label,
            Some(rcode_label(reply.response_code())),
        );
        out.extend_from_slice(&bytes);
        Some(ttl)
    }
}

/// The reply to a request with `header` and `edns`, before its question and answer:
/// its id, opcode and RD and CD bits, our EDNS when it spoke some.
pub(super) fn reply_to(header: &Header, edns: Option<&Edns>) -> Message {
    let mut reply = Message::new();
    reply
        .set_id(header.id())
        .set_message_type(MessageType::Response)
        .set_op_code(header.op_code())
        .set_recursion_desired(header.recursion_desired())
        .set_checking_disabled(header.checking_disabled());
    if let Some(e) = edns {
        reply.set_edns(reply_edns(e));
    }
    reply
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
