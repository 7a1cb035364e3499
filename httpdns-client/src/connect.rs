//! Connecting: happy eyeballs over the candidates, reconnects, migrations, and the
//! retry loop with the router's backoff.
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

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tracing::debug;

use crate::client::{Client, Connection, Gateway, Gateways, Want};
use crate::Error;

impl Client {
    /// Gets candidates and connects to the first that answers, happy-eyeballs style.
    /// The first connection may use the last answer while its TTL lasts; a later one
    /// (a reconnect after a lost connection) asks a router again, and falls back to
    /// the last answer only when no router can be reached. When every candidate fails
    /// the last answer is dropped, so the next call asks a router again.
    pub async fn connect(&self) -> Result<Connection, Error> {
        let want = if self.inner.connected.load(Ordering::Relaxed) {
            Want::Fresh
        } else {
            Want::Cached
        };
        let g = self.candidates(want, None).await?;
        self.connect_to(g).await
    }

    /// Moves off the gateway of `from`: after its migration signal, or when it closed
    /// the connection. Asks a router for a fresh answer (never the last one) and
    /// connects to the best candidate other than `from`'s gateway; that gateway is
    /// never picked, from the router's answer, the cache file or the fallback domain
    /// alike ([`Error::NoOtherGateway`] when nothing else is offered).
    pub async fn migrate(&self, from: &Connection) -> Result<Connection, Error> {
        self.migrate_from(&from.gateway).await
    }

    /// [`Client::migrate`] by the gateway being left (the connection may be gone).
    pub async fn migrate_from(&self, left: &Gateway) -> Result<Connection, Error> {
        let g = self.candidates(Want::FreshOnly, Some(left)).await?;
        self.connect_to(g).await
    }

    async fn connect_to(&self, g: Arc<Gateways>) -> Result<Connection, Error> {
        let addrs: Vec<SocketAddr> = g.gateways.iter().map(Gateway::addr).collect();
        let c = &self.inner.config;
        match race(&addrs, c.connect_delay, c.connect_timeout).await {
            Ok((stream, i)) => {
                self.inner.connected.store(true, Ordering::Relaxed);
                Ok(Connection {
                    stream,
                    gateway: g.gateways[i].clone(),
                    source: g.source,
                    heartbeat: g.heartbeat,
                })
            }
            Err(attempts) => {
                let mut current = self.inner.current.lock().expect("current");
                if current.as_ref().is_some_and(|cur| {
                    cur.gateways
                        .iter()
                        .map(Gateway::addr)
                        .eq(addrs.iter().copied())
                }) {
                    *current = None;
                }
                Err(Error::Connect { attempts })
            }
        }
    }

    /// [`Client::connect`] in rounds, sleeping between them with the router's backoff
    /// (plus jitter), up to `rounds` rounds.
    pub async fn connect_with_retry(&self, rounds: u32) -> Result<Connection, Error> {
        self.with_retry(rounds, || self.connect()).await
    }

    /// [`Client::migrate`] in rounds, with the router's backoff between them.
    pub async fn migrate_with_retry(
        &self,
        from: &Connection,
        rounds: u32,
    ) -> Result<Connection, Error> {
        let left = from.gateway.clone();
        self.with_retry(rounds, || self.migrate_from(&left)).await
    }

    async fn with_retry<'a, F, Fut>(
        &'a self,
        rounds: u32,
        mut round_fn: F,
    ) -> Result<Connection, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Connection, Error>> + 'a,
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
                    // A router's Retry-After (spread by up to a fifth, so refused
                    // clients do not come back in one wave), else the router's backoff.
                    let delay = match e.retry_after() {
                        Some(after) => after.mul_f64(1.0 + 0.2 * rand::random::<f64>()),
                        None => params.delay(round, rand::random::<f64>()),
                    };
                    debug!(round, delay_ms = delay.as_millis() as u64, error = %e, "no gateway reachable; backing off");
                    delays.push(delay);
                    tokio::time::sleep(delay).await;
                }
            }
        }
        unreachable!("the loop returns on its last round")
    }
}

/// Happy eyeballs over `addrs` in order: the next attempt starts after `delay` or as
/// soon as the previous one fails; the first success wins and the rest are dropped.
pub async fn race(
    addrs: &[SocketAddr],
    delay: Duration,
    timeout: Duration,
) -> Result<(TcpStream, usize), Vec<(SocketAddr, String)>> {
    let mut set: JoinSet<(usize, std::io::Result<TcpStream>)> = JoinSet::new();
    let mut failures = Vec::new();
    let mut next = 0;
    let spawn = |set: &mut JoinSet<_>, i: usize| {
        let addr = addrs[i];
        set.spawn(async move {
            let r = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
                Ok(r) => r,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                )),
            };
            (i, r)
        });
    };
    if addrs.is_empty() {
        return Err(failures);
    }
    spawn(&mut set, 0);
    next += 1;
    loop {
        let stagger = tokio::time::sleep(delay);
        tokio::select! {
            joined = set.join_next() => match joined {
                Some(Ok((i, Ok(stream)))) => return Ok((stream, i)),
                Some(Ok((i, Err(e)))) => {
                    debug!(addr = %addrs[i], error = %e, "candidate failed");
                    failures.push((addrs[i], e.to_string()));
                    if next < addrs.len() {
                        spawn(&mut set, next);
                        next += 1;
                    } else if set.is_empty() {
                        return Err(failures);
                    }
                }
                Some(Err(join)) => failures.push((addrs[0], join.to_string())),
                None => return Err(failures),
            },
            _ = stagger, if next < addrs.len() => {
                spawn(&mut set, next);
                next += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
