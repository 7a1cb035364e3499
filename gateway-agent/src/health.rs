//! Health probes with hysteresis: unhealthy after 3 failures, healthy after 2 successes.

use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

/// How to check the gateway's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthProbe {
    /// A TCP connect to `HOST:PORT` succeeds.
    Tcp(String),
    /// An HTTP GET answers 2xx.
    Http(String),
}

impl FromStr for HealthProbe {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(addr) = s.strip_prefix("tcp:") {
            let ok = addr
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                return Err(format!("health probe {s:?}: expected tcp:HOST:PORT"));
            }
            return Ok(HealthProbe::Tcp(addr.to_string()));
        }
        if let Some(url) = s.strip_prefix("http:") {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!("health probe {s:?}: expected http:http(s)://..."));
            }
            return Ok(HealthProbe::Http(url.to_string()));
        }
        Err(format!(
            "health probe {s:?}: expected tcp:HOST:PORT or http:URL"
        ))
    }
}

/// Why one probe failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The TCP connect failed.
    #[error("connect {addr}: {source}")]
    Connect {
        /// `HOST:PORT`.
        addr: String,
        /// The system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The TCP connect took longer than the probe's timeout.
    #[error("connect {addr}: timed out")]
    ConnectTimedOut {
        /// `HOST:PORT`.
        addr: String,
    },
    /// The GET was answered, not with a 2xx.
    #[error("GET {url}: status {status}")]
    Status {
        /// The URL probed.
        url: String,
        /// The status answered.
        status: reqwest::StatusCode,
    },
    /// The GET got no answer.
    #[error("GET {url}: {source}")]
    Get {
        /// The URL probed.
        url: String,
        /// The client's reason.
        #[source]
        source: reqwest::Error,
    },
}

impl HealthProbe {
    /// Runs the probe once; `Err` says what failed.
    pub async fn check(&self, http: &reqwest::Client, timeout: Duration) -> Result<(), ProbeError> {
        match self {
            HealthProbe::Tcp(addr) => {
                match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(source)) => Err(ProbeError::Connect {
                        addr: addr.clone(),
                        source,
                    }),
                    Err(_) => Err(ProbeError::ConnectTimedOut { addr: addr.clone() }),
                }
            }
            HealthProbe::Http(url) => match http.get(url).timeout(timeout).send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(ProbeError::Status {
                    url: url.clone(),
                    status: r.status(),
                }),
                Err(source) => Err(ProbeError::Get {
                    url: url.clone(),
                    source,
                }),
            },
        }
    }
}

/// Turns a series of probe results into a stable health verdict.
#[derive(Debug, Clone)]
pub struct Hysteresis {
    healthy: Option<bool>,
    failures: u32,
    successes: u32,
    fail_after: NonZeroU32,
    recover_after: NonZeroU32,
}

impl Default for Hysteresis {
    fn default() -> Self {
        Hysteresis::new(
            NonZeroU32::new(3).expect("not zero"),
            NonZeroU32::new(2).expect("not zero"),
        )
    }
}

impl Hysteresis {
    /// Unhealthy after `fail_after` consecutive failures, healthy again after
    /// `recover_after` consecutive successes. The first result sets the initial state.
    pub fn new(fail_after: NonZeroU32, recover_after: NonZeroU32) -> Hysteresis {
        Hysteresis {
            healthy: None,
            failures: 0,
            successes: 0,
            fail_after,
            recover_after,
        }
    }

    /// The verdict so far (`None` before the first probe).
    pub fn healthy(&self) -> Option<bool> {
        self.healthy
    }

    /// Feeds one result; returns the verdict after it.
    pub fn observe(&mut self, ok: bool) -> bool {
        if ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let verdict = match self.healthy {
            None => ok,
            Some(true) => self.failures < self.fail_after.get(),
            Some(false) => self.successes >= self.recover_after.get(),
        };
        self.healthy = Some(verdict);
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hysteresis() {
        let mut h = Hysteresis::default();
        assert!(h.observe(true));
        assert!(h.observe(false));
        assert!(h.observe(false));
        assert!(!h.observe(false), "third failure flips");
        assert!(!h.observe(true));
        assert!(!h.observe(false), "a failure resets the success run");
        assert!(!h.observe(true));
        assert!(h.observe(true), "second success flips back");
        let mut first_bad = Hysteresis::default();
        assert!(
            !first_bad.observe(false),
            "first probe decides the start state"
        );
    }

    #[test]
    fn parses_probes() {
        assert_eq!(
            "tcp:127.0.0.1:80".parse(),
            Ok(HealthProbe::Tcp("127.0.0.1:80".into()))
        );
        assert_eq!(
            "http:http://h/health".parse(),
            Ok(HealthProbe::Http("http://h/health".into()))
        );
        for bad in ["tcp:host", "tcp::1", "http:h/health", "udp:h:1", ""] {
            assert!(bad.parse::<HealthProbe>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn flips_only_after_a_full_run(results in proptest::collection::vec(any::<bool>(), 1..60)) {
            let mut h = Hysteresis::default();
            let mut prev = None;
            for (i, ok) in results.iter().enumerate() {
                let v = h.observe(*ok);
                if let Some(p) = prev {
                    if p != v {
                        let need = if v { 2 } else { 3 };
                        prop_assert!(i + 1 >= need);
                        prop_assert!(results[i + 1 - need..=i].iter().all(|r| *r == v));
                    }
                }
                prev = Some(v);
            }
        }
    }
}
