//! Credentials that change while the binaries run: a rotated client certificate, a
//! rotated password, and etcd's auth tokens expiring between writes. None costs a
//! restart or a failed write.

use std::path::Path;
use std::time::Duration;

use harness::{wait_until, Etcd, Proc, P};
use registry::etcd::EtcdKv;
use registry::kv::Kv;

use super::{client_cert, password_file, secure_etcd, tls_options};

/// Writes `text` to `path` as certificate tools do: a new file renamed over the old.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    harness::make_private(&tmp);
    std::fs::rename(&tmp, path).unwrap();
}

/// An agent for `id` over TLS with the client certificate `cert` / `key` (plus `extra`
/// flags), reporting the count in `load` (100 to start with).
fn agent_with_load(
    etcd: &Etcd,
    id: &str,
    load: &Path,
    cert: &Path,
    key: &Path,
    extra: &[&str],
) -> Proc {
    std::fs::write(load, "100").unwrap();
    let load_src = format!("file:{}", load.display());
    let mut flags = vec![
        "--port",
        "tcp=7000",
        "--load",
        &load_src,
        "--etcd-cacert",
        etcd.tls().ca.to_str().unwrap(),
        "--etcd-cert",
        cert.to_str().unwrap(),
        "--etcd-key",
        key.to_str().unwrap(),
    ];
    flags.extend_from_slice(extra);
    Proc::agent(etcd, id, "r", &flags)
}

/// A client certificate about to expire is replaced on disk; the agent picks up the
/// new one without a restart, so when its connection to etcd is made again after the
/// old certificate expired (etcd restarts here), it still reports.
#[test]
fn a_rotated_client_certificate_is_used_without_a_restart() {
    let (ca, mut etcd, dir) = secure_etcd(&[], &["--agents", "gw-r"]);
    let valid = Duration::from_secs(6);
    let expires = std::time::SystemTime::now() + valid;
    let (cert, key) = ca.client_leaf_for("gw-r", valid);
    let (cert_path, key_path) = (dir.join("gw-r.pem"), dir.join("gw-r-key.pem"));
    replace(&cert_path, &cert);
    replace(&key_path, &key);
    let load = dir.join("load");
    let mut agent = agent_with_load(&etcd, "gw-r", &load, &cert_path, &key_path, &[]);
    let node = format!("{P}/nodes/gw-r");
    let reports = |etcd: &Etcd, n: u32| {
        etcd.get(&node)
            .is_some_and(|v| v.contains(&format!("\"connections\":{n}")))
    };
    wait_until(Duration::from_secs(15), "registered", || {
        reports(&etcd, 100)
    });

    // The rotation: a new certificate (same name, a year's validity) over the old.
    let (cert, key) = ca.client_leaf_for("gw-r", Duration::from_secs(365 * 86400));
    replace(&key_path, &key);
    replace(&cert_path, &cert);
    agent.wait_for_output(
        "etcd TLS or credential files changed",
        Duration::from_secs(15),
    );
    // Once the old certificate has expired, every connection is made again.
    wait_until(
        Duration::from_secs(30),
        "the old certificate to expire",
        || std::time::SystemTime::now() > expires + Duration::from_secs(1),
    );
    etcd.stop();
    etcd.start_again();
    std::fs::write(&load, "200").unwrap();
    wait_until(
        Duration::from_secs(30),
        "a report over a new connection",
        || reports(&etcd, 200),
    );
    assert!(agent.is_running(), "{}", agent.output());
}

/// A password changed in etcd, then in the agent's password file: the agent
/// authenticates with the new one without a restart, and its node never leaves.
#[test]
fn a_rotated_password_is_used_without_a_restart() {
    let (ca, etcd, dir) = secure_etcd(&[], &["--agents", "gw-p"]);
    let pw = dir.join("agent.password");
    replace(
        &pw,
        &std::fs::read_to_string(password_file(&etcd, "gw-p")).unwrap(),
    );
    let (cert, key) = client_cert(&ca, &dir, "gw-p-host", false);
    let load = dir.join("load");
    let mut agent = agent_with_load(
        &etcd,
        "gw-p",
        &load,
        &cert,
        &key,
        &[
            "--etcd-user",
            "gw-p",
            "--etcd-password-file",
            pw.to_str().unwrap(),
        ],
    );
    let node = format!("{P}/nodes/gw-p");
    let reports = |n: u32| {
        etcd.get(&node)
            .is_some_and(|v| v.contains(&format!("\"connections\":{n}")))
    };
    wait_until(Duration::from_secs(15), "registered", || reports(100));
    let lease = || etcd.ctl(&["get", &node, "-w", "fields"]);
    let lease_line = |out: String| {
        out.lines()
            .find(|l| l.starts_with("\"Lease\""))
            .map(str::to_string)
    };
    let before = lease_line(lease());

    // The runbook: change it in etcd, then in the file.
    etcd.ctl_input(
        &["user", "passwd", "gw-p", "--interactive=false"],
        "rotated-password\n",
    );
    replace(&pw, "rotated-password\n");
    agent.wait_for_output(
        "etcd TLS or credential files changed",
        Duration::from_secs(15),
    );
    std::fs::write(&load, "200").unwrap();
    wait_until(
        Duration::from_secs(20),
        "a report with the new password",
        || reports(200),
    );
    assert_eq!(lease_line(lease()), before, "the node kept its lease");
    assert!(agent.is_running());
    assert!(
        !agent.output().contains("registering again"),
        "{}",
        agent.output()
    );
}

/// etcd's simple tokens expire after `--auth-token-ttl` idle seconds; the client
/// authenticates again before the call goes through. Over 60 s with idle gaps longer
/// than the TTL, not one write fails.
#[test]
fn expiring_auth_tokens_cost_no_failed_write() {
    let (ca, etcd, dir) = secure_etcd(&["--auth-token-ttl", "5"], &["--agents", "gw-t"]);
    let (cert, key) = client_cert(&ca, &dir, "gw-t-host", false);
    let pw = password_file(&etcd, "gw-t");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (writes, failed) = rt.block_on(async {
        let opts = tls_options(&etcd, &cert, &key, Some(("gw-t", &pw)));
        let kv = EtcdKv::connect(&etcd.endpoint_list(), &opts).await.unwrap();
        let node = format!("{P}/nodes/gw-t");
        let (mut writes, mut failed) = (0, Vec::new());
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            // A short burst, then an idle gap longer than the token's TTL.
            for _ in 0..3 {
                writes += 1;
                if let Err(e) = kv.put(&node, b"x".to_vec(), None).await {
                    failed.push(e.to_string());
                }
            }
            tokio::time::sleep(Duration::from_secs(6)).await;
        }
        (writes, failed)
    });
    assert!(writes >= 27, "{writes} writes");
    assert!(
        failed.is_empty(),
        "{} of {writes} failed: {failed:?}",
        failed.len()
    );
}
