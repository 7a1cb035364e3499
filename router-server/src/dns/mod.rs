//! The router answers DNS for its fleet's zone, from the same snapshot as `/gateways`.
//!
//! * [`config`]: `[dns]` and `[httpdns]`.
//! * [`zone`]: what each name under the zone means.
//! * [`Dns`] (here): one query in, one answer out, whatever carried it (`query.rs`);
//!   the answer to a question (`answer.rs`), with the zone's own records
//!   (`records.rs`), EDNS and its client subnet (`edns.rs`), counted in the metrics
//!   (`counts.rs`). The query nearly every client sends (one question for a gateway
//!   name's addresses) is read and answered without building a message (`fast.rs`),
//!   to the same bytes. Gateways are chosen by [`crate::schedule::select_weighted`], under
//!   the same rules as `/gateways`, and each answer counts `dns.weight` clients in the
//!   herd accounting.
//! * [`server`]: UDP and TCP sockets; UDP is read and answered in batches (`udp.rs`). [`rrl`]: response-rate limiting on UDP.
//!   [`tcp_conns`]: the caps on DNS-over-TCP connections.
//! * [`stats`]: totals for the fleet page; the metrics are `router_dns_*`.
//! * [`http`]: DNS over HTTPS (RFC 8484), the JSON form (`/resolve`) and the
//!   Alibaba-style HTTPDNS answer (`/d`, `/sign_d`).
//!
//! The wire format is `hickory-proto`'s. The sockets are served here rather than by
//! `hickory-server`'s `ServerFuture`: that one sizes UDP answers to non-EDNS clients at
//! 4,096 bytes instead of 512 (so it never sets TC for them), reads each UDP socket
//! from one task, and logs every query at `info`.

mod answer;
mod counts;
mod edns;
mod fast;
mod query;
mod records;
pub mod rrl;
pub mod server;
pub mod tcp_conns;
mod udp;
pub mod zone;

use std::sync::Arc;

use hickory_proto::rr::Name;

use crate::config::dns::{self as config, DnsConfig};
use crate::config::{FileConfig, LiveConfig};
use crate::metrics::{DnsMetrics, EdgeMetrics, Metrics};
use crate::state::Serving;
use counts::TRANSPORTS;
use zone::Zone;

pub use answer::Found;
pub use counts::{qtype_label_of, rcode_label};
pub use query::Transport;

/// The DNS side of one router.
pub struct Dns {
    config: LiveConfig,
    /// What answers read: the snapshot, regions, the guard, the herd, the routers'
    /// addresses.
    serving: Arc<Serving>,
    /// The DNS side's own series.
    metrics: DnsMetrics,
    /// The edge's, for DNS over HTTPS (forwarded headers ignored).
    edge: EdgeMetrics,
    cfg: DnsConfig,
    zone: Option<Zone>,
    apex: Option<Name>,
    nameservers: Vec<Name>,
    hostmaster: Option<Name>,
    rrl: Option<rrl::Rrl>,
    /// `router_dns_queries_total` series by (transport, type, code), taken from the
    /// family once each, so a query does no map lookup under a lock.
    series: Box<[std::sync::OnceLock<prometheus_client::metrics::counter::Counter>]>,
}

impl Dns {
    /// The DNS side of the router configured by `config`, answering from `serving`,
    /// counting into the DNS and edge series of `metrics`.
    pub fn new(config: LiveConfig, serving: Arc<Serving>, metrics: &Metrics) -> Dns {
        Dns::with_limiter_clock(
            config,
            serving,
            metrics,
            crate::clock::LimiterClock::default(),
        )
    }

    /// [`Dns::new`] with the response-rate limit on `clock` (tests pass a fake one).
    pub fn with_limiter_clock(
        config: LiveConfig,
        serving: Arc<Serving>,
        metrics: &Metrics,
        clock: crate::clock::LimiterClock,
    ) -> Dns {
        let cfg = config.load().dns.clone();
        let (zone, apex, nameservers, hostmaster) = if cfg.enabled() {
            let apex = config::parse_domain(&cfg.zone).expect("validated zone");
            let ns: Vec<String> = if cfg.nameservers.is_empty() {
                vec![format!("ns.{apex}")]
            } else {
                cfg.nameservers.clone()
            };
            let hostmaster = if cfg.hostmaster.is_empty() {
                format!("hostmaster.{apex}")
            } else {
                cfg.hostmaster.clone()
            };
            let fqdn = |n: &str| Name::from_ascii(format!("{}.", n.trim_end_matches('.')));
            (
                Some(Zone::new(&apex, &ns)),
                fqdn(&apex).ok(),
                ns.iter().filter_map(|n| fqdn(n).ok()).collect(),
                fqdn(&hostmaster).ok(),
            )
        } else {
            (None, None, Vec::new(), None)
        };
        Dns {
            rrl: rrl::Rrl::with_clock(&cfg, clock),
            config,
            serving,
            metrics: metrics.dns.clone(),
            edge: metrics.edge.clone(),
            cfg,
            zone,
            apex,
            nameservers,
            hostmaster,
            series: (0..TRANSPORTS.len()
                * crate::metrics::dns::QTYPES.len()
                * crate::metrics::dns::RCODES.len())
                .map(|_| std::sync::OnceLock::new())
                .collect(),
        }
    }

    /// The router's configuration now.
    pub fn config(&self) -> arc_swap::Guard<Arc<FileConfig>> {
        self.config.load()
    }

    /// What answers read.
    pub fn serving(&self) -> &Serving {
        &self.serving
    }

    /// The DNS side's series.
    pub fn metrics(&self) -> &DnsMetrics {
        &self.metrics
    }

    /// The edge's series (DNS over HTTPS counts ignored forwarded headers there).
    pub fn edge_metrics(&self) -> &EdgeMetrics {
        &self.edge
    }

    /// The zone, when DNS is on.
    pub fn zone(&self) -> Option<&Zone> {
        self.zone.as_ref()
    }

    /// The response-rate limiter, when on.
    pub fn rrl(&self) -> Option<&rrl::Rrl> {
        self.rrl.as_ref()
    }
}

#[cfg(test)]
mod fast_tests;
#[cfg(test)]
mod tests;
