//! Bad credentials at start: a wrong CA, an expired client certificate, a wrong
//! password, TLS flags with an http:// endpoint. Each binary stops with one line.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use harness::{bin, Etcd, TestCa};

use super::{auth, client_cert, password_file, write};

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
