//! The agent, the router and `ctl` against etcd as production runs it: TLS on the
//! client port (`--cert-file`, `--key-file`, `--trusted-ca-file`), client certificates
//! required (`--client-cert-auth`), authentication enabled, and each binary holding
//! only the permissions its part of the key layout needs. This file holds what the
//! concerns share: certificates, password files, `ctl auth` and etcd client options.

mod bad_credentials;
mod least_privilege;
mod per_registry;
mod rotation;

use std::path::{Path, PathBuf};

use harness::{router_ctl, Etcd, TestCa};
use registry::etcd::EtcdOptions;
use registry::security::EtcdSecurity;

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

/// A secure etcd (`extra` flags) where `ctl auth apply` made the principals `who`
/// names; with the CA that signs its certificates and its directory.
fn secure_etcd(extra: &[&str], who: &[&str]) -> (TestCa, Etcd, PathBuf) {
    let ca = TestCa::new("etcd test CA");
    let etcd = Etcd::secure(&ca, extra);
    let dir = etcd.dir().to_path_buf();
    auth(&etcd, "apply", who);
    (ca, etcd, dir)
}

fn passwords_dir(etcd: &Etcd) -> PathBuf {
    etcd.dir().join("passwords")
}

/// The password file `ctl auth apply` wrote for `user`.
fn password_file(etcd: &Etcd, user: &str) -> PathBuf {
    passwords_dir(etcd).join(format!("{user}.password"))
}

/// Client options over TLS with `cert` / `key`, signed in as `login` (a user and its
/// password file) when given, else by the certificate's common name alone.
fn tls_options(etcd: &Etcd, cert: &Path, key: &Path, login: Option<(&str, &Path)>) -> EtcdOptions {
    EtcdOptions {
        security: EtcdSecurity {
            cacert: Some(etcd.tls().ca.clone()),
            cert: Some(cert.to_path_buf()),
            key: Some(key.to_path_buf()),
            user: login.map(|(user, _)| user.into()),
            password_file: login.map(|(_, file)| file.to_path_buf()),
            insecure_transport: false,
        },
        ..EtcdOptions::default()
    }
}
