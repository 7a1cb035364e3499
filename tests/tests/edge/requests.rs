//! What the edge answers: malformed requests get the contract's error, a keep-alive
//! request crossing SIGTERM is answered, and the metrics pass promtool.

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use harness::{http_get, which, Etcd, RouterProc, P};

use super::{closed_within, raw, read_response, record};

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
