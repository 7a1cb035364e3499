//! Client networks as the product writes them: an IPv4 network is written as IPv4.
//!
//! Every reader compares a client's address in its canonical form (an IPv4-mapped
//! IPv6 address such as `::ffff:198.51.100.7` is read as `198.51.100.7`), so a
//! network written in the mapped form (`::ffff:198.51.100.0/120`) would match no
//! client at all: a block entry that blocks nobody, a trusted proxy never trusted.
//! Such networks are refused where they are read, with the IPv4 form to write.

use std::net::Ipv6Addr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// `::ffff:0:0/96`, the IPv4-mapped IPv6 addresses.
const MAPPED: Ipv6Net = match Ipv6Net::new(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96) {
    Ok(n) => n,
    Err(_) => panic!("a /96 is a valid prefix"),
};

/// A network written in the IPv4-mapped IPv6 form (`::ffff:198.51.100.0/120`), which
/// no client is compared with, and its IPv4 spelling.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{net} is an IPv4-mapped network, which no client is compared with; write it as {ipv4}")]
pub struct MappedNetwork {
    /// The network as written.
    pub net: IpNet,
    /// The same network written as IPv4.
    pub ipv4: Ipv4Net,
}

/// Refuses a network inside the IPv4-mapped range, naming its IPv4 spelling. A wider
/// IPv6 network that holds the range (`::/0`) is accepted and means what IPv6 networks
/// mean: its IPv6 clients; IPv4 clients are matched by IPv4 networks only.
pub fn check_canonical(net: &IpNet) -> Result<(), MappedNetwork> {
    let IpNet::V6(n) = net else {
        return Ok(());
    };
    if !MAPPED.contains(n) {
        return Ok(());
    }
    let v4 = n.network().to_ipv4_mapped().expect("inside ::ffff:0:0/96");
    let as_v4 = Ipv4Net::new(v4, n.prefix_len() - 96).expect("prefix 96-128 maps to 0-32");
    Err(MappedNetwork {
        net: *net,
        ipv4: as_v4.trunc(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_networks_are_refused_with_their_ipv4_spelling() {
        let err = check_canonical(&"::ffff:198.51.100.7/120".parse().unwrap()).unwrap_err();
        assert_eq!(err.ipv4, "198.51.100.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(
            err.to_string(),
            "::ffff:198.51.100.7/120 is an IPv4-mapped network, which no client is compared with; write it as 198.51.100.0/24"
        );
        assert!(check_canonical(&"::ffff:0:0/96".parse().unwrap()).is_err());
        for ok in [
            "198.51.100.0/24",
            "2001:db8::/32",
            "::1/128",
            "::/0",
            "::/16",
        ] {
            assert!(check_canonical(&ok.parse().unwrap()).is_ok(), "{ok}");
        }
    }
}
