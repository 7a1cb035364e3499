//! The public edge as an attacker meets it, with the real binaries: phantom askers
//! from several networks cannot make the router refuse real clients, the block list
//! (from `ctl block`) is followed by two routers over HTTP and DNS, and a network that
//! keeps hammering past its budget is blocked by the router itself, and a gateway
//! closes a blocked network's connections at `accept` from the agent's block-list file.
//!
//! Each "network" is a loopback address of its own /24 (127.N.0.1): the whole 127/8 is
//! local, so a client socket bound to one of them stands for a client of that network.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{router_ctl, wait_until, Etcd, RouterProc, P};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

/// One keep-alive HTTP/1.1 connection from a chosen local address.
struct Client {
    conn: BufReader<TcpStream>,
}

impl Client {
    async fn connect(from: IpAddr, to: SocketAddr) -> Client {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(from, 0)).unwrap();
        let stream = socket.connect(to).await.expect("router accepts");
        stream.set_nodelay(true).unwrap();
        Client {
            conn: BufReader::new(stream),
        }
    }

    /// `GET path`: the status and the body.
    async fn get(&mut self, path: &str) -> (u16, String) {
        let req = format!("GET {path} HTTP/1.1\r\nHost: router\r\n\r\n");
        self.conn.get_mut().write_all(req.as_bytes()).await.unwrap();
        let mut line = String::new();
        self.conn.read_line(&mut line).await.unwrap();
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("status line {line:?}"));
        let mut length = 0;
        loop {
            line.clear();
            self.conn.read_line(&mut line).await.unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        self.conn.read_exact(&mut body).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

/// `GET path` once, from `from`.
fn get_from(from: &str, to: SocketAddr, path: &str) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        Client::connect(from.parse().unwrap(), to)
            .await
            .get(path)
            .await
    })
}

/// Four gateways of capacity 1,000 in region `r`, each reporting 200 connections:
/// 3,200 free slots.
fn fleet(etcd: &Etcd) {
    for i in 0..4 {
        etcd.put(
            &format!("{P}/nodes/gw-{i}"),
            &format!(
                r#"{{"id":"gw-{i}","ip":"192.0.2.{}","ports":{{"tcp":8000}},"region":"r","capacity":1000,"connections":200}}"#,
                i + 1
            ),
        );
    }
}

fn metric(router: &RouterProc, name: &str) -> f64 {
    let (_, text) = harness::http_get(router.addr, "/metrics").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `networks` phantom askers (one connection each from its own loopback /24) ask for
/// region `r` as fast as they can for `secs` and never connect, while a real client
/// asks every 20 ms. The phantoms' answers by status, and the real client's answers.
fn phantom_storm(
    addr: SocketAddr,
    networks: u8,
    secs: u64,
) -> (std::collections::BTreeMap<u16, u64>, Vec<(u16, String)>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let phantoms: Vec<_> = (1..=networks)
            .map(|k| {
                tokio::spawn(async move {
                    let from: IpAddr = format!("127.{k}.0.1").parse().unwrap();
                    let mut c = Client::connect(from, addr).await;
                    let mut by_status = std::collections::BTreeMap::new();
                    // Bounded in time and count.
                    for _ in 0..50_000 {
                        if Instant::now() >= deadline {
                            break;
                        }
                        let (status, _) = c.get("/gateways?region=r").await;
                        *by_status.entry(status).or_insert(0u64) += 1;
                    }
                    by_status
                })
            })
            .collect();
        let real = tokio::spawn(async move {
            let mut c = Client::connect("127.200.0.1".parse().unwrap(), addr).await;
            let mut asks = Vec::new();
            while Instant::now() < deadline {
                let (status, body) = c.get("/gateways?region=r&count=3").await;
                asks.push((status, body));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            asks
        });
        let mut phantom = std::collections::BTreeMap::new();
        for p in phantoms {
            for (status, n) in p.await.unwrap() {
                *phantom.entry(status).or_insert(0) += n;
            }
        }
        (phantom, real.await.unwrap())
    })
}

/// Four gateways of capacity 1,000 at load 0.2 (3,200 free slots). Phantom askers, first
/// from one network and then from eight (each a loopback /24), ask for region `r` as
/// fast as they can and never connect, while a real client keeps asking. Every one of
/// the real client's asks is answered with three gateways: the herd estimate may
/// reorder, never refuse, and each network adds at most its share to it.
#[test]
fn phantom_askers_cannot_make_the_router_refuse_real_clients() {
    let etcd = Etcd::start();
    fleet(&etcd);
    // The default request budget and edge settings.
    let router = RouterProc::start(&etcd, "[rate_limit]\n[edge]\n", &[]);
    wait_until(Duration::from_secs(10), "four nodes served", || {
        router.ids("/gateways?region=r&count=10").len() == 4
    });
    let secs = 3;
    let mut asked_by_eight = 0;
    for networks in [1, 8] {
        let (phantom, real) = phantom_storm(router.addr, networks, secs);
        let asked: u64 = phantom.values().sum();
        let answered = phantom.get(&200).copied().unwrap_or(0);
        let refused: Vec<&(u16, String)> = real.iter().filter(|(s, _)| *s != 200).collect();
        println!(
            "phantoms from {networks} network(s): {asked} asks in {secs} s ({:.0}/s, {:.0} answers/s), \
             by status {phantom:?}; real client: {} asks, {} refused",
            asked as f64 / secs as f64,
            answered as f64 / secs as f64,
            real.len(),
            refused.len()
        );
        assert!(refused.is_empty(), "real client refused: {refused:?}");
        for (_, body) in &real {
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(v["gateways"].as_array().unwrap().len(), 3, "{body}");
        }
        assert_eq!(
            phantom.get(&503),
            None,
            "nobody gets no_gateways: {phantom:?}"
        );
        if networks == 8 {
            asked_by_eight = asked;
        }
    }
    assert!(
        asked_by_eight > 3_200,
        "the phantoms asked for more than the free slots: {asked_by_eight}"
    );
    assert!(
        metric(&router, "router_herd_uncounted_total") > 0.0,
        "the per-network herd budget held the phantoms' answers back"
    );
}

fn dig_status(dns: SocketAddr, from: &str, tcp: bool) -> String {
    let dig = harness::which("dig").unwrap_or_else(|| {
        panic!(
            "`dig` is needed: apt-get install bind9-dnsutils (scripts/deps.sh --test installs it)"
        )
    });
    let port = dns.port().to_string();
    let mut args = vec![
        format!("@{}", dns.ip()),
        "-p".into(),
        port,
        "-b".into(),
        from.into(),
        "gw.example.com".into(),
        "A".into(),
        "+tries=1".into(),
        "+time=5".into(),
    ];
    if tcp {
        args.push("+tcp".into());
    }
    let out = Command::new(dig).args(&args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("dig {args:?}: {text}"))
        .to_string()
}

/// `ctl block` reaches two routers within a second: the network gets 403 `blocked` over
/// HTTP and REFUSED over DNS (UDP and TCP), other networks are untouched; `ctl blocks`
/// names who added it and why; `ctl unblock` and an entry's expiry lift it.
#[test]
fn the_block_list_reaches_every_router_over_http_and_dns() {
    let etcd = Etcd::start();
    fleet(&etcd);
    let config = "[dns]\nlisten = \"127.0.0.1:0\"\nzone = \"gw.example.com\"\nrrl_per_sec = 0\n";
    let routers = [
        RouterProc::start(&etcd, config, &[]),
        RouterProc::start(&etcd, config, &[]),
    ];
    let dns: Vec<SocketAddr> = routers
        .iter()
        .map(|r| {
            r.proc
                .wait_for_addr("answering DNS", Duration::from_secs(20))
        })
        .collect();
    let bad = "127.5.0.1";
    let good = "127.6.0.1";
    for r in &routers {
        assert_eq!(get_from(bad, r.addr, "/gateways").0, 200);
    }
    let (code, out) = router_ctl(&etcd, &["block", "127.5.0.0/24", "--reason", "scraper"]);
    assert_eq!(code, 0, "{out}");
    let blocked_at = Instant::now();
    for r in &routers {
        wait_until(
            Duration::from_secs(5),
            "the router follows the block",
            || get_from(bad, r.addr, "/gateways").0 == 403,
        );
    }
    let took = blocked_at.elapsed();
    println!("both routers refused the network {took:?} after ctl block returned");
    assert!(took < Duration::from_secs(1), "{took:?}");
    for (r, dns) in routers.iter().zip(&dns) {
        let (status, body) = get_from(bad, r.addr, "/gateways");
        assert_eq!(status, 403);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "blocked", "{body}");
        assert!(v["error"]["message"].as_str().unwrap().contains("scraper"));
        assert_eq!(get_from(bad, r.addr, "/d?host=gw.example.com").0, 403);
        assert_eq!(get_from(good, r.addr, "/gateways").0, 200);
        assert_eq!(dig_status(*dns, bad, false), "REFUSED");
        assert_eq!(dig_status(*dns, bad, true), "REFUSED");
        assert_eq!(dig_status(*dns, good, false), "NOERROR");
        assert!(metric(r, "router_blocked_total") >= 4.0);
    }
    let (code, listed) = router_ctl(&etcd, &["blocks"]);
    assert_eq!(code, 0, "{listed}");
    assert!(
        listed.contains("127.5.0.0/24") && listed.contains("scraper") && listed.contains("never"),
        "{listed}"
    );
    let (code, out) = router_ctl(&etcd, &["unblock", "127.5.0.1/24"]);
    assert_eq!(code, 0, "{out}");
    for r in &routers {
        wait_until(
            Duration::from_secs(5),
            "the router follows the unblock",
            || get_from(bad, r.addr, "/gateways").0 == 200,
        );
    }
    let (code, out) = router_ctl(&etcd, &["unblock", "127.5.0.0/24"]);
    assert_ne!(code, 0, "nothing left to unblock: {out}");
    // An entry that expires lifts itself, with no change in etcd.
    let (code, out) = router_ctl(
        &etcd,
        &["block", "127.5.0.0/24", "--reason", "brief", "--ttl", "2s"],
    );
    assert_eq!(code, 0, "{out}");
    wait_until(Duration::from_secs(5), "blocked for a moment", || {
        get_from(bad, routers[0].addr, "/gateways").0 == 403
    });
    wait_until(Duration::from_secs(10), "the entry expired", || {
        get_from(bad, routers[0].addr, "/gateways").0 == 200
    });
    assert_eq!(
        etcd.keys(&format!("{P}/blocklist/")).len(),
        1,
        "still listed"
    );
    // Bad input changes nothing.
    for bad_args in [
        &["block", "0.0.0.0/0", "--reason", "everyone"][..],
        &["block", "nonsense", "--reason", "x"][..],
        &["block", "127.9.0.0/24", "--reason", "x", "--ttl", "soon"][..],
    ] {
        let (code, out) = router_ctl(&etcd, bad_args);
        assert_eq!(code, 2, "{bad_args:?}: {out}");
    }
    assert_eq!(etcd.keys(&format!("{P}/blocklist/")).len(), 1);
}

/// A network that goes on past its request budget, 429 after 429, is blocked by the
/// router itself for a while; a well-behaved neighbour in another network is not.
#[test]
fn a_network_that_keeps_hammering_is_blocked_automatically() {
    let etcd = Etcd::start();
    fleet(&etcd);
    let router = RouterProc::start(
        &etcd,
        "[rate_limit]\nper_ip_per_sec = 5\nburst = 5\n[edge]\nauto_block_refusals_per_min = 20\nauto_block_secs = 600\n",
        &[],
    );
    let addr = router.addr;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let statuses = rt.block_on(async move {
        let mut c = Client::connect("127.7.0.1".parse().unwrap(), addr).await;
        let mut statuses = Vec::new();
        for _ in 0..100 {
            statuses.push(c.get("/gateways").await);
        }
        statuses
    });
    let codes: Vec<u16> = statuses.iter().map(|(s, _)| *s).collect();
    assert!(codes.contains(&429), "{codes:?}");
    let (last, body) = statuses.last().unwrap();
    assert_eq!(*last, 403, "{codes:?}");
    assert!(body.contains("auto"), "{body}");
    assert_eq!(get_from("127.7.0.1", addr, "/gateways").0, 403);
    assert_eq!(get_from("127.8.0.1", addr, "/gateways").0, 200);
    assert_eq!(metric(&router, "router_auto_blocks_total"), 1.0);
    // The router lists its own block among the lists it enforces.
    let (code, listed) = harness::get_json(addr, "/ops/blocks.json").unwrap();
    assert_eq!(code, 200, "{listed}");
    let auto: Vec<&serde_json::Value> = listed["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["source"] == "auto")
        .collect();
    assert_eq!(auto.len(), 1, "{listed}");
    assert_eq!(auto[0]["cidr"], "127.7.0.1/32", "{listed}");
    assert!(auto[0]["expires_ms"].as_u64().unwrap() > 0, "{listed}");
}

/// A gateway on loopback that refuses at `accept` what its block-list file lists (read
/// with the agent library's `BlockFile`) and says "hello" to everyone else.
struct FileGateway {
    addr: SocketAddr,
    refused: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl FileGateway {
    fn start(file: &std::path::Path) -> FileGateway {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut blocks = gateway_agent::blocklist::BlockFile::new(file);
        let count = refused.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let peer = conn.peer_addr().unwrap().ip();
                if blocks.refuses(peer) {
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue; // dropped: closed at accept
                }
                let _ = std::io::Write::write_all(&mut conn, b"hello");
            }
        });
        FileGateway { addr, refused }
    }

    /// What a client from `from` reads before the gateway closes: "hello", or nothing
    /// when it was refused.
    fn greet(&self, from: &str) -> String {
        let mut conn = harness::connect_from(from.parse().unwrap(), self.addr, None).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut got = Vec::new();
        let _ = std::io::Read::read_to_end(&mut conn, &mut got);
        String::from_utf8_lossy(&got).into_owned()
    }
}

/// The gateway's copy of the list: an agent started with `--blocklist-file` writes the
/// networks `ctl block` adds, and drops them when they are unblocked, replacing the
/// file whole each time; a gateway reading that file closes a listed network's
/// connections at `accept` and serves it again once it is unblocked.
#[test]
fn the_agent_keeps_the_block_list_in_a_file_for_its_gateway() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blocked.txt");
    let _agent = harness::Proc::agent(
        &etcd,
        "gw-file",
        "r",
        &[
            "--port",
            "tcp=9000",
            "--blocklist-file",
            file.to_str().unwrap(),
        ],
    );
    let gateway = FileGateway::start(&file);
    let read = || std::fs::read_to_string(&file).unwrap_or_default();
    wait_until(Duration::from_secs(20), "the file written", || {
        read().starts_with('#')
    });
    assert_eq!(gateway.greet("127.0.44.1"), "hello", "nothing blocked yet");
    let (code, out) = router_ctl(&etcd, &["block", "198.51.100.7/24", "--reason", "scraper"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = router_ctl(&etcd, &["block", "127.0.44.0/24", "--reason", "scraper"]);
    assert_eq!(code, 0, "{out}");
    wait_until(Duration::from_secs(5), "the entries in the file", || {
        let text = read();
        text.lines().any(|l| l == "198.51.100.0/24") && text.lines().any(|l| l == "127.0.44.0/24")
    });
    wait_until(
        Duration::from_secs(5),
        "the gateway refusing 127.0.44.1",
        || gateway.greet("127.0.44.1").is_empty(),
    );
    assert_eq!(
        gateway.greet("127.0.45.1"),
        "hello",
        "another network is served"
    );
    assert!(gateway.refused.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    for net in ["198.51.100.0/24", "127.0.44.0/24"] {
        let (code, out) = router_ctl(&etcd, &["unblock", net]);
        assert_eq!(code, 0, "{out}");
    }
    wait_until(
        Duration::from_secs(5),
        "the entries gone from the file",
        || {
            let text = read();
            text.starts_with('#')
                && !text.contains("198.51.100.0/24")
                && !text.contains("127.0.44.0/24")
        },
    );
    wait_until(
        Duration::from_secs(5),
        "the gateway serving 127.0.44.1 again",
        || gateway.greet("127.0.44.1") == "hello",
    );
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "no temporary file left behind");
}
