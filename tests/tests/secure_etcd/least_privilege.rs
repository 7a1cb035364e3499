//! Least privilege: `ctl auth` creates each principal's role and user once, and the
//! whole path (agent, router, operator) works under TLS and authentication with each
//! binary able to write only its own keys.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use harness::{
    bin, gateway_ids, router_ctl, wait_until, Etcd, HookServer, Proc, RouterProc, TestCa, P,
};
use registry::etcd::EtcdKv;
use registry::kv::{Kv, KvError};

use super::{auth, client_cert, password_file, secure_etcd, tls_options};

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
        &format!("role gateway-router-r1: read {P}/ --prefix; readwrite {P}/routers/r1; readwrite {P}/outcomes/r1"),
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

/// A client certificate and its key.
type Cert = (PathBuf, PathBuf);

/// The whole path's world: a secure etcd with the principals r1, gw-a and alice; the
/// agent gw-a (certificate, user and password file) reporting to a hook; the router r1
/// (its certificate alone). Fields drop in order: router, agent, hook, then etcd.
struct WholePath {
    router: RouterProc,
    agent: Proc,
    hook: HookServer,
    /// The agent's flags beyond `--etcd`, `--id` and its record.
    agent_flags: Vec<String>,
    agent_cert: Cert,
    password: PathBuf,
    router_cert: Cert,
    operator_cert: Cert,
    etcd: Etcd,
}

impl WholePath {
    fn start() -> WholePath {
        let (ca, etcd, dir) = secure_etcd(
            &[],
            &[
                "--routers",
                "r1",
                "--agents",
                "gw-a",
                "--operators",
                "alice",
            ],
        );
        let cacert = etcd.tls().ca.to_str().unwrap().to_string();

        // The agent: a certificate for TLS, a user and a password file for etcd.
        let agent_cert = client_cert(&ca, &dir, "gw-a-host", false);
        let password = password_file(&etcd, "gw-a");
        let hook = HookServer::start();
        let (acert, akey) = &agent_cert;
        let agent_flags: Vec<String> = [
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
            password.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let flags: Vec<&str> = agent_flags.iter().map(String::as_str).collect();
        let agent = Proc::agent(&etcd, "gw-a", "r", &flags);
        wait_until(Duration::from_secs(15), "gw-a registered", || {
            etcd.keys(&format!("{P}/nodes/")).len() == 1
        });

        // The router: authenticated by its certificate's common name (its id) alone.
        let router_cert = client_cert(&ca, &dir, "r1", false);
        let (rcert, rkey) = &router_cert;
        let router = RouterProc::start(
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
            gateway_ids(&router.answer("/gateways")) == ["gw-a"]
        });
        assert_eq!(
            etcd.keys(&format!("{P}/routers/")),
            [format!("{P}/routers/r1")],
            "the router registered itself"
        );
        let operator_cert = client_cert(&ca, &dir, "alice", false);
        WholePath {
            router,
            agent,
            hook,
            agent_flags,
            agent_cert,
            password,
            router_cert,
            operator_cert,
            etcd,
        }
    }

    /// `ctl ARGS...` with alice's certificate.
    fn operator_ctl(&self, command: &[&str]) -> (i32, String) {
        let cacert = self.etcd.tls().ca.to_str().unwrap();
        let (ocert, okey) = &self.operator_cert;
        let mut args = vec![
            "--etcd-cacert",
            cacert,
            "--etcd-cert",
            ocert.to_str().unwrap(),
            "--etcd-key",
            okey.to_str().unwrap(),
        ];
        args.extend_from_slice(command);
        router_ctl(&self.etcd, &args)
    }

    /// The operator drains gw-a with ctl; the hook hears it and the router stops
    /// answering it.
    fn operator_drains(&self) {
        let (code, out) = self.operator_ctl(&["drain", "gw-a"]);
        assert_eq!(code, 0, "{out}");
        wait_until(Duration::from_secs(10), "the hook hears the drain", || {
            self.hook
                .delivered()
                .iter()
                .any(|b| b.contains("\"percent\":100"))
        });
        wait_until(Duration::from_secs(10), "gw-a out of answers", || {
            harness::get_json(self.router.addr, "/gateways").is_some_and(|(c, _)| c == 503)
        });
    }

    /// The operator binds the node (only operators write P/bindings/); the router,
    /// which reads the prefix, follows it.
    fn operator_binds(&self) {
        let (code, out) =
            self.operator_ctl(&["bind", "gw-a", "--ip", "127.0.0.0/8", "--region", "r"]);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("inside the binding"), "{out}");
        let (code, out) = self.operator_ctl(&["bindings"]);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("gw-a") && out.contains("127.0.0.0/8"), "{out}");
        let (code, table) = self.operator_ctl(&["nodes"]);
        assert_eq!(code, 0, "{table}");
        assert!(table.contains("gw-a"), "{table}");
    }

    /// SIGTERM: the agent, not root, revokes its own lease (etcd checks write
    /// permission on every key attached to it).
    fn agent_stops(&mut self) {
        self.agent.signal("TERM");
        assert!(self.agent.wait_exit(Duration::from_secs(10)).success());
        assert!(
            self.agent.output().contains("lease revoked"),
            "{}",
            self.agent.output()
        );
        assert!(self.etcd.keys(&format!("{P}/nodes/")).is_empty());
    }

    /// Another node's record, with gw-a's credentials: etcd refuses, and the agent
    /// says so at start, naming the key.
    fn another_nodes_agent_is_refused_at_start(&self) {
        let out = Command::new(bin("gateway-agent"))
            .args([
                "--etcd",
                &self.etcd.endpoints(),
                "--id",
                "gw-b",
                "--ip",
                "127.0.0.1",
            ])
            .args(["--region", "r", "--capacity", "10"])
            .args(&self.agent_flags)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("PermissionDenied") && stderr.contains(&format!("{P}/nodes/gw-b")),
            "{stderr}"
        );
        assert!(
            self.etcd.keys(&format!("{P}/nodes/")).is_empty(),
            "no record was written"
        );
    }

    /// The same through the library: a write to gw-b's key is refused as such.
    async fn the_agent_writes_only_its_own_keys(&self) {
        let (acert, akey) = &self.agent_cert;
        let opts = tls_options(&self.etcd, acert, akey, Some(("gw-a", &self.password)));
        let kv = EtcdKv::connect(&self.etcd.endpoint_list(), &opts)
            .await
            .unwrap();
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
    }

    /// The router writes its own registration only; the operator writes commands
    /// only: neither can steer clients by writing a node's record.
    async fn router_and_operator_write_only_their_keys(&self) {
        let by_cert = |(cert, key): &Cert| tls_options(&self.etcd, cert, key, None);
        let (router, operator) = (&self.router_cert, &self.operator_cert);
        for (who, cert, refused, allowed) in [
            (
                "router r1",
                router,
                format!("{P}/routers/r2"),
                format!("{P}/routers/r1"),
            ),
            (
                "router r1",
                router,
                format!("{P}/nodes/gw-a"),
                format!("{P}/routers/r1"),
            ),
            (
                "operator alice",
                operator,
                format!("{P}/nodes/gw-a"),
                format!("{P}/commands/gw-a"),
            ),
            (
                "operator alice",
                operator,
                format!("{P}/applied/gw-a"),
                format!("{P}/blocklist/k"),
            ),
            (
                "router r1",
                router,
                format!("{P}/bindings/gw-a"),
                format!("{P}/routers/r1"),
            ),
        ] {
            let kv = EtcdKv::connect(&self.etcd.endpoint_list(), &by_cert(cert))
                .await
                .unwrap();
            let r = kv.put(&refused, b"{}".to_vec(), None).await;
            assert!(
                matches!(&r, Err(KvError::Rejected(m)) if m.contains("PermissionDenied")),
                "{who} writing {refused}: {r:?}"
            );
            kv.put(&allowed, b"{}".to_vec(), None)
                .await
                .unwrap_or_else(|e| panic!("{who} writing {allowed}: {e}"));
        }
    }
}

#[test]
fn the_whole_path_under_tls_and_auth_with_least_privilege() {
    let mut w = WholePath::start();
    w.operator_drains();
    w.operator_binds();
    w.agent_stops();
    w.another_nodes_agent_is_refused_at_start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        w.the_agent_writes_only_its_own_keys().await;
        w.router_and_operator_write_only_their_keys().await;
    });
}
