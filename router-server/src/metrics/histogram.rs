//! [`AtomicHistogram`]: the request-latency histogram, observed with relaxed atomic adds
//! and encoded as prometheus-client's own histogram would be.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Upper bounds of the latency buckets: 50 µs doubling to ~1.6 s.
const LATENCY_BOUNDS: [f64; 16] = {
    let mut b = [0.0; 16];
    let mut i = 0;
    let mut v = 0.00005;
    while i < 16 {
        b[i] = v;
        v *= 2.0;
        i += 1;
    }
    b
};

/// A latency histogram whose `observe` is a few relaxed atomic adds.
///
/// prometheus-client's own `Histogram` takes a mutex per observation; on the request
/// path of every worker thread that lock is contended and parks threads, which cost
/// this server half its throughput in `scripts/bench-http.sh`.
#[derive(Debug, Clone, Default)]
pub struct AtomicHistogram {
    inner: Arc<HistogramInner>,
}

#[derive(Debug, Default)]
struct HistogramInner {
    /// Per-bucket (not cumulative) counts; the last one is +Inf.
    buckets: [AtomicU64; 17],
    count: AtomicU64,
    /// Sum of observations in nanoseconds.
    sum_nanos: AtomicU64,
}

impl AtomicHistogram {
    /// Records one duration in seconds.
    pub fn observe(&self, secs: f64) {
        let i = LATENCY_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BOUNDS.len());
        let h = &self.inner;
        h.buckets[i].fetch_add(1, Ordering::Relaxed);
        h.count.fetch_add(1, Ordering::Relaxed);
        h.sum_nanos
            .fetch_add((secs * 1e9) as u64, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.inner.count.load(Ordering::Relaxed)
    }

    /// `(sum, count, buckets)` as the encoder takes them: each bucket's own count (the
    /// encoder accumulates), the last bound `+Inf`, and `count` the total of the buckets
    /// read, so `_count` equals the `+Inf` bucket even while requests are observed.
    fn buckets(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let h = &self.inner;
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(&h.buckets)
            .map(|(bound, n)| (bound, n.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (sum, count, buckets)
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.buckets();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Metrics, RouteLabels};

    /// Parses `name_bucket{...le="B"} N` lines of one histogram: (bound text, count).
    fn buckets_of(text: &str, name: &str) -> Vec<(String, u64)> {
        let prefix = format!("{name}_bucket{{");
        text.lines()
            .filter(|l| l.starts_with(&prefix))
            .map(|l| {
                let le = l.split("le=\"").nth(1).unwrap().split('"').next().unwrap();
                let n = l.rsplit(' ').next().unwrap().parse().unwrap();
                (le.to_string(), n)
            })
            .collect()
    }

    #[test]
    fn histogram_buckets_are_cumulative_once_and_end_at_inf() {
        let m = Metrics::default();
        let h = m
            .http
            .latency
            .get_or_create(&RouteLabels { route: "/gateways" });
        for secs in [0.00001, 0.00001, 0.0003, 0.002, 0.5, 100.0] {
            h.observe(secs);
        }
        let text = m.render();
        let b = buckets_of(&text, "router_http_request_duration_seconds");
        assert_eq!(b.len(), LATENCY_BOUNDS.len() + 1, "{text}");
        assert_eq!(b[0], ("0.00005".to_string(), 2), "{text}");
        assert!(
            b.windows(2).all(|w| w[0].1 <= w[1].1),
            "non-decreasing: {b:?}"
        );
        assert_eq!(b.last().unwrap(), &("+Inf".to_string(), 6), "{text}");
        assert!(
            text.contains("router_http_request_duration_seconds_count{route=\"/gateways\"} 6"),
            "{text}"
        );
        let below_1s = b.iter().rev().nth(1).unwrap();
        assert_eq!(
            below_1s.1, 5,
            "the 100 s observation is only in +Inf: {b:?}"
        );
    }
}
