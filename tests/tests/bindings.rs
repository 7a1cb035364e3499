//! The generated bindings (uniffi) driven from Python and from Kotlin on the JVM,
//! against real routers following real etcd and real gateways on loopback: plain TCP,
//! TLS (SNI, ALPN, the certificate's name), a file descriptor handed over, a
//! migration, a full fleet's refusal with Retry-After, and a TLS error's cause chain.
//! The scripts are `bindings/tests/{python,kotlin}`; this file sets up the world they
//! run in.

use std::path::{Path, PathBuf};
use std::process::Command;

use harness::gateway::{GatewayServer, Serve};
use harness::{wait_until, Etcd, NodeJson, RouterProc, TestCa, P};

const ALPN: &str = "x-im/1";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Builds the library and generates `langs` into `out` by `scripts/bindings.sh`;
/// returns the directory holding the library and the sources.
fn generate(out: &Path, langs: &str) -> PathBuf {
    let status = Command::new("bash")
        .arg(workspace().join("scripts/bindings.sh"))
        .args(["--out", out.to_str().unwrap(), "--languages", langs])
        .status()
        .expect("run scripts/bindings.sh");
    assert!(status.success(), "scripts/bindings.sh failed");
    assert!(out.join("libgateway_sdk.so").is_file());
    out.to_path_buf()
}

struct World {
    _etcds: Vec<Etcd>,
    routers: Vec<RouterProc>,
    _gateways: Vec<GatewayServer>,
    ca_pem: PathBuf,
}

fn node(id: &str, conns: u64, port: u16, domain: Option<&str>) -> String {
    let node = NodeJson::new(id).ip("127.0.0.1").tcp(port).conns(conns);
    match domain {
        Some(d) => node.with("domain", d),
        None => node,
    }
    .build()
}

/// Three routers, each on its own etcd: a working fleet (a plain gateway without a
/// domain, least loaded, and a TLS gateway), a full one, one whose gateway's
/// certificate names another host.
fn world(dir: &Path) -> World {
    let ca = TestCa::new("bindings test CA");
    let ca_pem = dir.join("ca.pem");
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    let plain = GatewayServer::start(&ca, Serve::Echo);
    let tls = GatewayServer::start(
        &ca,
        Serve::Tls {
            names: vec!["gw-tls.test".into()],
            alpn: vec![ALPN.as_bytes().to_vec()],
        },
    );
    let bad = GatewayServer::start(&ca, Serve::tls(&["other.test"]));
    let fleets = [
        vec![
            ("gw-plain", 10, plain.addr.port(), None),
            ("gw-tls", 500, tls.addr.port(), Some("gw-tls.test")),
        ],
        vec![("gw-full", 990, plain.addr.port(), Some("gw-tls.test"))],
        vec![("gw-bad", 10, bad.addr.port(), Some("gw-bad.test"))],
    ];
    let mut etcds = Vec::new();
    let mut routers = Vec::new();
    for nodes in &fleets {
        let etcd = Etcd::start();
        for (id, conns, port, domain) in nodes {
            etcd.put(
                &format!("{P}/nodes/{id}"),
                &node(id, *conns, *port, *domain),
            );
        }
        routers.push(RouterProc::start(&etcd, "", &[]));
        etcds.push(etcd);
    }
    // The full fleet refuses once its router has loaded it.
    let full = routers[1].addr;
    wait_until(
        std::time::Duration::from_secs(30),
        "the full fleet's 503",
        || {
            harness::http_get(full, "/gateways")
                .map(|(status, _)| status == 503)
                .unwrap_or(false)
        },
    );
    World {
        _etcds: etcds,
        routers,
        _gateways: vec![plain, tls, bad],
        ca_pem,
    }
}

fn run(mut cmd: Command, w: &World, what: &str) {
    let out = cmd
        .env("SDK_ROUTER_PORT", w.routers[0].addr.port().to_string())
        .env("SDK_FULL_PORT", w.routers[1].addr.port().to_string())
        .env("SDK_BADCERT_PORT", w.routers[2].addr.port().to_string())
        .env("SDK_CA_PEM", &w.ca_pem)
        .env("SDK_ALPN", ALPN)
        .output()
        .unwrap_or_else(|e| panic!("run {what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("bindings: ok"),
        "{what} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

/// Runs `bindings/tests/python/{script}` with the generated module against the world.
fn python(script: &str) {
    let dir = tempfile::tempdir().unwrap();
    let lib = generate(&dir.path().join("gen"), "python");
    let w = world(dir.path());
    let mut cmd = Command::new("python3");
    cmd.arg(workspace().join("bindings/tests/python").join(script))
        .env("PYTHONPATH", &lib);
    run(cmd, &w, script);
}

#[test]
fn python_bindings_through_the_real_router() {
    python("test_sdk.py");
}

/// A library thread still inside Python when the interpreter starts finalizing: the
/// interpreter would unwind it through the library and the process would abort
/// (SIGABRT, "exception not rethrown"). The module waits for such threads at exit.
#[test]
fn python_exits_cleanly_while_a_library_thread_is_inside_python() {
    python("test_exit.py");
}

#[test]
fn kotlin_bindings_on_the_jvm_through_the_real_router() {
    let kotlinc = harness::which("kotlinc").unwrap_or_else(|| {
        panic!("kotlinc is needed: npm install -g kotlin-compiler (scripts/deps.sh --test installs it)")
    });
    let jna = PathBuf::from("/usr/share/java/jna.jar");
    assert!(
        jna.is_file(),
        "JNA is needed: apt-get install libjna-java (scripts/deps.sh --test installs it)"
    );
    // kotlinc's own lib directory has the standard library and kotlinx-coroutines.
    let klib = std::fs::canonicalize(&kotlinc)
        .unwrap()
        .parent()
        .unwrap()
        .join("../lib");
    let coroutines = klib.join("kotlinx-coroutines-core-jvm.jar");
    let stdlib = klib.join("kotlin-stdlib.jar");
    assert!(
        coroutines.is_file() && stdlib.is_file(),
        "kotlinc's lib lacks kotlinx-coroutines or the standard library: {}",
        klib.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let lib = generate(&dir.path().join("gen"), "kotlin");
    let jar = dir.path().join("test.jar");
    let cp = format!("{}:{}", jna.display(), coroutines.display());
    let out = Command::new(&kotlinc)
        .arg(lib.join("uniffi/gateway_sdk/gateway_sdk.kt"))
        .arg(workspace().join("bindings/tests/kotlin/BindingsTest.kt"))
        .args(["-nowarn", "-cp", &cp, "-d"])
        .arg(&jar)
        .output()
        .expect("run kotlinc");
    assert!(
        out.status.success(),
        "kotlinc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let w = world(dir.path());
    let mut cmd = Command::new("java");
    cmd.arg(format!("-Djna.library.path={}", lib.display()))
        .arg("-cp")
        .arg(format!("{}:{cp}:{}", jar.display(), stdlib.display()))
        .arg("BindingsTestKt");
    run(cmd, &w, "the Kotlin test");
}
