//! Strangers against the DNS listener: malformed packets, a flood from one network
//! (the response rate limit), and TCP connections held open or never read.

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use harness::{http_get, wait_until};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

use super::{dig, short, zone_with, Zone, ZONE};

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

/// Sends `packet` and waits up to 5 s for the reply to id `id`.
fn exchange(sock: &UdpSocket, to: SocketAddr, packet: &[u8], id: u16) -> Option<Message> {
    sock.send_to(packet, to).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            continue;
        };
        if let Ok(m) = Message::from_vec(&buf[..n]) {
            if m.id() == id && m.message_type() == MessageType::Response {
                return Some(m);
            }
        }
    }
    None
}

#[test]
fn malformed_packets_never_stop_the_answers() {
    use rand::{Rng, SeedableRng};
    let z = zone_with("count = 2\nrrl_per_sec = 0", "", &[]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let tcp_dig = || short(&dig(z.dns, &format!("eu.{ZONE}"), "A", &["+short", "+tcp"]));
    let mut rng = rand::rngs::StdRng::seed_from_u64(18);
    let good = query(7, &format!("eu.{ZONE}."));
    for i in 0..1000u32 {
        let packet: Vec<u8> = if i % 2 == 0 {
            let len = rng.random_range(0..600);
            (0..len).map(|_| rng.random()).collect()
        } else {
            // A real query cut short, with a byte flipped.
            let mut p = good.clone();
            let at = rng.random_range(0..p.len());
            p[at] ^= 1 << rng.random_range(0..8);
            p.truncate(rng.random_range(0..p.len()));
            p
        };
        sock.send_to(&packet, z.dns).unwrap();
        if i % 100 == 99 {
            let id = 1000 + i as u16;
            let m = exchange(&sock, z.dns, &query(id, &format!("eu.{ZONE}.")), id)
                .unwrap_or_else(|| panic!("no answer after {i} bad packets"));
            assert_eq!(m.response_code(), ResponseCode::NoError);
            assert_eq!(m.answers().len(), 2);
        }
    }
    assert_eq!(tcp_dig(), ["192.0.2.1", "192.0.2.2"]);
    // Garbage over TCP closes that connection only.
    let mut s = std::net::TcpStream::connect(z.dns).unwrap();
    s.write_all(&[0, 5, 1, 2, 3, 4, 5, 0xff, 0xff]).unwrap();
    assert_eq!(tcp_dig(), ["192.0.2.1", "192.0.2.2"]);
    let m = http_get(z.router.addr, "/metrics").unwrap().1;
    assert!(
        m.contains(
            r#"router_dns_queries_total{transport="udp",qtype="malformed",rcode="FORMERR"}"#
        ),
        "{m}"
    );
    assert!(z
        .router
        .proc
        .output()
        .lines()
        .all(|l| !l.contains("panicked")));
}

#[test]
fn the_response_rate_limit_holds_a_flood_from_one_network() {
    let z = zone_with("rrl_per_sec = 1\nrrl_burst = 5\nrrl_slip = 2", "", &[]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let start = Instant::now();
    for id in 0..200u16 {
        sock.send_to(&query(id, &format!("{ZONE}.")), z.dns)
            .unwrap();
    }
    // Collect what comes back until a quiet 100 ms.
    let (mut full, mut truncated) = (0u64, 0u64);
    let mut buf = [0u8; 4096];
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        let m = Message::from_vec(&buf[..n]).unwrap();
        if m.truncated() {
            assert!(m.answers().is_empty());
            truncated += 1;
        } else {
            full += 1;
        }
    }
    let secs = start.elapsed().as_secs() + 1;
    // 5 at once, then one a second; half of the rest slip (truncated), half are dropped.
    assert!(full <= 5 + secs, "{full} full answers in {secs} s");
    assert!(
        truncated > 0 && truncated < 200 - full,
        "{truncated} truncated"
    );
    // TCP is not limited: a real client still gets its answer.
    assert_eq!(
        short(&dig(z.dns, &format!("eu.{ZONE}"), "A", &["+short", "+tcp"])).len(),
        3
    );
    let m = http_get(z.router.addr, "/metrics").unwrap().1;
    assert!(m.contains(r#"router_dns_rrl_total{action="drop"}"#), "{m}");
    assert!(m.contains(r#"router_dns_rrl_total{action="slip"}"#), "{m}");
}

/// The value of `router_dns_tcp_closed_by_server_total{reason}` now.
fn dns_tcp_closed(z: &Zone, reason: &str) -> f64 {
    let m = http_get(z.router.addr, "/metrics").unwrap().1;
    harness::sample(
        &m,
        &format!("router_dns_tcp_closed_by_server_total{{reason=\"{reason}\"}}"),
    )
}

#[test]
fn one_network_cannot_hold_every_dns_tcp_connection() {
    let z = zone_with(
        "tcp_max_per_network = 4\ntcp_max_connections = 6\ntcp_idle_ms = 60000",
        "",
        &[],
    );
    let local = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    // 127.0.0.0/24 opens ten and holds them: four are kept, six closed at accept.
    let held: Vec<std::net::TcpStream> = (0..10)
        .map(|_| std::net::TcpStream::connect(z.dns).unwrap())
        .collect();
    wait_until(Duration::from_secs(5), "six refused by network", || {
        dns_tcp_closed(&z, "per_network_cap") >= 6.0
    });
    // 127.0.2.0/24 takes four: at the cap of six, the longest idle make room.
    let other: Vec<std::net::TcpStream> = (0..4)
        .map(|_| harness::connect_from(local("127.0.2.1"), z.dns, None).unwrap())
        .collect();
    wait_until(Duration::from_secs(5), "two idle ones shed", || {
        dns_tcp_closed(&z, "shed_idle") >= 2.0
    });
    // A client of a third network is still answered over TCP.
    for _ in 0..3 {
        let out = dig(
            z.dns,
            &format!("eu.{ZONE}"),
            "A",
            &["+short", "+tcp", "-b", "127.0.1.2"],
        );
        assert_eq!(short(&out).len(), 3, "{out}");
    }
    assert_eq!(dns_tcp_closed(&z, "refused_full"), 0.0);
    drop((held, other));
}

#[test]
fn a_dns_tcp_client_that_never_reads_is_closed() {
    const WRITE_TIMEOUT: Duration = Duration::from_millis(1000);
    let z = zone_with(
        &format!("tcp_write_timeout_ms = {}", WRITE_TIMEOUT.as_millis()),
        "",
        &[],
    );
    // A small receive window, so the router's answers back up soon.
    let mut s = harness::connect_from("127.0.0.1".parse().unwrap(), z.dns, Some(4096)).unwrap();
    let q = query(9, &format!("eu.{ZONE}."));
    let mut frame = (q.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(&q);
    // Whole frames back to back; a partial write resumes where it stopped.
    let frames = frame.repeat(64);
    let mut at = 0;
    s.set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let start = Instant::now();
    let closed_after = loop {
        if start.elapsed() > WRITE_TIMEOUT + Duration::from_secs(20) {
            break None;
        }
        match s.write(&frames[at..]) {
            Ok(n) => at = (at + n) % frames.len(),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break Some(start.elapsed()),
        }
    };
    let took = closed_after.expect("a client that never reads is closed");
    assert!(took >= WRITE_TIMEOUT, "closed after {took:?}");
    assert_eq!(dns_tcp_closed(&z, "write_timeout"), 1.0);
    // Others are answered as before (the SOA: the flood's answers have filled every
    // gateway in the herd accounting, so A records would say nothing).
    let soa = dig(z.dns, ZONE, "SOA", &["+short", "+tcp"]);
    assert_eq!(short(&soa).len(), 1, "{soa}");
}
