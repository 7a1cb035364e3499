//! The zone asked directly: dig over UDP and TCP (load-aware answers, truncation),
//! kdig and curl over DNS over HTTPS.

use std::process::Command;
use std::time::Duration;

use harness::{get_json, http_get, tool, wait_until, Etcd, RouterProc, P};

use super::{
    dig, drain_us_2, flags, http_gateway, put_node, short, status, zone_on, zone_with, Zone, ZONE,
};

#[test]
fn dig_gets_load_aware_answers_over_udp_and_tcp() {
    let z = zone_with("count = 2\nrrl_per_sec = 0", "", &[]);
    // The resolver's region (127.0.0.0/8 is `local`, which has no nodes): any region,
    // least loaded first.
    let by_resolver = short(&dig(z.dns, ZONE, "A", &["+short"]));
    assert_eq!(by_resolver, ["192.0.2.1", "198.51.100.2"]);
    // EDNS Client Subnet picks the client's region.
    for (subnet, want) in [
        ("10.2.3.0/24", ["198.51.100.2", "198.51.100.1"]),
        ("10.1.3.0/24", ["192.0.2.1", "192.0.2.2"]),
    ] {
        let out = dig(z.dns, ZONE, "A", &[&format!("+subnet={subnet}")]);
        assert_eq!(status(&out), "NOERROR");
        assert!(flags(&out).contains("aa"), "{out}");
        assert!(!flags(&out).contains("ra"), "no recursion: {out}");
        assert!(
            out.contains(&format!("CLIENT-SUBNET: {subnet}/24")),
            "the scope is echoed: {out}"
        );
        let got: Vec<String> = out
            .lines()
            .filter(|l| l.starts_with(ZONE) && l.contains("\tA\t"))
            .map(|l| l.rsplit('\t').next().unwrap().to_string())
            .collect();
        assert_eq!(got, want, "{subnet}: {out}");
        let ttls: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with(ZONE))
            .filter_map(|l| l.split_whitespace().nth(1))
            .collect();
        assert_eq!(ttls, ["10", "10"], "TTL 10: {out}");
    }
    // Names: a region, a protocol in a region, over TCP too, and AAAA.
    assert_eq!(
        short(&dig(z.dns, &format!("us.{ZONE}"), "A", &["+short", "+tcp"])),
        ["198.51.100.2", "198.51.100.1"]
    );
    assert_eq!(
        short(&dig(z.dns, &format!("tcp.eu.{ZONE}"), "AAAA", &["+short"])),
        ["2001:db8::1", "2001:db8::2"]
    );
    assert_eq!(
        short(&dig(
            z.dns,
            &format!("eu.{ZONE}"),
            "AAAA",
            &["+short", "+tcp"]
        )),
        ["2001:db8::1", "2001:db8::2"]
    );
    // The zone's own records.
    let soa = short(&dig(z.dns, ZONE, "SOA", &["+short"]));
    assert!(
        soa[0].starts_with(&format!("ns.{ZONE}. hostmaster.{ZONE}. ")),
        "{soa:?}"
    );
    assert_eq!(
        short(&dig(z.dns, ZONE, "NS", &["+short", "+tcp"])),
        [format!("ns.{ZONE}.")]
    );
    // Unknown names, with the SOA for negative caching; other zones are refused.
    for name in [
        format!("mars.{ZONE}"),
        format!("x.tcp.eu.{ZONE}"),
        format!("udp.eu.{ZONE}"),
    ] {
        let out = dig(z.dns, &name, "A", &[]);
        assert_eq!(status(&out), "NXDOMAIN", "{out}");
        assert!(out.contains("AUTHORITY: 1"), "{out}");
    }
    for name in ["example.com", "www.debian.org", &format!("x{ZONE}")] {
        let out = dig(z.dns, name, "A", &["+tcp"]);
        assert_eq!(status(&out), "REFUSED", "{out}");
        assert!(out.contains("ANSWER: 0"), "{out}");
    }
    // A drained node leaves the answers at once.
    drain_us_2(&z.etcd);
    wait_until(
        Duration::from_secs(10),
        "the drained node leaves DNS",
        || {
            short(&dig(z.dns, &format!("us.{ZONE}"), "A", &["+short"]))
                == ["198.51.100.1", "198.51.100.3"]
        },
    );
    let m = http_get(z.router.addr, "/metrics").unwrap().1;
    for sample in [
        r#"router_dns_queries_total{transport="udp",qtype="A",rcode="NOERROR"}"#,
        r#"router_dns_queries_total{transport="tcp",qtype="A",rcode="REFUSED"}"#,
        r#"router_dns_queries_total{transport="udp",qtype="SOA",rcode="NOERROR"}"#,
        r#"router_dns_queries_total{transport="udp",qtype="A",rcode="NXDOMAIN"}"#,
    ] {
        assert!(m.contains(sample), "{sample} missing:\n{m}");
    }
}

#[test]
fn a_large_answer_is_truncated_over_udp_and_whole_over_tcp() {
    let etcd = Etcd::start();
    for i in 1..=40 {
        put_node(
            &etcd,
            &format!("big-{i:02}"),
            &format!("192.0.2.{i}"),
            "big",
            100,
            9000,
            "",
        );
    }
    let config = format!(
        "[dns]\nlisten = \"127.0.0.1:0\"\nzone = \"{ZONE}\"\ncount = 40\nrrl_per_sec = 0\n"
    );
    let router = RouterProc::start(&etcd, &config, &[]);
    let dns = router
        .proc
        .wait_for_addr("answering DNS", Duration::from_secs(20));
    wait_until(Duration::from_secs(10), "40 nodes", || {
        get_json(router.addr, "/gateways?count=10").is_some_and(|(c, _)| c == 200)
            && etcd.keys(&format!("{P}/nodes/")).len() == 40
    });
    let name = format!("big.{ZONE}");
    // Without EDNS the limit is 512 bytes: 40 AAAA records (28 bytes each) do not fit.
    let udp = dig(dns, &name, "AAAA", &["+noedns", "+ignore"]);
    assert!(flags(&udp).contains("tc"), "{udp}");
    assert!(udp.contains("ANSWER: 0"), "{udp}");
    let tcp = dig(dns, &name, "AAAA", &["+noedns", "+tcp"]);
    assert!(!flags(&tcp).contains("tc"), "{tcp}");
    assert!(tcp.contains("ANSWER: 40"), "{tcp}");
    // dig's default: retry over TCP on TC, and get everything.
    let retried = dig(dns, &name, "AAAA", &["+noedns", "+short"]);
    assert_eq!(short(&retried).len(), 40);
}

/// The DoH URL of the router's HTTPS listener.
fn doh_url(z: &Zone) -> String {
    format!("https://127.0.0.1:{}/dns-query", z.https.port())
}

#[test]
fn kdig_over_dns_over_https_post_and_get() {
    let z = zone_with("count = 2", "", &[]);
    let ca = z.dir.path().join("ca.pem");
    std::fs::write(&ca, z.ca.pem()).unwrap();
    let kdig = tool("kdig", "knot-dnsutils");
    for get in [false, true] {
        let mut args = vec![
            format!("@127.0.0.1"),
            "-p".into(),
            z.https.port().to_string(),
            "+https=/dns-query".into(),
            format!("+tls-ca={}", ca.display()),
            "+tls-hostname=localhost".into(),
            "+subnet=10.1.0.0/16".into(),
            format!("eu.{ZONE}"),
            "A".into(),
        ];
        if get {
            args.push("+https-get".into());
        }
        let out = Command::new(&kdig).args(&args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "kdig {args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("status: NOERROR"), "{text}");
        let method = if get { "HTTP/2-GET" } else { "HTTP/2-POST" };
        assert!(text.contains(method), "over DoH: {text}");
        assert!(
            text.contains("192.0.2.1") && text.contains("192.0.2.2"),
            "{text}"
        );
        let first = text.find("192.0.2.1").unwrap();
        assert!(
            first < text.find("192.0.2.2").unwrap(),
            "least loaded first: {text}"
        );
    }
    // The JSON form.
    let (code, body) = get_json(z.router.addr, &format!("/resolve?name=us.{ZONE}&type=A")).unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["Status"], 0);
    let data: Vec<&str> = body["Answer"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["data"].as_str().unwrap())
        .collect();
    assert_eq!(data, ["198.51.100.2", "198.51.100.1"]);
    assert_eq!(body["Answer"][0]["TTL"], 10);
    let (code, body) = get_json(
        z.router.addr,
        &format!("/resolve?name=nope.{ZONE}&type=AAAA"),
    )
    .unwrap();
    assert_eq!((code, body["Status"].as_u64()), (200, Some(3)), "{body}");
    assert_eq!(body["Authority"][0]["type"], 6);
    let (code, body) = get_json(z.router.addr, "/resolve?name=example.com").unwrap();
    assert_eq!((code, body["Status"].as_u64()), (200, Some(5)), "{body}");
    for bad in [
        "/resolve",
        "/resolve?name=a..b",
        "/resolve?name=x&type=BOGUS",
        "/dns-query?dns=***",
        "/dns-query",
    ] {
        let (code, body) = get_json(z.router.addr, bad).unwrap();
        assert_eq!(code, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_parameter", "{bad}: {body}");
    }
}

#[test]
fn curl_resolves_the_zone_through_the_routers_doh_and_reaches_a_gateway() {
    let (_gw, port) = http_gateway("local-1");
    let etcd = Etcd::start();
    put_node(&etcd, "local-1", "127.0.0.1", "local", 10, port, "");
    put_node(&etcd, "far-1", "192.0.2.1", "eu", 0, port, "");
    let z = zone_on(etcd, "count = 1", "", &[]);
    let ca = z.dir.path().join("ca.pem");
    std::fs::write(&ca, z.ca.pem()).unwrap();
    let out = Command::new(tool("curl", "curl"))
        .args([
            "-sS",
            "--max-time",
            "20",
            "--cacert",
            ca.to_str().unwrap(),
            "--doh-url",
            &doh_url(&z),
            &format!("http://{ZONE}:{port}/"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl: {text}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        z.router.proc.output()
    );
    assert_eq!(
        text, "gateway local-1\n",
        "the client's region (127.0.0.0/8) won over a lighter node"
    );
    let m = http_get(z.router.addr, "/metrics").unwrap().1;
    assert!(
        m.contains(r#"router_dns_queries_total{transport="https",qtype="A",rcode="NOERROR"}"#),
        "{m}"
    );
}
