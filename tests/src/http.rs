//! Tiny std-only HTTP helpers: requests for probing servers, a server that receives
//! the agent's hook POSTs, and TCP connections from a chosen local address.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A minimal HTTP/1.1 request with `Authorization: Bearer token` when given; the
/// status and body, `None` when the connection fails.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// A minimal HTTP/1.1 GET; `None` when the connection fails.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    get_over(s, addr, path)
}

/// Client `n`'s address when a storm comes from `networks` client networks:
/// 127.(1 + n % networks).0.1, one /24 each, in turn (the whole 127/8 is local).
pub fn client_network(n: usize, networks: usize) -> std::net::IpAddr {
    std::net::Ipv4Addr::new(127, 1 + (n % networks) as u8, 0, 1).into()
}

/// [`get_json`] from the local address `from` (a client of another network, see
/// [`connect_from`]).
pub fn get_json_from(
    from: std::net::IpAddr,
    addr: SocketAddr,
    path: &str,
) -> Option<(u16, serde_json::Value)> {
    json(get_over(connect_from(from, addr, None).ok()?, addr, path)?)
}

/// A status and body with the body parsed as JSON (`Value::Null` when not JSON).
fn json((code, body): (u16, String)) -> Option<(u16, serde_json::Value)> {
    Some((
        code,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    ))
}

/// `GET path` over the connection `s` to `addr`, which it closes.
fn get_over(mut s: TcpStream, addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// A GET returning the status and the body parsed as JSON (`Value::Null` when not JSON).
pub fn get_json(addr: SocketAddr, path: &str) -> Option<(u16, serde_json::Value)> {
    json(http_get(addr, path)?)
}

/// Receives hook POSTs; records each body and answers 200.
pub struct HookServer {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<String>>>,
    status: Arc<std::sync::atomic::AtomicU16>,
}

impl HookServer {
    /// Starts listening on a free loopback port.
    pub fn start() -> HookServer {
        HookServer::start_on(0)
    }

    /// Starts listening on loopback `port` (0: any free one), e.g. a port a test
    /// reserved so the hook comes up only after the agent needs it.
    pub fn start_on(port: u16) -> HookServer {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind hook server");
        let addr = listener.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(std::sync::atomic::AtomicU16::new(200));
        let (sink, answer) = (bodies.clone(), status.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let (sink, answer) = (sink.clone(), answer.clone());
                std::thread::spawn(move || {
                    if let Some(body) = read_request_body(&mut conn) {
                        // Recorded and answered under one lock: the order of `bodies` is
                        // the order of the answers.
                        let mut sink = sink.lock().unwrap();
                        let code = answer.load(std::sync::atomic::Ordering::SeqCst);
                        sink.push(if code == 200 {
                            body
                        } else {
                            format!("{code} {body}")
                        });
                        let _ = conn.write_all(
                            format!("HTTP/1.1 {code} X\r\ncontent-length: 7\r\nconnection: close\r\n\r\nanswer!")
                                .as_bytes(),
                        );
                    }
                });
            }
        });
        HookServer {
            addr,
            bodies,
            status,
        }
    }

    /// Answers every request from now on with `code` (200 by default). Requests
    /// answered with another code are listed by [`HookServer::bodies`] as `"CODE body"`.
    pub fn answer_with(&self, code: u16) {
        self.status.store(code, std::sync::atomic::Ordering::SeqCst);
    }

    /// `http://127.0.0.1:PORT/hook`.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The bodies received so far (answered with 200; others are prefixed with their
    /// code).
    pub fn bodies(&self) -> Vec<String> {
        self.bodies.lock().unwrap().clone()
    }

    /// The bodies acknowledged with 200: the signals the gateway acted on.
    pub fn delivered(&self) -> Vec<String> {
        self.bodies()
            .into_iter()
            .filter(|b| b.starts_with('{'))
            .collect()
    }
}

fn read_request_body(conn: &mut TcpStream) -> Option<String> {
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= len {
                return Some(body[..len].to_string());
            }
        }
    }
}

/// A TCP connection to `to` from the local address `from` (any of 127.0.0.0/8 is
/// local: a client from another network without leaving the machine), with a
/// receive buffer of `recv_buffer` bytes when given (a client slow to read).
pub fn connect_from(
    from: std::net::IpAddr,
    to: SocketAddr,
    recv_buffer: Option<usize>,
) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if let Some(n) = recv_buffer {
        sock.set_recv_buffer_size(n)?;
    }
    sock.bind(&SocketAddr::new(from, 0).into())?;
    sock.connect_timeout(&to.into(), Duration::from_secs(5))?;
    Ok(sock.into())
}
