//! What the SDK pulls in: hyper's client, and nothing of the server's.

#[test]
fn the_sdk_pulls_in_no_server_dependencies() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "tree",
            "-p",
            "httpdns-client",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .output()
        .expect("cargo tree");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    // Its HTTP is hyper's client connection; reqwest (and with it url, idna and
    // hyper-util's pooled client) comes only with the `reqwest` feature.
    assert!(tree.lines().any(|l| l.starts_with("hyper ")), "{tree}");
    assert!(!tree.lines().any(|l| l.starts_with("reqwest ")), "{tree}");
    for server in [
        "axum ",
        "axum-server",
        "etcd-client",
        "tonic",
        "gateway-registry",
        "router-server",
    ] {
        assert!(
            !tree.lines().any(|l| l.starts_with(server)),
            "{server} in the SDK's tree"
        );
    }
}
