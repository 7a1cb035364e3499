//! Node bindings end to end: real etcd, a real router, `ctl bind` for the operator, and
//! records written straight into etcd as a compromised agent would write them.

use std::time::Duration;

use harness::{has_sample, router_ctl as ctl, wait_until, Etcd, NodeJson, RouterProc, P};
use serde_json::Value;

/// A node record as an agent writes it.
fn record(id: &str, ip: &str, region: &str, capacity: u64, domain: &str) -> String {
    NodeJson::new(id)
        .ip(ip)
        .region(region)
        .capacity(capacity)
        .conns(10)
        .with("isp", "ctcc")
        .with("domain", domain)
        .build()
}

/// gw-bound's honest record: inside the binding the tests give it.
fn honest() -> String {
    record(
        "gw-bound",
        "203.0.113.5",
        "cn-sh",
        100_000,
        "gw-bound.gw.example.com",
    )
}

fn put_node(etcd: &Etcd, id: &str, value: &str) {
    etcd.put(&format!("{P}/nodes/{id}"), value);
}

/// Every gateway id the router would hand out (any region).
fn answered(r: &RouterProc) -> Vec<String> {
    r.ids("/gateways?count=10")
}

/// The router's invalid list (`/ops/fleet.json`): key → reason.
fn invalid(r: &RouterProc) -> Vec<(String, String)> {
    let (code, fleet) = harness::get_json(r.addr, "/ops/fleet.json").expect("fleet");
    assert_eq!(code, 200, "{fleet}");
    fleet["router"]["invalid"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| {
                    (
                        i["key"].as_str().unwrap_or("").to_string(),
                        i["reason"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn metrics(r: &RouterProc) -> String {
    harness::http_get(r.addr, "/metrics").expect("metrics").1
}

fn ctl_ok(etcd: &Etcd, args: &[&str]) -> String {
    let (code, out) = ctl(etcd, args);
    assert_eq!(code, 0, "ctl {args:?}: {out}");
    out
}

/// gw-bound's binding: its /28, cn-sh, two ISPs, a capacity and a domain suffix.
const BIND: [&str; 14] = [
    "bind",
    "gw-bound",
    "--ip",
    "203.0.113.0/28",
    "--region",
    "cn-sh",
    "--isp",
    "ctcc",
    "--isp",
    "bgp",
    "--max-capacity",
    "100000",
    "--domain-suffix",
    ".gw.example.com",
];

/// Two honest nodes and gw-bound, bound by `BIND`, followed by a router; `key` is
/// gw-bound's record.
struct Bound {
    r: RouterProc,
    etcd: Etcd,
    key: String,
}

impl Bound {
    fn start() -> Bound {
        let etcd = Etcd::start();
        for (id, ip) in [("gw-ok1", "203.0.113.20"), ("gw-ok2", "203.0.113.21")] {
            put_node(
                &etcd,
                id,
                &record(id, ip, "cn-sh", 1000, &format!("{id}.gw.example.com")),
            );
        }
        put_node(&etcd, "gw-bound", &honest());
        let out = ctl_ok(&etcd, &BIND);
        assert!(out.contains("inside the binding"), "{out}");
        let stored: Value =
            serde_json::from_str(&etcd.get(&format!("{P}/bindings/gw-bound")).unwrap()).unwrap();
        assert_eq!(stored["ips"], serde_json::json!(["203.0.113.0/28"]));
        assert_eq!(stored["max_capacity"], 100_000);

        let r = RouterProc::start(&etcd, "", &[]);
        wait_until(Duration::from_secs(10), "three nodes answered", || {
            answered(&r).len() == 3
        });
        Bound {
            r,
            etcd,
            key: format!("{P}/nodes/gw-bound"),
        }
    }

    fn gw_bound_answered(&self) -> bool {
        answered(&self.r).contains(&"gw-bound".to_string())
    }

    /// What a compromised agent writes into its own key: each claim outside the
    /// binding makes the record invalid, named and counted, and never answered.
    fn each_claim_outside_the_binding_is_refused(&self) {
        let (etcd, r, key) = (&self.etcd, &self.r, &self.key);
        let attacks = [
            (
                record(
                    "gw-bound",
                    "203.0.113.5",
                    "cn-sh",
                    1_000_000_000_000_000_000,
                    "gw-bound.gw.example.com",
                ),
                "binding: capacity 1000000000000000000 is above max_capacity 100000",
            ),
            (
                record(
                    "gw-bound",
                    "203.0.113.5",
                    "us-east",
                    100_000,
                    "gw-bound.gw.example.com",
                ),
                "binding: region \"us-east\" is not one of cn-sh",
            ),
            (
                record(
                    "gw-bound",
                    "198.51.100.7",
                    "cn-sh",
                    100_000,
                    "gw-bound.gw.example.com",
                ),
                "binding: ip 198.51.100.7 is outside 203.0.113.0/28",
            ),
            (
                record(
                    "gw-bound",
                    "203.0.113.5",
                    "cn-sh",
                    100_000,
                    "login.evilgw.example.com",
                ),
                "binding: domain \"login.evilgw.example.com\" is not under .gw.example.com",
            ),
        ];
        for (value, reason) in &attacks {
            put_node(etcd, "gw-bound", value);
            wait_until(Duration::from_secs(10), reason, || {
                invalid(r).contains(&(key.clone(), reason.to_string()))
            });
            let ids = answered(r);
            assert!(!ids.contains(&"gw-bound".to_string()), "{reason}: {ids:?}");
            assert_eq!(ids.len(), 2, "the honest nodes stay: {ids:?}");
            assert!(
                has_sample(&metrics(r), "router_invalid_records 1"),
                "{reason}"
            );
            // Its honest record again: answered again.
            put_node(etcd, "gw-bound", &honest());
            wait_until(Duration::from_secs(10), "gw-bound back", || {
                self.gw_bound_answered() && invalid(r).is_empty()
            });
        }
        let m = metrics(r);
        let seen = m
            .lines()
            .find(|l| l.starts_with("router_invalid_records_seen"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no invalid_records_seen sample: {m}"));
        assert!(seen >= attacks.len() as f64, "{m}");
        assert!(
            r.proc
                .output()
                .contains("node record outside its binding skipped"),
            "{}",
            r.proc.output()
        );
    }

    /// Relaxing the binding re-admits the record already there, with no new report.
    fn relaxing_the_binding_readmits_the_record(&self) {
        let (etcd, r, key) = (&self.etcd, &self.r, &self.key);
        put_node(
            etcd,
            "gw-bound",
            &record(
                "gw-bound",
                "203.0.113.5",
                "us-east",
                100_000,
                "gw-bound.gw.example.com",
            ),
        );
        wait_until(Duration::from_secs(10), "us-east refused", || {
            !invalid(r).is_empty()
        });
        // ctl judges the records as routers do.
        let nodes = ctl_ok(etcd, &["nodes"]);
        assert!(
            nodes.contains(&format!(
                "invalid record {key}: binding: region \"us-east\" is not one of cn-sh"
            )),
            "{nodes}"
        );
        let mut relaxed = BIND.to_vec();
        relaxed.extend(["--region", "us-east"]);
        let out = ctl_ok(etcd, &relaxed);
        assert!(out.contains("inside the binding"), "{out}");
        let took = wait_until(Duration::from_secs(5), "re-admitted", || {
            self.gw_bound_answered() && invalid(r).is_empty()
        });
        println!("binding relaxed to node answered: {took:?}");
    }

    /// The listing shows the binding; a tighter one refuses the record; removing it
    /// leaves the record to the contract.
    fn list_tighten_and_remove(&self) {
        let etcd = &self.etcd;
        let list = ctl_ok(etcd, &["bindings"]);
        assert!(
            list.lines()
                .any(|l| l.starts_with("gw-bound ") && l.contains("cn-sh,us-east")),
            "{list}"
        );
        let json: Value = serde_json::from_str(&ctl_ok(etcd, &["bindings", "--json"])).unwrap();
        assert_eq!(json["bindings"][0]["id"], "gw-bound", "{json}");
        // A tighter binding refuses the record in the router's view at once.
        let out = ctl_ok(etcd, &["bind", "gw-bound", "--max-capacity", "10"]);
        assert!(out.contains("outside the binding"), "{out}");
        wait_until(Duration::from_secs(5), "tightened", || {
            !self.gw_bound_answered()
        });
        ctl_ok(etcd, &["bind", "gw-bound", "--remove"]);
        wait_until(Duration::from_secs(5), "unbound and answered", || {
            self.gw_bound_answered()
        });
        assert!(etcd.get(&format!("{P}/bindings/gw-bound")).is_none());
        let (code, out) = ctl(etcd, &["bind", "gw-bound", "--remove"]);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("no binding"), "{out}");
    }

    /// A binding that does not parse refuses its node and says which key is broken.
    fn a_broken_binding_is_named(&self) {
        self.etcd
            .put(&format!("{P}/bindings/gw-bound"), r#"{"ips": ["nope"]}"#);
        wait_until(Duration::from_secs(5), "broken binding named", || {
            invalid(&self.r).iter().any(|(k, why)| {
                k == &self.key
                    && why.starts_with(&format!("binding: {P}/bindings/gw-bound is broken"))
            })
        });
        assert!(!self.gw_bound_answered());
    }
}

#[test]
fn records_outside_their_binding_are_refused_until_the_binding_allows_them() {
    let w = Bound::start();
    w.each_claim_outside_the_binding_is_refused();
    w.relaxing_the_binding_readmits_the_record();
    w.list_tighten_and_remove();
    w.a_broken_binding_is_named();
}

#[test]
fn ctl_bind_refuses_bad_input_and_escapes_what_it_prints() {
    let etcd = Etcd::start();
    for (args, needle) in [
        (&["bind", "gw/1"][..], "ID"),
        (&["bind", "gw-1", "--ip", "203.0.113.0/33"], "--ip"),
        (&["bind", "gw-1", "--region", "cn sh"], "--region"),
        (&["bind", "gw-1", "--max-capacity", "0"], "--max-capacity"),
        (
            &["bind", "gw-1", "--domain-suffix", "a..b"],
            "--domain-suffix",
        ),
        (&["bind", "gw-1", "--remove", "--isp", "ctcc"], "--remove"),
    ] {
        let (code, out) = ctl(&etcd, args);
        assert_eq!(code, 2, "{args:?}: {out}");
        assert!(out.contains(needle), "{args:?}: {out}");
        assert_eq!(out.trim().lines().count(), 1, "one line: {out}");
    }
    assert!(
        etcd.keys(&format!("{P}/bindings/")).is_empty(),
        "nothing written"
    );

    // Terminal escapes in what etcd holds print as escapes, never raw.
    etcd.put(&format!("{P}/nodes/evil\u{1b}[2J"), "{}");
    etcd.put(&format!("{P}/bindings/evil\u{1b}]0;owned\u{7}"), "{bad");
    for args in [&["nodes"][..], &["bindings"]] {
        let out = ctl_ok(&etcd, args);
        assert!(
            !out.contains('\u{1b}') && !out.contains('\u{7}'),
            "{args:?}: {out:?}"
        );
        assert!(out.contains("evil\\x1b"), "{args:?}: {out}");
    }
}

#[test]
fn require_bindings_refuses_unbound_nodes() {
    let etcd = Etcd::start();
    for id in ["gw-a", "gw-b"] {
        put_node(
            &etcd,
            id,
            &record(id, "203.0.113.9", "cn-sh", 1000, "x.gw.example.com"),
        );
    }
    // gw-a is bound (with no limit: an explicit "this node may serve").
    ctl_ok(&etcd, &["bind", "gw-a"]);
    let r = RouterProc::start(&etcd, "require_bindings = true\n", &[]);
    wait_until(Duration::from_secs(10), "gw-b refused", || {
        invalid(&r).contains(&(
            format!("{P}/nodes/gw-b"),
            "binding: none for this node and require_bindings is set".to_string(),
        ))
    });
    assert_eq!(answered(&r), ["gw-a"]);
    ctl_ok(&etcd, &["bind", "gw-b", "--region", "cn-sh"]);
    wait_until(Duration::from_secs(5), "gw-b bound and answered", || {
        answered(&r).len() == 2 && invalid(&r).is_empty()
    });
}
