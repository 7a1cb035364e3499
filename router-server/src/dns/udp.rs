//! DNS over UDP, a batch at a time: up to [`BATCH`] queries taken in one `recvmmsg`,
//! answered in place, their answers sent in one `sendmmsg` (the calls are `nix`'s).
//! A query costs no system call of its own, as NSD's do not; under a trickle a batch
//! is one query, and nothing waits for a batch to fill.

use std::cell::RefCell;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{Dns, Transport};

/// Queries taken and answers sent per system call.
pub(super) const BATCH: usize = 32;

/// The largest query read (EDNS's usual ceiling); a longer one arrives cut and is
/// answered FORMERR, as a lone receive would.
const QUERY_BYTES: usize = 4096;

/// The system calls' headers, one set per thread: they hold raw pointers (not
/// `Send`), so they live beside the thread and are used only between two awaits.
struct Headers {
    recv: MultiHeaders<SockaddrStorage>,
    send: MultiHeaders<SockaddrStorage>,
}

thread_local! {
    static HEADERS: RefCell<Headers> = RefCell::new(Headers {
        recv: MultiHeaders::preallocate(BATCH, None),
        send: MultiHeaders::preallocate(BATCH, None),
    });
}

/// Answers `socket`'s queries until `cancel`.
pub(super) async fn serve(dns: Arc<Dns>, socket: UdpSocket, cancel: CancellationToken) {
    let mut queries = vec![[0u8; QUERY_BYTES]; BATCH];
    let mut answers: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(512)).collect();
    let mut peers: Vec<(usize, SocketAddr)> = Vec::with_capacity(BATCH);
    let mut to: Vec<Option<SockaddrStorage>> = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = socket.readable() => if let Err(e) = r {
                debug!(error = %e, "DNS UDP socket not readable");
                continue;
            },
        }
        peers.clear();
        let received = socket.try_io(Interest::READABLE, || {
            HEADERS.with_borrow_mut(|h| {
                let mut slices: Vec<[IoSliceMut<'_>; 1]> = queries
                    .iter_mut()
                    .map(|q| [IoSliceMut::new(&mut q[..])])
                    .collect();
                let got = recvmmsg(
                    socket.as_raw_fd(),
                    &mut h.recv,
                    slices.iter_mut(),
                    MsgFlags::MSG_DONTWAIT,
                    None,
                )
                .map_err(io::Error::from)?;
                for m in got {
                    peers.push((m.bytes, peer_of(m.address)));
                }
                Ok(())
            })
        });
        match received {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                // ICMP errors of earlier sends surface here; they concern nobody else.
                debug!(error = %e, "DNS UDP receive failed");
                continue;
            }
        }
        to.clear();
        let mut answered = 0;
        for (i, &(len, peer)) in peers.iter().enumerate() {
            if peer.port() == 0 {
                continue;
            }
            let client = peer.ip().to_canonical();
            let out = &mut answers[answered];
            let q = &queries[i][..len.min(QUERY_BYTES)];
            if dns
                .answer_into(
                    q,
                    client,
                    Transport::Udp,
                    dns.pass(client, Transport::Udp),
                    out,
                )
                .is_some()
            {
                to.push(Some(SockaddrStorage::from(peer)));
                answered += 1;
            }
        }
        send_all(&socket, &answers[..answered], &to, &cancel).await;
    }
}

/// The sender of a datagram (port 0, never answered, when the kernel gave none).
fn peer_of(address: Option<SockaddrStorage>) -> SocketAddr {
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    let Some(a) = address else {
        return unspecified;
    };
    if let Some(v4) = a.as_sockaddr_in() {
        return SocketAddr::from(*v4);
    }
    a.as_sockaddr_in6()
        .map_or(unspecified, |v6| SocketAddr::from(*v6))
}

/// Sends `answers[i]` to `to[i]`, as many per call as the socket takes, waiting while
/// its buffer is full. An answer the kernel refuses (its one address unreachable, say)
/// is dropped: it concerns nobody else.
async fn send_all(
    socket: &UdpSocket,
    answers: &[Vec<u8>],
    to: &[Option<SockaddrStorage>],
    cancel: &CancellationToken,
) {
    let mut done = 0;
    while done < answers.len() {
        let sent = socket.try_io(Interest::WRITABLE, || {
            HEADERS.with_borrow_mut(|h| {
                let slices: Vec<[IoSlice<'_>; 1]> =
                    answers[done..].iter().map(|a| [IoSlice::new(a)]).collect();
                let n = sendmmsg(
                    socket.as_raw_fd(),
                    &mut h.send,
                    slices.iter(),
                    &to[done..],
                    [],
                    MsgFlags::MSG_DONTWAIT,
                )
                .map_err(io::Error::from)?
                .count();
                Ok(n)
            })
        });
        match sent {
            Ok(n) if n > 0 => done += n,
            // Nothing taken: the socket's buffer is full.
            Ok(_) if !writable(socket, cancel).await => return,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && !writable(socket, cancel).await => {
                return
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                debug!(error = %e, to = ?to[done], "DNS UDP answer not sent");
                done += 1;
            }
        }
    }
}

/// Waits until `socket` takes more: false when the server stops first, or the socket
/// fails.
async fn writable(socket: &UdpSocket, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        r = socket.writable() => r.is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};
    use std::time::Duration;

    use hickory_proto::op::{Message, ResponseCode};
    use hickory_proto::rr::RecordType;
    use tokio::net::UdpSocket;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    use super::super::server::{spawn, DnsSockets};
    use super::super::tests::{config, dns_with, fleet, query};

    /// Several clients each send a burst of more queries than a batch holds, gateway
    /// questions (the fast path), SOA questions (the full one) and packets that are not
    /// DNS, interleaved; each gets exactly the answers to its own queries.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_from_several_clients_is_answered_each_to_its_sender() {
        let dns = std::sync::Arc::new(dns_with(config(|_| {}), fleet()));
        let sockets = DnsSockets::bind("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let addr = sockets.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        spawn(dns, sockets, cancel.clone(), &tasks);

        const CLIENTS: u16 = 4;
        const EACH: u16 = 3 * super::BATCH as u16;
        let mut clients = Vec::new();
        for c in 0..CLIENTS {
            let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            s.connect(addr).await.unwrap();
            clients.push((c, s));
        }
        // Every client's burst, interleaved: ids are the client's, times 1000, plus
        // the query's number; one in 10 is garbage, which earns no answer.
        let mut expected: HashMap<u16, BTreeSet<u16>> = HashMap::new();
        for i in 0..EACH {
            for (c, s) in &clients {
                let id = c * 1000 + i;
                if i % 10 == 9 {
                    s.send(&[0xff; 3]).await.unwrap();
                    continue;
                }
                let mut m = match i % 3 {
                    0 => query("gw.example.com.", RecordType::SOA),
                    _ => query("eu.gw.example.com.", RecordType::A),
                };
                m.set_id(id);
                s.send(&m.to_vec().unwrap()).await.unwrap();
                expected.entry(*c).or_default().insert(id);
            }
        }
        for (c, s) in &clients {
            let want = &expected[c];
            let mut got = BTreeSet::new();
            let mut buf = [0u8; 1500];
            while got.len() < want.len() {
                let n = tokio::time::timeout(Duration::from_secs(10), s.recv(&mut buf))
                    .await
                    .unwrap_or_else(|_| {
                        panic!("client {c}: {} of {} answers", got.len(), want.len())
                    })
                    .unwrap();
                let m = Message::from_vec(&buf[..n]).unwrap();
                assert_eq!(m.response_code(), ResponseCode::NoError);
                assert!(!m.answers().is_empty(), "{m:?}");
                assert!(
                    want.contains(&m.id()),
                    "client {c} got the answer to {}",
                    m.id()
                );
                assert!(got.insert(m.id()), "answer {} twice", m.id());
            }
        }
        cancel.cancel();
        tasks.close();
        tasks.wait().await;
    }
}
