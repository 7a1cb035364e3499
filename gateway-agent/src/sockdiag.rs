//! Counting a port's ESTABLISHED TCP sockets through netlink `sock_diag`, as `ss` does.
//!
//! `/proc/net/tcp` prints every socket of the host as text (about 150 bytes each): at
//! a million connections that is 150 MB to format and parse per sample. Here the
//! kernel filters instead: one `SOCK_DIAG_BY_FAMILY` dump per address family, asking
//! only for ESTABLISHED sockets whose source port is the gateway's (an
//! `INET_DIAG_REQ_BYTECODE` filter), and the answer is counted without being parsed
//! beyond its headers.

use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const IPPROTO_TCP: u8 = 6;
const TCP_ESTABLISHED: u32 = 1;
const INET_DIAG_REQ_BYTECODE: u16 = 1;
const INET_DIAG_BC_S_GE: u8 = 2;
const INET_DIAG_BC_S_LE: u8 = 3;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// The dump request for `family`: ESTABLISHED TCP sockets with source port `port`.
fn request(family: u8, port: u16, seq: u32) -> Vec<u8> {
    // Bytecode, as iproute2 writes it: `sport >= port` then `sport <= port`; each test
    // jumps 8 bytes ahead on success and past the end (reject) on failure.
    let mut bc = Vec::with_capacity(16);
    for (code, left) in [(INET_DIAG_BC_S_GE, 16u16), (INET_DIAG_BC_S_LE, 8)] {
        bc.extend_from_slice(&[code, 8]);
        bc.extend_from_slice(&(left + 4).to_ne_bytes());
        bc.extend_from_slice(&[0, 0]);
        bc.extend_from_slice(&port.to_ne_bytes());
    }
    let mut req = Vec::with_capacity(56);
    req.extend_from_slice(&[family, IPPROTO_TCP, 0, 0]);
    req.extend_from_slice(&(1u32 << TCP_ESTABLISHED).to_ne_bytes());
    // inet_diag_sockid: ports, addresses, interface, cookie; all zero (any).
    req.extend_from_slice(&[0u8; 48]);
    let attr_len = 4 + bc.len() as u16;
    let total = 16 + req.len() + attr_len as usize;
    let mut msg = Vec::with_capacity(total);
    msg.extend_from_slice(&(total as u32).to_ne_bytes());
    msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&req);
    msg.extend_from_slice(&attr_len.to_ne_bytes());
    msg.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
    msg.extend_from_slice(&bc);
    msg
}

/// What one buffer of the dump's answer holds.
#[derive(Debug, PartialEq, Eq)]
enum Chunk {
    /// This many sockets; more to come.
    More(u64),
    /// This many sockets, and the dump is complete.
    Done(u64),
}

/// Counts the socket messages in one received buffer.
fn count_messages(buf: &[u8], seq: u32) -> std::io::Result<Chunk> {
    let mut n = 0;
    let mut at = 0;
    while at + 16 <= buf.len() {
        let word = |o: usize| u32::from_ne_bytes(buf[o..o + 4].try_into().expect("4 bytes"));
        let len = word(at) as usize;
        let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
        if len < 16 || at + len > buf.len() {
            return Err(std::io::Error::other("truncated netlink message"));
        }
        if word(at + 8) == seq {
            match kind {
                SOCK_DIAG_BY_FAMILY => n += 1,
                NLMSG_DONE => return Ok(Chunk::Done(n)),
                NLMSG_ERROR => {
                    let errno = i32::from_ne_bytes(
                        buf.get(at + 16..at + 20)
                            .and_then(|b| b.try_into().ok())
                            .unwrap_or([0; 4]),
                    );
                    return Err(std::io::Error::from_raw_os_error(-errno));
                }
                _ => {}
            }
        }
        at += (len + 3) & !3;
    }
    Ok(Chunk::More(n))
}

/// A netlink socket for counting, opened once and reused for every sample.
pub struct SockDiag {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl SockDiag {
    /// Opens the netlink socket (fails where netlink is refused, e.g. in a sandbox).
    pub fn open() -> std::io::Result<SockDiag> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(SockDiag {
            socket,
            seq: 0,
            buf: Vec::with_capacity(256 * 1024),
        })
    }

    /// ESTABLISHED TCP sockets, IPv4 and IPv6, whose local port is `port`.
    pub fn count_established(&mut self, port: u16) -> std::io::Result<u64> {
        let mut total = 0;
        for family in [AF_INET, AF_INET6] {
            self.seq = self.seq.wrapping_add(1);
            let seq = self.seq;
            self.socket.send(&request(family, port, seq), 0)?;
            loop {
                self.buf.clear();
                self.socket.recv(&mut self.buf, 0)?;
                match count_messages(&self.buf, seq)? {
                    Chunk::More(n) => total += n,
                    Chunk::Done(n) => {
                        total += n;
                        break;
                    }
                }
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn the_request_is_laid_out_as_the_kernel_reads_it() {
        let r = request(AF_INET, 8000, 7);
        assert_eq!(r.len(), 16 + 56 + 4 + 16);
        assert_eq!(
            u32::from_ne_bytes(r[0..4].try_into().unwrap()) as usize,
            r.len()
        );
        assert_eq!(r[16], AF_INET);
        assert_eq!(r[17], IPPROTO_TCP);
        // The two port tests carry the port in the second op's `no` field.
        assert_eq!(u16::from_ne_bytes([r[82], r[83]]), 8000);
        assert_eq!(u16::from_ne_bytes([r[90], r[91]]), 8000);
    }

    /// Real sockets on loopback, counted by the kernel: only the listener's port's
    /// established server ends, in both families.
    #[test]
    fn counts_the_established_server_side_sockets_of_a_port() {
        let Ok(mut diag) = SockDiag::open() else {
            panic!("netlink sock_diag is not available on this machine");
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // Other programs' outgoing sockets may use the same number as an ephemeral
        // local port (on another address): counted too, as `/proc/net/tcp` would.
        let before = diag.count_established(port).unwrap();
        let clients: Vec<TcpStream> = (0..25)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        let accepted: Vec<TcpStream> = (0..25).map(|_| listener.accept().unwrap().0).collect();
        assert_eq!(diag.count_established(port).unwrap() - before, 25);
        let v6 = TcpListener::bind("[::1]:0").ok();
        if let Some(v6) = v6 {
            let p6 = v6.local_addr().unwrap().port();
            let before = diag.count_established(p6).unwrap();
            let _c = TcpStream::connect(("::1", p6)).unwrap();
            let _a = v6.accept().unwrap();
            assert_eq!(diag.count_established(p6).unwrap() - before, 1, "IPv6");
        }
        drop((clients, accepted));
    }
}
