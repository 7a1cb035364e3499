//! The operator's surface of a real router, off the public edge: `--admin-listen`
//! takes `/ops`, `/metrics` and the admin API off the public listener, named tokens
//! from `--admin-token-file` work and are logged by name, failed tokens are throttled
//! per client network, and secrets others could read (or a password over `http://`)
//! stop the binaries at start.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::{get_json, http_request, make_private, Etcd, NodeJson, Proc, RouterProc, P};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ALICE: &str = "alice-0123456789abcdef";
const BACKUP: &str = "backup-fedcba9876543210";

fn record(id: &str) -> String {
    NodeJson::new(id)
        .ip("127.0.0.1")
        .tcp(7000)
        .capacity(100)
        .with("state", "serving")
        .with("healthy", true)
        .with("updated_ms", 0)
        .build()
}

/// A token file in `dir` with `mode`.
fn token_file(dir: &Path, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("admin-tokens");
    std::fs::write(
        &path,
        format!("# operators\nalice:{ALICE}\n\nbackup-job:{BACKUP}\n"),
    )
    .unwrap();
    make_private(&path);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// `GET path` with a bearer token, from the local address `source`: the status, the
/// head and the body.
fn get_from(
    rt: &tokio::runtime::Runtime,
    source: IpAddr,
    addr: SocketAddr,
    path: &str,
    token: &str,
) -> (u16, String, String) {
    rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source, 0)).unwrap();
        let mut s = tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
            .await
            .expect("connect in time")
            .unwrap();
        s.write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
            .await
            .expect("answer in time")
            .unwrap();
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (status, head.to_string(), body.to_string())
    })
}

#[test]
fn the_admin_listener_takes_the_operator_routes_and_throttles_guessing() {
    let etcd = Etcd::start();
    etcd.put(&format!("{P}/nodes/gw-a"), &record("gw-a"));
    let dir = tempfile::tempdir().unwrap();
    let tokens = token_file(dir.path(), 0o600);
    let r = RouterProc::start(
        &etcd,
        "",
        &[
            "--admin-listen",
            "127.0.0.1:0",
            "--admin-token-file",
            tokens.to_str().unwrap(),
        ],
    );
    let admin = r
        .proc
        .wait_for_addr("serving admin HTTP", Duration::from_secs(10));
    assert_ne!(admin, r.addr);

    // The public listener: clients' routes and health; the operator's are 404.
    for path in ["/ops", "/ops/fleet.json", "/ops/summary.json", "/metrics"] {
        let (code, body) = get_json(r.addr, path).unwrap();
        assert_eq!(
            (code, body["error"]["code"].as_str()),
            (404, Some("not_found")),
            "{path} on the public listener: {body}"
        );
    }
    let (code, body) = http_request(r.addr, "GET", "/admin/nodes", Some(ALICE), "").unwrap();
    assert_eq!(code, 404, "the admin API on the public listener: {body}");
    assert!(body.contains("not_found"), "{body}");
    assert_eq!(r.ids("/gateways"), ["gw-a"]);
    for path in ["/healthz", "/readyz"] {
        assert_eq!(get_json(r.addr, path).unwrap().0, 200, "{path} public");
        assert_eq!(get_json(admin, path).unwrap().0, 200, "{path} admin");
    }

    // The admin listener: the page, its JSON, the metrics, the admin API.
    for path in ["/ops", "/ops/summary.json", "/metrics"] {
        assert_eq!(
            get_json(admin, path).unwrap().0,
            200,
            "{path} on the admin listener"
        );
    }
    assert_eq!(get_json(admin, "/gateways").unwrap().0, 404);
    for (name, token) in [("alice", ALICE), ("backup-job", BACKUP)] {
        let (code, body) = http_request(admin, "GET", "/admin/nodes", Some(token), "").unwrap();
        assert_eq!(code, 200, "{name}: {body}");
        assert!(body.contains("gw-a"), "{body}");
    }
    r.proc
        .wait_for_output("token=alice", Duration::from_secs(5));
    r.proc
        .wait_for_output("token=backup-job", Duration::from_secs(5));
    assert!(
        !r.proc.output().contains(ALICE),
        "a token's secret is never logged"
    );

    // Eleven wrong tokens from 127.0.0.1: ten 401s, then 429 with Retry-After.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local: IpAddr = "127.0.0.1".parse().unwrap();
    let mut codes = Vec::new();
    let mut last_head = String::new();
    for i in 0..11 {
        let (code, head, _) = get_from(
            &rt,
            local,
            admin,
            "/admin/nodes",
            &format!("wrong-token-{i:08}"),
        );
        codes.push(code);
        last_head = head;
    }
    assert_eq!(codes[..10], [401; 10], "{codes:?}");
    assert_eq!(codes[10], 429, "{codes:?}");
    assert!(
        last_head.to_ascii_lowercase().contains("retry-after: "),
        "{last_head}"
    );
    // Now the right token from that network is refused too, before it is compared:
    // 127.0.0.2 is in the same /24.
    let (code, _, body) = get_from(
        &rt,
        "127.0.0.2".parse().unwrap(),
        admin,
        "/admin/nodes",
        ALICE,
    );
    assert_eq!(code, 429, "{body}");
    assert!(body.contains("rate_limited"), "{body}");
    // Another loopback network (127.0.1.0/24) is served.
    let (code, _, body) = get_from(
        &rt,
        "127.0.1.2".parse().unwrap(),
        admin,
        "/admin/nodes",
        ALICE,
    );
    assert_eq!(code, 200, "another network: {body}");
    // Counted.
    let (_, metrics) = harness::http_get(admin, "/metrics").unwrap();
    assert!(
        harness::has_sample(&metrics, "router_admin_throttled_total 2"),
        "{metrics}"
    );
}

/// A TLS key or a token file others can read, a short token, a password over http://:
/// each stops the binary at start, exit 2, with one line naming the problem.
#[test]
fn secrets_others_could_read_or_sniff_stop_the_binaries_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let open = token_file(dir.path(), 0o644);
    let password = dir.path().join("etcd-password");
    std::fs::write(&password, "s3cret\n").unwrap();
    make_private(&password);
    let (cert, key) = harness::TestCa::new("test CA").write_leaf(dir.path(), &["localhost"]);
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    }
    let endpoint = "http://127.0.0.1:1";
    let cases: Vec<(&str, Vec<&str>, Vec<String>)> = vec![
        (
            "router-server",
            vec![
                "--etcd",
                endpoint,
                "--listen",
                "127.0.0.1:0",
                "--tls-cert",
                cert.to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
            ],
            vec![
                format!("--tls-key {}: mode 0640", key.display()),
                format!("chmod 600 {}", key.display()),
            ],
        ),
        (
            "router-server",
            vec![
                "--etcd",
                endpoint,
                "--listen",
                "127.0.0.1:0",
                "--admin-token-file",
                open.to_str().unwrap(),
            ],
            vec![
                format!("--admin-token-file {}", open.display()),
                "mode 0644".into(),
                format!("chmod 600 {}", open.display()),
            ],
        ),
        (
            "router-server",
            vec![
                "--etcd",
                endpoint,
                "--listen",
                "127.0.0.1:0",
                "--admin-token",
                "s3cret",
            ],
            vec!["is 6 bytes; at least 16".into()],
        ),
        (
            "gateway-agent",
            vec![
                "--etcd",
                endpoint,
                "--id",
                "gw-a",
                "--ip",
                "127.0.0.1",
                "--region",
                "r",
                "--capacity",
                "10",
                "--port",
                "tcp=7000",
                "--etcd-user",
                "gw-a",
                "--etcd-password-file",
                password.to_str().unwrap(),
            ],
            vec![
                format!("in clear to {endpoint}"),
                "--etcd-insecure-transport".into(),
            ],
        ),
    ];
    for (binary, args, needles) in cases {
        let mut p = Proc::spawn_clean(binary, &args, &[("PATH", "/usr/bin:/bin")]);
        let status = p.wait_exit(Duration::from_secs(10));
        let out = p.output();
        assert_eq!(status.code(), Some(2), "{binary} {args:?}: {out}");
        for needle in &needles {
            assert!(out.contains(needle.as_str()), "{needle:?} missing: {out}");
        }
        assert_eq!(out.trim().lines().count(), 1, "one line: {out}");
    }
}

/// A password over `http://`: refused without `--etcd-insecure-transport`; with it,
/// the router authenticates to an etcd with authentication on and serves.
#[test]
fn a_clear_password_needs_the_insecure_transport_flag() {
    let etcd = Etcd::start();
    etcd.put(&format!("{P}/nodes/gw-a"), &record("gw-a"));
    etcd.ctl(&["user", "add", "root:root-password-0123"]);
    etcd.ctl(&["auth", "enable"]);
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("etcd-password");
    std::fs::write(&password, "root-password-0123\n").unwrap();
    make_private(&password);
    let endpoints = etcd.endpoints();
    let login = [
        "--etcd-user",
        "root",
        "--etcd-password-file",
        password.to_str().unwrap(),
    ];
    let mut args = vec!["--etcd", endpoints.as_str(), "--listen", "127.0.0.1:0"];
    args.extend_from_slice(&login);
    let mut p = Proc::spawn_clean("router-server", &args, &[("PATH", "/usr/bin:/bin")]);
    let status = p.wait_exit(Duration::from_secs(10));
    let out = p.output();
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(out.contains(&format!("in clear to {endpoints}")), "{out}");
    let mut extra = login.to_vec();
    extra.push("--etcd-insecure-transport");
    let r = RouterProc::start(&etcd, "", &extra);
    assert_eq!(r.ids("/gateways"), ["gw-a"]);
}
