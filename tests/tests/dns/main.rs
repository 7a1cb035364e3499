//! The router's DNS, asked by real DNS clients: dig and kdig (Debian's bind9-dnsutils
//! and knot-dnsutils), unbound as the recursive resolver in front of it, curl with
//! DNS over HTTPS, and the SDK's Alibaba provider against `/d`. This file holds the
//! zone and the dig helpers the concerns share; each module is one concern.

mod abuse;
mod clients;
mod resolvers;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::Duration;

use harness::{get_json, tool, wait_until, Etcd, RouterProc, TestCa, P};

const ZONE: &str = "gw.example.test";

/// Writes a node record: `conns` of 1,000, IPv4 `ip`, IPv6 `2001:db8::{last octet}`.
fn put_node(etcd: &Etcd, id: &str, ip: &str, region: &str, conns: u64, port: u16, extra: &str) {
    let last = ip.rsplit('.').next().unwrap();
    etcd.put(
        &format!("{P}/nodes/{id}"),
        &format!(
            r#"{{"id":"{id}","ip":"{ip}","ipv6":"2001:db8::{last}","ports":{{"tcp":{port}}},"region":"{region}","capacity":1000,"connections":{conns}{extra}}}"#
        ),
    );
}

/// Marks the least loaded us node, `us-2`, draining, as its agent would.
fn drain_us_2(etcd: &Etcd) {
    put_node(
        etcd,
        "us-2",
        "198.51.100.2",
        "us",
        150,
        9000,
        r#","state":"draining""#,
    );
}

/// A router serving the zone over UDP/TCP and HTTPS (and plain HTTP), with its CA.
struct Zone {
    etcd: Etcd,
    router: RouterProc,
    dns: SocketAddr,
    https: SocketAddr,
    ca: TestCa,
    dir: tempfile::TempDir,
}

const REGIONS: &str = r#"
[regions.cidrs]
"10.1.0.0/16" = "eu"
"10.2.0.0/16" = "us"
"127.0.0.0/8" = "local"
"#;

/// Two eu nodes, three us nodes (the busiest over half full), no two equally loaded
/// (ties go by each router's own random order), and the config's `dns`
/// keys besides the listener and zone.
fn zone_with(dns: &str, extra_config: &str, flags: &[&str]) -> Zone {
    let etcd = Etcd::start();
    put_node(&etcd, "eu-1", "192.0.2.1", "eu", 100, 9000, "");
    put_node(&etcd, "eu-2", "192.0.2.2", "eu", 300, 9000, "");
    put_node(&etcd, "us-1", "198.51.100.1", "us", 200, 9000, "");
    put_node(&etcd, "us-2", "198.51.100.2", "us", 150, 9000, "");
    put_node(&etcd, "us-3", "198.51.100.3", "us", 700, 9000, "");
    zone_on(etcd, dns, extra_config, flags)
}

fn zone_on(etcd: Etcd, dns: &str, extra_config: &str, flags: &[&str]) -> Zone {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("dns test CA");
    let (cert, key) = ca.write_leaf(dir.path(), &["localhost", "127.0.0.1", "router.test"]);
    let config = format!(
        "{REGIONS}\n[dns]\nlisten = \"127.0.0.1:0\"\nzone = \"{ZONE}\"\n{dns}\n{extra_config}"
    );
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let mut args = vec![
        "--http-listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert,
        "--tls-key",
        key,
    ];
    args.extend_from_slice(flags);
    let (router, https) = RouterProc::start_tls_args(&etcd, &config, &args);
    let dns = router
        .proc
        .wait_for_addr("answering DNS", Duration::from_secs(20));
    let nodes = etcd.keys(&format!("{P}/nodes/")).len();
    wait_until(Duration::from_secs(10), "every node in the router", || {
        get_json(router.addr, "/gateways?count=10").is_some_and(|(c, b)| {
            c == 200 && b["gateways"].as_array().is_some_and(|g| g.len() == nodes)
        })
    });
    Zone {
        etcd,
        router,
        dns,
        https,
        ca,
        dir,
    }
}

/// `dig @router NAME TYPE` with `opts`; returns stdout, failing on a dig error.
fn dig(at: SocketAddr, name: &str, qtype: &str, opts: &[&str]) -> String {
    let port = at.port().to_string();
    let server = format!("@{}", at.ip());
    let mut args = vec![
        server.as_str(),
        "-p",
        &port,
        name,
        qtype,
        "+tries=1",
        "+time=5",
    ];
    args.extend_from_slice(opts);
    let out = Command::new(tool("dig", "bind9-dnsutils"))
        .args(&args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "dig {args:?} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The status of a full dig answer (`NOERROR`, `NXDOMAIN`, ...).
fn status(dig_out: &str) -> String {
    dig_out
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("no status in {dig_out}"))
        .to_string()
}

/// The flags of a full dig answer (`qr aa rd`).
fn flags(dig_out: &str) -> String {
    dig_out
        .split(";; flags: ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .unwrap_or_else(|| panic!("no flags in {dig_out}"))
        .to_string()
}

/// The addresses of `+short` output, in order.
fn short(out: &str) -> Vec<String> {
    out.lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// A plain HTTP server standing for a gateway: answers every request with its name.
fn http_gateway(name: &'static str) -> (std::thread::JoinHandle<()>, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let body = format!("gateway {name}\n");
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (t, port)
}
