//! Clients' ISPs: the real router over real etcd, told ISPs by `[regions] isp_cidrs`
//! and a MaxMind-format ASN database; asked over HTTP from client addresses of three
//! carriers and none, and over DNS by dig with EDNS Client Subnet. The database is
//! replaced under the running router, then broken.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harness::{get_json, get_json_from, http_get, sample, tool, wait_until, Etcd, RouterProc, P};

const ZONE: &str = "gw.isp.test";

/// The test databases (`scripts/make-test-mmdb.py`): in `asn-a`, 127.20/16 is AS4134
/// and 127.21/16 AS9808; in `asn-b` both are AS4134.
fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../router-server/tests/data")
        .join(name)
}

/// Four nodes in cn-sh, one per line, least loaded first in this order: ctcc, cmcc,
/// cucc, bgp (multi-line); and a ctcc node in cn-bj, empty, that no cn-sh client
/// gets while cn-sh has room.
const NODES: [(&str, &str, &str, &str, u64); 5] = [
    ("ct-1", "192.0.2.1", "cn-sh", "ctcc", 500),
    ("cm-1", "192.0.2.2", "cn-sh", "cmcc", 600),
    ("cu-1", "192.0.2.3", "cn-sh", "cucc", 700),
    ("bgp-1", "192.0.2.4", "cn-sh", "bgp", 800),
    ("bj-ct", "192.0.2.9", "cn-bj", "ctcc", 0),
];

fn put_nodes(etcd: &Etcd) {
    for (id, ip, region, isp, conns) in NODES {
        etcd.put(
            &format!("{P}/nodes/{id}"),
            &format!(
                r#"{{"id":"{id}","ip":"{ip}","ports":{{"tcp":9000}},"region":"{region}","isp":"{isp}","capacity":100000,"connections":{conns}}}"#
            ),
        );
    }
}

/// The ids `/gateways` answers a client at `from` (with `query` added), in order;
/// checks each gateway names its node's ISP.
fn answer(router: SocketAddr, from: &str, query: &str) -> Vec<String> {
    let (code, body) = get_json_from(from.parse().unwrap(), router, &format!("/gateways{query}"))
        .unwrap_or_else(|| panic!("no answer for {from}"));
    assert_eq!(code, 200, "{body}");
    body["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let id = g["id"].as_str().unwrap().to_string();
            let node = NODES.iter().find(|n| n.0 == id).unwrap();
            assert_eq!(g["isp"].as_str(), Some(node.3), "{g}");
            id
        })
        .collect()
}

/// The addresses `dig` gets for the zone, asked for a client of `subnet`.
fn dig(dns: SocketAddr, subnet: &str) -> Vec<IpAddr> {
    let out = Command::new(tool("dig", "bind9-dnsutils"))
        .args([
            &format!("@{}", dns.ip()),
            "-p",
            &dns.port().to_string(),
            ZONE,
            "A",
            "+short",
            "+tries=1",
            "+time=5",
            &format!("+subnet={subnet}"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut ips: Vec<IpAddr> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    ips.sort();
    ips
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = list.iter().map(|s| s.parse().unwrap()).collect();
    v.sort();
    v
}

fn loads(router: SocketAddr, result: &str) -> f64 {
    let (_, text) = http_get(router, "/metrics").expect("metrics");
    sample(
        &text,
        &format!("router_isp_db_loads_total{{result=\"{result}\"}}"),
    )
}

#[test]
fn clients_get_their_isps_line_first_over_http_and_dns_and_follow_the_database() {
    let etcd = Etcd::start();
    put_nodes(&etcd);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("asn.mmdb");
    std::fs::copy(data("asn-a.mmdb"), &db).unwrap();
    let config = format!(
        r#"
[regions]
cidrs = {{ "127.0.0.0/8" = "cn-sh" }}
fallbacks = {{ cn-sh = ["cn-bj"] }}
isp_cidrs = {{ "127.22.0.0/16" = "cucc" }}
isp_db = "{}"
asn_isps = {{ AS4134 = "ctcc", AS9808 = "cmcc" }}
isp_db_check_ms = 50
[dns]
listen = "127.0.0.1:0"
zone = "{ZONE}"
count = 2
"#,
        db.display()
    );
    let router = RouterProc::start(&etcd, &config, &[]);
    let dns = router
        .proc
        .wait_for_addr("answering DNS", Duration::from_secs(20));
    wait_until(Duration::from_secs(10), "every node in the router", || {
        get_json(router.addr, "/gateways?count=10").is_some_and(|(c, b)| {
            c == 200 && b["gateways"].as_array().is_some_and(|g| g.len() == 5)
        })
    });
    let r = router.addr;
    // ctcc by its ASN: its line (ctcc, then bgp), then the region's other lines.
    assert_eq!(answer(r, "127.20.0.1", ""), ["ct-1", "bgp-1", "cm-1"]);
    // cmcc by its ASN: the cmcc node before the less loaded ctcc one.
    assert_eq!(answer(r, "127.21.0.1", ""), ["cm-1", "bgp-1", "ct-1"]);
    // cucc by `isp_cidrs`, ahead of the database.
    assert_eq!(answer(r, "127.22.0.1", ""), ["cu-1", "bgp-1", "ct-1"]);
    // No known ISP: least loaded first, as without ISPs.
    assert_eq!(answer(r, "127.23.0.1", ""), ["ct-1", "cm-1", "cu-1"]);
    // The client names its carrier.
    assert_eq!(
        answer(r, "127.23.0.1", "?isp=cmcc"),
        ["cm-1", "bgp-1", "ct-1"]
    );
    // Every node of the region comes before the fallback's, whatever its line.
    let all = answer(r, "127.21.0.1", "?count=5");
    assert_eq!(all, ["cm-1", "bgp-1", "ct-1", "cu-1", "bj-ct"]);
    // DNS: the client subnet's ISP, by the database and by `isp_cidrs`.
    assert_eq!(dig(dns, "127.21.0.0/24"), ips(&["192.0.2.2", "192.0.2.4"]));
    assert_eq!(dig(dns, "127.20.0.0/24"), ips(&["192.0.2.1", "192.0.2.4"]));
    assert_eq!(dig(dns, "127.22.0.0/24"), ips(&["192.0.2.3", "192.0.2.4"]));
    assert_eq!(dig(dns, "127.23.0.0/24"), ips(&["192.0.2.1", "192.0.2.2"]));
    assert_eq!(loads(r, "applied"), 1.0);

    // A new database, renamed over the old one: 127.21/16 is AS4134 (ctcc) now.
    let next = dir.path().join("next.mmdb");
    std::fs::copy(data("asn-b.mmdb"), &next).unwrap();
    std::fs::rename(&next, &db).unwrap();
    wait_until(Duration::from_secs(10), "the new database in force", || {
        answer(r, "127.21.0.1", "")[0] == "ct-1"
    });
    assert_eq!(answer(r, "127.21.0.1", ""), ["ct-1", "bgp-1", "cm-1"]);
    assert_eq!(dig(dns, "127.21.0.0/24"), ips(&["192.0.2.1", "192.0.2.4"]));
    assert_eq!(loads(r, "applied"), 2.0);

    // A broken file: refused, counted once, and the database in force stays.
    std::fs::write(&db, b"not a database").unwrap();
    wait_until(Duration::from_secs(10), "the broken file refused", || {
        loads(r, "invalid") == 1.0
    });
    assert_eq!(answer(r, "127.21.0.1", ""), ["ct-1", "bgp-1", "cm-1"]);
    assert!(router.proc.output().contains("ISP database not reloaded"));
}

#[test]
fn a_router_whose_isp_database_cannot_be_read_does_not_start_and_says_why() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("asn.mmdb");
    std::fs::write(&junk, b"junk").unwrap();
    let config = dir.path().join("router.toml");
    std::fs::write(
        &config,
        format!(
            "[regions]\nisp_db = \"{}\"\nasn_isps = {{ AS1 = \"x\" }}\n",
            junk.display()
        ),
    )
    .unwrap();
    let (status, out) = harness::run(
        "router-server",
        &[
            "--etcd",
            &etcd.endpoints(),
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        Duration::from_secs(30),
    );
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("[regions] isp_db") && out.contains("not a MaxMind-format database"),
        "{out}"
    );
}
