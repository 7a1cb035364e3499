//! TLS and credentials for etcd, as etcdctl takes them: `--etcd-cacert`,
//! `--etcd-cert`, `--etcd-key`, `--etcd-user` and `--etcd-password-file` (a password
//! is never a flag value: flag values show in `ps`).
//!
//! The rules are checked before anything connects, so a mistake is one line at start:
//! TLS material needs `https://` endpoints (an `http://` endpoint with TLS flags is
//! refused), a certificate needs its key, a user needs a password file, and every
//! file must be readable and of the right kind. A password is not sent over `http://`
//! unless `--etcd-insecure-transport` says so, and the private key and the password
//! file must not be readable by group or others ([`check_private`]).

use std::path::{Path, PathBuf};

use etcd_client::{Certificate, Identity, TlsOptions};

/// How to authenticate to etcd and check its certificates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdSecurity {
    /// CA bundle (PEM) that signed etcd's server certificates; without it, an
    /// `https://` endpoint is checked against the system's roots.
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM), for etcd's `--client-cert-auth`; with auth enabled
    /// and no password, its common name is the etcd user.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key: Option<PathBuf>,
    /// etcd user (password authentication; tokens are refreshed when they expire).
    pub user: Option<String>,
    /// File holding the user's password (its first line).
    pub password_file: Option<PathBuf>,
    /// Allows a user's password over `http://` endpoints, in clear (a test etcd, a
    /// loopback one); refused without it.
    pub insecure_transport: bool,
}

/// TLS and credentials read from their files, ready for the client.
#[derive(Debug, Clone)]
pub(crate) struct Loaded {
    pub(crate) tls: Option<TlsOptions>,
    pub(crate) user: Option<(String, String)>,
}

/// Why the etcd security flags are refused: the flag, the file and what is wrong, for
/// one line at start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecurityError {
    /// Some endpoints are `https://`, some `http://`.
    #[error("etcd endpoints mix https:// and http:// ({}); use one scheme", endpoints.join(","))]
    MixedSchemes {
        /// The endpoints given.
        endpoints: Vec<String>,
    },
    /// TLS flags with `http://` endpoints.
    #[error("--etcd-cacert, --etcd-cert and --etcd-key need https:// endpoints; --etcd is {}", endpoints.join(","))]
    TlsWithoutHttps {
        /// The endpoints given.
        endpoints: Vec<String>,
    },
    /// A PEM file cannot be read.
    #[error("{flag} {}: {source}", path.display())]
    Unreadable {
        /// The flag naming the file (`--etcd-cacert`).
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// The system's reason.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file holds no block of the kind its flag needs.
    #[error("{flag} {}: no PEM {kind} in the file", path.display())]
    NoPem {
        /// The flag naming the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// The block wanted (`CERTIFICATE`, `PRIVATE KEY`).
        kind: &'static str,
    },
    /// A secret file (the key, the password file) is readable by others, or unreadable.
    #[error("{flag} {}: {source}", path.display())]
    Secret {
        /// The flag naming the file (`--etcd-key`, `--etcd-password-file`).
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: SecretError,
    },
    /// `--etcd-cert` without `--etcd-key`.
    #[error("--etcd-cert needs --etcd-key")]
    CertWithoutKey,
    /// `--etcd-key` without `--etcd-cert`.
    #[error("--etcd-key needs --etcd-cert")]
    KeyWithoutCert,
    /// `--etcd-user` is empty or has whitespace.
    #[error("--etcd-user {0:?} is not a user name")]
    BadUser(String),
    /// A password over `http://` without `--etcd-insecure-transport`.
    #[error("--etcd-user would send its password in clear to {}: use https:// endpoints, or --etcd-insecure-transport to accept that", endpoints.join(","))]
    PasswordInClear {
        /// The endpoints given.
        endpoints: Vec<String>,
    },
    /// The password file's first line is empty.
    #[error("--etcd-password-file {}: the file is empty", .0.display())]
    EmptyPassword(PathBuf),
    /// `--etcd-user` without `--etcd-password-file`.
    #[error("--etcd-user needs --etcd-password-file (a password is never a flag value: flags show in ps)")]
    UserWithoutPassword,
    /// `--etcd-password-file` without `--etcd-user`.
    #[error("--etcd-password-file needs --etcd-user")]
    PasswordWithoutUser,
}

/// Why a secret file (a private key, a password, a token file) is refused; the caller
/// puts the flag and the file before it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// Group or others may read it.
    #[error("mode {mode:04o} lets group or others read this secret; run `chmod 600 {}`", path.display())]
    Readable {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// It cannot be looked at or read.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl EtcdSecurity {
    /// The files read at connect time (CA, certificate, key, password), to watch.
    pub fn files(&self) -> Vec<&std::path::Path> {
        [&self.cacert, &self.cert, &self.key, &self.password_file]
            .into_iter()
            .flatten()
            .map(|p| p.as_path())
            .collect()
    }

    /// True when any TLS flag is set.
    pub fn wants_tls(&self) -> bool {
        self.cacert.is_some() || self.cert.is_some() || self.key.is_some()
    }

    /// Checks the flags against the `endpoints` and reads every file once; the error
    /// names the flag and the problem, for one line at start.
    pub fn check(&self, endpoints: &[String]) -> Result<(), SecurityError> {
        self.load(endpoints).map(|_| ())
    }

    pub(crate) fn load(&self, endpoints: &[String]) -> Result<Loaded, SecurityError> {
        let https = endpoints
            .iter()
            .filter(|e| e.starts_with("https://"))
            .count();
        if https > 0 && https < endpoints.len() {
            return Err(SecurityError::MixedSchemes {
                endpoints: endpoints.to_vec(),
            });
        }
        if self.wants_tls() && https == 0 {
            return Err(SecurityError::TlsWithoutHttps {
                endpoints: endpoints.to_vec(),
            });
        }
        let tls = if https > 0 {
            let mut tls = TlsOptions::new();
            tls = match &self.cacert {
                Some(ca) => tls.ca_certificate(Certificate::from_pem(read_pem(
                    "--etcd-cacert",
                    ca,
                    "CERTIFICATE",
                )?)),
                None => tls.with_native_roots(),
            };
            match (&self.cert, &self.key) {
                (Some(cert), Some(key)) => {
                    let cert = read_pem("--etcd-cert", cert, "CERTIFICATE")?;
                    check_private(key).map_err(|source| SecurityError::Secret {
                        flag: "--etcd-key",
                        path: key.clone(),
                        source,
                    })?;
                    let key = read_pem("--etcd-key", key, "PRIVATE KEY")?;
                    tls = tls.identity(Identity::from_pem(cert, key));
                }
                (Some(_), None) => return Err(SecurityError::CertWithoutKey),
                (None, Some(_)) => return Err(SecurityError::KeyWithoutCert),
                (None, None) => {}
            }
            Some(tls)
        } else {
            None
        };
        let user = match (&self.user, &self.password_file) {
            (Some(user), Some(file)) => {
                if user.is_empty() || user.contains(char::is_whitespace) {
                    return Err(SecurityError::BadUser(user.clone()));
                }
                if https == 0 && !self.insecure_transport {
                    return Err(SecurityError::PasswordInClear {
                        endpoints: endpoints.to_vec(),
                    });
                }
                let text = read_secret(file).map_err(|source| SecurityError::Secret {
                    flag: "--etcd-password-file",
                    path: file.clone(),
                    source,
                })?;
                let password = text.lines().next().unwrap_or("").to_string();
                if password.is_empty() {
                    return Err(SecurityError::EmptyPassword(file.clone()));
                }
                Some((user.clone(), password))
            }
            (Some(_), None) => return Err(SecurityError::UserWithoutPassword),
            (None, Some(_)) => return Err(SecurityError::PasswordWithoutUser),
            (None, None) => None,
        };
        Ok(Loaded { tls, user })
    }
}

/// Checks that `path`, a secret (a private key, a password, a token file), is not
/// readable by group or others; the error names the mode and the fix. It follows
/// symbolic links, as reading does: what matters is the file the secret is read from.
///
/// A file in systemd's `$CREDENTIALS_DIRECTORY` passes: systemd makes it readable by
/// the service's user alone, with an ACL where it can, and an ACL's mask shows in the
/// group bits of the mode without granting the group anything.
pub fn check_private(path: &Path) -> Result<(), SecretError> {
    let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    check_private_in(path, credentials.as_deref())
}

/// [`check_private`] with the credentials directory given.
fn check_private_in(path: &Path, credentials: Option<&Path>) -> Result<(), SecretError> {
    use std::os::unix::fs::PermissionsExt;
    let inside = |dir: &Path| {
        dir.is_absolute()
            && path.starts_with(dir)
            && !path
                .components()
                .any(|c| c == std::path::Component::ParentDir)
    };
    if credentials.is_some_and(inside) {
        return Ok(());
    }
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretError::Readable {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Reads the secret file `path` after [`check_private`]; the error is its problem,
/// for the caller to put after the flag and the file.
pub fn read_secret(path: &Path) -> Result<String, SecretError> {
    check_private(path)?;
    Ok(std::fs::read_to_string(path)?)
}

/// Reads a PEM file that must hold a `kind` block (`CERTIFICATE`, `... PRIVATE KEY`).
fn read_pem(flag: &'static str, path: &Path, kind: &'static str) -> Result<Vec<u8>, SecurityError> {
    let bytes = std::fs::read(path).map_err(|source| SecurityError::Unreadable {
        flag,
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let found = text
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.trim_end().ends_with(&format!("{kind}-----")));
    if !found {
        return Err(SecurityError::NoPem {
            flag,
            path: path.to_path_buf(),
            kind,
        });
    }
    Ok(bytes)
}

/// The whole cause chain of an error, `: `-joined (a TLS failure hides under
/// "transport error").
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let m = s.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        cur = s.source();
    }
    out
}

/// True when `message` (a cause chain) is a failed certificate check, on our side or
/// etcd's: a configuration problem, not an outage.
pub(crate) fn is_tls_refusal(message: &str) -> bool {
    message.contains("invalid peer certificate")
        || message.contains("received fatal alert")
        || message.contains("certificate required")
}

/// The flags of [`EtcdSecurity`] for a binary whose variables start with `$env`
/// (`AGENT`, `ROUTER`): `--etcd-cacert` reads `{ENV}_ETCD_CACERT`, and so on.
#[macro_export]
macro_rules! etcd_security_flags {
    ($name:ident, $env:literal) => {
        /// TLS and credentials for etcd, as etcdctl takes them.
        #[derive(Debug, Clone, Default, clap::Args)]
        pub struct $name {
            /// CA bundle (PEM) that signed etcd's certificates; needs https:// endpoints (default: the system's roots).
            #[arg(long = "etcd-cacert", env = concat!($env, "_ETCD_CACERT"), value_name = "FILE")]
            pub etcd_cacert: Option<std::path::PathBuf>,
            /// Client certificate (PEM) for etcd's --client-cert-auth.
            #[arg(long = "etcd-cert", env = concat!($env, "_ETCD_CERT"), value_name = "FILE")]
            pub etcd_cert: Option<std::path::PathBuf>,
            /// The client certificate's private key (PEM).
            #[arg(long = "etcd-key", env = concat!($env, "_ETCD_KEY"), value_name = "FILE")]
            pub etcd_key: Option<std::path::PathBuf>,
            /// etcd user (with --etcd-password-file).
            #[arg(long = "etcd-user", env = concat!($env, "_ETCD_USER"), value_name = "NAME")]
            pub etcd_user: Option<String>,
            /// File holding the etcd user's password (never a flag value: flags show in ps).
            #[arg(long = "etcd-password-file", env = concat!($env, "_ETCD_PASSWORD_FILE"), value_name = "FILE")]
            pub etcd_password_file: Option<std::path::PathBuf>,
            /// Allow --etcd-user over http:// endpoints, the password in clear (refused otherwise).
            #[arg(long = "etcd-insecure-transport", env = concat!($env, "_ETCD_INSECURE_TRANSPORT"),
                  value_parser = clap::builder::BoolishValueParser::new())]
            pub etcd_insecure_transport: bool,
        }

        impl $name {
            /// The security settings these flags give.
            pub fn security(&self) -> $crate::security::EtcdSecurity {
                $crate::security::EtcdSecurity {
                    cacert: self.etcd_cacert.clone(),
                    cert: self.etcd_cert.clone(),
                    key: self.etcd_key.clone(),
                    user: self.etcd_user.clone(),
                    password_file: self.etcd_password_file.clone(),
                    insecure_transport: self.etcd_insecure_transport,
                }
            }
        }
    };
}

#[cfg(test)]
mod tests;
