//! One DNS message in, the answer out, whatever carried it: the guard's and the rate
//! limit's verdicts, the request's checks, EDNS, and the UDP size limit.

use std::net::IpAddr;

use hickory_proto::op::{Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::DNSClass;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use super::counts::{qtype_label_of, rcode_label, rrl_label};
use super::edns::{client_subnet, reply_edns, EdnsVersion, MAX_UDP_PAYLOAD};
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
        let guard = &self.serving.guard;
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
            reply.set_edns(reply_edns(e));
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
            m.rrl.get_or_create(&rrl_label("slip")).inc();
            m.totals.rrl(true);
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
                let subnet = client_subnet(request_edns);
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
