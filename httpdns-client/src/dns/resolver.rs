//! [`HttpDnsResolver`]: any `reqwest` client resolving through the SDK's resolver.

use std::net::SocketAddr;
use std::sync::Arc;

use super::HttpDns;

/// Lets any reqwest client resolve through HTTPDNS (with local-DNS fallback):
/// `reqwest::Client::builder().dns_resolver(Arc::new(HttpDnsResolver::new(dns)))`.
#[derive(Debug, Clone)]
pub struct HttpDnsResolver {
    dns: Arc<HttpDns>,
}

impl HttpDnsResolver {
    /// Wraps a shared resolver.
    pub fn new(dns: Arc<HttpDns>) -> HttpDnsResolver {
        HttpDnsResolver { dns }
    }
}

impl reqwest::dns::Resolve for HttpDnsResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let dns = self.dns.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let r = dns
                .resolve(&host)
                .await
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            let addrs: reqwest::dns::Addrs =
                Box::new(r.ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}
