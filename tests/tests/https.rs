//! HTTPS: a client trusting a test CA gets the same answer as over plain HTTP, and a
//! renewed certificate is served without a restart.

use std::net::SocketAddr;
use std::time::Duration;

use harness::{Etcd, RouterProc, TestCa, P};

fn client(ca: &TestCa, router: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        // The certificate names router.test; connect to the test's address under it.
        .resolve("router.test", router)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn ids(c: &reqwest::Client, url: &str) -> Result<Vec<String>, String> {
    let resp = c.get(url).send().await.map_err(|e| format!("{e:?}"))?;
    let body: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
    Ok(body["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_str().unwrap().to_string())
        .collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn https_answers_and_hot_reloads_certificates() {
    let etcd = Etcd::start();
    for (id, conns) in [("gw-1", 10), ("gw-2", 5)] {
        etcd.put(
            &format!("{P}/nodes/{id}"),
            &format!(r#"{{"id":"{id}","ip":"192.0.2.1","ports":{{"tcp":1}},"region":"r","capacity":100,"connections":{conns}}}"#),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let ca1 = TestCa::new("test CA 1");
    let (cert, key) = ca1.write_leaf(dir.path(), &["router.test", "127.0.0.1"]);
    let (r, https) = RouterProc::start_tls(&etcd, "[tls]\nreload_check_ms = 50", &cert, &key);
    let http = r.addr;

    let url = format!("https://router.test:{}/gateways?count=2", https.port());
    let c1 = client(&ca1, https);
    let over_tls = ids(&c1, &url).await.unwrap();
    let (_, plain) = harness::get_json(http, "/gateways?count=2").unwrap();
    let over_plain: Vec<String> = plain["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(over_tls, over_plain);
    assert_eq!(over_tls, ["gw-2", "gw-1"]);

    // A client that trusts only CA 2 is refused until the renewed certificate lands.
    let ca2 = TestCa::new("test CA 2");
    let c2 = client(&ca2, https);
    assert!(
        ids(&c2, &url).await.is_err(),
        "CA 2 does not vouch for the first certificate"
    );
    // The renewed certificate expires in 30 days; /metrics follows it.
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 30 * 86_400;
    let expiry = |r: &RouterProc| {
        harness::sample(
            &harness::http_get(r.addr, "/metrics").unwrap().1,
            "router_tls_cert_expiry_timestamp_seconds",
        ) as i64
    };
    let first = expiry(&r);
    assert!(
        first > expires,
        "rcgen's default validity is far ahead: {first}"
    );
    ca2.write_leaf_until(dir.path(), &["router.test", "127.0.0.1"], Some(expires));
    let mut ok = false;
    for _ in 0..200 {
        if ids(&c2, &url).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        ok,
        "renewed certificate not picked up; output:\n{}",
        r.proc.output()
    );
    // New connections from a client trusting only CA 1 now fail: the old one is gone.
    let fresh_c1 = client(&ca1, https);
    assert!(ids(&fresh_c1, &url).await.is_err());
    assert!(r.proc.output().contains("TLS certificate reloaded"));
    assert_eq!(expiry(&r), expires, "the metric follows the renewal");

    // A broken renewal keeps the current certificate.
    std::fs::write(&cert, "not a certificate").unwrap();
    std::fs::write(&key, "not a key").unwrap();
    r.proc
        .wait_for_output("reload failed", Duration::from_secs(5));
    let fresh_c2 = client(&ca2, https);
    assert_eq!(ids(&fresh_c2, &url).await.unwrap(), ["gw-2", "gw-1"]);
}
