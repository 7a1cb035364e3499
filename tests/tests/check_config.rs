//! `router-server serve --check-config`: what an operator runs before a restart, beside
//! the router it checks for. It reads everything `serve` would read (flags, the file,
//! TLS files, admin tokens, each registry's etcd files), binds nothing, connects to
//! nothing, and says either "ok" with a summary (exit 0) or the first problem (exit 2).

use std::net::TcpListener;
use std::time::Duration;

use harness::{run, TestCa};

fn check(args: &[&str]) -> (i32, String) {
    let mut all = vec!["serve", "--check-config"];
    all.extend_from_slice(args);
    let (status, out) = run("router-server", &all, Duration::from_secs(20));
    (status.code().unwrap_or(-1), out)
}

#[test]
fn a_valid_configuration_is_summarised_without_binding_or_connecting() {
    // The port is taken (the running router), and nothing listens at etcd's address.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("router.toml");
    std::fs::write(
        &config,
        "[[registries]]\nname = \"dc2\"\netcd = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "alice:0123456789abcdef0123\n").unwrap();
    harness::make_private(&tokens);
    let (code, out) = check(&[
        "--etcd",
        "http://127.0.0.1:9",
        "--listen",
        &listen,
        "--config",
        config.to_str().unwrap(),
        "--admin-token-file",
        tokens.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    for line in [
        "configuration ok",
        &format!("listen: {listen}"),
        "registry default: http://127.0.0.1:9 (prefix /gateway-router/v1), this router's own",
        "registry dc2: http://127.0.0.1:9",
        "admin API: on",
        "tokens alice",
    ] {
        assert!(out.contains(line), "{line:?} missing from:\n{out}");
    }
}

#[test]
fn each_kind_of_problem_is_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad_toml = dir.path().join("bad.toml");
    std::fs::write(&bad_toml, "max_load = 3\n").unwrap();
    let open_tokens = dir.path().join("open-tokens");
    std::fs::write(&open_tokens, "alice:0123456789abcdef0123\n").unwrap();
    // A key anyone may read, for etcd: refused before any connection.
    let ca = TestCa::new("check CA");
    let (cert, key) = ca.client_leaf("r1", false);
    let cert_path = dir.path().join("r1.pem");
    let key_path = dir.path().join("r1-key.pem");
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let base = ["--etcd", "http://127.0.0.1:9", "--listen", "127.0.0.1:1"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--config", bad_toml.to_str().unwrap()],
            "max_load: 3 is not in (0, 1]",
        ),
        (
            vec!["--admin-token-file", open_tokens.to_str().unwrap()],
            "lets group or others read this secret",
        ),
        (
            vec![
                "--etcd-cacert",
                ca_path.to_str().unwrap(),
                "--etcd-cert",
                cert_path.to_str().unwrap(),
                "--etcd-key",
                key_path.to_str().unwrap(),
            ],
            "https://",
        ),
    ];
    for (extra, needle) in cases {
        let mut args: Vec<&str> = base.to_vec();
        args.extend(extra.iter().copied());
        let (code, out) = check(&args);
        assert_eq!(code, 2, "{args:?}: {out}");
        assert!(out.contains(needle), "{args:?}: {needle:?} not in {out}");
        assert!(!out.contains("configuration ok"), "{out}");
    }
}
