//! Sending the waiting connect outcomes (see [`crate::outcomes`]) to the router that
//! just answered, and whether a connect call records them at all.

use std::net::SocketAddr;

use tracing::debug;

use crate::answer::Source;
use crate::client::Client;
use crate::error::{Failure, FailureKind};
use crate::http::Request;
use crate::outcomes::{report_body, sample_share};

impl Client {
    /// Whether a connect call to candidates from `source` records its outcomes: only
    /// a router's candidates (the cache file's and the fallback domain's ids are not
    /// the router's), with `report_outcomes` on, for a `report_sample` share of calls.
    pub(crate) fn records_outcomes(&self, source: &Source) -> bool {
        let c = &self.inner.config;
        c.report_outcomes
            && matches!(source, Source::Router { .. })
            && rand::random::<f64>() < sample_share(c.report_sample)
    }

    /// After the router at `addr` answered: when a report is due, the waiting outcomes
    /// go to it (`POST /outcomes`) in the background. A report that fails is logged
    /// and dropped, never sent again.
    pub(crate) fn report_outcomes(&self, addr: SocketAddr) {
        let c = &self.inner.config;
        if !c.report_outcomes {
            return;
        }
        let Some(outcomes) = self.inner.outcomes.take_due(c.report_interval) else {
            return;
        };
        let n = outcomes.len();
        let request = Request::post_json("/outcomes", report_body(outcomes));
        let endpoint = self.routers().endpoint(addr);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let target = format!("router {addr}");
            let timeout = inner.config.router_attempt_timeout;
            let sent = tokio::time::timeout(timeout, inner.http.send(&endpoint, &request, &target));
            let failure = match sent.await {
                Ok(Ok(r)) if (200..300).contains(&r.status) => return,
                Ok(Ok(r)) => Failure::new(
                    target,
                    FailureKind::Status {
                        status: r.status,
                        body: String::from_utf8_lossy(&r.body).chars().take(200).collect(),
                    },
                ),
                Ok(Err(f)) => f,
                Err(_) => Failure::new(target, FailureKind::TimedOut),
            };
            debug!(error = %failure, dropped = n, "connect outcome report not delivered");
        });
    }
}

#[cfg(test)]
mod tests;
