//! What clients see, fed back: real SDK clients (`sdk-probe`) in two "ISPs" of the
//! test's own (network namespaces, `harness::isps`), two routers over real etcd,
//! three real TCP gateways. One gateway goes dark for ISP A only: A's clients must stop
//! being sent there first (by the router they report to and by the other one, which
//! only hears of it through etcd), B's must keep using it, and when the path heals
//! A's clients must come back by themselves.

use std::io::BufRead;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::isps::{Isp, Isps};
use harness::{bin, get_json, http_get, sample, wait_until, Etcd, RouterProc, P};

/// Report every outcome, at most one report per client every half second.
const REPORT_MS: &str = "500";

/// Judged over 2 s, shared every 0.5 s, demoted for 3 s.
const FEEDBACK: &str = r#"
[feedback]
window_ms = 2000
share_ms = 500
hold_ms = 3000
min_reports = 10
demote_below = 0.5
"#;

/// A connection one probe client made (or failed to make), when the test read it.
#[derive(Debug, Clone)]
struct Seen {
    isp: Isp,
    at: Instant,
    first: Option<String>,
    gateway: Option<String>,
}

/// A probe process inside an ISP's namespace, killed on drop.
struct Probe(Child);

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn probe(
    isps: &Isps,
    isp: Isp,
    router: SocketAddr,
    clients: usize,
    seen: &Arc<Mutex<Vec<Seen>>>,
) -> Probe {
    let router = router.to_string();
    let clients = clients.to_string();
    let mut child = isps
        .command(isp, &bin("sdk-probe"), &[&router, &clients, REPORT_MS])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sdk-probe");
    let out = child.stdout.take().unwrap();
    let seen = seen.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let text = |k: &str| v[k].as_str().map(str::to_string);
            seen.lock().unwrap().push(Seen {
                isp,
                at: Instant::now(),
                first: text("first"),
                gateway: text("gateway"),
            });
        }
    });
    Probe(child)
}

/// A gateway that accepts connections on `ip` and closes them when the client does.
fn gateway(ip: &str) -> u16 {
    let l = TcpListener::bind((ip, 0)).expect("bind a gateway");
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            drop(s);
        }
    });
    port
}

/// The connections of `isp` seen after `since`.
fn after(seen: &Mutex<Vec<Seen>>, isp: Isp, since: Instant) -> Vec<Seen> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|s| s.isp == isp && s.at > since)
        .cloned()
        .collect()
}

/// The first candidate a client of `isp` gets from `router` (asked with curl from
/// inside the ISP's namespace).
fn first_for(isps: &Isps, isp: Isp, router: SocketAddr) -> Option<String> {
    let curl = harness::tool("curl", "curl");
    let out = isps
        .command(
            isp,
            &curl,
            &[
                "-s",
                "--max-time",
                "2",
                &format!("http://{router}/gateways"),
            ],
        )
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["gateways"][0]["id"].as_str().map(str::to_string)
}

#[test]
fn a_gateway_dark_for_one_isp_is_demoted_for_it_alone_and_comes_back_when_healed() {
    let isps = Isps::new(3);
    let etcd = Etcd::start();
    // gw-x is the least loaded, so every client is sent there first.
    for (k, (id, conns)) in [("gw-x", 10_000), ("gw-y", 30_000), ("gw-z", 50_000)]
        .into_iter()
        .enumerate()
    {
        let ip = isps.gateway(k);
        let port = gateway(&ip);
        etcd.put(
            &format!("{P}/nodes/{id}"),
            &format!(
                r#"{{"id":"{id}","ip":"{ip}","ports":{{"tcp":{port}}},"region":"cn-sh","isp":"bgp","capacity":100000,"connections":{conns}}}"#
            ),
        );
    }
    let config = format!(
        "[regions]\ncidrs = {{ \"{net}/24\" = \"cn-sh\" }}\n\
         isp_cidrs = {{ \"{a}/32\" = \"cmcc\", \"{b}/32\" = \"ctcc\" }}\n{FEEDBACK}",
        net = isps.host(),
        a = isps.client(Isp::A),
        b = isps.client(Isp::B),
    );
    let listen = format!("{}:0", isps.host());
    let r1 = RouterProc::start_registries(&listen, &[("default", &etcd)], &config, &[]);
    let r2 = RouterProc::start_registries(&listen, &[("default", &etcd)], &config, &[]);
    let seen = Arc::new(Mutex::new(Vec::new()));
    // A's clients ask (and report to) r1 only; B's ask r2.
    let _a = probe(&isps, Isp::A, r1.addr, 4, &seen);
    let _b = probe(&isps, Isp::B, r2.addr, 2, &seen);
    let start = Instant::now();
    wait_until(
        Duration::from_secs(20),
        "both ISPs' clients on gw-x",
        || {
            [Isp::A, Isp::B].iter().all(|&isp| {
                after(&seen, isp, start)
                    .iter()
                    .any(|s| s.gateway.as_deref() == Some("gw-x"))
            })
        },
    );

    // gw-x goes dark for ISP A.
    let dark = Instant::now();
    isps.cut(Isp::A, &isps.gateway(0));
    let away = wait_until(
        Duration::from_secs(15),
        "A's clients sent elsewhere first",
        || {
            let a = after(&seen, Isp::A, dark);
            // Three connections in a row that were not sent to gw-x first.
            a.len() >= 3
                && a[a.len() - 3..]
                    .iter()
                    .all(|s| s.first.as_deref() != Some("gw-x"))
        },
    );
    // The other router heard of it only through etcd.
    let shared = wait_until(Duration::from_secs(5), "r2 demotes gw-x for A too", || {
        first_for(&isps, Isp::A, r2.addr).is_some_and(|f| f != "gw-x")
    });
    assert_eq!(first_for(&isps, Isp::B, r1.addr).as_deref(), Some("gw-x"));
    // Seen by operators: the metric and /ops.
    let (_, metrics) = http_get(r1.addr, "/metrics").unwrap();
    let series = r#"router_demoted_gateways{region="cn-sh",isp="cmcc"}"#;
    assert_eq!(sample(&metrics, series), 1.0, "{metrics}");
    let (_, summary) = get_json(r2.addr, "/ops/summary.json").unwrap();
    let demoted = &summary["router"]["demoted"];
    assert_eq!(demoted[0]["gateway"], "gw-x", "{summary}");
    assert_eq!(demoted[0]["isp"], "cmcc", "{summary}");
    let (ok, failed) = (
        demoted[0]["ok"].as_u64().unwrap(),
        demoted[0]["failed"].as_u64().unwrap(),
    );
    assert!(ok + failed >= 10 && failed > ok, "{summary}");

    // B's clients kept connecting to it all along.
    let b = after(&seen, Isp::B, dark);
    assert!(b.len() >= 5, "{b:?}");
    assert!(
        b.iter().all(|s| s.gateway.as_deref() == Some("gw-x")),
        "B's clients left gw-x: {b:?}"
    );

    // The path heals: A's clients come back when the demotion ends.
    isps.heal(Isp::A, &isps.gateway(0));
    let healed = Instant::now();
    let back = wait_until(Duration::from_secs(20), "A's clients back on gw-x", || {
        after(&seen, Isp::A, healed)
            .iter()
            .any(|s| s.first.as_deref() == Some("gw-x") && s.gateway.as_deref() == Some("gw-x"))
    });
    // A's clients never went without a connection.
    let failures = after(&seen, Isp::A, dark)
        .iter()
        .filter(|s| s.gateway.is_none())
        .count();
    assert_eq!(failures, 0);
    eprintln!(
        "dark for A -> A's clients sent elsewhere: {:.2} s (the other router: at most {:.2} s later); \
         healed -> back: {:.2} s (window 2 s, shared every 0.5 s, hold 3 s, one report per \
         client per 0.5 s, 10 outcomes at least, below 50 % success)",
        away.as_secs_f64(),
        shared.as_secs_f64(),
        back.as_secs_f64()
    );
}
