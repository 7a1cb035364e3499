//! Connecting: happy eyeballs over the candidates (the TLS handshake included for
//! [`Client::connect_tls`]), reconnects, migrations, and the retry loop with the
//! router's backoff.
//!
//! # When an app calls what
//!
//! * **`connect()`** at start. The first connection may use the last answer while its
//!   TTL lasts (an app that asked `gateways()` just before pays nothing twice).
//! * **`connect()` again after the connection is lost** (the gateway closed it, the
//!   network dropped): a reconnect asks a router afresh; the last answer is used only
//!   when no router can be reached.
//! * **`migrate(&conn)` after the gateway's migration signal** (the gateway is
//!   draining, restarting, or shedding `percent` % of its clients), and when a
//!   gateway closes the connection on purpose: asks a router for a fresh answer, never
//!   the last one, and never picks the gateway being left, whatever the source (the
//!   router, the cache file, the fallback domain). Spreading the reconnects over time
//!   is the gateway's job (it signals its clients over a window under `percent`); on
//!   failure back off with the router's parameters (`migrate_with_retry`).
//! * **`connect_tls()` / `migrate_tls()`** for gateways that speak TLS (WSS, TLS over
//!   TCP): the candidate's IP is dialled, the handshake names the gateway's `domain`
//!   (SNI) and its certificate is checked against that name, with the trust the
//!   router queries use (the platform's store plus `extra_roots`). A handshake that
//!   fails or stalls counts as a failed candidate and the next one is raced. With
//!   `Config::gateway_domain_suffixes`, a domain outside them is never dialled.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tracing::debug;

use crate::answer::BackoffExt;
use crate::client::{Client, Gateway, Gateways, Source, Want};
use crate::config::DomainPin;
use crate::error::Error;
use crate::error::{Failure, FailureKind};
use crate::outcomes::race_outcomes;
use crate::race::{staggered, Attempt};

/// A connected gateway: the stream (a [`TcpStream`] from [`Client::connect`], a TLS
/// stream from [`Client::connect_tls`]) and what came with the candidate.
#[derive(Debug)]
pub struct Connection<S = TcpStream> {
    /// The connected stream.
    pub stream: S,
    /// The candidate reached.
    pub gateway: Gateway,
    /// Where the candidate list came from.
    pub source: Source,
    /// Heartbeat interval to use on this connection.
    pub heartbeat: Duration,
}

/// A gateway connection over TLS.
pub type TlsConnection = Connection<TlsStream<TcpStream>>;

impl TlsConnection {
    /// The ALPN protocol the gateway chose, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.stream.get_ref().1.alpn_protocol()
    }
}

impl Client {
    /// Gets candidates and connects to the first that answers, happy-eyeballs style.
    /// The first connection may use the last answer while its TTL lasts; a later one
    /// (a reconnect after a lost connection) asks a router again, and falls back to
    /// the last answer only when no router can be reached. When every candidate fails
    /// the last answer is dropped, so the next call asks a router again.
    pub async fn connect(&self) -> Result<Connection, Error> {
        let g = self.candidates(self.reconnect_want(), None).await?;
        self.connect_to(g, dial_tcp).await
    }

    /// [`Client::connect`] over TLS: each candidate's IP is dialled with SNI set to
    /// its `domain` from the router's answer, and the certificate must be valid for
    /// that name under the platform's trust store plus `extra_roots`. ALPN offers
    /// `tls_alpn`. A candidate without a domain is refused
    /// ([`FailureKind::Unavailable`]), and so is one whose domain lies outside
    /// `gateway_domain_suffixes` when the app set them
    /// ([`FailureKind::DomainNotAllowed`]): both fail at once, before any packet, and
    /// the next candidate is tried. One whose handshake fails is a failed candidate
    /// ([`FailureKind::Tls`], the `rustls` error as its source) and one that stalls
    /// past `connect_delay` has the next one raced beside it.
    pub async fn connect_tls(&self) -> Result<TlsConnection, Error> {
        let g = self.candidates(self.reconnect_want(), None).await?;
        self.connect_to(g, self.tls_dial()).await
    }

    fn reconnect_want(&self) -> Want {
        if self.inner.connected.load(Ordering::Relaxed) {
            Want::Fresh
        } else {
            Want::Cached
        }
    }

    fn tls_dial(&self) -> impl Fn(&Gateway, Duration) -> Attempt<TlsStream<TcpStream>, Failure> {
        let connector = TlsConnector::from(self.inner.gateway_tls.clone());
        let pins = self.inner.domain_pins.clone();
        move |gw, timeout| dial_tls(&connector, &pins, gw, timeout)
    }

    /// Moves off the gateway of `from`: after its migration signal, or when it closed
    /// the connection. Asks a router for a fresh answer (never the last one) and
    /// connects to the best candidate other than `from`'s gateway; that gateway is
    /// never picked, from the router's answer, the cache file or the fallback domain
    /// alike ([`Error::NoOtherGateway`] when nothing else is offered).
    pub async fn migrate<S>(&self, from: &Connection<S>) -> Result<Connection, Error> {
        self.migrate_from(&from.gateway).await
    }

    /// [`Client::migrate`] by the gateway being left (the connection may be gone).
    pub async fn migrate_from(&self, left: &Gateway) -> Result<Connection, Error> {
        let g = self.candidates(Want::FreshOnly, Some(left)).await?;
        self.connect_to(g, dial_tcp).await
    }

    /// [`Client::migrate`] to a TLS connection (see [`Client::connect_tls`]).
    pub async fn migrate_tls<S>(&self, from: &Connection<S>) -> Result<TlsConnection, Error> {
        self.migrate_tls_from(&from.gateway).await
    }

    /// [`Client::migrate_tls`] by the gateway being left.
    pub async fn migrate_tls_from(&self, left: &Gateway) -> Result<TlsConnection, Error> {
        let g = self.candidates(Want::FreshOnly, Some(left)).await?;
        self.connect_to(g, self.tls_dial()).await
    }

    async fn connect_to<S, D>(&self, g: Arc<Gateways>, dial: D) -> Result<Connection<S>, Error>
    where
        S: Send + 'static,
        D: Fn(&Gateway, Duration) -> Attempt<S, Failure>,
    {
        let c = &self.inner.config;
        let attempts: Vec<Attempt<S, Failure>> = g
            .gateways
            .iter()
            .map(|gw| dial(gw, c.connect_timeout))
            .collect();
        let recorded = self.records_outcomes(&g.source);
        let raced = staggered(attempts, c.connect_delay, None).await;
        if recorded {
            self.inner
                .outcomes
                .record(race_outcomes(&g.gateways, &raced, Instant::now()));
        }
        match raced {
            Ok(won) => {
                self.inner.connected.store(true, Ordering::Relaxed);
                Ok(Connection {
                    stream: won.value,
                    gateway: g.gateways[won.index].clone(),
                    source: g.source,
                    heartbeat: g.heartbeat,
                })
            }
            Err(lost) => {
                let mut current = self.inner.current.lock().expect("current");
                if current.as_ref().is_some_and(|cur| {
                    cur.gateways
                        .iter()
                        .map(Gateway::addr)
                        .eq(g.gateways.iter().map(Gateway::addr))
                }) {
                    *current = None;
                }
                let attempts = lost
                    .failures
                    .into_iter()
                    .map(|(_, f, _)| f)
                    .collect::<Vec<_>>();
                Err(Error::Connect {
                    attempts: attempts.into(),
                })
            }
        }
    }

    /// [`Client::connect`] in rounds, sleeping between them with the router's backoff
    /// (plus jitter), up to `rounds` rounds.
    pub async fn connect_with_retry(&self, rounds: u32) -> Result<Connection, Error> {
        self.with_retry(rounds, || self.connect()).await
    }

    /// [`Client::connect_tls`] in rounds, with the router's backoff between them.
    pub async fn connect_tls_with_retry(&self, rounds: u32) -> Result<TlsConnection, Error> {
        self.with_retry(rounds, || self.connect_tls()).await
    }

    /// [`Client::migrate`] in rounds, with the router's backoff between them.
    pub async fn migrate_with_retry<S>(
        &self,
        from: &Connection<S>,
        rounds: u32,
    ) -> Result<Connection, Error> {
        self.migrate_from_with_retry(&from.gateway, rounds).await
    }

    /// [`Client::migrate_with_retry`] by the gateway being left.
    pub async fn migrate_from_with_retry(
        &self,
        left: &Gateway,
        rounds: u32,
    ) -> Result<Connection, Error> {
        self.with_retry(rounds, || self.migrate_from(left)).await
    }

    /// [`Client::migrate_tls`] in rounds, with the router's backoff between them.
    pub async fn migrate_tls_with_retry<S>(
        &self,
        from: &Connection<S>,
        rounds: u32,
    ) -> Result<TlsConnection, Error> {
        self.migrate_tls_from_with_retry(&from.gateway, rounds)
            .await
    }

    /// [`Client::migrate_tls_with_retry`] by the gateway being left.
    pub async fn migrate_tls_from_with_retry(
        &self,
        left: &Gateway,
        rounds: u32,
    ) -> Result<TlsConnection, Error> {
        self.with_retry(rounds, || self.migrate_tls_from(left))
            .await
    }

    async fn with_retry<'a, T, F, Fut>(&'a self, rounds: u32, mut round_fn: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>> + 'a,
    {
        let mut delays = Vec::new();
        for round in 0..rounds.max(1) {
            match round_fn().await {
                Ok(c) => return Ok(c),
                Err(e) if !e.is_retryable() || round + 1 == rounds.max(1) => {
                    return Err(Error::GaveUp {
                        attempts: round + 1,
                        delays,
                        last: Box::new(e),
                    })
                }
                Err(e) => {
                    let params = *self.inner.backoff.lock().expect("backoff");
                    let delay = retry_delay(e.retry_after(), &params, round, rand::random::<f64>());
                    debug!(round, delay_ms = delay.as_millis() as u64, error = %e, "no gateway reachable; backing off");
                    delays.push(delay);
                    tokio::time::sleep(delay).await;
                }
            }
        }
        unreachable!("the loop returns on its last round")
    }
}

/// The sleep before the round after `round`: a router's `Retry-After` (at most
/// [`crate::limits::MAX_RETRY_AFTER`], spread by up to a fifth with `unit` in [0, 1),
/// so refused clients do not come back in one wave), else the router's backoff
/// ([clamped](crate::answer::BackoffParams::clamped)). At most 1 h 12 min.
fn retry_delay(
    retry_after: Option<Duration>,
    params: &crate::answer::BackoffParams,
    round: u32,
    unit: f64,
) -> Duration {
    let unit = if unit.is_nan() {
        0.0
    } else {
        unit.clamp(0.0, 1.0)
    };
    match retry_after {
        Some(after) => after
            .min(crate::limits::MAX_RETRY_AFTER)
            .mul_f64(1.0 + 0.2 * unit),
        None => params.delay(round, unit),
    }
}

/// Dials one candidate over TCP.
fn dial_tcp(gw: &Gateway, timeout: Duration) -> Attempt<TcpStream, Failure> {
    let addr = gw.addr();
    let target = target(gw);
    Box::pin(async move { tcp(addr, timeout, &target).await })
}

/// Dials one candidate over TLS: its IP, its domain as SNI and certificate name; the
/// handshake counts within `timeout`. With `pins`, a domain outside them fails at
/// once, before any packet is sent.
fn dial_tls(
    connector: &TlsConnector,
    pins: &[DomainPin],
    gw: &Gateway,
    timeout: Duration,
) -> Attempt<TlsStream<TcpStream>, Failure> {
    let connector = connector.clone();
    let addr = gw.addr();
    let target = target(gw);
    let name = match &gw.domain {
        None => Err(Failure::new(
            target.clone(),
            FailureKind::Unavailable(
                "no domain in the router's answer: TLS needs the name to send (SNI) and to check the certificate against".into(),
            ),
        )),
        Some(d) if !pins.is_empty() && !pins.iter().any(|p| p.allows(d)) => Err(Failure::new(
            target.clone(),
            FailureKind::DomainNotAllowed(format!(
                "{d:?} is outside the gateway domain suffixes the app allows"
            )),
        )),
        Some(d) => ServerName::try_from(d.clone()).map_err(|e| {
            Failure::new(
                target.clone(),
                FailureKind::Unavailable(format!("domain {d:?} is not a TLS server name: {e}")),
            )
        }),
    };
    Box::pin(async move {
        let name = name?;
        let start = Instant::now();
        let tcp = tcp(addr, timeout, &target).await?;
        let left = timeout.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, connector.connect(name, tcp)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(handshake_failure(&target, e)),
            Err(_) => Err(Failure::new(
                target,
                FailureKind::Tls("handshake timed out".into()),
            )),
        }
    })
}

/// How failures name a candidate.
fn target(gw: &Gateway) -> String {
    format!("gateway {} {}", gw.id, gw.addr())
}

async fn tcp(addr: SocketAddr, timeout: Duration, target: &str) -> Result<TcpStream, Failure> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => {
            let kind = match e.kind() {
                std::io::ErrorKind::ConnectionRefused => FailureKind::Refused,
                std::io::ErrorKind::TimedOut => FailureKind::TimedOut,
                _ => FailureKind::Other(e.to_string()),
            };
            Err(Failure {
                target: target.to_string(),
                kind,
                source: Some(Box::new(e)),
            })
        }
        Err(_) => Err(Failure::new(target, FailureKind::TimedOut)),
    }
}

/// A failed handshake: the `rustls` error, when there is one, becomes the kind and the
/// source (an `io::Error`'s own `source()` would skip it).
fn handshake_failure(target: &str, e: std::io::Error) -> Failure {
    if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
        let inner = e.into_inner().expect("checked above");
        return Failure {
            target: target.to_string(),
            kind: FailureKind::Tls(inner.to_string()),
            source: Some(inner),
        };
    }
    let kind = match e.kind() {
        // The peer closed or reset during the handshake: it does not speak TLS here.
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => {
            FailureKind::Tls(format!("handshake cut: {e}"))
        }
        _ => FailureKind::Other(e.to_string()),
    };
    Failure {
        target: target.to_string(),
        kind,
        source: Some(Box::new(e)),
    }
}

/// Happy eyeballs over `addrs` in order: the next attempt starts after `delay` or as
/// soon as the previous one fails; the first success wins and the rest are dropped.
pub async fn race(
    addrs: &[SocketAddr],
    delay: Duration,
    timeout: Duration,
) -> Result<(TcpStream, usize), Vec<(SocketAddr, String)>> {
    let attempts: Vec<Attempt<TcpStream, Failure>> = addrs
        .iter()
        .map(|&addr| -> Attempt<TcpStream, Failure> {
            Box::pin(async move { tcp(addr, timeout, &addr.to_string()).await })
        })
        .collect();
    let won = staggered(attempts, delay, None).await.map_err(|lost| {
        lost.failures
            .into_iter()
            .map(|(i, f, _)| {
                debug!(addr = %addrs[i], error = %f, "candidate failed");
                (addrs[i], f.kind.to_string())
            })
            .collect::<Vec<_>>()
    })?;
    Ok((won.value, won.index))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::tests::{any_backoff, any_f64};
    use proptest::prelude::*;

    #[test]
    fn a_huge_retry_after_is_waited_an_hour_at_most() {
        let p = crate::answer::BackoffParams::default();
        let max = Some(Duration::MAX);
        assert_eq!(retry_delay(max, &p, 0, 0.0), Duration::from_secs(3600));
        assert_eq!(retry_delay(max, &p, 0, 1.0), Duration::from_secs(4320));
        assert_eq!(retry_delay(max, &p, 0, f64::NAN), Duration::from_secs(3600));
        assert_eq!(
            retry_delay(Some(Duration::from_secs(5)), &p, 9, 0.5),
            Duration::from_secs(5).mul_f64(1.1)
        );
        assert_eq!(retry_delay(None, &p, 0, 0.5), Duration::from_secs(1));
    }

    proptest! {
        #[test]
        fn any_retry_after_or_backoff_gives_a_bounded_sleep(
            secs in any::<u64>(),
            nanos in 0u32..1_000_000_000,
            refused in any::<bool>(),
            p in any_backoff(),
            round in any::<u32>(),
            unit in any_f64(),
        ) {
            let after = refused.then(|| Duration::new(secs, nanos));
            let d = retry_delay(after, &p, round, unit);
            let bound = if refused {
                crate::limits::MAX_RETRY_AFTER.mul_f64(1.2)
            } else {
                crate::limits::MAX_BACKOFF * 2
            };
            prop_assert!(d <= bound, "{d:?}");
        }
    }

    #[tokio::test]
    async fn happy_eyeballs_skips_dead_candidates() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let addrs = [dead, live.local_addr().unwrap()];
        let (_s, i) = race(&addrs, Duration::from_millis(250), Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(i, 1);
        let failures = race(
            &[dead, dead],
            Duration::from_millis(10),
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert_eq!(failures.len(), 2);
    }
}
