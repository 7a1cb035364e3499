//! Tests of the etcd security files: modes, secrets, PEM reading and the errors they
//! name.

use super::*;

/// A file only its owner reads, as secrets must be.
fn file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    chmod(&p, 0o600);
    p
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn mistakes_are_named_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pem = file(
        d,
        "ca.pem",
        "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
    );
    let key = file(
        d,
        "key.pem",
        "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n",
    );
    let junk = file(d, "junk.pem", "hello\n");
    let pw = file(d, "pw", "s3cret\nignored\n");
    let empty = file(d, "empty", "");
    let http = ["http://127.0.0.1:2379".to_string()];
    let https = ["https://127.0.0.1:2379".to_string()];
    let err = |s: EtcdSecurity, eps: &[String]| s.check(eps).unwrap_err().to_string();

    let tls = EtcdSecurity {
        cacert: Some(pem.clone()),
        ..Default::default()
    };
    assert!(err(tls.clone(), &http).contains("need https:// endpoints"));
    assert!(tls.check(&https).is_ok());
    let mixed = ["https://a:1".to_string(), "http://b:2".to_string()];
    assert!(err(EtcdSecurity::default(), &mixed).contains("mix"));
    assert!(err(
        EtcdSecurity {
            cert: Some(pem.clone()),
            ..Default::default()
        },
        &https
    )
    .contains("--etcd-cert needs --etcd-key"));
    assert!(err(
        EtcdSecurity {
            cacert: Some(junk.clone()),
            ..Default::default()
        },
        &https
    )
    .contains("no PEM CERTIFICATE"));
    assert!(err(
        EtcdSecurity {
            cacert: Some(d.join("missing.pem")),
            ..Default::default()
        },
        &https
    )
    .contains("missing.pem"));
    assert!(err(
        EtcdSecurity {
            cert: Some(pem.clone()),
            key: Some(pem.clone()),
            ..Default::default()
        },
        &https
    )
    .contains("no PEM PRIVATE KEY"));
    assert!(EtcdSecurity {
        cert: Some(pem.clone()),
        key: Some(key),
        ..Default::default()
    }
    .check(&https)
    .is_ok());

    let user = |pw: Option<PathBuf>| EtcdSecurity {
        user: Some("gw-a".into()),
        password_file: pw,
        insecure_transport: true,
        ..Default::default()
    };
    assert!(err(user(None), &http).contains("needs --etcd-password-file"));
    assert!(err(user(Some(empty)), &http).contains("empty"));
    let loaded = user(Some(pw)).load(&http).unwrap();
    assert_eq!(loaded.user, Some(("gw-a".into(), "s3cret".into())));
    assert!(loaded.tls.is_none());
}

#[test]
fn messages_name_the_flag_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let junk = file(dir.path(), "junk.pem", "hello\n");
    let missing = dir.path().join("missing.pem");
    let https = ["https://a:1".to_string()];
    let http = ["http://a:1".to_string(), "http://b:2".to_string()];
    let msg = |s: EtcdSecurity, eps: &[String]| s.check(eps).unwrap_err().to_string();
    assert_eq!(
        msg(
            EtcdSecurity::default(),
            &["https://a:1".into(), "http://b:2".into()]
        ),
        "etcd endpoints mix https:// and http:// (https://a:1,http://b:2); use one scheme"
    );
    assert_eq!(
        msg(
            EtcdSecurity {
                cacert: Some(junk.clone()),
                ..Default::default()
            },
            &http
        ),
        "--etcd-cacert, --etcd-cert and --etcd-key need https:// endpoints; --etcd is http://a:1,http://b:2"
    );
    assert_eq!(
        msg(
            EtcdSecurity {
                cacert: Some(junk.clone()),
                ..Default::default()
            },
            &https
        ),
        format!(
            "--etcd-cacert {}: no PEM CERTIFICATE in the file",
            junk.display()
        )
    );
    assert_eq!(
        msg(
            EtcdSecurity {
                cacert: Some(missing.clone()),
                ..Default::default()
            },
            &https
        ),
        format!(
            "--etcd-cacert {}: {}",
            missing.display(),
            std::fs::read(&missing).unwrap_err()
        )
    );
    let user = |name: &str, pw: Option<PathBuf>| EtcdSecurity {
        user: Some(name.into()),
        password_file: pw,
        ..Default::default()
    };
    assert_eq!(
        msg(user("a b", Some(junk.clone())), &https),
        "--etcd-user \"a b\" is not a user name"
    );
    assert_eq!(
        msg(user("a", None), &https),
        "--etcd-user needs --etcd-password-file (a password is never a flag value: flags show in ps)"
    );
    assert_eq!(
        msg(
            EtcdSecurity {
                password_file: Some(junk),
                ..Default::default()
            },
            &https
        ),
        "--etcd-password-file needs --etcd-user"
    );
    assert_eq!(
        msg(user("a", Some(missing.clone())), &https),
        format!(
            "--etcd-password-file {}: {}",
            missing.display(),
            std::fs::metadata(&missing).unwrap_err()
        )
    );
}

#[test]
fn a_password_goes_over_http_only_when_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let pw = file(dir.path(), "pw", "s3cret\n");
    let http = [
        "http://10.0.0.1:2379".to_string(),
        "http://10.0.0.2:2379".to_string(),
    ];
    let mut s = EtcdSecurity {
        user: Some("gw-a".into()),
        password_file: Some(pw),
        ..Default::default()
    };
    let e = s.check(&http).unwrap_err().to_string();
    assert!(
        e.contains("in clear to http://10.0.0.1:2379,http://10.0.0.2:2379"),
        "{e}"
    );
    assert!(e.contains("--etcd-insecure-transport"), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");
    // https:// carries it without the flag; http:// with it.
    assert!(s.check(&["https://10.0.0.1:2379".to_string()]).is_ok());
    s.insecure_transport = true;
    assert!(s.check(&http).is_ok());
}

#[test]
fn secrets_readable_by_others_are_refused_certificates_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cert = file(
        d,
        "cert.pem",
        "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
    );
    chmod(&cert, 0o644);
    let key = file(
        d,
        "key.pem",
        "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n",
    );
    let pw = file(d, "pw", "s3cret\n");
    let https = ["https://127.0.0.1:2379".to_string()];
    let s = EtcdSecurity {
        cacert: Some(cert.clone()),
        cert: Some(cert.clone()),
        key: Some(key.clone()),
        user: Some("gw-a".into()),
        password_file: Some(pw.clone()),
        insecure_transport: false,
    };
    assert!(s.check(&https).is_ok(), "0600 secrets, 0644 certificates");
    for (path, flag, mode) in [
        (&key, "--etcd-key", 0o644),
        (&pw, "--etcd-password-file", 0o640),
    ] {
        chmod(path, mode);
        let e = s.check(&https).unwrap_err().to_string();
        let want = format!(
            "{flag} {}: mode {mode:04o} lets group or others read this secret; run `chmod 600 {}`",
            path.display(),
            path.display()
        );
        assert_eq!(e, want);
        chmod(path, 0o400);
        assert!(s.check(&https).is_ok(), "0400 is private too");
    }
    assert!(check_private(&pw).is_ok());
    assert!(read_secret(&d.join("missing")).is_err());
}

#[test]
fn systemd_credentials_are_private_by_construction() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    let key = file(&creds, "tls-key", "k");
    // As systemd leaves it when it grants the service's user an ACL: mask r--.
    chmod(&key, 0o440);
    assert!(check_private_in(&key, Some(&creds)).is_ok());
    assert!(check_private_in(&key, None).is_err());
    assert!(check_private_in(&key, Some(&dir.path().join("other"))).is_err());
    // A path climbing out of the directory is judged by its mode.
    let outside = file(dir.path(), "secret", "s");
    chmod(&outside, 0o644);
    let climbing = creds.join("..").join("secret");
    assert!(check_private_in(&climbing, Some(&creds)).is_err());
}

#[test]
fn certificate_refusals_are_told_from_outages() {
    assert!(is_tls_refusal(
        "transport error: invalid peer certificate: UnknownIssuer"
    ));
    assert!(is_tls_refusal(
        "transport error: received fatal alert: CertificateExpired"
    ));
    assert!(!is_tls_refusal("transport error: connection refused"));
}
