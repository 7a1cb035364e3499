//! The open DNS-over-TCP connections: a global cap, a per-network share, and which
//! connection makes room when the cap is reached.
//!
//! Rules, applied at accept:
//! 1. A client network (its /24 or /56, [`crate::identity::connection_network`]) holding
//!    `dns.tcp_max_per_network` connections gets no more: the newcomer is closed
//!    (`per_network_cap`); other networks do not notice.
//! 2. At `dns.tcp_max_connections`, the connection idle the longest (waiting for its
//!    next query) is closed to make room (`shed_idle`), as the HTTP table does; only
//!    when every connection is mid-query is the newcomer refused (`refused_full`).
//!
//! Connections are never busy for long: a query must arrive within `dns.tcp_idle_ms`
//! and its answer be taken within `dns.tcp_write_timeout_ms`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::identity::connection_network;

/// Why a connection was closed or refused, as the metric labels it.
pub(crate) type Reason = &'static str;

/// One open connection.
pub(crate) struct TcpConn {
    /// The client network it counts against (`None`: no per-network cap).
    network: Option<IpAddr>,
    /// Waiting for its next query (may be shed for room).
    idle: AtomicBool,
    /// Milliseconds since the table's epoch of the last change of `idle`.
    since_ms: AtomicU64,
    /// Fired to close it for room.
    pub(crate) close: CancellationToken,
}

#[derive(Default)]
struct Open {
    conns: HashMap<u64, Arc<TcpConn>>,
    networks: HashMap<IpAddr, usize>,
    next_id: u64,
}

impl Open {
    fn remove(&mut self, id: u64) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        if let Some(net) = conn.network {
            if let Some(n) = self.networks.get_mut(&net) {
                *n -= 1;
                if *n == 0 {
                    self.networks.remove(&net);
                }
            }
        }
    }
}

/// The open connections, under the caps.
pub(crate) struct TcpConns {
    epoch: Instant,
    cap: usize,
    per_network: usize,
    open: Mutex<Open>,
}

impl TcpConns {
    /// A table of at most `cap` connections, `per_network` per network (0: no share).
    pub(crate) fn new(cap: usize, per_network: usize) -> TcpConns {
        TcpConns {
            epoch: Instant::now(),
            cap: cap.max(1),
            per_network,
            open: Mutex::new(Open::default()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Marks `conn` waiting for a query (`true`) or answering one.
    pub(crate) fn set_idle(&self, conn: &TcpConn, idle: bool) {
        conn.idle.store(idle, Ordering::Relaxed);
        conn.since_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Admits a connection from `peer`: its id and handle, and the reason a connection
    /// was shed for it, if one was. `Err`: the newcomer is refused, and why.
    pub(crate) fn admit(
        &self,
        peer: IpAddr,
    ) -> Result<(u64, Arc<TcpConn>, Option<Reason>), Reason> {
        self.admit_at(self.now_ms(), peer)
    }

    fn admit_at(
        &self,
        now: u64,
        peer: IpAddr,
    ) -> Result<(u64, Arc<TcpConn>, Option<Reason>), Reason> {
        let mut open = self.open.lock().expect("DNS TCP table lock");
        let network = (self.per_network > 0).then(|| connection_network(peer));
        if let Some(net) = network {
            if open.networks.get(&net).copied().unwrap_or(0) >= self.per_network {
                return Err("per_network_cap");
            }
        }
        let mut shed = None;
        if open.conns.len() >= self.cap {
            let victim = open
                .conns
                .iter()
                .filter(|(_, c)| c.idle.load(Ordering::Relaxed))
                .min_by_key(|(_, c)| c.since_ms.load(Ordering::Relaxed))
                .map(|(id, c)| (*id, c.clone()));
            let (id, conn) = victim.ok_or("refused_full")?;
            conn.close.cancel();
            open.remove(id);
            shed = Some("shed_idle");
        }
        let id = open.next_id;
        open.next_id += 1;
        let conn = Arc::new(TcpConn {
            network,
            idle: AtomicBool::new(true),
            since_ms: AtomicU64::new(now),
            close: CancellationToken::new(),
        });
        open.conns.insert(id, conn.clone());
        if let Some(net) = network {
            *open.networks.entry(net).or_default() += 1;
        }
        Ok((id, conn, shed))
    }

    /// Forgets a closed connection (once, whoever calls it first).
    pub(crate) fn remove(&self, id: u64) {
        self.open.lock().expect("DNS TCP table lock").remove(id);
    }

    /// Connections open now.
    pub(crate) fn len(&self) -> usize {
        self.open.lock().expect("DNS TCP table lock").conns.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_network_gets_its_share_and_no_more() {
        let t = TcpConns::new(100, 2);
        let (a, _, _) = t.admit(ip("198.51.100.1")).unwrap();
        t.admit(ip("198.51.100.2")).unwrap();
        assert_eq!(t.admit(ip("198.51.100.3")).err(), Some("per_network_cap"));
        assert!(t.admit(ip("198.51.101.1")).is_ok(), "another /24");
        t.remove(a);
        t.remove(a);
        assert!(t.admit(ip("198.51.100.3")).is_ok(), "a share came back");
        assert_eq!(t.admit(ip("198.51.100.4")).err(), Some("per_network_cap"));
        let off = TcpConns::new(100, 0);
        for _ in 0..10 {
            off.admit(ip("198.51.100.1")).unwrap();
        }
    }

    #[test]
    fn a_full_table_sheds_the_longest_idle_and_never_a_busy_one() {
        let t = TcpConns::new(3, 0);
        let (_, busy, _) = t.admit_at(0, ip("192.0.2.1")).unwrap();
        busy.idle.store(false, Ordering::Relaxed);
        let (_, older, _) = t.admit_at(10, ip("192.0.2.2")).unwrap();
        let (_, newer, _) = t.admit_at(20, ip("192.0.2.3")).unwrap();
        let (_, fourth, shed) = t.admit_at(30, ip("192.0.2.4")).unwrap();
        assert_eq!(shed, Some("shed_idle"));
        assert!(older.close.is_cancelled(), "idle the longest");
        assert!(!newer.close.is_cancelled() && !busy.close.is_cancelled());
        assert_eq!(t.len(), 3);
        for c in [&newer, &fourth] {
            c.idle.store(false, Ordering::Relaxed);
        }
        assert_eq!(t.admit_at(40, ip("192.0.2.5")).err(), Some("refused_full"));
        assert_eq!(t.len(), 3);
    }
}
