//! [`GatewayClient`], the SDK's entry point.

use std::net::IpAddr;
use std::sync::Arc;

use httpdns_client as sdk;

use crate::config::SdkConfig;
use crate::connection::GatewayConnection;
use crate::error::SdkError;
use crate::info::GatewaysInfo;
use crate::runtime::{on_rt, rt};

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
            Ok(GatewaysInfo::from(&*g))
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
