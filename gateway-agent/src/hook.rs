//! Tells the gateway to move clients: an HTTP POST (`--hook URL`) or a library callback.
//!
//! One delivery worker per agent holds the latest signal and delivers it until the
//! gateway acknowledges it or a newer command replaces it: it retries with a capped
//! backoff for as long as it takes (a gateway restarting, a hook endpoint down), and a
//! replaced signal is dropped, never delivered after its successor. Each step is
//! reported as a [`HookStatus`], which the agent writes into its record and into
//! `P/applied/{id}`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use registry::backoff::Backoff;
use registry::{now_ms, HookState, HookStatus};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The signal a gateway receives: move `percent` % of current clients elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrateSignal {
    /// Always `"migrate"`; a drain is a migrate of 100 %.
    pub action: &'static str,
    /// 1-100.
    pub percent: u8,
    /// The command id that caused it.
    pub command: String,
}

/// Why a migrate signal was not delivered; the agent retries, and writes the message
/// (clipped) into the node's record and `P/applied/{id}`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HookError {
    /// The POST got no answer within its timeout.
    #[error("POST {url}: timed out after {secs} s")]
    TimedOut {
        /// The hook's URL.
        url: String,
        /// The timeout, in seconds.
        secs: u64,
    },
    /// The POST failed before an answer; `cause` names why (see [`cause`]).
    #[error("POST {url}: {cause}")]
    Post {
        /// The hook's URL.
        url: String,
        /// Connection refused, a TLS failure, a name that does not resolve...
        cause: String,
    },
    /// The gateway answered with another status than 2xx, and perhaps a body (its
    /// first 200 characters, trimmed).
    #[error("POST {url}: HTTP {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Status {
        /// The hook's URL.
        url: String,
        /// The status answered.
        status: reqwest::StatusCode,
        /// The start of the body; empty when there was none.
        body: String,
    },
    /// What a gateway embedding the agent said (a [`FnHook`]'s `Err`).
    #[error("{0}")]
    Gateway(String),
}

impl From<String> for HookError {
    fn from(reason: String) -> HookError {
        HookError::Gateway(reason)
    }
}

/// Receives migrate signals. Return `Err` with the cause to have the agent retry.
#[async_trait]
pub trait Hook: Send + Sync + 'static {
    /// Delivers one signal.
    async fn migrate(&self, signal: &MigrateSignal) -> Result<(), HookError>;
}

/// How long one POST may take.
const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// POSTs the signal as JSON; any 2xx is success.
#[derive(Debug, Clone)]
pub struct HttpHook {
    url: String,
    client: reqwest::Client,
}

impl HttpHook {
    /// A hook posting to `url`.
    pub fn new(url: String, client: reqwest::Client) -> HttpHook {
        HttpHook { url, client }
    }
}

#[async_trait]
impl Hook for HttpHook {
    async fn migrate(&self, signal: &MigrateSignal) -> Result<(), HookError> {
        let resp = self
            .client
            .post(&self.url)
            .timeout(POST_TIMEOUT)
            .json(signal)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    HookError::TimedOut {
                        url: self.url.clone(),
                        secs: POST_TIMEOUT.as_secs(),
                    }
                } else {
                    HookError::Post {
                        url: self.url.clone(),
                        cause: cause(&e),
                    }
                }
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body = resp.text().await.unwrap_or_default();
        Err(HookError::Status {
            url: self.url.clone(),
            status,
            body: body.trim().chars().take(200).collect(),
        })
    }
}

/// What went wrong with a request, named by its cause rather than by reqwest's
/// generic "error sending request": connection refused, timed out, a TLS failure
/// (with rustls' reason), a name that does not resolve.
pub fn cause(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".to_string();
    }
    // The chain, with what each `io::Error` wraps (its own `source()` skips it).
    let mut chain: Vec<&(dyn std::error::Error + 'static)> = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        chain.push(s);
        source = match s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => s.source(),
        };
    }
    if let Some(tls) = chain.iter().find_map(|s| s.downcast_ref::<rustls::Error>()) {
        return format!("TLS: {tls}");
    }
    if let Some(io) = chain
        .iter()
        .find_map(|s| s.downcast_ref::<std::io::Error>())
    {
        use std::io::ErrorKind::*;
        return match io.kind() {
            ConnectionRefused => "connection refused".to_string(),
            ConnectionReset => "connection reset".to_string(),
            TimedOut => "timed out".to_string(),
            _ => io.to_string(),
        };
    }
    if e.is_connect() {
        return format!("cannot connect: {e}");
    }
    e.to_string()
}

/// A hook from a closure, for gateways that embed the agent.
pub struct FnHook<F>(pub F);

#[async_trait]
impl<F> Hook for FnHook<F>
where
    F: Fn(&MigrateSignal) -> Result<(), String> + Send + Sync + 'static,
{
    async fn migrate(&self, signal: &MigrateSignal) -> Result<(), HookError> {
        Ok((self.0)(signal)?)
    }
}

/// The capped backoff between attempts: 200 ms doubling to 5 s, with jitter. A hook
/// endpoint that comes back is reached within about 5 s.
fn retry_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(200), Duration::from_secs(5), 2.0, 0.2)
}

/// The delivery worker. `signals` holds the signal to deliver (`None`: nothing, or
/// the last one was replaced by a command that asks for none); every change of state
/// is sent on `status`. Returns when `stop` fires or `signals` closes.
pub(crate) async fn deliver_latest(
    hook: Arc<dyn Hook>,
    mut signals: watch::Receiver<Option<MigrateSignal>>,
    status: mpsc::UnboundedSender<HookStatus>,
    stop: CancellationToken,
) {
    let mut current = signals.borrow_and_update().clone();
    loop {
        let Some(signal) = current.take() else {
            tokio::select! {
                _ = stop.cancelled() => return,
                r = signals.changed() => {
                    if r.is_err() { return }
                    current = signals.borrow_and_update().clone();
                    continue;
                }
            }
        };
        let since = now_ms();
        let mut st = HookStatus {
            command: signal.command.clone(),
            percent: signal.percent,
            state: HookState::Delivering,
            since_ms: since,
            attempts: 0,
            error: None,
        };
        let _ = status.send(st.clone());
        let mut backoff = retry_backoff();
        // Until delivered or replaced.
        let replaced = loop {
            st.attempts += 1;
            let outcome = tokio::select! {
                _ = stop.cancelled() => return,
                r = signals.changed() => { if r.is_err() { return } break true }
                o = hook.migrate(&signal) => o,
            };
            match outcome {
                Ok(()) => {
                    info!(command = %signal.command, percent = signal.percent, attempts = st.attempts, "migrate signal delivered");
                    st.state = HookState::Delivered;
                    st.since_ms = now_ms();
                    st.error = None;
                    let _ = status.send(st.clone());
                    break false;
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    warn!(command = %signal.command, attempt = st.attempts, error = %e,
                          retry_in_ms = delay.as_millis() as u64, "hook failed, retrying");
                    if st.state != HookState::Retrying {
                        st.state = HookState::Retrying;
                        st.since_ms = now_ms();
                    }
                    // Bounded and printable: routers refuse a record with more.
                    st.error = Some(registry::record::clip_text(
                        &e.to_string(),
                        registry::record::MAX_HOOK_ERROR,
                    ));
                    let _ = status.send(st.clone());
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        r = signals.changed() => { if r.is_err() { return } break true }
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        };
        if replaced {
            info!(command = %signal.command, "migrate signal superseded by a newer command before delivery; dropped");
            st.state = HookState::Superseded;
            st.since_ms = now_ms();
            let _ = status.send(st);
            current = signals.borrow_and_update().clone();
        } else {
            // Delivered: wait for the next one.
            tokio::select! {
                _ = stop.cancelled() => return,
                r = signals.changed() => {
                    if r.is_err() { return }
                    current = signals.borrow_and_update().clone();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fail(url: String) -> String {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        cause(&client.post(url).send().await.unwrap_err())
    }

    /// Each failure is named by its cause, not by "error sending request".
    #[tokio::test]
    async fn failures_name_their_cause() {
        // Refused: a port bound then closed.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        assert_eq!(
            fail(format!("http://127.0.0.1:{port}/")).await,
            "connection refused"
        );
        // Timed out: a listener that never answers.
        let blackhole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = blackhole.local_addr().unwrap();
        assert_eq!(fail(format!("http://{addr}/")).await, "timed out");
        // TLS: a server that answers in plain HTTP.
        let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = plain.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while let Ok((mut c, _)) = plain.accept().await {
                let _ = c.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            }
        });
        let tls = fail(format!("https://{addr}/")).await;
        assert!(tls.starts_with("TLS: "), "{tls}");
        drop(blackhole);
    }
}
