//! Gateways for SDK tests: a TCP or TLS echo server on loopback (a certificate from a
//! [`crate::TestCa`] for the names asked, ALPN), or one that accepts and never
//! answers. Records the SNI names its TLS clients sent.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::TestCa;

/// What a gateway serves.
pub enum Serve {
    /// Plain TCP, echoing what it reads.
    Echo,
    /// TLS with a certificate for `names`, accepting the `alpn` protocols, echoing.
    Tls {
        /// DNS names (or IP literals) of the certificate.
        names: Vec<String>,
        /// ALPN protocols the gateway accepts.
        alpn: Vec<Vec<u8>>,
    },
    /// Accepts TCP and never says anything (a stalled handshake).
    Stall,
}

impl Serve {
    /// TLS for `names`, no ALPN.
    pub fn tls(names: &[&str]) -> Serve {
        Serve::Tls {
            names: names.iter().map(|s| s.to_string()).collect(),
            alpn: Vec::new(),
        }
    }
}

/// A running gateway; stops accepting when dropped.
pub struct GatewayServer {
    /// Where it listens.
    pub addr: SocketAddr,
    sni: Arc<Mutex<Vec<Option<String>>>>,
    stop: Arc<AtomicBool>,
}

impl GatewayServer {
    /// Starts a gateway on `127.0.0.1:0`; TLS certificates are signed by `ca`.
    pub fn start(ca: &TestCa, serve: Serve) -> GatewayServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind gateway");
        let addr = listener.local_addr().unwrap();
        let tls = match &serve {
            Serve::Tls { names, alpn } => {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                let (cert, key) = ca.leaf(&names);
                let certs = vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
                let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
                let mut c = rustls::ServerConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap();
                c.alpn_protocols = alpn.clone();
                Some(Arc::new(c))
            }
            _ => None,
        };
        let stall = matches!(serve, Serve::Stall);
        let sni = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopped) = (sni.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                if stall {
                    held.push(conn);
                    continue;
                }
                let (tls, seen) = (tls.clone(), seen.clone());
                std::thread::spawn(move || match tls {
                    None => echo(conn),
                    Some(config) => serve_tls(conn, config, &seen),
                });
            }
        });
        GatewayServer { addr, sni, stop }
    }

    /// The SNI names sent by the TLS clients whose handshake completed.
    pub fn sni(&self) -> Vec<Option<String>> {
        self.sni.lock().unwrap().clone()
    }
}

impl Drop for GatewayServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn echo(mut s: impl Read + Write) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 || s.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

fn serve_tls(
    mut tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    seen: &Mutex<Vec<Option<String>>>,
) {
    let Ok(mut conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    while conn.is_handshaking() {
        if conn.complete_io(&mut tcp).is_err() {
            return;
        }
    }
    seen.lock()
        .unwrap()
        .push(conn.server_name().map(str::to_string));
    echo(rustls::StreamOwned::new(conn, tcp));
}
