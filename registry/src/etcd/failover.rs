//! Endpoint failover: each call goes to the endpoint that last answered, then to the
//! others in turn, with a deadline, a quick probe of members not known to answer, and
//! passes repeated within [`EtcdOptions::retry_for`](super::EtcdOptions::retry_for).

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use etcd_client::Client;
use tracing::{info, warn};

use super::errors::map_err;
use super::{Channels, EtcdKv, RETRY_PAUSE};
use crate::kv::KvError;

impl EtcdKv {
    /// Runs `f` against the current endpoint, then each other one in turn while the
    /// failure is the endpoint's (unreachable, no leader, no answer by `deadline`).
    /// Returns the result and the endpoint that gave it.
    pub(super) async fn call<T, F, Fut>(
        &self,
        what: &'static str,
        deadline: Duration,
        f: F,
    ) -> Result<(T, usize), KvError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, KvError>>,
    {
        let inner = &self.inner;
        let channels = self.channels();
        let n = channels.clients.len();
        let first = *inner.current.borrow() % n;
        let until = tokio::time::Instant::now() + inner.opts.retry_for;
        let mut order: Vec<usize> = (0..n).map(|a| (first + a) % n).collect();
        loop {
            let mut answered = Vec::new();
            let mut silent = Vec::new();
            let mut last = None;
            for &i in &order {
                match self.call_one(&channels, i, first, what, deadline, &f).await {
                    Attempt::Done(r) => return r,
                    Attempt::Failed { error, answered: a } => {
                        if a {
                            answered.push(i)
                        } else {
                            silent.push(i)
                        }
                        last = Some(error);
                    }
                }
            }
            let last = last.unwrap_or_else(|| KvError::Unavailable("no endpoint".into()));
            if answered.is_empty() || tokio::time::Instant::now() + RETRY_PAUSE >= until {
                return Err(last);
            }
            tokio::time::sleep(RETRY_PAUSE).await;
            answered.extend(silent);
            order = answered;
        }
    }

    /// One attempt of [`EtcdKv::call`] on endpoint `i`.
    async fn call_one<T, F, Fut>(
        &self,
        channels: &Channels,
        i: usize,
        first: usize,
        what: &'static str,
        deadline: Duration,
        f: &F,
    ) -> Attempt<T>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, KvError>>,
    {
        let inner = &self.inner;
        let n = channels.clients.len();
        let endpoint = &inner.endpoints[i];
        let short = inner.opts.request_timeout;
        let failed = |error, answered| Attempt::Failed { error, answered };
        let client = match tokio::time::timeout(short.max(Duration::from_secs(2)), async {
            channels.clients[i]
                .get_or_try_init(|| async {
                    Client::connect([endpoint.as_str()], Some(channels.options.clone())).await
                })
                .await
                .cloned()
                .map_err(map_err)
        })
        .await
        {
            Ok(Ok(c)) => c,
            // A wrong password or certificate: the same everywhere.
            Ok(Err(e @ KvError::Rejected(_))) => return Attempt::Done(Err(e)),
            Ok(Err(e)) => {
                return failed(KvError::Unavailable(format!("{endpoint}: {e}")), false);
            }
            Err(_) => {
                return failed(
                    KvError::Unavailable(format!(
                        "{endpoint}: no connection within {} ms",
                        short.max(Duration::from_secs(2)).as_millis()
                    )),
                    false,
                );
            }
        };
        // An endpoint not known to answer is probed first, so a dead member costs
        // `short` rather than the whole deadline before the next is tried. With one
        // endpoint there is no next: the call itself gets the whole deadline.
        if n > 1
            && deadline > short
            && !inner.answering[i].load(Ordering::Relaxed)
            && probe(&client, short).await != Probe::Serving
        {
            warn!(%endpoint, call = what, "etcd endpoint does not answer; trying the next");
            return failed(
                KvError::Unavailable(format!(
                    "{endpoint}: no answer within {} ms",
                    short.as_millis()
                )),
                false,
            );
        }
        let result = tokio::time::timeout(deadline, f(client.clone())).await;
        let ok = !matches!(result, Err(_) | Ok(Err(KvError::Unavailable(_))));
        inner.answering[i].store(ok, Ordering::Relaxed);
        let err = match result {
            Ok(Ok(v)) => {
                if i != first {
                    inner.current.send_replace(i);
                    info!(from = %inner.endpoints[first], to = %endpoint, "etcd: switched endpoint");
                }
                return Attempt::Done(Ok((v, i)));
            }
            Ok(Err(e @ KvError::Unavailable(_))) => e,
            Ok(Err(e)) => return Attempt::Done(Err(e)),
            Err(_) => KvError::Unavailable(format!("no answer within {} ms", deadline.as_millis())),
        };
        if n > 1 {
            warn!(%endpoint, call = what, error = %err, "etcd endpoint failed; trying the next");
        }
        // Worth asking again (and first) only if the member is up and talking: "no
        // leader", or a call its leader could not serve. Asked only of a call that may
        // try again: a refusing or silent member is not waited for.
        let answered =
            !inner.opts.retry_for.is_zero() && probe(&client, short).await != Probe::Silent;
        failed(KvError::Unavailable(format!("{endpoint}: {err}")), answered)
    }
}

/// What a member's status call says about it.
#[derive(Debug, PartialEq, Eq)]
enum Probe {
    /// It answered its status.
    Serving,
    /// It is up and talking, but refused with an error etcd itself sent (such as "no
    /// leader").
    Talking,
    /// Refused, broken or silent: no answer within the time given, or an error that
    /// carries the transport's error as its source.
    Silent,
}

/// Asks the member behind `client` for its status, within `within`.
async fn probe(client: &Client, within: Duration) -> Probe {
    let mut c = client.clone();
    match tokio::time::timeout(within, async move { c.status().await }).await {
        Ok(Ok(_)) => Probe::Serving,
        Ok(Err(etcd_client::Error::GRpcStatus(s))) if std::error::Error::source(&s).is_none() => {
            Probe::Talking
        }
        _ => Probe::Silent,
    }
}

/// What one attempt of a call on one endpoint came to.
enum Attempt<T> {
    /// A result to return: success, or a refusal no other endpoint would change.
    Done(Result<(T, usize), KvError>),
    /// The endpoint's failure; `answered` when the member is up and talking.
    Failed { error: KvError, answered: bool },
}
