//! docs/deploy.md, done as an operator does it, from the files it hands out: the
//! certificates from `deploy/etcd/make-certs.sh` (openssl), a 3-member etcd started
//! from `deploy/etcd/etcd.env` (TLS both ways, client certificates, quota, compaction),
//! auth turned on by `deploy/etcd/enable-auth.sh`, least-privilege users from `ctl auth
//! apply`, and a router and an agent configured only by `deploy/env/router.env`,
//! `router.toml` and `agent.env`; then the second DC of step 5 (its own CA, cluster
//! and node, the router following it through `router.toml`'s `[[registries]]` block).
//! Only addresses, ports, directories and the second node's id are changed, as the
//! guide tells each host to.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harness::{bin, free_port, gateway_ids, get_json, http_get, tool, wait_until, which, Proc};

fn deploy(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(rel)
}

/// `KEY=VALUE` lines of an environment file, comments and blank lines left out.
fn env_file(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not KEY=VALUE: {l}"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// `text` with each `(from, to)` replaced, in order.
fn replaced(text: &str, subs: &[(String, String)]) -> String {
    subs.iter()
        .fold(text.to_string(), |t, (from, to)| t.replace(from, to))
}

fn script(path: &Path, args: &[&str]) -> String {
    let out = Command::new("bash").arg(path).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{} {args:?}: {text}", path.display());
    text
}

/// `etcdctl` against `endpoints` as root (its certificate in `pki`).
fn etcdctl(endpoints: &str, pki: &Path, args: &[&str]) -> std::process::Output {
    Command::new(which("etcdctl").unwrap())
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoints, "--cacert"])
        .arg(pki.join("ca.pem"))
        .arg("--cert")
        .arg(pki.join("root.pem"))
        .arg("--key")
        .arg(pki.join("root-key.pem"))
        .args(args)
        .output()
        .unwrap()
}

/// Step 1: the certificates, from `make-certs.sh`; keys private.
fn certificates(pki: &Path, users: &str) {
    let pki_s = pki.to_str().unwrap();
    // Certificates: the members' for their addresses, a client's per etcd user.
    let made = script(&deploy("etcd/make-certs.sh"), &[pki_s, "127.0.0.1", users]);
    assert!(made.contains("member.pem"), "{made}");
    for key in ["ca-key.pem", "member-key.pem", "r1-key.pem"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(pki.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{key} is private");
    }
}

/// A cluster started from `etcd.env`.
struct Cluster {
    members: Vec<Proc>,
    endpoints: String,
    /// The guide's addresses (`10.0.1.1K:PORT`, `/etc/etcd/pki`) and this test's.
    hosts: Vec<(String, String)>,
    /// The first member's metrics port.
    metrics: u16,
}

/// Step 2: three members from the one env file, healthy, every variable known.
fn start_members(dir: &Path, pki: &Path) -> Cluster {
    // Three members from the one env file: each host changes its name and address.
    let ports: Vec<(u16, u16, u16)> = (0..3)
        .map(|_| (free_port(), free_port(), free_port()))
        .collect();
    let mut hosts = Vec::new();
    for (k, (client, peer, metrics)) in ports.iter().enumerate() {
        let host = format!("10.0.1.1{}", k + 1);
        hosts.push((format!("{host}:2379"), format!("127.0.0.1:{client}")));
        hosts.push((format!("{host}:2380"), format!("127.0.0.1:{peer}")));
        hosts.push((format!("{host}:2381"), format!("127.0.0.1:{metrics}")));
    }
    hosts.push(("/etc/etcd/pki".into(), pki.display().to_string()));
    let endpoints = ports
        .iter()
        .map(|(c, _, _)| format!("https://127.0.0.1:{c}"))
        .collect::<Vec<_>>()
        .join(",");
    let member_env = env_file(&deploy("etcd/etcd.env"));
    let mut members = Vec::new();
    for k in 0..3 {
        let mut cmd = Command::new(which("etcd").unwrap());
        cmd.env_clear();
        for (key, value) in &member_env {
            // The guide: on each member, its own name and address.
            let own = if key == "ETCD_INITIAL_CLUSTER" {
                value.clone()
            } else {
                value
                    .replace("etcd-1", &format!("etcd-{}", k + 1))
                    .replace("10.0.1.11", &format!("10.0.1.1{}", k + 1))
            };
            let mut v = replaced(&own, &hosts);
            if key == "ETCD_DATA_DIR" {
                v = dir.join(format!("etcd-{}", k + 1)).display().to_string();
            }
            cmd.env(key, v);
        }
        members.push(Proc::start(cmd));
    }
    wait_until(Duration::from_secs(30), "three healthy members", || {
        let out = etcdctl(&endpoints, pki, &["endpoint", "health"]);
        out.status.success()
            && String::from_utf8_lossy(&out.stderr)
                .matches("is healthy")
                .count()
                == 3
    });
    Cluster {
        members,
        endpoints,
        hosts,
        metrics: ports[0].2,
    }
}

/// What the env file promises of the running cluster: no variable etcd does not know,
/// the quota, metrics without a certificate, no access without one.
fn check_members(c: &Cluster, pki: &Path) {
    for m in &c.members {
        assert!(
            !m.output().contains("unrecognized environment variable"),
            "etcd.env holds a variable etcd does not know: {}",
            m.output()
        );
    }
    // The quota took effect, and Prometheus can read it without a certificate.
    let m0 = c.metrics;
    let metrics = http_get(SocketAddr::from(([127, 0, 0, 1], m0)), "/metrics")
        .expect("etcd's metrics port answers")
        .1;
    assert!(
        metrics.contains("etcd_server_quota_backend_bytes 8.589934592e+09"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("quota"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // A client without a certificate is refused.
    let bare = Command::new(which("etcdctl").unwrap())
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &c.endpoints, "--cacert"])
        .arg(pki.join("ca.pem"))
        .args(["get", "x", "--command-timeout=2s"])
        .output()
        .unwrap();
    assert!(!bare.status.success(), "no client certificate, no access");
}

/// Step 3: auth on (twice: the script is idempotent), then least-privilege users.
fn least_privilege(endpoints: &str, pki_s: &str, dir: &Path, agent: &str) {
    // Auth on, then least-privilege users for the router, the agent and an operator.
    script(&deploy("etcd/enable-auth.sh"), &[endpoints, pki_s]);
    let again = script(&deploy("etcd/enable-auth.sh"), &[endpoints, pki_s]);
    assert!(again.contains("user root exists"), "{again}");
    let root_tls = [
        "--etcd-cacert",
        &format!("{pki_s}/ca.pem"),
        "--etcd-cert",
        &format!("{pki_s}/root.pem"),
        "--etcd-key",
        &format!("{pki_s}/root-key.pem"),
    ]
    .map(String::from);
    let passwords = dir.join("passwords");
    let mut args: Vec<String> = vec!["ctl".into(), "--etcd".into(), endpoints.to_string()];
    args.extend(root_tls.iter().cloned());
    args.extend(
        [
            "auth",
            "apply",
            "--routers",
            "r1",
            "--agents",
            agent,
            "--operators",
            "alice",
            "--password-dir",
            passwords.to_str().unwrap(),
        ]
        .map(String::from),
    );
    let out = Command::new(bin("router-server"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ctl auth apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Step 4: the router and the agent from their env files, with secrets where systemd
/// would put them (here: the pki directory and a token file). Returns them, the
/// router's client and admin ports, and the gateway's listener.
fn services(
    dir: &Path,
    pki_s: &str,
    c: &Cluster,
    dc2: &SecondDc,
) -> (Proc, Proc, u16, u16, TcpListener) {
    // The router and the agent, from their env files; secrets where systemd would put
    // them (here: the pki directory and a token file).
    let gateway = TcpListener::bind("127.0.0.1:0").unwrap();
    let gw_port = gateway.local_addr().unwrap().port();
    let (listen, admin) = (free_port(), free_port());
    let tokens = dir.join("admin-tokens");
    std::fs::write(&tokens, "ops:0123456789abcdef0123456789abcdef\n").unwrap();
    harness::make_private(&tokens);
    let router_toml = dir.join("router.toml");
    std::fs::write(&router_toml, dc2.router_toml()).unwrap();
    let mut subs = c.hosts.clone();
    subs.extend(
        [
            ("/etc/gateway-router/pki".to_string(), pki_s.to_string()),
            (
                "/run/credentials/router-server.service/etcd-key".to_string(),
                format!("{pki_s}/r1-key.pem"),
            ),
            (
                "/run/credentials/router-server.service/admin-tokens".to_string(),
                tokens.display().to_string(),
            ),
            (
                "/run/credentials/gateway-agent.service/etcd-key".to_string(),
                format!("{pki_s}/gw-1-key.pem"),
            ),
            (
                "/etc/gateway-router/router.toml".to_string(),
                router_toml.display().to_string(),
            ),
            ("0.0.0.0:80".to_string(), format!("127.0.0.1:{listen}")),
            ("10.0.2.21:8081".to_string(), format!("127.0.0.1:{admin}")),
            ("10.0.3.31".to_string(), "127.0.0.1".to_string()),
            ("tcp=7000".to_string(), format!("tcp={gw_port}")),
            ("tcp-port:7000".to_string(), format!("tcp-port:{gw_port}")),
            (
                "127.0.0.1:9101".to_string(),
                format!("127.0.0.1:{}", free_port()),
            ),
        ]
        .map(|(a, b)| (a, b)),
    );
    let service = |binary: &str, file: &str, args: &[&str]| {
        let mut cmd = Command::new(bin(binary));
        cmd.env_clear().args(args);
        for (k, v) in env_file(&deploy(file)) {
            cmd.env(k, replaced(&v, &subs));
        }
        Proc::start(cmd)
    };
    let router = service("router-server", "env/router.env", &["serve"]);
    let agent = service("gateway-agent", "env/agent.env", &[]);
    (router, agent, listen, admin, gateway)
}

/// DC 2 (step 5): its own CA and cluster, a node of its own, and what the routers'
/// `router.toml` says of it.
struct SecondDc {
    cluster: Cluster,
    pki: String,
}

impl SecondDc {
    /// Steps 1 and 2 again, in `dir`, for users `root,r1,gw-101,alice`.
    fn deploy(dir: &Path) -> SecondDc {
        std::fs::create_dir_all(dir).unwrap();
        let pki = dir.join("pki");
        certificates(&pki, "root,r1,gw-101,alice");
        let cluster = start_members(dir, &pki);
        let pki = pki.to_str().unwrap().to_string();
        least_privilege(&cluster.endpoints, &pki, dir, "gw-101");
        SecondDc { cluster, pki }
    }

    /// `deploy/env/router.toml` with its `[[registries]]` block uncommented, the
    /// guide's DC 2 addresses and paths made this test's.
    fn router_toml(&self) -> String {
        let text = std::fs::read_to_string(deploy("env/router.toml")).unwrap();
        let block = text.find("#[[registries]]").expect("the DC 2 block");
        let (head, tail) = text.split_at(block);
        let tail: String = tail
            .lines()
            .map(|l| l.strip_prefix('#').unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let subs = [
            (
                "https://10.1.1.11:2379,https://10.1.1.12:2379,https://10.1.1.13:2379",
                self.cluster.endpoints.clone(),
            ),
            (
                "/run/credentials/router-server.service/etcd-key-dc2",
                format!("{}/r1-key.pem", self.pki),
            ),
            ("/etc/gateway-router/pki-dc2", self.pki.clone()),
        ]
        .map(|(a, b)| (a.to_string(), b));
        format!("{head}{}\n", replaced(&tail, &subs))
    }

    /// DC 2's agent, from `agent.env` with its id, addresses, ports and files.
    fn agent(&self, gateway: u16) -> Proc {
        let own = |key: &str, v: &str| -> String {
            match key {
                "AGENT_ID" => "gw-101".into(),
                "AGENT_IP" => "127.0.0.1".into(),
                "AGENT_ETCD" => self.cluster.endpoints.clone(),
                "AGENT_ETCD_CACERT" => format!("{}/ca.pem", self.pki),
                "AGENT_ETCD_CERT" => format!("{}/gw-101.pem", self.pki),
                "AGENT_ETCD_KEY" => format!("{}/gw-101-key.pem", self.pki),
                "AGENT_PORTS" => format!("tcp={gateway}"),
                "AGENT_LOAD" => format!("tcp-port:{gateway}"),
                "AGENT_METRICS_LISTEN" => format!("127.0.0.1:{}", free_port()),
                _ => v.to_string(),
            }
        };
        let mut cmd = Command::new(bin("gateway-agent"));
        cmd.env_clear();
        for (k, v) in env_file(&deploy("env/agent.env")) {
            let value = own(&k, &v);
            cmd.env(k, value);
        }
        Proc::start(cmd)
    }
}

#[test]
fn two_dcs_deployed_from_the_guide_serve_with_tls_auth_and_bounded_history() {
    tool("etcd", "etcd-server");
    tool("etcdctl", "etcd-client");
    tool("openssl", "openssl");
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let pki_s = pki.to_str().unwrap().to_string();
    certificates(&pki, "root,r1,gw-1,alice");
    let cluster = start_members(dir.path(), &pki);
    check_members(&cluster, &pki);
    least_privilege(&cluster.endpoints, &pki_s, dir.path(), "gw-1");
    let dc2 = SecondDc::deploy(&dir.path().join("dc2"));
    let (router, agent, listen, admin, gateway) = services(dir.path(), &pki_s, &cluster, &dc2);
    let gateway2 = TcpListener::bind("127.0.0.1:0").unwrap();
    let agent2 = dc2.agent(gateway2.local_addr().unwrap().port());
    let gw_port = gateway.local_addr().unwrap().port();
    let addr = SocketAddr::from(([127, 0, 0, 1], listen));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let body = loop {
        match get_json(addr, "/gateways?region=cn-sh") {
            Some((200, v)) => break v,
            last if std::time::Instant::now() > deadline => panic!(
                "no answer naming the agent's node: {last:?}\nrouter:\n{}\nagent:\n{}",
                router.output(),
                agent.output()
            ),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    // Both DCs' nodes, DC 2's from DC 2's etcd, each named with its DC.
    let body = if gateway_ids(&body).len() == 2 {
        body
    } else {
        let mut last = body;
        wait_until(Duration::from_secs(30), "DC 2's node answered", || {
            last = get_json(addr, "/gateways?region=cn-sh").map_or(last.clone(), |(_, b)| b);
            gateway_ids(&last).len() == 2
        });
        last
    };
    let by_id = |id: &str| {
        body["gateways"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not answered: {body}\n{}", router.output()))
    };
    let (gw1, gw101) = (by_id("gw-1"), by_id("gw-101"));
    assert_eq!(
        (&gw1["dc"], &gw1["port"]),
        (&"default".into(), &gw_port.into())
    );
    assert_eq!(gw101["dc"], "dc2", "{body}");
    drop(agent2);
    // Logs are JSON, one object a line, as the env file asks.
    let first = router
        .output()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        serde_json::from_str::<serde_json::Value>(&first).is_ok(),
        "{first}"
    );
    // The admin API listens on its own address, behind the token.
    let (status, _) = http_get(SocketAddr::from(([127, 0, 0, 1], admin)), "/admin/nodes")
        .expect("the admin listener answers");
    assert_eq!(status, 401, "no token, no admin API");
}
