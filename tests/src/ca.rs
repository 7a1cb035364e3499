//! A throwaway certificate authority for TLS tests, and private file permissions for
//! the keys it writes.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// A throwaway certificate authority for TLS tests (rcgen).
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    /// A new self-signed CA.
    pub fn new(name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().expect("ca key");
        TestCa {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).expect("self-signed CA"),
        }
    }

    /// The CA certificate (PEM), for a client's trust store.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `names` (DNS names or IP literals): (cert PEM, key PEM).
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        self.leaf_until(names, None)
    }

    /// [`TestCa::leaf`], expiring at `not_after` (Unix seconds) when given.
    pub fn leaf_until(&self, names: &[&str], not_after: Option<i64>) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        if let Some(t) = not_after {
            params.not_after =
                (std::time::UNIX_EPOCH + std::time::Duration::from_secs(t as u64)).into();
        }
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate whose common name is `cn` (etcd's user, with
    /// `--client-cert-auth`): (cert PEM, key PEM). `expired`: valid only in 2020.
    pub fn client_leaf(&self, cn: &str, expired: bool) -> (String, String) {
        self.client_signed(cn, |params| {
            if expired {
                params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                params.not_after = rcgen::date_time_ymd(2020, 12, 31);
            }
        })
    }

    /// A client certificate for `cn` that expires `valid` from now: (cert PEM, key PEM).
    pub fn client_leaf_for(&self, cn: &str, valid: Duration) -> (String, String) {
        self.client_signed(cn, |params| {
            params.not_after = (std::time::SystemTime::now() + valid).into();
        })
    }

    /// A client certificate for `cn`, its parameters adjusted by `adjust`.
    fn client_signed(
        &self,
        cn: &str,
        adjust: impl FnOnce(&mut rcgen::CertificateParams),
    ) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        adjust(&mut params);
        let key = rcgen::KeyPair::generate().expect("client key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign client");
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a leaf's cert and key to `dir` atomically (write + rename, as certbot
    /// does); returns the two paths.
    pub fn write_leaf(&self, dir: &Path, names: &[&str]) -> (PathBuf, PathBuf) {
        self.write_leaf_until(dir, names, None)
    }

    /// [`TestCa::write_leaf`], expiring at `not_after` (Unix seconds) when given.
    pub fn write_leaf_until(
        &self,
        dir: &Path,
        names: &[&str],
        not_after: Option<i64>,
    ) -> (PathBuf, PathBuf) {
        let (cert, key) = self.leaf_until(names, not_after);
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        for (path, content) in [(&key_path, key), (&cert_path, cert)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, content).expect("write pem");
            make_private(&tmp);
            std::fs::rename(&tmp, path).expect("rename pem");
        }
        (cert_path, key_path)
    }
}

/// Makes `path` readable by its owner alone (mode 0600), as the binaries require of
/// private keys, passwords and token files.
pub fn make_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}
