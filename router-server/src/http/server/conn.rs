//! Serving one connection: the first byte, TLS, then HTTP under one timer for the
//! head, idle and stall deadlines, until it closes, is shed or the server shuts down.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::deadlines::Progress;
use super::proxy;
use super::service::ConnService;
use super::signal::{CLOSE, NUDGE};
use super::table::{Phase, Slot, NO_HEAD};
use super::Ctx;
use crate::config::HttpConfig;
use crate::http::raw_errors::ErrorBodies;

/// How long a connection asked to close may linger with nothing in flight.
const CLOSE_LINGER: Duration = Duration::from_millis(500);

/// The HTTP/1 and HTTP/2 protocol settings: head size for HTTP/1; streams,
/// header-list size, reset-flood and keep-alive limits for HTTP/2.
///
/// HTTP/1 heads are timed by the connection's own timer, not hyper's: hyper arms a
/// timer for every head, which cost `GET /gateways` 7 % of its CPU per request.
pub(super) fn protocol_builder(h: &HttpConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .max_buf_size(h.max_header_bytes.max(8192))
        .header_read_timeout(None);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(h.h2_max_concurrent_streams)
        .max_header_list_size(h.max_header_bytes as u32)
        .max_pending_accept_reset_streams(Some(50))
        .max_local_error_reset_streams(Some(256))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    b
}

/// One connection: first byte, TLS, then HTTP until it closes, idles out, is shed or
/// the server shuts down.
pub(super) async fn connection(stream: TcpStream, peer: SocketAddr, slot: &Arc<Slot>, ctx: &Ctx) {
    let mut probe = [0u8; 1];
    tokio::select! {
        r = tokio::time::timeout(ctx.limits.first_byte, stream.peek(&mut probe)) => match r {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return,
            Err(_) => return ctx.count_close("first_byte_timeout"),
        },
        _ = slot.signal.wait(CLOSE) => return,
        _ = ctx.shutdown.cancelled() => return,
    }
    ctx.table.set_phase(slot, Phase::Idle);
    if ctx.proxy.is_none() {
        return tls_then_http(stream, peer, slot, ctx).await;
    }
    // The rest of the header within the first-byte deadline; what follows it stays
    // in the reader's buffer for TLS or HTTP.
    let mut stream = tokio::io::BufReader::new(stream);
    let header = proxy::read_header(&mut stream);
    let peer = match within(header, ctx.limits.first_byte, slot, &ctx.shutdown).await {
        None => return,
        Some(Ok(Ok(client))) => client.unwrap_or(peer),
        Some(Ok(Err(e))) => {
            tracing::debug!(%peer, error = %e, "PROXY header refused");
            return ctx.count_close("proxy_header_invalid");
        }
        Some(Err(_)) => return ctx.count_close("proxy_header_timeout"),
    };
    tls_then_http(stream, peer, slot, ctx).await
}

/// `step` within `limit`; `None` when the connection is closed or `stop` fires first.
async fn within<T>(
    step: impl std::future::Future<Output = T>,
    limit: Duration,
    slot: &Slot,
    stop: &tokio_util::sync::CancellationToken,
) -> Option<Result<T, tokio::time::error::Elapsed>> {
    tokio::select! {
        r = tokio::time::timeout(limit, step) => Some(r),
        _ = slot.signal.wait(CLOSE) => None,
        _ = stop.cancelled() => None,
    }
}

/// TLS when the listener has it, then HTTP.
async fn tls_then_http<S>(stream: S, peer: SocketAddr, slot: &Arc<Slot>, ctx: &Ctx)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match &ctx.tls {
        None => http(stream, peer, slot, ctx).await,
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.load_full());
            let handshake = acceptor.accept(stream);
            let stream = match within(handshake, ctx.limits.tls_handshake, slot, &ctx.cut).await {
                None => return,
                Some(Ok(Ok(s))) => s,
                Some(Ok(Err(e))) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Some(Err(_)) => return ctx.count_close("tls_handshake_timeout"),
            };
            http(stream, peer, slot, ctx).await
        }
    }
}

async fn http<I>(io: I, peer: SocketAddr, slot: &Arc<Slot>, ctx: &Ctx)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = ConnService {
        app: ctx.app.clone(),
        draining: ctx.draining.clone(),
        peer,
        slot: slot.clone(),
        table: ctx.table.clone(),
        body_timeout: ctx.limits.body,
        body_timeouts: ctx.body_timeouts.clone(),
        stall_ms: ctx.limits.stall.as_millis() as u64,
    };
    let io = Progress {
        inner: io,
        slot: slot.clone(),
        epoch: ctx.table.epoch,
        head_limit_ms: ctx.limits.head.as_millis() as u64,
    };
    let conn = ctx.builder.serve_connection(
        TokioIo::new(ErrorBodies::new(io)),
        hyper::service::service_fn(move |r| svc.call(r)),
    );
    tokio::pin!(conn);
    let opened = Instant::now();
    let epoch = ctx.table.epoch;
    let at_ms = |at: Instant| at.saturating_duration_since(epoch).as_millis() as u64;
    // One timer per connection, set to its next deadline (not a periodic tick: a
    // hundred thousand idle connections must not wake the runtime every second).
    let timer = tokio::time::sleep_until(opened + ctx.limits.head);
    tokio::pin!(timer);
    slot.timer_ms
        .store(at_ms(opened + ctx.limits.head), Ordering::Relaxed);
    // Every rearming goes through here, so the slot knows when the timer fires.
    let arm = |timer: std::pin::Pin<&mut tokio::time::Sleep>, at: Instant| {
        slot.timer_ms.store(at_ms(at), Ordering::Relaxed);
        timer.reset(at);
    };
    // Set once the connection is asked to close: `graceful_shutdown` lets a request in
    // flight finish (HTTP/2 sends GOAWAY); a connection with nothing in flight that
    // still has not closed a moment later (a peer that ignores GOAWAY) is dropped.
    let mut closing: Option<Instant> = None;
    // Requests answered when the timer last fired.
    let mut served_seen = 0;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            raised = slot.signal.wait(CLOSE | NUDGE), if closing.is_none() => {
                if raised & CLOSE == 0 {
                    // A request or an HTTP/1 head began: the head limit is the nearer
                    // deadline (the stall limit is never below it).
                    arm(timer.as_mut(), Instant::now() + ctx.limits.head);
                    continue;
                }
                if *slot.shed_reason.lock().expect("shed reason lock") == Some("shed_overdue") {
                    // Its request is the problem: nothing in it is worth finishing.
                    return;
                }
                conn.as_mut().graceful_shutdown();
                closing = Some(Instant::now());
                arm(timer.as_mut(), Instant::now() + CLOSE_LINGER);
            }
            // The cut comes at the end of the shutdown's grace period, after every
            // connection was asked to close: one still open is closing by then.
            _ = ctx.cut.cancelled(), if closing.is_some() => return,
            _ = timer.as_mut() => {
                let now = Instant::now();
                if closing.is_some() {
                    if slot.in_flight.load(Ordering::Relaxed) == 0 {
                        return;
                    }
                    arm(timer.as_mut(), now + CLOSE_LINGER);
                    continue;
                }
                // Before its first request a connection has the head deadline (this
                // also bounds HTTP/2, whose heads hyper does not time); after, the idle one.
                let (limit, since, reason) = if slot.served.load(Ordering::Relaxed) == 0 {
                    (ctx.limits.head, opened, "head_timeout")
                } else {
                    let since = ctx.table.epoch
                        + Duration::from_millis(slot.since_ms.load(Ordering::Relaxed));
                    (ctx.limits.idle, since, "idle_timeout")
                };
                if slot.phase() == Phase::Busy {
                    // Busy: closed once no byte has moved for the stall limit. Its
                    // request is stuck, so the connection is dropped, not drained.
                    let last = slot
                        .progress_ms
                        .load(Ordering::Relaxed)
                        .max(slot.since_ms.load(Ordering::Relaxed));
                    let stalled_at =
                        ctx.table.epoch + Duration::from_millis(last) + ctx.limits.stall;
                    if now >= stalled_at {
                        ctx.count_close("stalled");
                        return;
                    }
                    arm(timer.as_mut(), stalled_at);
                } else if slot.phase() != Phase::Idle {
                    // Silent cannot last past the first byte; look again later.
                    arm(timer.as_mut(), now + ctx.limits.idle);
                } else if let Some(head_end) = head_deadline(slot, epoch, ctx.limits.head) {
                    // An HTTP/1 head has begun: whole within the head limit, or the
                    // connection is dropped (a request never read is not worth a drain).
                    if now >= head_end {
                        ctx.count_close("head_timeout");
                        return;
                    }
                    arm(timer.as_mut(), head_end);
                } else if now >= since + limit {
                    ctx.count_close(reason);
                    conn.as_mut().graceful_shutdown();
                    closing = Some(now);
                    arm(timer.as_mut(), now + CLOSE_LINGER);
                } else {
                    // Used since the timer last fired: the next head may begin at any
                    // moment, and the timer then fires within the head limit of it
                    // without a nudge (which would wake the task, a scheduling round
                    // per request). An unused connection sleeps to its idle deadline.
                    let served = slot.served.load(Ordering::Relaxed);
                    let at = if served != served_seen {
                        served_seen = served;
                        (now + ctx.limits.head).min(since + limit)
                    } else {
                        since + limit
                    };
                    arm(timer.as_mut(), at);
                }
            }
        }
    }
}

/// When the HTTP/1 head that has begun on `slot` must be whole, if one has.
fn head_deadline(slot: &Slot, epoch: Instant, limit: Duration) -> Option<Instant> {
    let head = slot.head_ms.load(Ordering::Relaxed);
    (head != NO_HEAD).then(|| epoch + Duration::from_millis(head) + limit)
}
