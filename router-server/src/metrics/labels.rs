//! The label sets of the router's metric families.

use prometheus_client::encoding::EncodeLabelSet;

/// Labels of request counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The matched route, e.g. `/gateways` (static: no allocation per request).
    pub route: &'static str,
    /// HTTP status code.
    pub status: u16,
}

/// Labels of the latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The matched route.
    pub route: &'static str,
}

/// Labels of the node gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    /// Region.
    pub region: String,
    /// `serving`, `draining` or `unhealthy`.
    pub state: String,
    /// The registry (data centre) holding the nodes.
    pub registry: String,
}

/// Labels of the per-registry gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryLabels {
    /// The registry's (DC's) name.
    pub registry: String,
}

/// Labels of the etcd alarm gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlarmLabels {
    /// The registry's (DC's) name.
    pub registry: String,
    /// `nospace` or `corrupt`.
    pub alarm: &'static str,
}

/// Labels of the DNS query counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    /// `udp`, `tcp` or `https`.
    pub transport: &'static str,
    /// `A`, `AAAA`, `SOA`, `NS`, `ANY`, `other`; `malformed` for packets that do not
    /// parse, `response` for responses sent to the server.
    pub qtype: &'static str,
    /// The response code answered, or `dropped`.
    pub rcode: &'static str,
}

/// Labels of the DNS rate-limit counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsRrlLabels {
    /// `drop` (nothing sent) or `slip` (sent truncated and empty).
    pub action: &'static str,
}

/// Labels of the DNS-over-TCP connection counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsTcpLabels {
    /// Why the server closed or refused a connection: `per_network_cap`, `shed_idle`,
    /// `refused_full`, `write_timeout`.
    pub reason: &'static str,
}

/// Labels of the per-region gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegionLabels {
    /// Region.
    pub region: String,
}

/// Labels of the hook gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabels {
    /// `delivering`, `retrying`, `delivered`, `superseded` or `no_hook`.
    pub state: &'static str,
}

/// Labels of the configuration reload counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `applied` or `invalid`.
    pub result: &'static str,
}

/// Labels of the connection counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    /// Why the server closed a connection: `first_byte_timeout`, `tls_handshake`,
    /// `head_timeout`, `idle_timeout`, `body_timeout`, `stalled`, `shed_silent`,
    /// `shed_idle`, `shed_overdue`, `refused_full`, `per_network_cap`, and with the
    /// PROXY protocol `proxy_untrusted`, `proxy_header_invalid`, `proxy_header_timeout`.
    pub reason: &'static str,
}
