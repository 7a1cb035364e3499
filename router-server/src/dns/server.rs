//! DNS over UDP and TCP on `dns.listen`.
//!
//! UDP: one socket per core on the same port (`SO_REUSEPORT`), each read by its own
//! task that answers in place, a batch at a time ([`super::udp`]), so no query waits
//! behind another core's. TCP: RFC 1035
//! length-prefixed messages, several per connection, closed after `dns.tcp_idle_ms`
//! of silence, or when an answer is not taken within `dns.tcp_write_timeout_ms` (a
//! client that sends and never reads); at most `dns.tcp_max_connections` at once and
//! `dns.tcp_max_per_network` per client network, shared as [`super::tcp_conns`] says.
//! Every connection the server closes or refuses is counted in
//! `router_dns_tcp_closed_by_server_total{reason}`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::tcp_conns::{TcpConn, TcpConns};
use super::{Dns, Transport};
use crate::metrics::DnsTcpLabels;

/// The bound DNS sockets.
pub struct DnsSockets {
    udp: Vec<UdpSocket>,
    tcp: TcpListener,
}

impl DnsSockets {
    /// Binds UDP (`sockets` of them, sharing the port) and TCP on `addr`. Port 0 picks
    /// one port for both.
    pub fn bind(addr: SocketAddr, sockets: usize) -> io::Result<DnsSockets> {
        // With port 0, the port UDP got may be taken for TCP: try a few.
        let tries = if addr.port() == 0 { 20 } else { 1 };
        let mut last = None;
        for _ in 0..tries {
            match DnsSockets::bind_once(addr, sockets) {
                Ok(s) => return Ok(s),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one try"))
    }

    fn bind_once(addr: SocketAddr, sockets: usize) -> io::Result<DnsSockets> {
        let first = udp_socket(addr)?;
        let addr = first.local_addr()?;
        let mut udp = vec![first];
        for _ in 1..sockets.max(1) {
            udp.push(udp_socket(addr)?);
        }
        let tcp = std::net::TcpListener::bind(addr)?;
        tcp.set_nonblocking(true)?;
        Ok(DnsSockets {
            udp: udp
                .into_iter()
                .map(UdpSocket::from_std)
                .collect::<io::Result<_>>()?,
            tcp: TcpListener::from_std(tcp)?,
        })
    }

    /// The address served.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

fn udp_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(true)?;
    // Room for a burst while the task is busy (best effort: the kernel caps it).
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    if addr.is_ipv6() {
        // `[::]` serves IPv4 too, as the HTTP listener does.
        let _ = s.set_only_v6(false);
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// Serves `sockets` until `cancel`; the tasks run on `tasks`.
pub fn spawn(dns: Arc<Dns>, sockets: DnsSockets, cancel: CancellationToken, tasks: &TaskTracker) {
    if let Ok(addr) = sockets.local_addr() {
        info!(%addr, udp_sockets = sockets.udp.len(), "answering DNS over UDP and TCP");
    }
    for socket in sockets.udp {
        tasks.spawn(super::udp::serve(dns.clone(), socket, cancel.clone()));
    }
    tasks.spawn(serve_tcp(dns.clone(), sockets.tcp, cancel.clone()));
    if dns.rrl().is_some() {
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                }
                if let Some(rrl) = dns.rrl() {
                    rrl.forget_idle();
                }
            }
        });
    }
}

async fn serve_tcp(dns: Arc<Dns>, listener: TcpListener, cancel: CancellationToken) {
    let cfg = &dns.config().dns;
    let table = Arc::new(TcpConns::new(
        cfg.tcp_max_connections,
        cfg.tcp_max_per_network,
    ));
    let limits = TcpLimits {
        idle: Duration::from_millis(cfg.tcp_idle_ms),
        write: Duration::from_millis(cfg.tcp_write_timeout_ms),
    };
    let connections = TaskTracker::new();
    let mut last_full_log: Option<tokio::time::Instant> = None;
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "DNS TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (id, conn) = match table.admit(peer.ip().to_canonical()) {
            Ok((id, conn, shed)) => {
                if let Some(reason) = shed {
                    count_closed(&dns, reason);
                }
                (id, conn)
            }
            Err(reason) => {
                count_closed(&dns, reason);
                if last_full_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    last_full_log = Some(tokio::time::Instant::now());
                    warn!(%peer, reason, open = table.len(), "DNS TCP connection refused");
                }
                drop(stream);
                continue;
            }
        };
        let dns = dns.clone();
        let cancel = cancel.clone();
        let table = table.clone();
        connections.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = conn.close.cancelled() => {}
                r = serve_connection(&dns, stream, peer, &table, &conn, limits) => {
                    if let Err(e) = r {
                        debug!(error = %e, %peer, "DNS TCP connection ended");
                    }
                }
            }
            table.remove(id);
        });
    }
    connections.close();
    connections.wait().await;
}

/// The kernel send buffer of a DNS-over-TCP connection: one largest message and its
/// length prefix. A client that sends and never reads pins this much (the kernel
/// doubles it) while its write timeout runs, not the megabytes the default grows to,
/// and its answers back up within a few hundred queries however busy the machine.
const TCP_SEND_BUFFER: usize = 65_535 + 2;

/// How long a DNS-over-TCP client may take.
#[derive(Debug, Clone, Copy)]
struct TcpLimits {
    /// To send its next query (and each query whole).
    idle: Duration,
    /// To take an answer.
    write: Duration,
}

fn count_closed(dns: &Dns, reason: &'static str) {
    dns.metrics()
        .tcp_closed
        .get_or_create(&DnsTcpLabels { reason })
        .inc();
}

/// Answers one TCP connection's queries in order until it closes, idles or does not
/// take its answers.
async fn serve_connection(
    dns: &Dns,
    mut stream: TcpStream,
    peer: SocketAddr,
    table: &TcpConns,
    conn: &TcpConn,
    limits: TcpLimits,
) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    // Best effort: the kernel's default grows the buffer to megabytes.
    let _ = socket2::SockRef::from(&stream).set_send_buffer_size(TCP_SEND_BUFFER);
    let mut buf = Vec::new();
    loop {
        let mut len = [0u8; 2];
        table.set_idle(conn, true);
        match tokio::time::timeout(limits.idle, stream.read_exact(&mut len)).await {
            Err(_) => return Ok(()),
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(r) => r?,
        };
        table.set_idle(conn, false);
        let len = u16::from_be_bytes(len) as usize;
        buf.resize(len, 0);
        tokio::time::timeout(limits.idle, stream.read_exact(&mut buf))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "message not sent in time"))??;
        let Some(answer) = dns.handle(&buf, peer.ip().to_canonical(), Transport::Tcp) else {
            // Not a query: nothing sensible can follow on this stream.
            return Ok(());
        };
        let mut out = Vec::with_capacity(answer.len() + 2);
        out.extend_from_slice(&(answer.len() as u16).to_be_bytes());
        out.extend_from_slice(&answer);
        if tokio::time::timeout(limits.write, stream.write_all(&out))
            .await
            .is_err()
        {
            count_closed(dns, "write_timeout");
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not take its answer in time",
            ));
        }
    }
}
