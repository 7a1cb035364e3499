//! The deadlines of one server, from `[http]`, and the wrappers that enforce them on
//! a request's body and on a connection's bytes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use hyper::body::{Frame, Incoming};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::table::{since_ms, Phase, Slot};
use crate::config::HttpConfig;

/// The limits of one server, from `[http]`.
#[derive(Debug, Clone)]
pub struct EdgeLimits {
    pub(super) first_byte: Duration,
    pub(super) tls_handshake: Duration,
    pub(super) head: Duration,
    pub(super) idle: Duration,
    pub(super) body: Duration,
    pub(super) stall: Duration,
    pub(super) keepalive_window: Duration,
    pub(super) grace: Duration,
}

impl EdgeLimits {
    /// From the `[http]` table.
    pub fn new(h: &HttpConfig) -> EdgeLimits {
        EdgeLimits {
            first_byte: Duration::from_millis(h.first_byte_timeout_ms),
            tls_handshake: Duration::from_millis(h.tls_handshake_timeout_ms),
            head: Duration::from_millis(h.request_timeout_ms),
            idle: Duration::from_secs(h.idle_timeout_secs),
            body: Duration::from_millis(h.body_timeout_ms),
            // A handler may wait on etcd for its own deadline without a byte moving.
            stall: Duration::from_millis(h.stall_timeout_ms.max(h.request_timeout_ms)),
            keepalive_window: Duration::from_millis(h.shutdown_keepalive_ms),
            grace: Duration::from_secs(h.shutdown_grace_secs),
        }
    }
}

/// A request body that had not arrived whole by its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0} ms of its head")]
pub struct BodyTimeout(u64);

/// A request body with a deadline: past it, reading fails with [`BodyTimeout`] and
/// `expired` is set, so the answer becomes 408 whatever the handler made of the error.
pub(super) struct TimedBody {
    pub(super) inner: Incoming,
    pub(super) deadline: Pin<Box<tokio::time::Sleep>>,
    pub(super) limit: Duration,
    pub(super) expired: Arc<AtomicBool>,
    /// The whole body has arrived: the deadline no longer matters.
    pub(super) done: bool,
}

impl hyper::body::Body for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if !self.done && self.deadline.as_mut().poll(cx).is_ready() {
            self.expired.store(true, Ordering::Relaxed);
            let ms = self.limit.as_millis() as u64;
            return Poll::Ready(Some(Err(BodyTimeout(ms).into())));
        }
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if frame.is_none() {
            self.done = true;
        }
        Poll::Ready(frame.map(|f| f.map_err(axum::BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The connection's bytes, noting when the last one moved (for the stall limit) and
/// when an HTTP/1 head began (for the head limit).
pub(super) struct Progress<I> {
    pub(super) inner: I,
    pub(super) slot: Arc<Slot>,
    pub(super) epoch: Instant,
    /// The head limit, ms.
    pub(super) head_limit_ms: u64,
}

impl<I> Progress<I> {
    fn now_ms(&self) -> u64 {
        since_ms(self.epoch)
    }

    /// Notes a byte moved. Only a busy connection's bytes are watched (the stall
    /// limit), so only then is the clock read.
    fn moved(&self) {
        if self.slot.phase() == Phase::Busy {
            self.slot
                .progress_ms
                .store(self.now_ms(), Ordering::Relaxed);
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Progress<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.moved();
            if self.slot.awaits_head() {
                self.slot.head_begins(self.now_ms(), self.head_limit_ms);
            }
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Progress<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
