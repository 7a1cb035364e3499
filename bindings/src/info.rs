//! The records the bindings answer with: the candidate gateways ([`GatewaysInfo`],
//! [`GatewayInfo`]), copied from the SDK's types into what the foreign languages see.

use httpdns_client as sdk;

/// One candidate gateway.
#[derive(Debug, Clone, uniffi::Record)]
pub struct GatewayInfo {
    /// Node id.
    pub id: String,
    /// Address.
    pub ip: String,
    /// Port for the protocol asked.
    pub port: u16,
    /// The node's region.
    pub region: String,
    /// The node's DNS name (the TLS name).
    pub domain: Option<String>,
    /// The data centre, when the router says.
    pub dc: Option<String>,
    /// Load as the router estimates it.
    pub load: f64,
}

impl From<&sdk::Gateway> for GatewayInfo {
    fn from(g: &sdk::Gateway) -> GatewayInfo {
        GatewayInfo {
            id: g.id.clone(),
            ip: g.ip.to_string(),
            port: g.port,
            region: g.region.clone(),
            domain: g.domain.clone(),
            dc: g.dc.clone(),
            load: g.load,
        }
    }
}

/// Candidates and what came with them.
#[derive(Debug, Clone, uniffi::Record)]
pub struct GatewaysInfo {
    /// Candidates, best first.
    pub gateways: Vec<GatewayInfo>,
    /// The region the router used.
    pub region: Option<String>,
    /// How long the answer may be reused, ms.
    pub ttl_ms: u64,
    /// Heartbeat interval for the connection, ms.
    pub heartbeat_ms: u64,
    /// Where it came from: `router`, `cache_file` or `fallback_domain`.
    pub source: String,
    /// An old snapshot, or a fallback.
    pub stale: bool,
}

impl From<&sdk::Gateways> for GatewaysInfo {
    fn from(g: &sdk::Gateways) -> GatewaysInfo {
        GatewaysInfo {
            gateways: g.gateways.iter().map(GatewayInfo::from).collect(),
            region: g.region.clone(),
            ttl_ms: g.ttl.as_millis() as u64,
            heartbeat_ms: g.heartbeat.as_millis() as u64,
            source: source_name(&g.source),
            stale: g.stale,
        }
    }
}

fn source_name(s: &sdk::Source) -> String {
    match s {
        sdk::Source::Router { .. } => "router",
        sdk::Source::CacheFile => "cache_file",
        sdk::Source::FallbackDomain { .. } => "fallback_domain",
        _ => "other",
    }
    .to_string()
}
