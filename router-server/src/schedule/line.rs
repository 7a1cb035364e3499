//! A node's lines: the ISPs its clients reach it through.
//!
//! A node whose record names an ISP (`isp: "ctcc"`) is single-line: clients of that
//! ISP reach it without crossing an interconnect. One that names several, separated
//! by commas (`isp: "ctcc,cmcc"`), is on each of those lines. A node that names none,
//! or names [`MULTI_LINE`] (alone or in its list), is multi-line (BGP): it serves every
//! ISP equally well. Within each region of a client's order, the nodes that serve the
//! client's ISP come first, then the region's other ISPs (see `select.rs`). A client
//! of no known ISP is served by every node alike, as before ISPs were known.

/// The ISP name that marks a node multi-line, as records carry it.
pub const MULTI_LINE: &str = registry::record::MULTI_LINE;

use registry::record::isps_named as named;

/// True when a node whose record names `isp` serves every ISP.
pub fn multi_line(isp: Option<&str>) -> bool {
    isp.is_none_or(|i| named(i).any(|l| l == MULTI_LINE))
}

/// True when a node whose record names `node_isp` serves clients of `client_isp`
/// without crossing to another ISP (a client of no known ISP: every node does).
pub fn serves(node_isp: Option<&str>, client_isp: Option<&str>) -> bool {
    match client_isp {
        None => true,
        Some(c) => multi_line(node_isp) || node_isp.is_some_and(|n| named(n).any(|l| l == c)),
    }
}

/// The lines a node whose record names `isp` is on: its ISPs, or none for a
/// multi-line node (which is on every line).
pub(super) fn lines(isp: Option<&str>) -> impl Iterator<Item = &str> {
    isp.filter(|_| !multi_line(isp)).into_iter().flat_map(named)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_serves_its_isps_and_a_multi_line_node_serves_every_isp() {
        assert!(serves(Some("ctcc"), Some("ctcc")));
        assert!(!serves(Some("ctcc"), Some("cmcc")));
        assert!(serves(Some("bgp"), Some("cmcc")));
        assert!(serves(None, Some("cmcc")), "no ISP named: multi-line");
        assert!(serves(Some("ctcc"), None), "a client of no known ISP");
        assert!(serves(Some("ctcc,cmcc"), Some("cmcc")));
        assert!(!serves(Some("ctcc,cmcc"), Some("cucc")));
        assert!(serves(Some("ctcc,bgp"), Some("cucc")), "bgp in a list");
        assert_eq!(lines(Some("bgp")).count(), 0);
        assert_eq!(lines(None).count(), 0);
        assert_eq!(lines(Some("ctcc")).collect::<Vec<_>>(), ["ctcc"]);
        assert_eq!(
            lines(Some("ctcc,cmcc")).collect::<Vec<_>>(),
            ["ctcc", "cmcc"]
        );
        assert_eq!(lines(Some("ctcc,bgp")).count(), 0);
    }
}
