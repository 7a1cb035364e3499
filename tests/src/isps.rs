//! Two "ISPs" in network namespaces of the test's own, for tests of what clients see:
//!
//! ```text
//!   hub namespace: bridge "brs"(10.88.N.0/24, N from the test process)
//!   ISP A ns:  eth0 10.88.N.2   (every client of ISP A has this address)
//!   ISP B ns:  eth0 10.88.N.3
//!   the test:  a veth 10.88.N.1 (routers listen here), 10.88.N.10.. (gateways)
//! ```
//!
//! All of it is one switched subnet: no forwarding, nothing outside the namespaces.
//! [`Isps::cut`] makes one address dark for one ISP only: a route in that ISP's
//! namespace through a neighbour that never answers, so its SYNs vanish without a
//! refusal (after about 3 s the kernel reports the host unreachable), as a broken
//! interconnect does. Namespaces go on drop, and with them the test's veth and its
//! addresses.

use std::process::Command;

use crate::util::{ip, tool};

/// One of the two ISPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isp {
    /// Clients at `.2`.
    A,
    /// Clients at `.3`.
    B,
}

/// The two ISPs' namespaces and the test's link to them.
pub struct Isps {
    tag: String,
    net: u8,
}

impl Isps {
    /// Builds the network, with `gateways` addresses for the test's gateways.
    pub fn new(gateways: usize) -> Isps {
        tool("ip", "iproute2");
        crate::leftovers::sweep();
        let pid = std::process::id();
        let isps = Isps {
            tag: format!("isp{pid}"),
            net: (pid % 200) as u8 + 20,
        };
        let hub = isps.ns("hub");
        ip(&["netns", "add", &hub]);
        ip(&["-n", &hub, "link", "add", "brs", "type", "bridge"]);
        ip(&["-n", &hub, "link", "set", "brs", "up"]);
        for (isp, host) in [(Isp::A, 2), (Isp::B, 3)] {
            let ns = isps.ns_of(isp);
            ip(&["netns", "add", &ns]);
            let port = format!("p{host}");
            ip(&[
                "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ]);
            ip(&["-n", &hub, "link", "set", &port, "master", "brs", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", isps.addr(host)),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        let here = std::process::id().to_string();
        let veth = isps.veth();
        crate::leftovers::claim(&format!("10.88.{}.", isps.net), &veth);
        ip(&[
            "-n", &hub, "link", "add", "ph", "type", "veth", "peer", "name", &veth, "netns", &here,
        ]);
        ip(&["-n", &hub, "link", "set", "ph", "master", "brs", "up"]);
        ip(&["addr", "add", &format!("{}/24", isps.addr(1)), "dev", &veth]);
        for k in 0..gateways {
            ip(&[
                "addr",
                "add",
                &format!("{}/32", isps.gateway(k)),
                "dev",
                &veth,
            ]);
        }
        ip(&["link", "set", &veth, "up"]);
        isps
    }

    fn ns(&self, what: &str) -> String {
        format!("{}-{what}", self.tag)
    }

    fn ns_of(&self, isp: Isp) -> String {
        self.ns(match isp {
            Isp::A => "a",
            Isp::B => "b",
        })
    }

    fn veth(&self) -> String {
        format!("{}h", self.tag)
    }

    fn addr(&self, host: u8) -> String {
        format!("10.88.{}.{host}", self.net)
    }

    /// The test's own address on the network (routers listen here).
    pub fn host(&self) -> String {
        self.addr(1)
    }

    /// The address every client of `isp` has.
    pub fn client(&self, isp: Isp) -> String {
        self.addr(match isp {
            Isp::A => 2,
            Isp::B => 3,
        })
    }

    /// The address of gateway `k` (on the test's side).
    pub fn gateway(&self, k: usize) -> String {
        self.addr(10 + k as u8)
    }

    /// `program args` to run inside `isp`'s namespace.
    pub fn command(&self, isp: Isp, program: &std::path::Path, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns_of(isp)])
            .arg(program)
            .args(args);
        c
    }

    /// Makes `addr` dark for `isp`'s clients: their packets to it go to a neighbour
    /// that never answers.
    pub fn cut(&self, isp: Isp, addr: &str) {
        let nowhere = self.addr(99);
        ip(&[
            "-n",
            &self.ns_of(isp),
            "route",
            "add",
            &format!("{addr}/32"),
            "via",
            &nowhere,
        ]);
    }

    /// Undoes [`Isps::cut`].
    pub fn heal(&self, isp: Isp, addr: &str) {
        ip(&[
            "-n",
            &self.ns_of(isp),
            "route",
            "del",
            &format!("{addr}/32"),
        ]);
    }
}

impl Drop for Isps {
    fn drop(&mut self) {
        // The hub's end of the test's veth goes with it, and so does the test's end.
        for ns in [self.ns("a"), self.ns("b"), self.ns("hub")] {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
    }
}
