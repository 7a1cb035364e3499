//! Tests of the record contract: the example, defaults, rejections and round trips.

use std::collections::BTreeMap;

use super::*;
use proptest::prelude::*;

const EXAMPLE: &str = r#"{
  "id": "gw-sh-001", "ip": "203.0.113.10",
  "ports": {"tcp": 8000, "ws": 8080, "wss": 8443},
  "region": "cn-sh", "capacity": 1000000, "connections": 412345,
  "ipv6": "2001:db8::10", "domain": "gw-sh-001.example.com", "zone": "cn-sh-a",
  "isp": "ctcc", "state": "serving", "healthy": true, "updated_ms": 1763700000000,
  "applied_command": "c-42", "labels": {"version": "1.8.2"}
}"#;

#[test]
fn contract_example_parses() {
    let r = NodeRecord::parse("gw-sh-001", EXAMPLE.as_bytes()).unwrap();
    assert_eq!(r.ports.wss, Some(8443));
    assert_eq!(r.connections, 412345);
    assert_eq!(r.applied_command.as_deref(), Some("c-42"));
    assert!((r.load() - 0.412345).abs() < 1e-9);
}

#[test]
fn defaults_and_unknown_fields() {
    let v = br#"{"id":"a","ip":"::1","ports":{"ws":1},"region":"r","capacity":1,
                 "connections":0,"future_field":{"x":1}}"#;
    let r = NodeRecord::parse("a", v).unwrap();
    assert_eq!(r.state, NodeState::Serving);
    assert!(r.healthy);
    assert!(r.labels.is_empty());
}

#[test]
fn roundtrip_is_stable() {
    let r = NodeRecord::parse("gw-sh-001", EXAMPLE.as_bytes()).unwrap();
    let again = NodeRecord::parse("gw-sh-001", &r.to_json()).unwrap();
    assert_eq!(r, again);
}

fn reject(key: &str, v: &str) -> RecordError {
    NodeRecord::parse(key, v.as_bytes()).expect_err(v)
}

/// A valid record's fields after `id`.
const OK: &str = r#""ip":"10.0.0.1","ports":{"tcp":1},"region":"r","capacity":5,"connections":1"#;

#[test]
fn values_that_are_not_json_objects_are_rejected() {
    assert!(matches!(reject("a", "not json"), RecordError::Json(_)));
    assert!(matches!(reject("a", "[]"), RecordError::Json(_)));
    // Wrong types where serde's derive would read a struct from an array.
    let e = reject(
        "a",
        r#"{"id":"a","ip":"10.0.0.1","ports":[8000,8080],"region":"r","capacity":5,"connections":1}"#,
    );
    assert!(e.to_string().contains("object of ports"), "{e}");
    let e = reject("a", r#"["a","10.0.0.1",{"tcp":1},"r",5,1]"#);
    assert!(e.to_string().contains("JSON object"), "{e}");
    assert!(Command::parse(br#"["c-1","drain"]"#).is_err());
    assert!(Command::parse(br#" {"id":"c-1","action":"drain"}"#).is_ok());
}

#[test]
fn missing_required_fields_are_named() {
    let ok = OK;
    for field in ["ip", "ports", "region", "capacity", "connections"] {
        let v: serde_json::Value = serde_json::from_str(&format!("{{\"id\":\"a\",{ok}}}")).unwrap();
        let mut m = v.as_object().unwrap().clone();
        m.remove(field);
        let e = reject("a", &serde_json::Value::Object(m).to_string());
        assert!(e.to_string().contains(field), "{field}: {e}");
    }
    // An id that is not the key's.
    let e = reject("b", &format!("{{\"id\":\"a\",{ok}}}"));
    assert!(e.to_string().contains("key"), "{e}");
}

#[test]
fn required_fields_out_of_range_are_named() {
    let cases = [
        (
            r#""ip":"host.example","ports":{"tcp":1},"region":"r","capacity":5,"connections":1"#,
            "ip",
        ),
        (
            r#""ip":"10.0.0.1","ports":{},"region":"r","capacity":5,"connections":1"#,
            "ports",
        ),
        (
            r#""ip":"10.0.0.1","ports":{"tcp":0},"region":"r","capacity":5,"connections":1"#,
            "ports",
        ),
        (
            r#""ip":"10.0.0.1","ports":{"tcp":70000},"region":"r","capacity":5,"connections":1"#,
            "ports",
        ),
        (
            r#""ip":"10.0.0.1","ports":{"tcp":1},"region":"r","capacity":0,"connections":1"#,
            "capacity",
        ),
        (
            r#""ip":"10.0.0.1","ports":{"tcp":1},"region":"r","capacity":5,"connections":-1"#,
            "connections",
        ),
        (
            r#""ip":"10.0.0.1","ports":{"tcp":1},"region":"r","capacity":"5","connections":1"#,
            "capacity",
        ),
        (
            r#""ip":"10.0.0.1","ports":{"tcp":1},"region":"","capacity":5,"connections":1"#,
            "region",
        ),
        (
            r#""ip":"10.0.0.1","ports":{"tcp":1},"region":"r","capacity":5,"connections":1,"state":"gone""#,
            "state",
        ),
        (
            r#""ip":"10.0.0.1","ports":{"tcp":1},"region":"r","capacity":5,"connections":1,"healthy":"yes""#,
            "healthy",
        ),
    ];
    for (body, field) in cases {
        let e = reject("a", &format!("{{\"id\":\"a\",{body}}}"));
        let msg = e.to_string();
        assert!(
            msg.contains(field) || matches!(e, RecordError::Json(_)),
            "{field}: {msg}"
        );
    }
}

#[test]
fn optional_fields_out_of_range_are_named() {
    let long_name = "r".repeat(65);
    let long_domain = format!("{}.example.com", ["a"; 125].join("."));
    let bad_optional = [
        (format!(r#""region":"{long_name}""#), "region"),
        (r#""region":"cn sh""#.to_string(), "region"),
        (r#""region":"r","zone":"\u001b[31m""#.to_string(), "zone"),
        (format!(r#""region":"r","isp":"{long_name}""#), "isp"),
        (r#""region":"r","isp":"""#.to_string(), "isp"),
        (r#""region":"r","isp":"ctcc,""#.to_string(), "isp"),
        (
            r#""region":"r","isp":"ctcc,ctcc""#.to_string(),
            "named twice",
        ),
        (
            format!(
                r#""region":"r","isp":"{}""#,
                ["a", "b", "c", "d", "e", "f", "g", "h", "i"].join(",")
            ),
            "at most 8",
        ),
        (r#""region":"r","domain":"evil..com""#.to_string(), "domain"),
        (r#""region":"r","domain":"a_b.com""#.to_string(), "domain"),
        (r#""region":"r","domain":"-a.com""#.to_string(), "domain"),
        (
            format!(r#""region":"r","domain":"{long_domain}""#),
            "domain",
        ),
        (
            format!(r#""region":"r","applied_command":"{}""#, "c".repeat(129)),
            "applied_command",
        ),
        (
            format!(r#""region":"r","labels":{{"k":"{}"}}"#, "v".repeat(257)),
            "labels",
        ),
        (
            format!(r#""region":"r","labels":{{"{}":"v"}}"#, "k".repeat(65)),
            "labels",
        ),
        (
            r#""region":"r","labels":{"k":"\u001b]0;x\u0007"}"#.to_string(),
            "labels",
        ),
        (
            format!(
                r#""region":"r","labels":{{{}}}"#,
                (0..33)
                    .map(|i| format!(r#""k{i}":"v""#))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            "labels",
        ),
        (
            format!(
                r#""region":"r","hook":{{"command":"c","percent":5,"state":"retrying","since_ms":1,"error":"{}"}}"#,
                "e".repeat(513)
            ),
            "hook",
        ),
    ];
    for (body, field) in bad_optional {
        let v = format!(
            r#"{{"id":"a","ip":"10.0.0.1","ports":{{"tcp":1}},"capacity":5,"connections":1,{body}}}"#
        );
        let e = reject("a", &v);
        assert!(e.to_string().contains(field), "{field}: {e}");
    }
}

#[test]
fn values_at_the_limits_pass() {
    let d = format!("{}.example.com", ["a"; 120].join("."));
    let at_limits = format!(
        r#"{{"id":"a","ip":"10.0.0.1","ports":{{"tcp":1}},"capacity":5,"connections":1,
            "region":"{r}","zone":"{r}","isp":"{r}","domain":"{d}","applied_command":"{c}",
            "labels":{{"{k}":"{v}"}}}}"#,
        r = "r".repeat(64),
        c = "c".repeat(128),
        k = "k".repeat(64),
        v = "v".repeat(256),
    );
    NodeRecord::parse("a", at_limits.as_bytes()).expect("values at the limits pass");
}

#[test]
fn text_is_clipped_and_ids_are_checked() {
    assert_eq!(clip_text("ab\u{1b}cd", 4), "ab c");
    assert_eq!(clip_text("aé", 2), "a");
    for bad_id in ["", "a/b", "a b", &"x".repeat(65)] {
        assert!(validate_id(bad_id).is_err(), "{bad_id:?}");
    }
}

#[test]
fn commands() {
    let c =
        Command::parse(br#"{"id":"c-42","action":"migrate","percent":30,"issued_ms":1}"#).unwrap();
    assert_eq!(c.move_percent(), 30);
    assert_eq!(
        Command::parse(br#"{"id":"d","action":"drain"}"#)
            .unwrap()
            .move_percent(),
        100
    );
    for bad in [
        &br#"{"id":"c","action":"migrate"}"#[..],
        br#"{"id":"c","action":"migrate","percent":0}"#,
        br#"{"id":"c","action":"migrate","percent":101}"#,
        br#"{"id":"c","action":"explode"}"#,
        br#"{"id":"","action":"drain"}"#,
        br#"garbage"#,
    ] {
        assert!(
            Command::parse(bad).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

fn arb_record() -> impl Strategy<Value = NodeRecord> {
    (
        "[A-Za-z0-9._-]{1,64}",
        any::<std::net::IpAddr>(),
        (
            proptest::option::of(1u16..),
            proptest::option::of(1u16..),
            1u16..,
        ),
        "[a-z]{2}-[a-z]{2}",
        1u64..u64::MAX,
        any::<u64>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(id, ip, (tcp, ws, wss), region, capacity, conns, draining, healthy)| NodeRecord {
                id,
                ip,
                ports: Ports {
                    tcp,
                    ws,
                    wss: Some(wss),
                },
                region,
                capacity,
                connections: conns,
                ipv6: None,
                domain: None,
                zone: None,
                isp: None,
                state: if draining {
                    NodeState::Draining
                } else {
                    NodeState::Serving
                },
                healthy,
                updated_ms: None,
                sampled_ms: None,
                sample_age_ms: None,
                applied_command: None,
                hook: None,
                labels: BTreeMap::new(),
                dc: None,
            },
        )
}

proptest! {
    #[test]
    fn valid_records_roundtrip(r in arb_record()) {
        let parsed = NodeRecord::parse(&r.id, &r.to_json()).unwrap();
        prop_assert_eq!(parsed, r);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = NodeRecord::parse("a", &bytes);
        let _ = Command::parse(&bytes);
    }

    #[test]
    fn ids_match_the_pattern(id in "\\PC{0,70}") {
        let ok = !id.is_empty() && id.len() <= 64
            && id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        prop_assert_eq!(validate_id(&id).is_ok(), ok);
    }
}
