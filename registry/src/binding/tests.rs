//! Tests of node bindings: parsing, the checks of a record against its binding, and
//! property tests that a passed record is really inside its binding.

use super::*;
use crate::record::Ports;
use proptest::prelude::*;

const EXAMPLE: &str = r#"{"ips": ["203.0.113.0/28", "2001:db8::/64"], "regions": ["cn-sh"],
    "isps": ["ctcc", "bgp"], "max_capacity": 1000000,
    "domain_suffixes": [".gw.example.com"]}"#;

fn record() -> NodeRecord {
    let mut r = NodeRecord::new(
        "gw-1",
        "203.0.113.10".parse().unwrap(),
        Ports {
            tcp: Some(8000),
            ..Ports::default()
        },
        "cn-sh",
        1_000_000,
        0,
    );
    r.ipv6 = Some("2001:db8::10".parse().unwrap());
    r.isp = Some("ctcc".into());
    r.domain = Some("a.gw.example.com".into());
    r
}

#[test]
fn contract_example_parses_and_roundtrips() {
    let b = Binding::parse(EXAMPLE.as_bytes()).unwrap();
    assert_eq!(b.ips.as_ref().unwrap().len(), 2);
    assert_eq!(b.max_capacity, NonZeroU64::new(1_000_000));
    assert_eq!(
        b.domain_suffixes.as_deref(),
        Some(&[".gw.example.com".to_string()][..])
    );
    assert_eq!(Binding::parse(&b.to_json()).unwrap(), b);
    let empty = Binding::parse(b"{}").unwrap();
    assert!(empty.is_empty());
    assert_eq!(empty.check(&record()), Ok(()));
}

#[test]
fn records_inside_pass_and_each_claim_outside_is_named() {
    let b = Binding::parse(EXAMPLE.as_bytes()).unwrap();
    assert_eq!(b.check(&record()), Ok(()));
    let mut no_isp = record();
    no_isp.isp = None;
    no_isp.domain = None;
    no_isp.ipv6 = None;
    assert_eq!(b.check(&no_isp), Ok(()), "absent optional claims pass");
    let mut two_lines = record();
    two_lines.isp = Some("ctcc,bgp".into());
    assert_eq!(b.check(&two_lines), Ok(()), "each line of a list allowed");

    type Case = (fn(&mut NodeRecord), &'static str);
    let cases: Vec<Case> = vec![
        (
            |r| r.ip = "198.51.100.7".parse().unwrap(),
            "ip 198.51.100.7 is outside 203.0.113.0/28, 2001:db8::/64",
        ),
        (
            |r| r.ipv6 = Some("2001:db9::1".parse().unwrap()),
            "ip 2001:db9::1 is outside",
        ),
        (
            |r| r.region = "us-east".into(),
            r#"region "us-east" is not one of cn-sh"#,
        ),
        (
            |r| r.isp = Some("cucc".into()),
            r#"isp "cucc" is not one of ctcc, bgp"#,
        ),
        (
            |r| r.isp = Some("ctcc,cucc".into()),
            r#"isp "cucc" is not one of ctcc, bgp"#,
        ),
        (
            |r| r.capacity = 1_000_000_000_000_000_000,
            "capacity 1000000000000000000 is above max_capacity 1000000",
        ),
        (
            |r| r.domain = Some("evilgw.example.com".into()),
            r#"domain "evilgw.example.com" is not under .gw.example.com"#,
        ),
        (
            |r| r.domain = Some("gw.example.com.evil.net".into()),
            "domain",
        ),
    ];
    for (mutate, want) in cases {
        let mut r = record();
        mutate(&mut r);
        let v = b.check(&r).expect_err(want);
        assert!(v.to_string().starts_with(want), "{v} / {want}");
    }
}

#[test]
fn domain_suffixes_match_on_a_label_boundary() {
    for suffix in [".gw.example.com", "gw.example.com"] {
        assert!(domain_is_under("a.gw.example.com", suffix));
        assert!(domain_is_under("x.y.GW.Example.com", suffix));
        assert!(domain_is_under("gw.example.com", suffix));
        assert!(!domain_is_under("evilgw.example.com", suffix));
        assert!(!domain_is_under("example.com", suffix));
        assert!(!domain_is_under("a.gw.example.com.evil", suffix));
    }
    let b = Binding::parse(br#"{"domain_suffixes": ["GW.example.com"]}"#).unwrap();
    assert_eq!(b.domain_suffixes.unwrap(), [".gw.example.com"]);
}

#[test]
fn bad_values_are_refused_with_the_key_named() {
    let long = format!(r#"{{"regions": ["{}"]}}"#, "r".repeat(65));
    let many = format!(r#"{{"isps": [{}]}}"#, vec!["\"a\""; MAX_LIST + 1].join(","));
    let cases: Vec<(&str, &str)> = vec![
        ("not json", "JSON object"),
        ("[]", "JSON object"),
        (r#"{"ips": ["203.0.113.0/33"]}"#, "ips"),
        (r#"{"ips": ["203.0.113.1"]}"#, "ips"),
        (r#"{"ips": []}"#, "ips"),
        (r#"{"ips": "203.0.113.0/28"}"#, "malformed"),
        (r#"{"regions": ["cn sh"]}"#, "regions"),
        (r#"{"regions": [""]}"#, "regions"),
        (&long, "regions"),
        (&many, "isps"),
        (r#"{"max_capacity": 0}"#, "max_capacity"),
        (r#"{"max_capacity": -1}"#, "malformed"),
        (r#"{"domain_suffixes": ["evil..com"]}"#, "domain_suffixes"),
        (r#"{"domain_suffixes": ["."]}"#, "domain_suffixes"),
        (r#"{"regoins": ["cn-sh"]}"#, "unknown field"),
    ];
    for (value, want) in cases {
        let e = Binding::parse(value.as_bytes()).expect_err(value);
        assert!(e.to_string().contains(want), "{value}: {e}");
    }
    let huge = vec![b' '; MAX_VALUE_BYTES + 1];
    assert!(Binding::parse(&huge).is_err());
}

#[test]
fn refusals_and_entries_say_what_they_said_as_strings() {
    let v = Violation::Capacity {
        capacity: 100,
        max: 10,
    };
    assert_eq!(Refusal::Outside(v.clone()).to_string(), refusal(&v));
    assert_eq!(Refusal::Unbound.to_string(), UNBOUND_REFUSAL);
    let error = Binding::parse(b"[]").unwrap_err();
    assert_eq!(
        Refusal::Broken {
            key: "/p/bindings/a".into(),
            error: error.clone(),
        }
        .to_string(),
        broken_refusal("/p/bindings/a", &error)
    );
    assert_eq!(
        parse_cidr("10.0.0.0/33").unwrap_err().to_string(),
        "\"10.0.0.0/33\" is not a CIDR range such as 203.0.113.0/28 or 2001:db8::/64"
    );
    assert_eq!(
        parse_cidr("::ffff:10.0.0.0/104").unwrap_err().to_string(),
        "::ffff:10.0.0.0/104 is an IPv4-mapped network, which no client is compared with; write it as 10.0.0.0/8"
    );
    assert_eq!(
        normalize_suffix(".a..b").unwrap_err().to_string(),
        "\".a..b\" is not a domain suffix: label \"\" is not 1-63 characters"
    );
    assert_eq!(
        normalize_suffix(".GW.Example.com").unwrap(),
        ".gw.example.com"
    );
}

#[test]
fn reasons_escape_what_the_agent_wrote() {
    let b = Binding::parse(br#"{"regions": ["cn-sh"]}"#).unwrap();
    let mut r = record();
    r.region = "\u{1b}[31mred".into();
    let reason = b.check(&r).unwrap_err().to_string();
    assert!(!reason.contains('\u{1b}'), "{reason}");
    assert!(reason.contains("\\u{1b}"), "{reason}");
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(b) = Binding::parse(&bytes) {
            let _ = b.check(&record());
        }
    }

    #[test]
    fn suffix_match_agrees_with_labels(prefix in "[a-z]{0,5}(\\.[a-z]{1,3}){0,2}", suffix in "[a-z]{1,4}(\\.[a-z]{1,3}){0,2}") {
        let domain = if prefix.is_empty() { suffix.clone() } else { format!("{prefix}.{suffix}") };
        prop_assert!(domain_is_under(&domain, &suffix));
        let glued = format!("{prefix}{suffix}");
        let labels_match = glued == suffix || glued.ends_with(&format!(".{suffix}"));
        prop_assert_eq!(domain_is_under(&glued, &suffix), labels_match);
    }
}
