//! Accepting connections: the accept loop, and the connection cap it admits them
//! under (the configured one, kept below the open-file limit).

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tracing::warn;

use super::conn::connection;
use super::Ctx;

/// File descriptors kept back from the connection cap: etcd channels, log files,
/// certificate reloads, the listeners themselves.
const FD_RESERVE: u64 = 64;

/// Raises the soft open-file limit to the hard one and returns the soft limit now in
/// force (`None` where it cannot be read).
pub fn raise_nofile_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => Some(n),
        Err(e) => {
            warn!(error = %e, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
    }
}

/// The connection cap: the configured one, or the open-file limit less a reserve,
/// whichever is lower.
pub fn connection_cap(configured: usize, nofile: Option<u64>) -> usize {
    let by_files = nofile
        .map(|n| n.saturating_sub(FD_RESERVE).max(1))
        .unwrap_or(u64::MAX)
        .min(usize::MAX as u64) as usize;
    match configured {
        0 => by_files.min(1_000_000),
        n if n > by_files => {
            warn!(
                configured = n,
                cap = by_files,
                "http.max_connections is above the open-file limit; capping it"
            );
            by_files
        }
        n => n,
    }
}

pub(super) async fn accept_loop(listener: TcpListener, ctx: Ctx, conns: TaskTracker) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and the like: back off a moment rather than spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if ctx
            .proxy
            .as_deref()
            .is_some_and(|trusted| !crate::identity::is_trusted(trusted, peer.ip().to_canonical()))
        {
            // A PROXY header from anyone but the balancers would let a client name
            // any address as its own.
            ctx.count_close("proxy_untrusted");
            continue;
        }
        let Ok((id, slot)) = ctx.table.admit(peer.ip(), &ctx.metrics) else {
            // Closed at once: no byte read, nothing written.
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        conns.spawn(async move {
            connection(stream, peer, &slot, &ctx).await;
            if let Some(reason) = *slot.shed_reason.lock().expect("shed reason lock") {
                tracing::debug!(%peer, reason, "connection shed");
            }
            ctx.table.remove(id, &ctx.metrics);
        });
    }
}
