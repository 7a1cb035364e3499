//! Bad credentials at start: a wrong CA, an expired client certificate, a wrong
//! password, TLS flags with an http:// endpoint. Each binary stops with one line.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harness::{bin, Etcd, TestCa};

use super::{client_cert, password_file, secure_etcd, write};

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

/// The files the cases use: gw-c's good certificate, an expired one, a CA that did not
/// sign etcd's certificate, a wrong and the right password.
struct Files {
    other_ca: PathBuf,
    good: (PathBuf, PathBuf),
    old: (PathBuf, PathBuf),
    wrong: PathBuf,
    right: PathBuf,
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// Each bad start: what is wrong, the flags that say it, and the cause its one line
/// must name.
fn cases(etcd: &Etcd, f: &Files) -> Vec<(&'static str, Vec<String>, &'static str)> {
    let t = etcd.tls();
    vec![
        (
            "a CA that did not sign etcd's certificate",
            vec![
                "--etcd-cacert".into(),
                s(&f.other_ca),
                "--etcd-cert".into(),
                s(&f.good.0),
                "--etcd-key".into(),
                s(&f.good.1),
            ],
            "UnknownIssuer",
        ),
        (
            "an expired client certificate",
            vec![
                "--etcd-cacert".into(),
                s(&t.ca),
                "--etcd-cert".into(),
                s(&f.old.0),
                "--etcd-key".into(),
                s(&f.old.1),
            ],
            "TLS",
        ),
        (
            "a wrong password",
            vec![
                "--etcd-cacert".into(),
                s(&t.ca),
                "--etcd-cert".into(),
                s(&f.good.0),
                "--etcd-key".into(),
                s(&f.good.1),
                "--etcd-user".into(),
                "gw-c".into(),
                "--etcd-password-file".into(),
                s(&f.wrong),
            ],
            "authentication failed",
        ),
        (
            "TLS flags with an http:// endpoint",
            vec!["--etcd-cacert".into(), s(&t.ca)],
            "need https:// endpoints",
        ),
    ]
}

/// The three starts each case is tried with: the agent, the router, `ctl nodes`.
fn runs<'a>(endpoints: &'a str, flags: &[&'a str]) -> Vec<(&'static str, Vec<&'a str>)> {
    vec![
        (
            "gateway-agent",
            [
                &[
                    "--etcd",
                    endpoints,
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
                flags,
            ]
            .concat(),
        ),
        (
            "router-server",
            [
                &["serve", "--etcd", endpoints, "--listen", "127.0.0.1:0"][..],
                flags,
            ]
            .concat(),
        ),
        (
            "router-server",
            [&["ctl", "--etcd", endpoints][..], flags, &["nodes"][..]].concat(),
        ),
    ]
}

/// `name ARGS` fails, printing one line that starts `error:` and names `cause`.
fn fails_with_one_line(name: &str, args: &[&str], what: &str, cause: &str) {
    let out = output_within(
        Command::new(bin(name)).args(args).env("RUST_LOG", "off"),
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

/// The right password works (the cases fail for their reason alone).
fn the_right_password_authenticates(etcd: &Etcd, f: &Files) {
    let out = Command::new(bin("router-server"))
        .args([
            "ctl",
            "--etcd",
            &etcd.endpoints(),
            "--etcd-cacert",
            &s(&etcd.tls().ca),
        ])
        .args(["--etcd-cert", &s(&f.good.0), "--etcd-key", &s(&f.good.1)])
        .args([
            "--etcd-user",
            "gw-c",
            "--etcd-password-file",
            &s(&f.right),
            "nodes",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // gw-c may not list the prefix: permission denied, but authenticated.
    assert!(!stderr.contains("authentication failed"), "{stderr}");
}

/// A wrong CA, an expired client certificate, a wrong password: each binary stops at
/// start with exit status 2 and one line naming the cause, instead of retrying forever.
#[test]
fn bad_credentials_fail_at_start_with_one_line() {
    let (ca, etcd, dir) = secure_etcd(&[], &["--agents", "gw-c"]);
    let files = Files {
        other_ca: write(&dir, "other-ca.pem", &TestCa::new("another CA").pem()),
        good: client_cert(&ca, &dir, "gw-c-host", false),
        old: client_cert(&ca, &dir, "old", true),
        wrong: write(&dir, "wrong.pw", "wrong\n"),
        right: password_file(&etcd, "gw-c"),
    };
    for (what, flags, cause) in &cases(&etcd, &files) {
        let endpoints = if cause.contains("https://") {
            etcd.endpoints().replace("https://", "http://")
        } else {
            etcd.endpoints()
        };
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        for (name, args) in runs(&endpoints, &flags) {
            fails_with_one_line(name, &args, what, cause);
        }
    }
    the_right_password_authenticates(&etcd, &files);
}
