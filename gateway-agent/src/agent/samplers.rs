//! The tasks that feed the run loop its inputs: the connection-count sampler and the
//! health prober. They only send values in, so a slow source never delays a keep-alive.

use std::time::Duration;

use registry::now_ms;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::AgentHandle;
use crate::health::{HealthProbe, Hysteresis};
use crate::load::LoadSource;

/// Samples `source` every `every` (less often when counting sockets is slow) and
/// hands each count to the run loop through `handle`; a failed sample keeps the last.
pub(super) async fn sample_load(
    source: LoadSource,
    every: Duration,
    handle: AgentHandle,
    http: reqwest::Client,
    cancel: CancellationToken,
) {
    let mut told_slow = false;
    let mut last_error: Option<String> = None;
    // `tcp-port:` counts through netlink sock_diag where the kernel allows it (the
    // kernel filters by port); `/proc/net/tcp` is read only where netlink is refused.
    let proc_only = std::env::var("AGENT_TCP_COUNT").is_ok_and(|v| v == "proc");
    let mut diag = match &source {
        LoadSource::TcpPort(_) if proc_only => None,
        LoadSource::TcpPort(_) => match crate::sockdiag::SockDiag::open() {
            Ok(d) => Some(d),
            Err(e) => {
                warn!(error = %e, "netlink sock_diag refused; counting sockets from /proc/net/tcp");
                None
            }
        },
        _ => None,
    };
    // Counting sockets costs time in proportion to them (a hundred thousand take tens
    // of milliseconds even filtered by the kernel): the next sample waits at least
    // SAMPLE_DUTY times as long as this one took, so counting never takes more than
    // 1 % of a core; at the default interval that stretches beyond ~2.5 ms a sample.
    const SAMPLE_DUTY: u32 = 100;
    let mut wait = every;
    loop {
        let sampled_ms = now_ms();
        // The time counting itself takes (not the wait for a blocking thread on a busy
        // host, which costs no CPU of ours).
        let mut spent = std::time::Duration::ZERO;
        let started = std::time::Instant::now();
        let result = match (diag.take(), &source) {
            (Some(mut d), LoadSource::TcpPort(port)) => {
                let port = *port;
                let joined = tokio::task::spawn_blocking(move || {
                    let t = std::time::Instant::now();
                    let n = d.count_established(port);
                    (d, n, t.elapsed())
                })
                .await;
                match joined {
                    Ok((d, Ok(n), took)) => {
                        diag = Some(d);
                        spent = took;
                        Ok(n)
                    }
                    Ok((_, Err(e), _)) => {
                        warn!(error = %e, "netlink sock_diag failed; counting sockets from /proc/net/tcp from now on");
                        source.sample(&http).await
                    }
                    Err(e) => {
                        warn!(error = %e, "socket count task failed; counting from /proc/net/tcp from now on");
                        source.sample(&http).await
                    }
                }
            }
            _ => {
                let n = source.sample(&http).await;
                spent = started.elapsed();
                n
            }
        };
        if matches!(source, LoadSource::TcpPort(_)) {
            let next = every.max(spent * SAMPLE_DUTY);
            // Said once at info: a busy host crosses the threshold back and forth.
            if next > every && wait == every {
                let (sample_ms, interval_ms) = (spent.as_millis() as u64, next.as_millis() as u64);
                if told_slow {
                    debug!(sample_ms, interval_ms, "sampling less often again");
                } else {
                    told_slow = true;
                    info!(
                        sample_ms,
                        interval_ms,
                        "counting sockets is slow at this size; sampling less often to stay under 1 % of a core"
                    );
                }
            }
            wait = next;
        }
        match result {
            Ok(n) => {
                if last_error.take().is_some() {
                    info!("load source readable again");
                }
                handle.set_connections_sampled(n, sampled_ms);
            }
            Err(e) => {
                handle.metrics.load_source_failures.inc();
                let msg = e.to_string();
                if last_error.as_deref() != Some(msg.as_str()) {
                    warn!(error = %msg, "load sample failed; keeping the last count");
                    last_error = Some(msg);
                }
            }
        }
        if matches!(source, LoadSource::Static(_)) {
            return;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Probes the gateway every `every` and hands the verdict, after hysteresis, to the
/// run loop through `handle`.
pub(super) async fn probe_health(
    probe: HealthProbe,
    every: Duration,
    handle: AgentHandle,
    http: reqwest::Client,
    cancel: CancellationToken,
) {
    let mut h = Hysteresis::default();
    let timeout = every.clamp(Duration::from_millis(200), Duration::from_secs(2));
    loop {
        let result = probe.check(&http, timeout).await;
        let before = h.healthy();
        let verdict = h.observe(result.is_ok());
        if before != Some(verdict) {
            match &result {
                Ok(()) => info!(healthy = verdict, "health changed"),
                Err(e) => warn!(healthy = verdict, error = %e, "health changed"),
            }
        }
        handle.set_healthy(verdict);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
