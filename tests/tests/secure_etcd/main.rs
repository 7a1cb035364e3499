//! The agent, the router and `ctl` against etcd as production runs it: TLS on the
//! client port (`--cert-file`, `--key-file`, `--trusted-ca-file`), client certificates
//! required (`--client-cert-auth`), authentication enabled, and each binary holding
//! only the permissions its part of the key layout needs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harness::{
    bin, gateway_ids, router_ctl, wait_until, Etcd, HookServer, Proc, RouterProc, TestCa, P,
};
use registry::etcd::{EtcdKv, EtcdOptions};
use registry::kv::{Kv, KvError};
use registry::security::EtcdSecurity;

/// Runs `cmd` to its end, or kills it after `limit` (the output then says so).
fn output_within(cmd: &mut Command, limit: Duration) -> std::process::Output {
    use std::process::Stdio;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let mut out = child.wait_with_output().unwrap();
            out.stderr
                .extend_from_slice(b"\n(still running after the limit: killed)");
            return out;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Writes a file only its owner reads (keys and passwords must be; certificates may).
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    harness::make_private(&p);
    p
}

/// A client certificate for `cn` in `dir`: `--etcd-cert FILE --etcd-key FILE`.
fn client_cert(ca: &TestCa, dir: &Path, cn: &str, expired: bool) -> (PathBuf, PathBuf) {
    let (cert, key) = ca.client_leaf(cn, expired);
    (
        write(dir, &format!("{cn}.pem"), &cert),
        write(dir, &format!("{cn}-key.pem"), &key),
    )
}

/// `router-server ctl auth OP WHO...` as root (its client certificate); new users'
/// passwords go to `passwords_dir(etcd)`. Returns the output; the command must succeed.
fn auth(etcd: &Etcd, op: &str, who: &[&str]) -> String {
    let t = etcd.tls();
    let dir = passwords_dir(etcd);
    let mut args = vec![
        "--etcd-cacert",
        t.ca.to_str().unwrap(),
        "--etcd-cert",
        t.root_cert.to_str().unwrap(),
        "--etcd-key",
        t.root_key.to_str().unwrap(),
        "auth",
        op,
    ];
    args.extend_from_slice(who);
    if op == "apply" {
        args.extend(["--password-dir", dir.to_str().unwrap()]);
    }
    let (code, out) = router_ctl(etcd, &args);
    assert_eq!(code, 0, "ctl auth {op}: {out}");
    out
}

fn passwords_dir(etcd: &Etcd) -> PathBuf {
    etcd.dir().join("passwords")
}

/// The password file `ctl auth apply` wrote for `user`.
fn password_file(etcd: &Etcd, user: &str) -> PathBuf {
    passwords_dir(etcd).join(format!("{user}.password"))
}

/// `ctl auth plan` writes nothing; `apply` creates each principal's role and user
/// (passwords in files only their owner reads); a second `apply` has nothing to do.
#[test]
fn ctl_auth_plans_then_applies_least_privilege_once() {
    let ca = TestCa::new("etcd test CA");
    let etcd = Etcd::secure(&ca, &[]);
    let who = [
        "--routers",
        "r1",
        "--agents",
        "gw-a,gw-b",
        "--operators",
        "alice",
    ];
    let plan = auth(&etcd, "plan", &who);
    for line in [
        &format!("role gateway-router-r1: read {P}/ --prefix; readwrite {P}/routers/r1"),
        &format!("role gateway-agent-gw-a: readwrite {P}/nodes/gw-a; readwrite {P}/applied/gw-a; read {P}/commands/gw-a"),
        &format!("role gateway-operator: read {P}/ --prefix; write {P}/commands/ --prefix"),
        &"user gw-b -> gateway-agent-gw-b".to_string(),
        &"etcdctl role add gateway-agent-gw-b".to_string(),
        &"etcdctl user grant-role alice gateway-operator".to_string(),
    ] {
        assert!(plan.contains(line), "{line:?} missing from:\n{plan}");
    }
    assert_eq!(
        etcd.ctl(&["role", "list"]).trim(),
        "root",
        "plan wrote nothing"
    );

    let applied = auth(&etcd, "apply", &who);
    assert!(
        applied.contains("done: user add gw-a (password in"),
        "{applied}"
    );
    let roles = etcd.ctl(&["role", "list"]);
    for r in [
        "gateway-router-r1",
        "gateway-agent-gw-a",
        "gateway-agent-gw-b",
        "gateway-operator",
    ] {
        assert!(roles.lines().any(|l| l == r), "{r} missing: {roles}");
    }
    let perms = etcd.ctl(&["role", "get", "gateway-agent-gw-b"]);
    assert!(perms.contains(&format!("{P}/nodes/gw-b")), "{perms}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(password_file(&etcd, "gw-a"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let again = auth(&etcd, "apply", &who);
    assert!(again.contains("nothing to do"), "{again}");
    // A principal added later: only its own steps.
    let more = auth(&etcd, "apply", &["--agents", "gw-a,gw-c"]);
    assert!(more.contains("done: role add gateway-agent-gw-c"), "{more}");
    assert!(
        !more
            .lines()
            .any(|l| l.contains("done:") && l.contains("gw-a")),
        "{more}"
    );
}

#[test]
fn the_whole_path_under_tls_and_auth_with_least_privilege() {
    let ca = TestCa::new("etcd test CA");
    let etcd = Etcd::secure(&ca, &[]);
    let dir = etcd.dir().to_path_buf();
    auth(
        &etcd,
        "apply",
        &[
            "--routers",
            "r1",
            "--agents",
            "gw-a",
            "--operators",
            "alice",
        ],
    );
    let t = etcd.tls();
    let cacert = t.ca.to_str().unwrap().to_string();

    // The agent: a certificate for TLS, a user and a password file for etcd.
    let (acert, akey) = client_cert(&ca, &dir, "gw-a-host", false);
    let pw = password_file(&etcd, "gw-a");
    let hook = HookServer::start();
    let flags: Vec<String> = [
        "--port",
        "tcp=7000",
        "--load",
        "static:10",
        "--hook",
        &hook.url(),
        "--etcd-cacert",
        &cacert,
        "--etcd-cert",
        acert.to_str().unwrap(),
        "--etcd-key",
        akey.to_str().unwrap(),
        "--etcd-user",
        "gw-a",
        "--etcd-password-file",
        pw.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut agent = Proc::agent(&etcd, "gw-a", "r", &flags);
    wait_until(Duration::from_secs(15), "gw-a registered", || {
        etcd.keys(&format!("{P}/nodes/")).len() == 1
    });

    // The router: authenticated by its certificate's common name (its id) alone.
    let (rcert, rkey) = client_cert(&ca, &dir, "r1", false);
    let r = RouterProc::start(
        &etcd,
        "",
        &[
            "--etcd-cacert",
            &cacert,
            "--etcd-cert",
            rcert.to_str().unwrap(),
            "--etcd-key",
            rkey.to_str().unwrap(),
            "--router-id",
            "r1",
        ],
    );
    wait_until(Duration::from_secs(10), "router answers gw-a", || {
        gateway_ids(&r.answer("/gateways")) == ["gw-a"]
    });
    assert_eq!(
        etcd.keys(&format!("{P}/routers/")),
        [format!("{P}/routers/r1")],
        "the router registered itself"
    );

    // The operator drains it with ctl (alice's certificate); the hook hears it.
    let (ocert, okey) = client_cert(&ca, &dir, "alice", false);
    let root = [
        "--etcd-cacert",
        &cacert,
        "--etcd-cert",
        ocert.to_str().unwrap(),
        "--etcd-key",
        okey.to_str().unwrap(),
    ];
    let mut args: Vec<&str> = root.to_vec();
    args.extend(["drain", "gw-a"]);
    let (code, out) = router_ctl(&etcd, &args);
    assert_eq!(code, 0, "{out}");
    wait_until(Duration::from_secs(10), "the hook hears the drain", || {
        hook.delivered()
            .iter()
            .any(|b| b.contains("\"percent\":100"))
    });
    wait_until(Duration::from_secs(10), "gw-a out of answers", || {
        harness::get_json(r.addr, "/gateways").is_some_and(|(c, _)| c == 503)
    });
    // The operator binds the node (only operators write P/bindings/); the router,
    // which reads the prefix, follows it.
    let mut args: Vec<&str> = root.to_vec();
    args.extend(["bind", "gw-a", "--ip", "127.0.0.0/8", "--region", "r"]);
    let (code, out) = router_ctl(&etcd, &args);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("inside the binding"), "{out}");
    let mut args: Vec<&str> = root.to_vec();
    args.push("bindings");
    let (code, out) = router_ctl(&etcd, &args);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("gw-a") && out.contains("127.0.0.0/8"), "{out}");
    let mut args: Vec<&str> = root.to_vec();
    args.push("nodes");
    let (code, table) = router_ctl(&etcd, &args);
    assert_eq!(code, 0, "{table}");
    assert!(table.contains("gw-a"), "{table}");

    // SIGTERM: the agent, not root, revokes its own lease (etcd checks write
    // permission on every key attached to it).
    agent.signal("TERM");
    assert!(agent.wait_exit(Duration::from_secs(10)).success());
    assert!(
        agent.output().contains("lease revoked"),
        "{}",
        agent.output()
    );
    assert!(etcd.keys(&format!("{P}/nodes/")).is_empty());

    // Another node's record, with gw-a's credentials: etcd refuses, and the agent
    // says so at start, naming the key.
    let out = Command::new(bin("gateway-agent"))
        .args([
            "--etcd",
            &etcd.endpoints(),
            "--id",
            "gw-b",
            "--ip",
            "127.0.0.1",
        ])
        .args(["--region", "r", "--capacity", "10"])
        .args(&flags)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("PermissionDenied") && stderr.contains(&format!("{P}/nodes/gw-b")),
        "{stderr}"
    );
    assert!(
        etcd.keys(&format!("{P}/nodes/")).is_empty(),
        "no record was written"
    );

    // The same through the library: a write to gw-b's key is refused as such.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let opts = EtcdOptions {
            security: EtcdSecurity {
                cacert: Some(t.ca.clone()),
                cert: Some(acert.clone()),
                key: Some(akey.clone()),
                user: Some("gw-a".into()),
                password_file: Some(pw.clone()),
                insecure_transport: false,
            },
            ..EtcdOptions::default()
        };
        let kv = EtcdKv::connect(&etcd.endpoint_list(), &opts).await.unwrap();
        let other = kv
            .put(&format!("{P}/nodes/gw-b"), b"{}".to_vec(), None)
            .await;
        assert!(
            matches!(&other, Err(KvError::Rejected(m)) if m.contains("PermissionDenied")),
            "{other:?}"
        );
        kv.put(&format!("{P}/nodes/gw-a"), b"{}".to_vec(), None)
            .await
            .expect("its own key");
        // Its own binding is the operator's: an agent cannot widen it. It reads the
        // block list.
        let bound = kv
            .put(&format!("{P}/bindings/gw-a"), b"{}".to_vec(), None)
            .await;
        assert!(
            matches!(&bound, Err(KvError::Rejected(m)) if m.contains("PermissionDenied")),
            "an agent writing its binding: {bound:?}"
        );
        kv.list(&format!("{P}/blocklist/"))
            .await
            .expect("an agent reads the block list");
        // The router writes its own registration only; the operator writes commands
        // only: neither can steer clients by writing a node's record.
        let by_cert = |cert: &Path, key: &Path| EtcdOptions {
            security: EtcdSecurity {
                cacert: Some(t.ca.clone()),
                cert: Some(cert.to_path_buf()),
                key: Some(key.to_path_buf()),
                user: None,
                password_file: None,
                insecure_transport: false,
            },
            ..EtcdOptions::default()
        };
        for (who, opts, refused, allowed) in [
            (
                "router r1",
                by_cert(&rcert, &rkey),
                format!("{P}/routers/r2"),
                format!("{P}/routers/r1"),
            ),
            (
                "router r1",
                by_cert(&rcert, &rkey),
                format!("{P}/nodes/gw-a"),
                format!("{P}/routers/r1"),
            ),
            (
                "operator alice",
                by_cert(&ocert, &okey),
                format!("{P}/nodes/gw-a"),
                format!("{P}/commands/gw-a"),
            ),
            (
                "operator alice",
                by_cert(&ocert, &okey),
                format!("{P}/applied/gw-a"),
                format!("{P}/blocklist/k"),
            ),
            (
                "router r1",
                by_cert(&rcert, &rkey),
                format!("{P}/bindings/gw-a"),
                format!("{P}/routers/r1"),
            ),
        ] {
            let kv = EtcdKv::connect(&etcd.endpoint_list(), &opts).await.unwrap();
            let r = kv.put(&refused, b"{}".to_vec(), None).await;
            assert!(
                matches!(&r, Err(KvError::Rejected(m)) if m.contains("PermissionDenied")),
                "{who} writing {refused}: {r:?}"
            );
            kv.put(&allowed, b"{}".to_vec(), None)
                .await
                .unwrap_or_else(|e| panic!("{who} writing {allowed}: {e}"));
        }
    });
}

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
    let ca = TestCa::new("etcd test CA");
    let mut etcd = Etcd::secure(&ca, &[]);
    let dir = etcd.dir().to_path_buf();
    auth(&etcd, "apply", &["--agents", "gw-r"]);
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
    let ca = TestCa::new("etcd test CA");
    let etcd = Etcd::secure(&ca, &[]);
    let dir = etcd.dir().to_path_buf();
    auth(&etcd, "apply", &["--agents", "gw-p"]);
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
    let ca = TestCa::new("etcd test CA");
    let etcd = Etcd::secure(&ca, &["--auth-token-ttl", "5"]);
    let dir = etcd.dir().to_path_buf();
    auth(&etcd, "apply", &["--agents", "gw-t"]);
    let (cert, key) = client_cert(&ca, &dir, "gw-t-host", false);
    let pw = password_file(&etcd, "gw-t");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (writes, failed) = rt.block_on(async {
        let opts = EtcdOptions {
            security: EtcdSecurity {
                cacert: Some(etcd.tls().ca.clone()),
                cert: Some(cert),
                key: Some(key),
                user: Some("gw-t".into()),
                password_file: Some(pw),
                insecure_transport: false,
            },
            ..EtcdOptions::default()
        };
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

/// A wrong CA, an expired client certificate, a wrong password: each binary stops at
/// start with exit status 2 and one line naming the cause, instead of retrying forever.
#[test]
fn bad_credentials_fail_at_start_with_one_line() {
    let ca = TestCa::new("etcd test CA");
    let etcd = Etcd::secure(&ca, &[]);
    let dir = etcd.dir().to_path_buf();
    auth(&etcd, "apply", &["--agents", "gw-c"]);
    let t = etcd.tls();
    let other_ca = write(&dir, "other-ca.pem", &TestCa::new("another CA").pem());
    let (good_cert, good_key) = client_cert(&ca, &dir, "gw-c-host", false);
    let (old_cert, old_key) = client_cert(&ca, &dir, "old", true);
    let wrong = write(&dir, "wrong.pw", "wrong\n");
    let right = password_file(&etcd, "gw-c");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "a CA that did not sign etcd's certificate",
            vec![
                "--etcd-cacert".into(),
                s(&other_ca),
                "--etcd-cert".into(),
                s(&good_cert),
                "--etcd-key".into(),
                s(&good_key),
            ],
            "UnknownIssuer",
        ),
        (
            "an expired client certificate",
            vec![
                "--etcd-cacert".into(),
                s(&t.ca),
                "--etcd-cert".into(),
                s(&old_cert),
                "--etcd-key".into(),
                s(&old_key),
            ],
            "TLS",
        ),
        (
            "a wrong password",
            vec![
                "--etcd-cacert".into(),
                s(&t.ca),
                "--etcd-cert".into(),
                s(&good_cert),
                "--etcd-key".into(),
                s(&good_key),
                "--etcd-user".into(),
                "gw-c".into(),
                "--etcd-password-file".into(),
                s(&wrong),
            ],
            "authentication failed",
        ),
        (
            "TLS flags with an http:// endpoint",
            vec!["--etcd-cacert".into(), s(&t.ca)],
            "need https:// endpoints",
        ),
    ];
    for (what, flags, cause) in &cases {
        let endpoints = if cause.contains("https://") {
            etcd.endpoints().replace("https://", "http://")
        } else {
            etcd.endpoints()
        };
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let runs: Vec<(&str, Vec<&str>)> = vec![
            (
                "gateway-agent",
                [
                    &[
                        "--etcd",
                        &endpoints,
                        "--id",
                        "gw-c",
                        "--ip",
                        "127.0.0.1",
                        "--region",
                        "r",
                        "--capacity",
                        "10",
                        "--port",
                        "tcp=1",
                    ][..],
                    &flags[..],
                ]
                .concat(),
            ),
            (
                "router-server",
                [
                    &["serve", "--etcd", &endpoints, "--listen", "127.0.0.1:0"][..],
                    &flags[..],
                ]
                .concat(),
            ),
            (
                "router-server",
                [
                    &["ctl", "--etcd", &endpoints][..],
                    &flags[..],
                    &["nodes"][..],
                ]
                .concat(),
            ),
        ];
        for (name, args) in runs {
            let out = output_within(
                Command::new(bin(name)).args(&args).env("RUST_LOG", "off"),
                Duration::from_secs(20),
            );
            let stderr = String::from_utf8_lossy(&out.stderr);
            let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
            assert_ne!(out.status.code(), Some(0), "{name} {what}: {stderr}");
            assert!(
                lines.len() == 1 && lines[0].starts_with("error:") && lines[0].contains(cause),
                "{name} with {what}: want one line naming {cause:?}, got: {stderr}"
            );
        }
    }
    // The right password works (the cases above fail for their reason alone).
    let out = Command::new(bin("router-server"))
        .args([
            "ctl",
            "--etcd",
            &etcd.endpoints(),
            "--etcd-cacert",
            &s(&t.ca),
        ])
        .args(["--etcd-cert", &s(&good_cert), "--etcd-key", &s(&good_key)])
        .args([
            "--etcd-user",
            "gw-c",
            "--etcd-password-file",
            &s(&right),
            "nodes",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // gw-c may not list the prefix: permission denied, but authenticated.
    assert!(!stderr.contains("authentication failed"), "{stderr}");
}
