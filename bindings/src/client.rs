//! [`GatewayClient`], the SDK's entry point, and the records it answers with: the
//! candidate gateways ([`GatewaysInfo`], [`GatewayInfo`]).

use std::net::IpAddr;
use std::sync::Arc;

use httpdns_client as sdk;

use crate::runtime::{on_rt, rt};
use crate::{GatewayConnection, SdkConfig, SdkError};

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

fn source_name(s: &sdk::Source) -> String {
    match s {
        sdk::Source::Router { .. } => "router",
        sdk::Source::CacheFile => "cache_file",
        sdk::Source::FallbackDomain { .. } => "fallback_domain",
        _ => "other",
    }
    .to_string()
}

/// The SDK's entry point: one per app.
#[derive(uniffi::Object)]
pub struct GatewayClient {
    client: sdk::Client,
}

#[uniffi::export]
impl GatewayClient {
    /// A client; checks the configuration, and starts resolving the router's domain.
    #[uniffi::constructor]
    pub fn new(config: SdkConfig) -> Result<Arc<GatewayClient>, SdkError> {
        let c = config.to_sdk()?;
        // Inside the runtime, so the router's domain is pre-resolved at once.
        let _in_rt = rt().enter();
        Ok(Arc::new(GatewayClient {
            client: sdk::Client::new(c)?,
        }))
    }

    /// Candidates (the last answer while its TTL lasts).
    pub async fn gateways(&self) -> Result<GatewaysInfo, SdkError> {
        let client = self.client.clone();
        on_rt(async move {
            let g = client.gateways().await?;
            Ok(GatewaysInfo {
                gateways: g.gateways.iter().map(GatewayInfo::from).collect(),
                region: g.region.clone(),
                ttl_ms: g.ttl.as_millis() as u64,
                heartbeat_ms: g.heartbeat.as_millis() as u64,
                source: source_name(&g.source),
                stale: g.stale,
            })
        })
        .await
    }

    /// Connects over TCP to the first candidate that answers.
    pub async fn connect(&self) -> Result<Arc<GatewayConnection>, SdkError> {
        let client = self.client.clone();
        on_rt(async move { Ok(GatewayConnection::tcp(client.connect().await?)) }).await
    }

    /// [`GatewayClient::connect`] in up to `rounds` rounds, waiting the router's
    /// `Retry-After` or backoff between them.
    pub async fn connect_with_retry(
        &self,
        rounds: u32,
    ) -> Result<Arc<GatewayConnection>, SdkError> {
        let client = self.client.clone();
        on_rt(async move {
            Ok(GatewayConnection::tcp(
                client.connect_with_retry(rounds).await?,
            ))
        })
        .await
    }

    /// Connects over TLS: the gateway's IP, its domain as SNI and certificate name.
    pub async fn connect_tls(&self) -> Result<Arc<GatewayConnection>, SdkError> {
        let client = self.client.clone();
        on_rt(async move { Ok(GatewayConnection::tls(client.connect_tls().await?)) }).await
    }

    /// [`GatewayClient::connect_tls`] in up to `rounds` rounds.
    pub async fn connect_tls_with_retry(
        &self,
        rounds: u32,
    ) -> Result<Arc<GatewayConnection>, SdkError> {
        let client = self.client.clone();
        on_rt(async move {
            Ok(GatewayConnection::tls(
                client.connect_tls_with_retry(rounds).await?,
            ))
        })
        .await
    }

    /// Leaves `from`'s gateway (after its migration signal, or when it closed the
    /// connection): a fresh router answer, never that gateway. The new connection is
    /// TLS when `from` was.
    pub async fn migrate(
        &self,
        from: Arc<GatewayConnection>,
        rounds: u32,
    ) -> Result<Arc<GatewayConnection>, SdkError> {
        let client = self.client.clone();
        on_rt(async move {
            let left = &from.gateway;
            let conn = if from.is_tls {
                GatewayConnection::tls(client.migrate_tls_from_with_retry(left, rounds).await?)
            } else {
                GatewayConnection::tcp(client.migrate_from_with_retry(left, rounds).await?)
            };
            Ok(conn)
        })
        .await
    }

    /// Resolves `hosts` ahead of need.
    pub async fn prefetch(&self, hosts: Vec<String>) {
        let client = self.client.clone();
        let _ = on_rt(async move {
            let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
            client.prefetch(&hosts).await;
            Ok(())
        })
        .await;
    }

    /// Call when the network changes (Wi-Fi, cellular, VPN): cached addresses and
    /// candidates are dropped.
    pub fn network_changed(&self) {
        self.client.network_changed();
    }

    /// The addresses of `host` through HTTPDNS (local DNS, bootstrap IPs as
    /// fallbacks), as IP literals. Blocking: for an HTTP client's resolver hook, such
    /// as OkHttp's `Dns.lookup`, called on its own threads.
    pub fn lookup(&self, host: String) -> Result<Vec<String>, SdkError> {
        let dns = self.client.dns().clone();
        rt().block_on(async move {
            let r = dns.resolve(&host).await?;
            Ok(r.ips.iter().map(IpAddr::to_string).collect())
        })
    }
}
