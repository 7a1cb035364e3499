//! Tells the gateway to move clients: an HTTP POST (`--hook URL`) or a library callback.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use registry::backoff::Backoff;
use serde::Serialize;
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

/// Receives migrate signals. Return `Err` to have the agent retry.
#[async_trait]
pub trait Hook: Send + Sync + 'static {
    /// Delivers one signal.
    async fn migrate(&self, signal: &MigrateSignal) -> Result<(), String>;
}

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
    async fn migrate(&self, signal: &MigrateSignal) -> Result<(), String> {
        let resp = self
            .client
            .post(&self.url)
            .timeout(Duration::from_secs(5))
            .json(signal)
            .send()
            .await
            .map_err(|e| format!("POST {}: {e}", self.url))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("POST {}: status {}", self.url, resp.status()))
        }
    }
}

/// A hook from a closure, for gateways that embed the agent.
pub struct FnHook<F>(pub F);

#[async_trait]
impl<F> Hook for FnHook<F>
where
    F: Fn(&MigrateSignal) -> Result<(), String> + Send + Sync + 'static,
{
    async fn migrate(&self, signal: &MigrateSignal) -> Result<(), String> {
        (self.0)(signal)
    }
}

/// Delivers `signal`, retrying with backoff; gives up after `attempts` tries.
pub(crate) async fn deliver(hook: Arc<dyn Hook>, signal: MigrateSignal, attempts: u32) -> bool {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5), 2.0, 0.2);
    for attempt in 1..=attempts {
        match hook.migrate(&signal).await {
            Ok(()) => {
                info!(command = %signal.command, percent = signal.percent, "migrate signal delivered");
                return true;
            }
            Err(e) if attempt < attempts => {
                warn!(command = %signal.command, attempt, error = %e, "hook failed, retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => {
                warn!(command = %signal.command, attempt, error = %e, "hook failed, giving up");
            }
        }
    }
    false
}
