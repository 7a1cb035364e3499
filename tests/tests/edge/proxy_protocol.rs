//! A router behind a TCP balancer that speaks the PROXY protocol (`[http]
//! proxy_protocol`): the header's client address is the client (its region, its
//! budgets), from v1 (curl's `--haproxy-protocol`) and v2 headers alike; a header from
//! a peer `trusted_proxies` does not list, or a connection without one, is closed
//! unanswered and counted.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use harness::{connect_from, tool, wait_until, Etcd, NodeJson, RouterProc, P};
use ppp::v2;

const CONFIG: &str = r#"
trusted_proxies = ["127.0.0.1/32"]
[regions]
cidrs = { "198.51.100.0/24" = "cn-sh", "203.0.113.0/24" = "cn-bj" }
[http]
proxy_protocol = true
"#;

/// `path` through curl, which sends a v1 header naming its own connection.
fn curl(addr: SocketAddr, path: &str) -> Option<String> {
    let out = Command::new(tool("curl", "curl"))
        .args(["-sS", "--max-time", "5", "--haproxy-protocol"])
        .arg(format!("http://{addr}{path}"))
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `header` then `GET /gateways` over a connection from `from`; what came back
/// before the router closed it.
fn ask(from: IpAddr, addr: SocketAddr, header: &[u8]) -> String {
    let mut s = connect_from(from, addr, None).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(header);
    let _ = s.write_all(b"GET /gateways HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

fn v1(client: &str, addr: SocketAddr) -> Vec<u8> {
    format!("PROXY TCP4 {client} 127.0.0.1 40000 {}\r\n", addr.port()).into_bytes()
}

#[test]
fn the_client_is_who_the_balancer_says_and_only_the_balancer_may_say_it() {
    let etcd = Etcd::start();
    for (id, region) in [("sh-1", "cn-sh"), ("bj-1", "cn-bj")] {
        etcd.put(
            &format!("{P}/nodes/{id}"),
            &NodeJson::new(id).region(region).conns(1).build(),
        );
    }
    let (proc, _config) = RouterProc::spawn(&etcd, CONFIG, &[]);
    let addr = proc.wait_for_addr("serving HTTP", Duration::from_secs(20));
    let lb: IpAddr = "127.0.0.1".parse().unwrap();
    wait_until(
        Duration::from_secs(15),
        "ready through the balancer",
        || curl(addr, "/readyz").is_some_and(|b| b.contains("ready")),
    );

    // v1, from curl: its own address, which no region lists.
    let body = curl(addr, "/gateways?region=cn-bj").expect("curl through PROXY v1");
    assert!(body.contains("\"bj-1\""), "{body}");
    // v1 and v2 naming clients: the region is theirs.
    let sh = ask(lb, addr, &v1("198.51.100.7", addr));
    assert!(
        sh.starts_with("HTTP/1.1 200") && sh.contains("\"sh-1\""),
        "{sh}"
    );
    let header = v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Proxy,
        v2::Protocol::Stream,
        v2::IPv4::new([203, 0, 113, 9], [127, 0, 0, 1], 40001, addr.port()),
    )
    .build()
    .unwrap();
    let bj = ask(lb, addr, &header);
    assert!(
        bj.starts_with("HTTP/1.1 200") && bj.contains("\"bj-1\""),
        "{bj}"
    );

    // Anyone else naming a client, and the balancer without a header: no answer.
    let stranger = ask(
        "127.0.0.2".parse().unwrap(),
        addr,
        &v1("198.51.100.7", addr),
    );
    assert_eq!(stranger, "", "an untrusted peer got an answer");
    let bare = ask(lb, addr, b"");
    assert_eq!(bare, "", "a connection without a header got an answer");

    let metrics = curl(addr, "/metrics").unwrap();
    for reason in ["proxy_untrusted", "proxy_header_invalid"] {
        let line = format!("router_connections_closed_by_server_total{{reason=\"{reason}\"}} 1");
        assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
    }
}
