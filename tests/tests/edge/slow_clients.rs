//! Slow and silent clients: sockets that send nothing, bodies trickled past their
//! deadline, one network holding every connection, HTTP/2 connections left open.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use harness::{connect_from, http_get, rss_kib, sample, wait_until, which, Etcd, RouterProc, P};

use super::{closed_within, raw, record};

#[test]
fn silent_sockets_neither_stay_open_nor_starve_real_clients() {
    let etcd = Etcd::start();
    etcd.put(&format!("{P}/nodes/gw-a"), &record("gw-a"));
    // The router's open-file limit at 256, soft and hard, as in the report.
    let prlimit = which("prlimit").expect("prlimit (util-linux) on PATH");
    let r = RouterProc::start_with(
        &etcd,
        "[http]\nfirst_byte_timeout_ms = 2000\n",
        &[],
        Some(vec![
            prlimit.to_str().unwrap().into(),
            "--nofile=256:256".into(),
        ]),
    );
    let silent: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(r.addr).ok())
        .collect();
    assert!(silent.len() >= 250, "opened {}", silent.len());
    // A real client, now, while hundreds of silent sockets are open.
    for _ in 0..3 {
        let start = Instant::now();
        let (code, body) = http_get(r.addr, "/gateways").expect("a real client is answered");
        assert_eq!(code, 200, "{body}");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }
    // Every silent socket is closed: shed for room, or at its first-byte deadline.
    let start = Instant::now();
    let mut still_open = 0;
    for mut s in silent {
        let left = Duration::from_secs(6).saturating_sub(start.elapsed());
        if !closed_within(&mut s, left.max(Duration::from_millis(10))) {
            still_open += 1;
        }
    }
    assert_eq!(still_open, 0, "silent sockets left open");
    let (_, metrics) = http_get(r.addr, "/metrics").unwrap();
    assert!(metrics.contains("router_connections_max 192"), "{metrics}");
    assert!(
        metrics.contains("reason=\"shed_silent\""),
        "shedding counted: {metrics}"
    );
    assert!(
        metrics.contains("reason=\"first_byte_timeout\""),
        "timeouts counted: {metrics}"
    );
    assert!(r.proc.output().contains("connection cap reached"));
}

/// How a slow client ended: how long until the server closed (`None`: still open when
/// the client gave up) and what it had read.
struct Trickled {
    closed_after: Option<Duration>,
    read: String,
}

/// A slow client: sends `head`, then `drip` every 50 ms, reading all the while, until
/// the server closes or `give_up` passes.
fn trickle(addr: SocketAddr, head: String, drip: &'static [u8], give_up: Duration) -> Trickled {
    let mut s = TcpStream::connect(addr).unwrap();
    let start = Instant::now();
    s.write_all(head.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut read = Vec::new();
    let mut buf = [0u8; 4096];
    let closed_after = loop {
        if start.elapsed() > give_up {
            break None;
        }
        match s.read(&mut buf) {
            Ok(0) => break Some(start.elapsed()),
            Ok(n) => read.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break Some(start.elapsed()),
        }
        // Refused by a closed socket: the next read says so.
        let _ = s.write_all(drip);
    };
    Trickled {
        closed_after,
        read: String::from_utf8_lossy(&read).into_owned(),
    }
}

/// A DNS query for `gw.example.test. A`, as DoH carries it.
fn dns_query() -> Vec<u8> {
    httpdns_client::dns::dns_query("gw.example.test", false).unwrap()
}

const BODY_TIMEOUT: Duration = Duration::from_millis(1500);
// Slack for a loaded machine: the deadline is checked when the body is read.
const SLACK: Duration = Duration::from_millis(2500);

/// The head of a DoH POST with `extra` header lines.
fn post(extra: &str) -> String {
    format!(
        "POST /dns-query HTTP/1.1\r\nHost: x\r\nContent-Type: application/dns-message\r\n{extra}\r\n"
    )
}

/// One slow client's kind and the thread trickling its body.
type Attacker = (&'static str, std::thread::JoinHandle<Trickled>);

/// A router with a body deadline of `BODY_TIMEOUT`, its memory before the attack and
/// the most it used since.
struct SlowBodies {
    r: RouterProc,
    before: u64,
    peak: u64,
    give_up: Duration,
    _etcd: Etcd,
}

impl SlowBodies {
    fn start() -> SlowBodies {
        let etcd = Etcd::start();
        etcd.put(&format!("{P}/nodes/gw-a"), &record("gw-a"));
        let r = RouterProc::start(
            &etcd,
            &format!(
                "[dns]\nzone = \"gw.example.test\"\n[http]\nbody_timeout_ms = {}\n",
                BODY_TIMEOUT.as_millis()
            ),
            &[],
        );
        let before = rss_kib(r.proc.pid());
        SlowBodies {
            r,
            before,
            peak: before,
            give_up: BODY_TIMEOUT + SLACK + Duration::from_secs(3),
            _etcd: etcd,
        }
    }

    /// 50 attackers, as in the report: 20 declaring 2 MB, 15 declaring a body under
    /// the 64 KiB limit and 15 chunked, each sending a few bytes every 50 ms.
    fn attack(&self) -> Vec<Attacker> {
        let mut attackers = Vec::new();
        for i in 0..50 {
            let (head, drip, kind): (String, &'static [u8], &str) = match i % 10 {
                0..=3 => (post("Content-Length: 2000000\r\n"), b"0123456789", "2 MB"),
                4..=6 => (post("Content-Length: 60000\r\n"), b"0123456789", "60 KB"),
                _ => (
                    post("Transfer-Encoding: chunked\r\n"),
                    b"a\r\n0123456789\r\n",
                    "chunked",
                ),
            };
            let (addr, give_up) = (self.r.addr, self.give_up);
            attackers.push((
                kind,
                std::thread::spawn(move || trickle(addr, head, drip, give_up)),
            ));
        }
        attackers
    }

    /// Meanwhile a normal client is served, over GET and over DoH.
    fn a_real_client_is_served(&mut self) {
        let r = &self.r;
        let start = Instant::now();
        while start.elapsed() < BODY_TIMEOUT {
            let (code, body) = http_get(r.addr, "/gateways").expect("a real client is answered");
            assert_eq!(code, 200, "{body}");
            let q = dns_query();
            let mut req = post(&format!(
                "Content-Length: {}\r\nConnection: close\r\n",
                q.len()
            ))
            .into_bytes();
            req.extend_from_slice(&q);
            let resp = raw(r.addr, &req, Duration::from_secs(5));
            assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
            self.peak = self.peak.max(rss_kib(r.proc.pid()));
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Each attacker is closed by the deadline (plus slack), and none sooner but the
    /// one declaring more than the limit.
    fn attackers_are_cut_at_the_deadline(&mut self, attackers: Vec<Attacker>) {
        let give_up = self.give_up;
        for (kind, t) in attackers {
            let done = t.join().unwrap();
            eprintln!("{kind}: closed after {:?}", done.closed_after);
            let took = done
                .closed_after
                .unwrap_or_else(|| panic!("{kind}: still open after {give_up:?}: {}", done.read));
            assert!(
                took <= BODY_TIMEOUT + SLACK,
                "{kind}: closed after {took:?}: {}",
                done.read
            );
            if kind != "2 MB" {
                // Cut by the deadline, not by anything sooner.
                assert!(
                    took >= BODY_TIMEOUT - Duration::from_millis(200),
                    "{kind}: closed after {took:?}: {}",
                    done.read
                );
            }
            self.peak = self.peak.max(rss_kib(self.r.proc.pid()));
        }
    }

    /// One that sends part of its body and then waits (so the close is a clean one and
    /// nothing is lost to a reset) hears why it is cut off: the contract's 408.
    fn a_quiet_client_hears_408(&self) {
        let mut quiet = TcpStream::connect(self.r.addr).unwrap();
        quiet
            .write_all(format!("{}0123", post("Content-Length: 100\r\n")).as_bytes())
            .unwrap();
        quiet.set_read_timeout(Some(BODY_TIMEOUT + SLACK)).unwrap();
        let mut answer = String::new();
        assert!(
            quiet.read_to_string(&mut answer).is_ok(),
            "closed by the deadline: {answer}"
        );
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(
            answer.to_lowercase().contains("connection: close"),
            "{answer}"
        );
        let body: serde_json::Value =
            serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(body["error"]["code"], "request_timeout", "{answer}");
    }

    /// 50 slow clients cost the router a few MB at most (the report: 10.7 -> 28.5 MB
    /// for 200 of them; a DoH body is now 64 KiB at most), and its metrics count them.
    fn memory_and_metrics(&self) {
        let (before, peak) = (self.before, self.peak);
        eprintln!("RSS {before} KiB before, {peak} KiB at most under attack");
        assert!(
            peak <= before + 8 * 1024,
            "RSS grew from {before} KiB to {peak} KiB"
        );
        let (_, metrics) = http_get(self.r.addr, "/metrics").unwrap();
        assert!(
            sample(
                &metrics,
                r#"router_connections_closed_by_server_total{reason="body_timeout"}"#
            ) >= 30.0,
            "{metrics}"
        );
        assert!(
            sample(
                &metrics,
                r#"router_http_requests_total{route="/dns-query",status="413"}"#
            ) >= 20.0,
            "{metrics}"
        );
    }
}

#[test]
fn slow_bodies_are_cut_at_their_deadline_and_cost_no_memory() {
    let mut w = SlowBodies::start();
    let attackers = w.attack();
    w.a_real_client_is_served();
    w.attackers_are_cut_at_the_deadline(attackers);
    w.a_quiet_client_hears_408();
    w.memory_and_metrics();
}

#[test]
fn one_network_cannot_take_every_connection() {
    let etcd = Etcd::start();
    etcd.put(&format!("{P}/nodes/gw-a"), &record("gw-a"));
    let r = RouterProc::start(
        &etcd,
        "[http]\nmax_connections_per_network = 5\nconnection_cap_exempt = [\"127.0.3.0/24\"]\nfirst_byte_timeout_ms = 30000\n",
        &[],
    );
    let local = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    // 127.0.0.0/24 takes its five, silently.
    let held: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect(r.addr).unwrap())
        .collect();
    wait_until(Duration::from_secs(5), "five connections open", || {
        // Asked from another network: this one has no room left.
        get_from(local("127.0.1.2"), r.addr, "/metrics")
            .is_some_and(|m| sample(&m, "router_connections_open") >= 5.0)
    });
    // A sixth from that network is closed at accept.
    let mut sixth = connect_from(local("127.0.0.9"), r.addr, None).unwrap();
    assert!(closed_within(&mut sixth, Duration::from_secs(2)));
    // Another network is served, and so is an exempt one (a load balancer) beyond the cap.
    let m = get_from(local("127.0.1.2"), r.addr, "/gateways").expect("another network served");
    assert!(m.contains("gw-a"), "{m}");
    let lb: Vec<TcpStream> = (0..8)
        .map(|_| connect_from(local("127.0.3.1"), r.addr, None).unwrap())
        .collect();
    let m = get_from(local("127.0.3.1"), r.addr, "/gateways").expect("exempt peer served");
    assert!(m.contains("gw-a"), "{m}");
    let m = get_from(local("127.0.1.2"), r.addr, "/metrics").unwrap();
    assert_eq!(
        sample(
            &m,
            r#"router_connections_closed_by_server_total{reason="per_network_cap"}"#
        ),
        1.0,
        "{m}"
    );
    drop((held, lb));
}

/// `GET path` over HTTP/1.0 from the local address `from`: the answer's body.
fn get_from(from: std::net::IpAddr, addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = connect_from(from, addr, None).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200").then(|| body.to_string())
}

#[test]
fn http2_connections_have_deadlines_too() {
    let etcd = Etcd::start();
    let r = RouterProc::start(&etcd, "[http]\nrequest_timeout_ms = 500\n", &[]);
    // h2c with prior knowledge: the preface and an empty SETTINGS frame, then silence.
    let mut s = TcpStream::connect(r.addr).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The server's SETTINGS (and its ACK) arrive first; then it must hang up.
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    assert!(closed, "an h2 connection that asks nothing is closed");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}
