//! Each request on a connection: the connection's phase, the body deadline, the
//! `Host` check, and `Connection: close` while the server shuts down.

use gateway_api::ErrorCode;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use axum::response::IntoResponse;
use futures::future::Either;
use hyper::body::{Body as _, Incoming};
use prometheus_client::metrics::counter::Counter;
use tower::ServiceExt;

use super::deadlines::TimedBody;
use super::table::{ConnTable, Phase, Slot};
use crate::http::error::ApiError;
use crate::http::routes::App;

/// The application as one connection sees it: records the peer address for
/// `ConnectInfo`, keeps the connection's phase, puts the body deadline on each
/// request, refuses an HTTP/1.1 request without `Host`, and marks answers
/// `Connection: close` once the server is shutting down.
#[derive(Clone)]
pub(super) struct ConnService {
    pub(super) app: App,
    pub(super) draining: Arc<AtomicBool>,
    pub(super) peer: SocketAddr,
    pub(super) slot: Arc<Slot>,
    pub(super) table: Arc<ConnTable>,
    pub(super) body_timeout: Duration,
    pub(super) body_timeouts: Counter,
    /// The stall limit, ms.
    pub(super) stall_ms: u64,
}

/// Keeps a request counted as in flight until its answer is produced (a request the
/// framework's router answers; a hot route's answer is ready when `call` returns).
struct InFlight {
    slot: Arc<Slot>,
    table: Arc<ConnTable>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        answered(&self.slot, &self.table, Instant::now());
    }
}

/// A request of `slot`'s is answered, at `at`: the connection is idle from then when
/// it was its last in flight.
fn answered(slot: &Slot, table: &ConnTable, at: Instant) {
    slot.served.fetch_add(1, Ordering::Relaxed);
    if slot.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
        table.set_phase_at(slot, Phase::Idle, at);
    }
}

/// 408 `request_timeout`: the body did not arrive in time.
fn body_timeout_answer(limit: Duration) -> Response<Body> {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        ErrorCode::RequestTimeout,
        format!(
            "the request body did not arrive within {} ms",
            limit.as_millis()
        ),
    )
    .into_response()
}

impl ConnService {
    pub(super) fn call(
        &self,
        req: Request<Incoming>,
    ) -> impl std::future::Future<Output = Result<Response<Body>, Infallible>> + Send + 'static
    {
        // The one reading of the clock at the request's start: its phase and, on a hot
        // route, its latency.
        let start = Instant::now();
        if self.slot.in_flight.fetch_add(1, Ordering::Relaxed) == 0 {
            let now = self.table.set_phase_at(&self.slot, Phase::Busy, start);
            // The connection's timer must look at a busy connection within the stall
            // limit; on a connection in use it already does.
            self.slot.watch_by(now + self.stall_ms);
        }
        // From now on its heads are timed by the connection (`Slot::head_begins`).
        if req.version() <= Version::HTTP_11 && !self.slot.http1.load(Ordering::Relaxed) {
            self.slot.http1.store(true, Ordering::Relaxed);
        }
        let http1 = req.version() <= Version::HTTP_11;
        let no_host = req.version() == Version::HTTP_11
            && req.uri().authority().is_none()
            && !req.headers().contains_key(header::HOST);
        // Answered here, without waiting: the future returned holds no handle of the
        // connection's (each would be a shared count to raise and drop per request).
        let ready = if no_host {
            let resp = ApiError::invalid("an HTTP/1.1 request needs a Host header").into_response();
            Some((resp, Instant::now()))
        } else {
            (req.method() == Method::GET)
                .then(|| self.app.hot_for(req.uri().path()))
                .flatten()
                .map(|hot| hot.call(start, self.peer, req.uri(), req.headers()))
        };
        if let Some((mut resp, end)) = ready {
            if http1 && self.draining.load(Ordering::Relaxed) {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            answered(&self.slot, &self.table, end);
            return Either::Left(std::future::ready(Ok(resp)));
        }
        Either::Right(self.routed(req, http1))
    }

    /// A request for the framework's router, with the body deadline on its body.
    fn routed(
        &self,
        req: Request<Incoming>,
        http1: bool,
    ) -> impl std::future::Future<Output = Result<Response<Body>, Infallible>> + Send + 'static
    {
        let guard = InFlight {
            slot: self.slot.clone(),
            table: self.table.clone(),
        };
        // Set by a body's deadline; only a request with a body has one.
        let mut expired: Option<Arc<AtomicBool>> = None;
        let mut req = if req.body().is_end_stream() {
            req.map(Body::new)
        } else {
            let limit = self.body_timeout;
            let flag = expired.insert(Arc::new(AtomicBool::new(false))).clone();
            req.map(|inner| {
                Body::new(TimedBody {
                    inner,
                    deadline: Box::pin(tokio::time::sleep(limit)),
                    limit,
                    expired: flag,
                    done: false,
                })
            })
        };
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let routed = self.app.router.clone().oneshot(req);
        let (slot, limit, timeouts, draining) = (
            self.slot.clone(),
            self.body_timeout,
            self.body_timeouts.clone(),
            self.draining.clone(),
        );
        async move {
            let mut resp = routed.await.unwrap_or_else(|e| match e {});
            if expired.is_some_and(|e| e.load(Ordering::Relaxed)) {
                // Whatever the handler answered to the failed read, the client hears
                // why, and the connection goes: the rest of its body is not wanted.
                resp = body_timeout_answer(limit);
                if http1 {
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                timeouts.inc();
                slot.close();
            } else if http1 && draining.load(Ordering::Relaxed) {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            drop(guard);
            Ok(resp)
        }
    }
}
