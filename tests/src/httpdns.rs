//! A fake HTTPDNS provider (Alibaba-style API) with answers set per host, recording
//! every request.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An HTTPDNS provider for tests, speaking the Alibaba-style API:
/// `GET /{account}/d?host=H` and `/{account}/sign_d?host=H&t=T&s=S`. Answers are set per
/// host as raw JSON bodies, so a test can also serve hijack-style answers. Every
/// request's path and query is recorded.
pub struct HttpDnsServer {
    addr: SocketAddr,
    answers: Arc<Answers>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl HttpDnsServer {
    /// Starts on a free loopback port.
    pub fn start() -> HttpDnsServer {
        HttpDnsServer::serve(None, "127.0.0.1")
    }

    /// Starts over HTTPS with the certificate and key given (PEM).
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> HttpDnsServer {
        HttpDnsServer::start_tls_on("127.0.0.1", cert_pem, key_pem)
    }

    /// [`HttpDnsServer::start_tls`] on loopback address `ip` (`::1` for IPv6).
    pub fn start_tls_on(ip: &str, cert_pem: &str, key_pem: &str) -> HttpDnsServer {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("certificate PEM");
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key PEM");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server certificate");
        HttpDnsServer::serve(Some(Arc::new(config)), ip)
    }

    fn serve(tls: Option<Arc<rustls::ServerConfig>>, ip: &str) -> HttpDnsServer {
        let listener = TcpListener::bind((ip, 0)).expect("bind httpdns");
        let addr = listener.local_addr().unwrap();
        let answers: Arc<Answers> = Arc::default();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let (a, r) = (answers.clone(), requests.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let (a, r, tls) = (a.clone(), r.clone(), tls.clone());
                std::thread::spawn(move || match tls {
                    Some(config) => {
                        let Ok(session) = rustls::ServerConnection::new(config) else {
                            return;
                        };
                        answer_httpdns(rustls::StreamOwned::new(session, conn), &a, &r);
                    }
                    None => answer_httpdns(conn, &a, &r),
                });
            }
        });
        HttpDnsServer {
            addr,
            answers,
            requests,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers `host` with these IPv4 and IPv6 strings (not checked: tests send junk).
    pub fn answer(&self, host: &str, ips: &[&str], ipsv6: &[&str], ttl: u64) {
        let body =
            serde_json::json!({"host": host, "ips": ips, "ipsv6": ipsv6, "ttl": ttl}).to_string();
        self.answers
            .lock()
            .unwrap()
            .insert(host.to_string(), (200, body));
    }

    /// Answers `host` with a raw body.
    pub fn answer_raw(&self, host: &str, body: &str) {
        self.answer_status(host, 200, body);
    }

    /// Answers `host` with an HTTP status and body (a provider's 403
    /// `InvalidSignature`, say).
    pub fn answer_status(&self, host: &str, status: u16, body: &str) {
        self.answers
            .lock()
            .unwrap()
            .insert(host.to_string(), (status, body.to_string()));
    }

    /// Every request target received so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// The requests that asked for `host` (a client also pre-resolves its router's
    /// domain when it starts).
    pub fn requests_for(&self, host: &str) -> Vec<String> {
        let param = format!("host={host}");
        self.requests()
            .into_iter()
            .filter(|r| {
                r.split(['?', '&'])
                    .any(|kv| kv == param || kv == format!("dn={host}"))
            })
            .collect()
    }
}

type Answers = Mutex<std::collections::HashMap<String, (u16, String)>>;

/// Reads one request from `conn`, records it, and answers for its `host=`.
fn answer_httpdns(mut conn: impl Read + Write, answers: &Answers, requests: &Mutex<Vec<String>>) {
    let mut buf = vec![0u8; 8192];
    let mut n = 0;
    while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf[n..]) {
            Ok(0) | Err(_) => return,
            Ok(k) => n += k,
        }
        if n == buf.len() {
            return;
        }
    }
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
    requests.lock().unwrap().push(target.clone());
    let host = target
        .split_once('?')
        .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("host=")))
        .unwrap_or("")
        .to_string();
    let (status, body) = answers
        .lock()
        .unwrap()
        .get(&host)
        .cloned()
        .unwrap_or_else(|| {
            (
                200,
                format!(r#"{{"host":"{host}","ips":[],"ipsv6":[],"ttl":60}}"#),
            )
        });
    let _ = write!(
        conn,
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.flush();
}
