//! The router's HTTP edge against strangers, careless operators and restarts: real
//! binaries, real sockets, real etcd.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{
    connect_from, http_get, rss_kib, sample, wait_until, which, Etcd, NodeJson, Proc, RouterProc, P,
};

fn record(id: &str) -> String {
    NodeJson::new(id).conns(1).build()
}

/// Runs `router-server` with `args` and only the given variables (none inherited).
fn router_env(args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut all = vec![("PATH", "/usr/bin:/bin")];
    all.extend_from_slice(env);
    Proc::spawn_clean("router-server", args, &all)
}

/// Sends raw bytes and reads the answer until the server closes or `wait` passes.
fn raw(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.write_all(request).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Reads one HTTP/1.1 response with a Content-Length body from a keep-alive stream.
fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "connection closed mid-head");
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    head + &String::from_utf8_lossy(&body)
}

/// True when the peer closed `s` (EOF or reset) within `wait`.
fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn a_blank_admin_token_is_refused_at_start_from_flag_or_variable() {
    let endpoints = "http://127.0.0.1:1";
    for (args, env) in [
        (vec!["--admin-token", ""], vec![]),
        (vec!["--admin-token", "  "], vec![]),
        (vec![], vec![("ROUTER_ADMIN_TOKEN", "")]),
        (vec![], vec![("ROUTER_ADMIN_TOKEN", " \t")]),
    ] {
        let mut all = vec!["--etcd", endpoints, "--listen", "127.0.0.1:0"];
        all.extend_from_slice(&args);
        let mut p = router_env(&all, &env);
        let status = p.wait_exit(Duration::from_secs(10));
        let out = p.output();
        assert_eq!(status.code(), Some(2), "{args:?} {env:?}: {out}");
        assert!(out.contains("admin token is empty"), "{out}");
        assert_eq!(out.trim().lines().count(), 1, "one line: {out}");
    }
    // The demo too.
    let mut p = router_env(
        &["demo", "--listen", "127.0.0.1:0", "--admin-token", ""],
        &[],
    );
    assert_eq!(p.wait_exit(Duration::from_secs(10)).code(), Some(2));
}

#[test]
fn the_admin_api_wants_a_bearer_token_whatever_the_case_of_the_scheme() {
    let etcd = Etcd::start();
    etcd.put(&format!("{P}/nodes/gw-a"), &record("gw-a"));
    let r = RouterProc::start(&etcd, "", &["--admin-token", "s3cret-s3cret-s3cret"]);
    let post = |auth: Option<&str>| {
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "POST /admin/nodes/gw-a/serve HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        raw(r.addr, req.as_bytes(), Duration::from_secs(5))
    };
    assert!(post(None).starts_with("HTTP/1.1 401"), "{}", post(None));
    assert!(post(Some("Bearer ")).starts_with("HTTP/1.1 401"));
    assert!(post(Some("Bearer wrong")).starts_with("HTTP/1.1 401"));
    let ok = post(Some("bearer s3cret-s3cret-s3cret"));
    assert!(ok.starts_with("HTTP/1.1 202"), "{ok}");
    assert!(post(Some("BEARER s3cret-s3cret-s3cret")).starts_with("HTTP/1.1 202"));
}

#[test]
fn every_subcommand_runs_from_variables_alone() {
    let etcd = Etcd::start();
    let endpoints = etcd.endpoints();
    // Variables of every subcommand set at once: none may break another.
    let all_vars = [
        ("ROUTER_ETCD", endpoints.as_str()),
        ("ROUTER_LISTEN", "127.0.0.1:0"),
        ("ROUTER_ADMIN_TOKEN", "t0ken-t0ken-t0ken"),
        ("ROUTER_PREFIX", P),
        ("ROUTER_DEMO_NODES", "3"),
    ];
    let agent_vars = [
        ("AGENT_ETCD", endpoints.as_str()),
        ("AGENT_ID", "gw-env"),
        ("AGENT_IP", "127.0.0.1"),
        ("AGENT_REGION", "r"),
        ("AGENT_CAPACITY", "100"),
        ("AGENT_PORTS", "tcp=7000,ws=7001"),
        ("AGENT_LOAD", "static:5"),
        ("AGENT_TTL", "3"),
    ];
    let mut agent = Proc::spawn_clean("gateway-agent", &[], &agent_vars);
    wait_until(Duration::from_secs(15), "agent registered", || {
        etcd.get(&format!("{P}/nodes/gw-env")).is_some()
    });
    let mut serve = router_env(&[], &all_vars);
    let addr = serve.wait_for_addr("serving HTTP", Duration::from_secs(20));
    wait_until(Duration::from_secs(10), "router answers", || {
        http_get(addr, "/gateways").is_some_and(|(c, b)| c == 200 && b.contains("gw-env"))
    });
    let mut demo = router_env(&["demo"], &all_vars);
    let demo_addr = demo.wait_for_addr("serving HTTP", Duration::from_secs(20));
    wait_until(Duration::from_secs(10), "demo answers", || {
        http_get(demo_addr, "/readyz").is_some_and(|(c, _)| c == 200)
    });
    let mut ctl = router_env(&["ctl", "nodes"], &all_vars);
    let status = ctl.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{}", ctl.output());
    assert!(ctl.output().contains("gw-env"), "{}", ctl.output());
    // The operation's own flags too.
    let mut vars = all_vars.to_vec();
    vars.push(("ROUTER_CTL_JSON", "true"));
    let mut ctl = router_env(&["ctl", "nodes"], &vars);
    assert!(
        ctl.wait_exit(Duration::from_secs(20)).success(),
        "{}",
        ctl.output()
    );
    let json: serde_json::Value =
        serde_json::from_str(&ctl.output()).expect("JSON from ROUTER_CTL_JSON");
    assert_eq!(json["nodes"][0]["id"], "gw-env", "{json}");
    for p in [&mut serve, &mut demo, &mut agent] {
        p.signal("TERM");
        assert!(
            p.wait_exit(Duration::from_secs(20)).success(),
            "{}",
            p.output()
        );
    }
}

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
    let mut q = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["gw", "example", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

#[test]
fn slow_bodies_are_cut_at_their_deadline_and_cost_no_memory() {
    let etcd = Etcd::start();
    etcd.put(&format!("{P}/nodes/gw-a"), &record("gw-a"));
    const BODY_TIMEOUT: Duration = Duration::from_millis(1500);
    // Slack for a loaded machine: the deadline is checked when the body is read.
    const SLACK: Duration = Duration::from_millis(2500);
    let r = RouterProc::start(
        &etcd,
        &format!(
            "[dns]\nzone = \"gw.example.test\"\n[http]\nbody_timeout_ms = {}\n",
            BODY_TIMEOUT.as_millis()
        ),
        &[],
    );
    let before = rss_kib(r.proc.pid());
    let post = |extra: &str| {
        format!(
            "POST /dns-query HTTP/1.1\r\nHost: x\r\nContent-Type: application/dns-message\r\n{extra}\r\n"
        )
    };
    // 50 attackers, as in the report: 20 declaring 2 MB, 15 declaring a body under the
    // 64 KiB limit and 15 chunked, each sending a few bytes every 50 ms.
    let give_up = BODY_TIMEOUT + SLACK + Duration::from_secs(3);
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
        let addr = r.addr;
        attackers.push((
            kind,
            std::thread::spawn(move || trickle(addr, head, drip, give_up)),
        ));
    }
    // Meanwhile a normal client is served, over GET and over DoH.
    let mut peak = before;
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
        peak = peak.max(rss_kib(r.proc.pid()));
        std::thread::sleep(Duration::from_millis(100));
    }
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
        peak = peak.max(rss_kib(r.proc.pid()));
    }
    // One that sends part of its body and then waits (so the close is a clean one and
    // nothing is lost to a reset) hears why it is cut off: the contract's 408.
    let mut quiet = TcpStream::connect(r.addr).unwrap();
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
    eprintln!("RSS {before} KiB before, {peak} KiB at most under attack");
    // 50 slow clients cost the router a few MB at most (the report: 10.7 -> 28.5 MB
    // for 200 of them; a DoH body is now 64 KiB at most).
    assert!(
        peak <= before + 8 * 1024,
        "RSS grew from {before} KiB to {peak} KiB"
    );
    let (_, metrics) = http_get(r.addr, "/metrics").unwrap();
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

#[test]
fn malformed_requests_are_refused_with_the_contract_error() {
    let etcd = Etcd::start();
    let r = RouterProc::start(&etcd, "", &[]);
    let resp = raw(
        r.addr,
        b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(resp.contains("\"invalid_parameter\""), "{resp}");
    let resp = raw(
        r.addr,
        b"GET /healthz HTTP/1.0\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(
        resp.starts_with("HTTP/1.0 200"),
        "HTTP/1.0 needs no Host: {resp}"
    );
    // Heads the HTTP parser refuses by itself carry the contract's error body too.
    let big = format!(
        "GET /gateways HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40_000)
    );
    for (req, status) in [
        (big.as_bytes().to_vec(), "431"),
        (
            b"GET /gateways HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n".to_vec(),
            "400",
        ),
        (
            b"GET /gateways HTTP/1.1\r\nHost: x\r\nX: a\r\n folded\r\n\r\n".to_vec(),
            "400",
        ),
    ] {
        let resp = raw(r.addr, &req, Duration::from_secs(5));
        assert!(resp.starts_with(&format!("HTTP/1.1 {status}")), "{resp}");
        let body = resp.split_once("\r\n\r\n").unwrap().1;
        let v: serde_json::Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {resp}"));
        assert!(v["error"]["code"].is_string(), "{resp}");
    }
}

#[test]
fn a_keep_alive_request_crossing_sigterm_is_answered_then_closed() {
    let etcd = Etcd::start();
    etcd.put(&format!("{P}/nodes/gw-a"), &record("gw-a"));
    let mut r = RouterProc::start(&etcd, "", &[]);
    let get = b"GET /gateways HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut conns: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = TcpStream::connect(r.addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(get).unwrap();
            let first = read_response(&mut s);
            assert!(first.starts_with("http/1.1 200"), "{first}");
            s
        })
        .collect();
    r.proc.signal("TERM");
    r.proc
        .wait_for_output("shutting down", Duration::from_secs(5));
    for s in &mut conns {
        s.write_all(get).unwrap();
        let second = read_response(s);
        assert!(second.starts_with("http/1.1 200"), "{second}");
        assert!(second.contains("connection: close"), "{second}");
        assert!(closed_within(s, Duration::from_secs(5)));
    }
    let status = r.proc.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{}", r.proc.output());
    assert!(r.proc.output().contains("stopped"));
}

#[test]
fn metrics_pass_promtool_after_mixed_traffic() {
    let Some(promtool) = which("promtool") else {
        panic!("`promtool` was not found on PATH. Install it with `apt-get install -y prometheus`, or run `scripts/test.sh`, which installs it.");
    };
    let etcd = Etcd::start();
    etcd.put(&format!("{P}/nodes/gw-a"), &record("gw-a"));
    let r = RouterProc::start(&etcd, "", &["--admin-token", "t-t-t-t-t-t-t-t-t-t"]);
    for path in [
        "/gateways",
        "/gateways?count=0",
        "/gateways?proto=wss",
        "/nope",
        "/admin/nodes",
        "/healthz",
        "/gateways?region=r",
    ] {
        http_get(r.addr, path).unwrap();
    }
    let (_, text) = http_get(r.addr, "/metrics").unwrap();
    let out = output_with_stdin(
        Command::new(promtool).args(["check", "metrics"]),
        text.as_bytes(),
    );
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // And the histogram's own invariants, parsed.
    let buckets: Vec<(String, u64)> = text
        .lines()
        .filter(|l| {
            l.starts_with("router_http_request_duration_seconds_bucket{")
                && l.contains("route=\"/gateways\"")
        })
        .map(|l| {
            let le = l.split("le=\"").nth(1).unwrap().split('"').next().unwrap();
            (
                le.to_string(),
                l.rsplit(' ').next().unwrap().parse().unwrap(),
            )
        })
        .collect();
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    let (last_le, last) = buckets.last().unwrap();
    assert_eq!(last_le, "+Inf");
    let count: u64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("router_http_request_duration_seconds_count{route=\"/gateways\"} ")
        })
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(*last, count);
    assert_eq!(count, 4, "four /gateways requests: {text}");
}

/// Runs `cmd` with `input` on its standard input.
fn output_with_stdin(cmd: &mut Command, input: &[u8]) -> std::process::Output {
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}
