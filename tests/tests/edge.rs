//! The router's HTTP edge against strangers, careless operators and restarts: real
//! binaries, real sockets, real etcd.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{http_get, wait_until, which, Etcd, Proc, RouterProc};

const P: &str = "/gateway-router/v1";

fn record(id: &str) -> String {
    format!(
        r#"{{"id":"{id}","ip":"192.0.2.7","ports":{{"tcp":9000}},"region":"r","capacity":1000,"connections":1}}"#
    )
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
