//! HTTPS with rustls from PEM files, and certificate renewal without a restart.

use std::path::PathBuf;
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;
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

/// Installs ring as the process's rustls provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl TlsFiles {
    fn read(&self) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
        Ok((std::fs::read(&self.cert)?, std::fs::read(&self.key)?))
    }

    /// Loads the files into a server configuration; fails with a message naming them.
    pub async fn load(&self) -> Result<RustlsConfig, String> {
        install_crypto_provider();
        let (cert, key) = self.read().map_err(|e| {
            format!(
                "cannot read TLS files {} / {}: {e}",
                self.cert.display(),
                self.key.display()
            )
        })?;
        RustlsConfig::from_pem(cert, key).await.map_err(|e| {
            format!(
                "invalid TLS certificate or key ({} / {}): {e}",
                self.cert.display(),
                self.key.display()
            )
        })
    }

    /// Re-reads the files every `every`; when their content changed, swaps the
    /// certificate in place. New handshakes use it; open connections keep theirs. A
    /// broken renewal (half-written file, mismatched key) is logged and the current
    /// certificate stays.
    pub async fn watch(self, config: RustlsConfig, every: Duration, cancel: CancellationToken) {
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
            match config
                .reload_from_pem(files.0.clone(), files.1.clone())
                .await
            {
                Ok(()) => info!(cert = %self.cert.display(), "TLS certificate reloaded"),
                Err(e) => {
                    warn!(cert = %self.cert.display(), error = %e, "TLS certificate reload failed; keeping the current one")
                }
            }
            current = Some(files);
        }
    }
}
