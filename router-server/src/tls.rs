//! HTTPS with rustls from PEM files, and certificate renewal without a restart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The certificate chain and key files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Why PEM text makes no server configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// The certificate chain's PEM does not parse.
    #[error("certificate: {0}")]
    CertPem(#[source] rustls::pki_types::pem::Error),
    /// No certificate in the chain's file.
    #[error("certificate: no PEM certificate found")]
    NoCertificate,
    /// The key's PEM does not parse, or holds no key.
    #[error("key: {0}")]
    KeyPem(#[source] rustls::pki_types::pem::Error),
    /// rustls refuses the pair (a key that does not match, an unsupported key type).
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

/// Why the TLS files are not used, naming them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsFilesError {
    /// A file cannot be read.
    #[error("cannot read TLS files {} / {}: {source}", files.cert.display(), files.key.display())]
    Unreadable {
        /// The files.
        files: TlsFiles,
        /// The system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The key is readable by group or others, or cannot be looked at.
    #[error("--tls-key {}: {source}", files.key.display())]
    Key {
        /// The files.
        files: TlsFiles,
        /// What is wrong with the key file.
        #[source]
        source: registry::security::SecretError,
    },
    /// The files make no server configuration.
    #[error("invalid TLS certificate or key ({} / {}): {source}", files.cert.display(), files.key.display())]
    Invalid {
        /// The files.
        files: TlsFiles,
        /// Why.
        #[source]
        source: CertError,
    },
}

/// The server configuration in force; new handshakes read it, a renewal swaps it.
pub type LiveTlsConfig = Arc<ArcSwap<ServerConfig>>;

/// Installs ring as the process's rustls provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// When the first certificate of a PEM chain (the server's own) expires, in Unix
/// seconds; `None` when it does not parse.
pub fn cert_expiry(cert_pem: &[u8]) -> Option<i64> {
    let der = CertificateDer::pem_slice_iter(cert_pem).next()?.ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// A server configuration from PEM text, offering HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<ServerConfig, CertError> {
    install_crypto_provider();
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(CertError::CertPem)?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(CertError::KeyPem)?;
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

impl TlsFiles {
    fn read(&self) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
        Ok((std::fs::read(&self.cert)?, std::fs::read(&self.key)?))
    }

    fn parse(&self, files: &(Vec<u8>, Vec<u8>)) -> Result<ServerConfig, TlsFilesError> {
        server_config(&files.0, &files.1).map_err(|source| TlsFilesError::Invalid {
            files: self.clone(),
            source,
        })
    }

    /// When the certificate now in the file expires (see [`cert_expiry`]).
    pub fn expiry(&self) -> Option<i64> {
        cert_expiry(&std::fs::read(&self.cert).ok()?)
    }

    /// Loads the files into a server configuration; fails with a message naming them.
    /// The key must not be readable by group or others.
    pub async fn load(&self) -> Result<LiveTlsConfig, TlsFilesError> {
        let files = self.read().map_err(|source| TlsFilesError::Unreadable {
            files: self.clone(),
            source,
        })?;
        registry::security::check_private(&self.key).map_err(|source| TlsFilesError::Key {
            files: self.clone(),
            source,
        })?;
        Ok(Arc::new(ArcSwap::from_pointee(self.parse(&files)?)))
    }

    /// Re-reads the files every `every`; when their content changed, swaps the
    /// certificate in place. New handshakes use it; open connections keep theirs. A
    /// broken renewal (half-written file, mismatched key) is logged and the current
    /// certificate stays.
    /// `reloaded` is told the new certificate's expiry (see [`cert_expiry`]).
    pub async fn watch(
        self,
        config: LiveTlsConfig,
        every: Duration,
        cancel: CancellationToken,
        reloaded: impl Fn(Option<i64>) + Send + 'static,
    ) {
        let mut current = self.read().ok();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let Ok(files) = self.read() else { continue };
            if current.as_ref() == Some(&files) {
                continue;
            }
            if let Err(e) = registry::security::check_private(&self.key) {
                warn!(key = %self.key.display(), error = %e, "TLS key not reloaded; keeping the current one");
                continue;
            }
            match self.parse(&files) {
                Ok(c) => {
                    config.store(Arc::new(c));
                    reloaded(cert_expiry(&files.0));
                    info!(cert = %self.cert.display(), "TLS certificate reloaded");
                }
                Err(e) => {
                    warn!(cert = %self.cert.display(), error = %e, "TLS certificate reload failed; keeping the current one")
                }
            }
            current = Some(files);
        }
    }
}
