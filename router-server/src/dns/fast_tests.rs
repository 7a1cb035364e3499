//! The fast path against the full decoder and encoder: the same bytes for every query,
//! whichever path answers it.

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::{DNSClass, RecordType};
use proptest::prelude::*;

use super::fast::{Fast, Question};
use super::tests::{config, dns_with, fleet, query, RESOLVER};
use super::{Dns, Transport};
use crate::guard::Pass;

const NAMES: [&str; 9] = [
    "gw.example.com.",
    "eu.gw.example.com.",
    "TCP.Us.gw.example.COM.",
    "wss.eu.gw.example.com.",
    "zz.gw.example.com.",
    "ns.gw.example.com.",
    "gw-9.gw.example.com.",
    "example.org.",
    "a.b.c.eu.gw.example.com.",
];
const TYPES: [RecordType; 6] = [
    RecordType::A,
    RecordType::AAAA,
    RecordType::SOA,
    RecordType::NS,
    RecordType::TXT,
    RecordType::ANY,
];

/// A query: its name and type from the lists, its class, RD and CD bits, and EDNS:
/// none, plain, with a client subnet (`/24`, `/56`, `/0`), an unknown option, an
/// unknown version, or a small or large payload.
fn packet(name: usize, qtype: usize, class_in: bool, bits: u8, edns: u8, id: u16) -> Vec<u8> {
    let mut m = query(NAMES[name], TYPES[qtype]);
    m.set_id(id)
        .set_recursion_desired(bits & 1 != 0)
        .set_checking_disabled(bits & 2 != 0);
    if !class_in {
        let mut q = m.take_queries().remove(0);
        q.set_query_class(DNSClass::CH);
        m.add_query(q);
    }
    if edns > 0 {
        let mut e = Edns::new();
        e.set_max_payload(match edns {
            7 => 100,
            8 => 4096,
            _ => 1232,
        });
        let subnet = match edns {
            2 => Some("10.1.7.0/24"),
            3 => Some("2001:db8:1::/56"),
            4 => Some("10.2.0.0/0"),
            _ => None,
        };
        if let Some(s) = subnet {
            e.options_mut()
                .insert(EdnsOption::Subnet(ClientSubnet::from(
                    s.parse::<ipnet::IpNet>().unwrap(),
                )));
        }
        if edns == 5 {
            e.options_mut()
                .insert(EdnsOption::Unknown(u16::from(EdnsCode::Cookie), vec![7; 8]));
        }
        if edns == 6 {
            e.set_version(1);
        }
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

/// Two routers in the same state: one answers on the fast path where it can, the
/// other on the full one only.
fn pair(count: usize) -> (Dns, Dns) {
    let cfg = || config(|c| c.dns.count = count);
    (dns_with(cfg(), fleet()), dns_with(cfg(), fleet()))
}

fn both(
    d: &(Dns, Dns),
    packet: &[u8],
    client: IpAddr,
    t: Transport,
) -> [Option<(Vec<u8>, u32)>; 2] {
    let pass = Some(Pass { exempt: false });
    [true, false].map(|fast| {
        let dns = if fast { &d.0 } else { &d.1 };
        let mut out = vec![0xAA; 3];
        dns.answer_with(packet, client, t, pass, &mut out, fast)
            .map(|ttl| (out, ttl))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// The same with one byte of each query changed: whatever a hostile packet makes
    /// of the fast path's reading, the answer (or the silence) is the full path's.
    #[test]
    fn a_mangled_query_gets_the_full_paths_answer(
        queries in prop::collection::vec(
            (0..NAMES.len(), 0..TYPES.len(), 0u8..9, any::<u16>(), any::<usize>(), 1u8..=255),
            1..12,
        ),
    ) {
        let d = pair(2);
        for (name, qtype, edns, id, at, x) in queries {
            let mut p = packet(name, qtype, true, 1, edns, id);
            let i = at % p.len();
            p[i] ^= x;
            let [fast, full] = both(&d, &p, RESOLVER, Transport::Udp);
            prop_assert_eq!(&fast, &full, "{:?} byte {} ^ {:#x}", p, i, x);
        }
    }

    #[test]
    fn fast_answers_equal_the_full_encoders(
        queries in prop::collection::vec(
            (0..NAMES.len(), 0..TYPES.len(), prop::bool::weighted(0.9), 0u8..4, 0u8..9,
             any::<u16>(), 0usize..3, prop::bool::ANY),
            1..12,
        ),
        count in prop::sample::select(vec![1usize, 2, 3, 20]),
    ) {
        let d = pair(count);
        for (name, qtype, class_in, bits, edns, id, t, eu) in queries {
            let p = packet(name, qtype, class_in, bits, edns, id);
            let t = [Transport::Udp, Transport::Tcp, Transport::Https][t];
            let client: IpAddr = if eu { "10.1.0.9".parse().unwrap() } else { RESOLVER };
            let [fast, full] = both(&d, &p, client, t);
            prop_assert_eq!(&fast, &full, "{} {:?} edns {} count {}", NAMES[name], TYPES[qtype], edns, count);
        }
        // Both counted the same.
        let totals = |dns: &Dns| format!("{:?}", dns.metrics().totals.status("z"));
        prop_assert_eq!(totals(&d.0), totals(&d.1));
    }
}

proptest! {
    /// The fast path reads a question's name as the full decoder does: the same labels
    /// and length for every name of labels only, and none for what the decoder refuses
    /// (a label over 63 bytes, a name over 255, a reserved length code, no end). A
    /// pointer is left to the full path.
    #[test]
    fn a_name_is_read_in_place_as_the_decoder_reads_it(
        labels in prop::collection::vec(
            (prop::sample::select(vec![1u8, 2, 5, 30, 62, 63, 64, 0x40, 0x80, 0xC0]),
             any::<u8>()),
            0..12,
        ),
        end in prop::sample::select(vec![Some(0u8), Some(0xC0), None]),
    ) {
        let mut raw = Vec::new();
        for (len, fill) in &labels {
            raw.push(*len);
            raw.extend(std::iter::repeat_n(*fill, usize::from(len & 0x3F)));
        }
        raw.extend(end);
        raw.extend([0, 1, 0, 1]);
        let mut d = hickory_proto::serialize::binary::BinDecoder::new(&raw);
        let decoded = <hickory_proto::rr::Name as hickory_proto::serialize::binary::BinDecodable>::read(&mut d);
        // Whether the name, read label by label, reaches a pointer.
        let mut i = 0;
        let pointer = loop {
            match raw.get(i) {
                Some(&len) if len & 0xC0 == 0xC0 => break true,
                Some(&len) if len != 0 && len & 0xC0 == 0 => i += 1 + usize::from(len),
                _ => break false,
            }
        };
        let read = super::fast::plain_name(&raw);
        match (read, decoded) {
            (Some((read, len)), Ok(name)) => {
                let want: Vec<&[u8]> = name.iter().collect();
                prop_assert_eq!(read.to_vec(), want);
                prop_assert_eq!(len, d.index());
            }
            (Some(read), Err(e)) => prop_assert!(false, "read {:?}, the decoder refused: {}", read, e),
            (None, Ok(name)) => prop_assert!(pointer, "the decoder read {} from labels only", name),
            (None, Err(_)) => {}
        };
    }
}

#[test]
fn a_name_of_255_bytes_is_read_in_place_and_one_of_256_is_not() {
    // 3 labels of 63 and one of 61: 4 + 63 * 3 + 61 + the root = 255 bytes.
    let name = |last: u8| {
        let mut raw = Vec::new();
        for len in [63, 63, 63, last] {
            raw.push(len);
            raw.extend(std::iter::repeat_n(b'a', usize::from(len)));
        }
        raw.push(0);
        raw
    };
    assert_eq!(
        super::fast::plain_name(&name(61)).map(|(_, len)| len),
        Some(255)
    );
    assert!(super::fast::plain_name(&name(62)).is_none());
}

/// The common queries do take the fast path (the comparison above is not empty).
#[test]
fn a_gateway_question_is_answered_on_the_fast_path() {
    let (dns, _) = pair(2);
    for (name, edns) in [
        ("gw.example.com.", 0),
        ("eu.gw.example.com.", 1),
        ("tcp.us.gw.example.com.", 2),
        ("gw.example.com.", 3),
    ] {
        for qtype in [0, 1] {
            let p = packet(
                NAMES
                    .iter()
                    .position(|n| n.eq_ignore_ascii_case(name))
                    .unwrap_or(0),
                qtype,
                true,
                1,
                edns,
                7,
            );
            let q = Question::read(&p).expect("read on the fast path");
            let mut out = Vec::new();
            let fast = dns.answer_fast(
                &q,
                RESOLVER,
                Transport::Udp,
                Pass { exempt: false },
                &mut out,
            );
            assert!(matches!(fast, Fast::Written(_)), "{name} {qtype}");
            let m = Message::from_vec(&out).unwrap();
            assert!(!m.answers().is_empty(), "{name}");
        }
    }
    // A name elsewhere, or another type, is the full path's.
    assert!(Question::read(&packet(0, 2, true, 0, 0, 1)).is_none());
    let ns = packet(5, 0, true, 0, 0, 1);
    let q = Question::read(&ns).unwrap();
    assert!(matches!(
        dns.answer_fast(
            &q,
            RESOLVER,
            Transport::Udp,
            Pass { exempt: false },
            &mut Vec::new()
        ),
        Fast::Declined
    ));
}
