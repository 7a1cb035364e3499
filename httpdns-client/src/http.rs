//! The SDK's own HTTP requests, to routers and HTTPDNS providers: one request to one
//! address, whose Host header and TLS name the caller gives, so no resolver is ever
//! consulted.
//!
//! HTTP/1.1 on hyper's client connection; HTTP/2 as well with the `http2` feature, when
//! the server picks it by ALPN. Idle connections are kept per endpoint for reuse, and a
//! request on a kept connection that the server closed meanwhile is sent again on a new
//! one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::either::Either;
use tracing::debug;

use crate::error::{BoxError, Failure, FailureKind};
use crate::limits::MAX_BODY;

/// How long an idle connection is kept.
const IDLE_FOR: Duration = Duration::from_secs(90);
/// Idle connections kept per endpoint.
const IDLE_PER_ENDPOINT: usize = 4;

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Endpoint {
    /// The address dialled.
    pub(crate) addr: SocketAddr,
    /// The name in the Host header and, with `https`, the name the certificate must
    /// carry (a domain, or the address's IP).
    pub(crate) name: String,
    /// HTTPS.
    pub(crate) https: bool,
}

impl Endpoint {
    /// The URI authority: the name (an IPv6 literal in brackets), and the port unless
    /// it is the scheme's default.
    fn authority(&self) -> String {
        let host = if self.name.contains(':') {
            format!("[{}]", self.name)
        } else {
            self.name.clone()
        };
        let default = if self.https { 443 } else { 80 };
        if self.addr.port() == default {
            host
        } else {
            format!("{host}:{}", self.addr.port())
        }
    }
}

/// One request: `path` holds the query too.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) path: String,
    /// The `Accept` header.
    pub(crate) accept: Option<&'static str>,
    /// A POST's content type and body; a GET without.
    pub(crate) post: Option<(&'static str, Vec<u8>)>,
}

impl Request {
    /// A GET of `path` (with its query).
    pub(crate) fn get(path: impl Into<String>) -> Request {
        Request {
            path: path.into(),
            accept: None,
            post: None,
        }
    }

    /// A POST of `body` as JSON to `path`.
    pub(crate) fn post_json(path: impl Into<String>, body: Vec<u8>) -> Request {
        Request {
            path: path.into(),
            accept: None,
            post: Some(("application/json", body)),
        }
    }
}

/// An answer, read whole.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    /// `Retry-After` in seconds, when present; at most [`crate::limits::MAX_RETRY_AFTER`].
    pub(crate) retry_after: Option<Duration>,
    pub(crate) body: Bytes,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    #[cfg(feature = "http2")]
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            #[cfg(feature = "http2")]
            Sender::H2(s) => s.is_closed(),
        }
    }
}

/// The SDK's HTTP client: TLS with the SDK's trust, a connect timeout, and the idle
/// connections.
pub(crate) struct Http {
    tls: Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
    idle: Mutex<HashMap<Endpoint, Vec<(Sender, Instant)>>>,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl Http {
    /// A client; `tls` is used for HTTPS endpoints (its ALPN offer included).
    pub(crate) fn new(tls: rustls::ClientConfig, connect_timeout: Duration) -> Http {
        Http {
            tls: Arc::new(tls),
            connect_timeout,
            idle: Mutex::new(HashMap::new()),
        }
    }

    /// Closes every idle connection (the network changed: they lead nowhere now).
    pub(crate) fn close_idle(&self) {
        self.idle.lock().expect("idle connections").clear();
    }

    /// Sends `req` to `ep`; failures are named `target`.
    pub(crate) async fn send(
        &self,
        ep: &Endpoint,
        req: &Request,
        target: &str,
    ) -> Result<Response, Failure> {
        if let Some(sender) = self.take_idle(ep) {
            match exchange(sender, ep, req).await {
                Ok((resp, sender)) => {
                    self.keep(ep, sender);
                    return Ok(resp);
                }
                // Closed by the server while idle, before it read the request: the
                // request is sent again on a new connection.
                Err(e) if closed_before_answer(&*e) => {
                    debug!(%target, error = %e, "kept connection closed; dialling again");
                }
                Err(e) => return Err(Failure::caused(target, e)),
            }
        }
        let sender = self.dial(ep, target).await?;
        let (resp, sender) = exchange(sender, ep, req)
            .await
            .map_err(|e| Failure::caused(target, e))?;
        self.keep(ep, sender);
        Ok(resp)
    }

    fn take_idle(&self, ep: &Endpoint) -> Option<Sender> {
        let mut idle = self.idle.lock().expect("idle connections");
        let list = idle.get_mut(ep)?;
        let now = Instant::now();
        list.retain(|(s, since)| !s.is_closed() && now.duration_since(*since) < IDLE_FOR);
        let found = match list.last() {
            // An HTTP/2 connection carries any number of requests: it stays listed.
            #[cfg(feature = "http2")]
            Some((Sender::H2(s), _)) => Some(Sender::H2(s.clone())),
            _ => list.pop().map(|(s, _)| s),
        };
        if list.is_empty() {
            idle.remove(ep);
        }
        found
    }

    fn keep(&self, ep: &Endpoint, sender: Sender) {
        let mut idle = self.idle.lock().expect("idle connections");
        let list = idle.entry(ep.clone()).or_default();
        #[cfg(feature = "http2")]
        if matches!(sender, Sender::H2(_)) {
            // Listed once, and never taken out.
            if !list.iter().any(|(s, _)| matches!(s, Sender::H2(_))) {
                list.push((sender, Instant::now()));
            }
            return;
        }
        if list.len() < IDLE_PER_ENDPOINT {
            list.push((sender, Instant::now()));
        }
    }

    /// A new connection: TCP, TLS when asked, then the HTTP handshake; the whole
    /// within the connect timeout.
    async fn dial(&self, ep: &Endpoint, target: &str) -> Result<Sender, Failure> {
        match tokio::time::timeout(self.connect_timeout, self.dial_now(ep)).await {
            Ok(r) => r.map_err(|e| Failure::caused(target, e)),
            Err(_) => Err(Failure::new(target, FailureKind::TimedOut)),
        }
    }

    async fn dial_now(&self, ep: &Endpoint) -> Result<Sender, BoxError> {
        let tcp = TcpStream::connect(ep.addr).await?;
        tcp.set_nodelay(true)?;
        // One stream type for both, so hyper's connection is compiled once.
        if !ep.https {
            return Ok(Sender::H1(http1(TokioIo::new(Either::Left(tcp))).await?));
        }
        let name = rustls::pki_types::ServerName::try_from(ep.name.clone())?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await?;
        #[cfg(feature = "http2")]
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            let (sender, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                TokioIo::new(tls),
            )
            .await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    debug!(error = %e, "HTTP/2 connection ended");
                }
            });
            return Ok(Sender::H2(sender));
        }
        Ok(Sender::H1(http1(TokioIo::new(Either::Right(tls))).await?))
    }
}

/// True when a kept connection failed before any answer: the server closed it while
/// it was idle.
fn closed_before_answer(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<hyper::Error>()
        .is_some_and(|e| e.is_canceled() || e.is_closed() || e.is_incomplete_message())
}

/// A connection's stream: plain or TLS.
type Stream = Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

/// The HTTP/1.1 handshake on `io`; the connection is driven by a task of its own.
async fn http1(
    io: TokioIo<Stream>,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, hyper::Error> {
    let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "HTTP/1.1 connection ended");
        }
    });
    Ok(sender)
}

/// One request and its whole answer on `sender`, which is handed back for reuse.
async fn exchange(
    sender: Sender,
    ep: &Endpoint,
    req: &Request,
) -> Result<(Response, Sender), BoxError> {
    let authority = ep.authority();
    let method = if req.post.is_some() {
        http::Method::POST
    } else {
        http::Method::GET
    };
    let mut b = http::Request::builder().method(method).header(
        http::header::USER_AGENT,
        concat!("httpdns-client/", env!("CARGO_PKG_VERSION")),
    );
    if let Some(a) = req.accept {
        b = b.header(http::header::ACCEPT, a);
    }
    let body = match &req.post {
        Some((content_type, body)) => {
            b = b.header(http::header::CONTENT_TYPE, *content_type);
            Full::new(Bytes::from(body.clone()))
        }
        None => Full::new(Bytes::new()),
    };
    let (resp, sender) = match sender {
        Sender::H1(mut s) => {
            s.ready().await?;
            let r = b
                .uri(req.path.as_str())
                .header(http::header::HOST, authority)
                .body(body)
                .expect("a request from checked parts");
            (s.send_request(r).await?, Sender::H1(s))
        }
        #[cfg(feature = "http2")]
        Sender::H2(mut s) => {
            s.ready().await?;
            let scheme = if ep.https { "https" } else { "http" };
            let r = b
                .uri(format!("{scheme}://{authority}{}", req.path))
                .body(body)
                .expect("a request from checked parts");
            (s.send_request(r).await?, Sender::H2(s))
        }
    };
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::limits::retry_after);
    // Over the limit, the error is `LengthLimitError` (an unusable answer), and the
    // connection is dropped with the rest unread.
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await?
        .to_bytes();
    Ok((
        Response {
            status,
            retry_after,
            body,
        },
        sender,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn client() -> Http {
        let tls = crate::trust::platform_tls(&[]).unwrap();
        Http::new(tls, Duration::from_secs(10))
    }

    fn endpoint(addr: SocketAddr) -> Endpoint {
        Endpoint {
            addr,
            name: "provider.test".into(),
            https: false,
        }
    }

    /// Reads one request's head.
    async fn read_head(s: &mut TcpStream) -> Option<String> {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).await.ok()? == 0 {
                return None;
            }
            buf.push(byte[0]);
        }
        Some(String::from_utf8_lossy(&buf).into_owned())
    }

    #[tokio::test]
    async fn a_kept_connection_the_server_drops_is_replaced_by_a_new_one() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            // The first connection answers once, keeps the connection open, reads
            // the next request and closes without answering it.
            let (mut first, _) = listener.accept().await.unwrap();
            let head = read_head(&mut first).await.unwrap();
            first
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\none")
                .await
                .unwrap();
            assert!(
                read_head(&mut first).await.is_some(),
                "the request came again"
            );
            drop(first);
            let (mut second, _) = listener.accept().await.unwrap();
            read_head(&mut second).await.unwrap();
            second
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\ntwo")
                .await
                .unwrap();
            head
        });
        let http = client();
        let ep = endpoint(addr);
        let one = http
            .send(&ep, &Request::get("/d?host=a"), "p")
            .await
            .unwrap();
        assert_eq!(&one.body[..], b"one");
        let two = http
            .send(&ep, &Request::get("/d?host=b"), "p")
            .await
            .unwrap();
        assert_eq!(&two.body[..], b"two");
        let head = server.await.unwrap();
        assert!(head.starts_with("GET /d?host=a HTTP/1.1\r\n"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("host: provider.test:{}", addr.port())),
            "{head}"
        );
    }

    #[tokio::test]
    async fn an_answer_over_the_limit_is_unusable() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            read_head(&mut s).await.unwrap();
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                MAX_BODY + 1
            );
            s.write_all(head.as_bytes()).await.unwrap();
            let _ = s.write_all(&vec![b'x'; MAX_BODY + 1]).await;
        });
        let e = client()
            .send(&endpoint(addr), &Request::get("/"), "HTTPDNS p")
            .await
            .unwrap_err();
        assert!(matches!(e.kind, FailureKind::Malformed(_)), "{e}");
    }

    #[tokio::test]
    async fn nothing_listening_is_refused() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let e = client()
            .send(&endpoint(addr), &Request::get("/"), "router")
            .await
            .unwrap_err();
        assert_eq!(e.kind, FailureKind::Refused, "{e}");
    }
}
