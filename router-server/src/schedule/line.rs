//! A node's line: the ISP its clients reach it through.
//!
//! A node whose record names an ISP (`isp: "ctcc"`) is single-line: clients of that
//! ISP reach it without crossing an interconnect. A node that names none, or names
//! [`MULTI_LINE`], is multi-line (BGP): it serves every ISP equally well. Within each
//! region of a client's order, the nodes that serve the client's ISP come first, then
//! the region's other ISPs (see `select.rs`). A client of no known ISP is served by
//! every node alike, as before ISPs were known.

/// The ISP name that marks a node multi-line, as records carry it.
pub const MULTI_LINE: &str = "bgp";

/// True when a node whose record names `isp` serves every ISP.
pub fn multi_line(isp: Option<&str>) -> bool {
    isp.is_none_or(|i| i == MULTI_LINE)
}

/// True when a node whose record names `node_isp` serves clients of `client_isp`
/// without crossing to another ISP (a client of no known ISP: every node does).
pub fn serves(node_isp: Option<&str>, client_isp: Option<&str>) -> bool {
    match client_isp {
        None => true,
        Some(c) => multi_line(node_isp) || node_isp == Some(c),
    }
}

/// The single line a node is on: its ISP, or `None` for a multi-line node.
pub(super) fn single(isp: Option<&str>) -> Option<&str> {
    isp.filter(|i| *i != MULTI_LINE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_serves_its_isp_and_a_multi_line_node_serves_every_isp() {
        assert!(serves(Some("ctcc"), Some("ctcc")));
        assert!(!serves(Some("ctcc"), Some("cmcc")));
        assert!(serves(Some("bgp"), Some("cmcc")));
        assert!(serves(None, Some("cmcc")), "no ISP named: multi-line");
        assert!(serves(Some("ctcc"), None), "a client of no known ISP");
        assert_eq!(single(Some("bgp")), None);
        assert_eq!(single(Some("ctcc")), Some("ctcc"));
    }
}
