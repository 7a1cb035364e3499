//! JSON bodies for the errors the HTTP parser writes by itself.

use gateway_api::{ErrorBody, ErrorCode};
use tokio::io::{AsyncRead, AsyncWrite};

/// Gives the errors hyper writes by itself (a malformed or oversized request head: 400,
/// 431, ...) the contract's JSON body instead of an empty one.
///
/// hyper answers such a request with a complete head, `connection: close` and
/// `content-length: 0`, in one write, and then closes; the application never sees the
/// request. That exact write is recognised and replaced; everything else passes through.
pub(crate) struct ErrorBodies<I> {
    inner: I,
    /// Bytes of a replaced write still to send.
    pending: Vec<u8>,
    sent: usize,
}

impl<I> ErrorBodies<I> {
    pub(crate) fn new(inner: I) -> ErrorBodies<I> {
        ErrorBodies {
            inner,
            pending: Vec::new(),
            sent: 0,
        }
    }
}

/// The JSON answer replacing hyper's bodiless error head `head`, if it is one.
fn json_error_for(head: &[u8]) -> Option<Vec<u8>> {
    let rest = head
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| head.strip_prefix(b"HTTP/1.0 "))?;
    if !matches!(rest.first(), Some(b'4' | b'5')) || !head.ends_with(b"\r\n\r\n") {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let lower = text.to_ascii_lowercase();
    if !lower.contains("\r\ncontent-length: 0\r\n") || !lower.contains("\r\nconnection: close\r\n")
    {
        return None;
    }
    let status_line = text.lines().next()?;
    let status: u16 = status_line.get(9..12)?.parse().ok()?;
    let reason = status_line.get(13..).unwrap_or("").trim();
    let code = match status {
        431 => ErrorCode::HeaderTooLarge,
        408 => ErrorCode::Timeout,
        413 => ErrorCode::PayloadTooLarge,
        414 => ErrorCode::UriTooLong,
        505 => ErrorCode::HttpVersionNotSupported,
        501 => ErrorCode::NotImplemented,
        _ => ErrorCode::BadRequest,
    };
    let body = serde_json::to_string(&ErrorBody::new(
        code,
        format!("{reason}: the request could not be read"),
    ))
    .expect("an error body serializes");
    let mut out = Vec::with_capacity(head.len() + body.len() + 64);
    for line in text.trim_end().split("\r\n") {
        if line.to_ascii_lowercase().starts_with("content-length:") {
            out.extend_from_slice(b"content-type: application/json\r\n");
            out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
        } else {
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    Some(out)
}

impl<I: AsyncWrite + Unpin> ErrorBodies<I> {
    /// Sends what is left of a replaced write.
    fn poll_pending(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        while self.sent < self.pending.len() {
            match std::pin::Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.sent..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(n)) => self.sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ErrorBodies<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ErrorBodies<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::ready!(self.poll_pending(cx))?;
        if let Some(replacement) = json_error_for(buf) {
            self.pending = replacement;
            self.sent = 0;
            // The caller's bytes are taken; the replacement goes out now or on flush.
            let _ = self.poll_pending(cx)?;
            return std::task::Poll::Ready(Ok(buf.len()));
        }
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyper_error_heads_get_json_bodies_and_nothing_else_changes() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Sun, 22 Nov 2026 00:30:00 GMT\r\n\r\n";
        let out = String::from_utf8(json_error_for(head).unwrap()).unwrap();
        let (h, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(h.starts_with("HTTP/1.1 431 "), "{out}");
        assert!(h.contains("content-type: application/json"), "{out}");
        assert!(
            h.contains(&format!("content-length: {}", body.len())),
            "{out}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "header_too_large");
        // An application answer (a body follows, or the connection stays open) is left.
        assert!(json_error_for(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(json_error_for(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
        )
        .is_none());
        assert!(json_error_for(
            b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 12\r\n\r\n"
        )
        .is_none());
    }
}
