//! What forwarding reads to peer shards counts, and whether each peer answers its poll.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::cluster::shard::Sharding;

/// The forwards' metrics; the `peer` label is the peer shard's index.
#[derive(Debug)]
pub struct ForwardMetrics {
    pub(super) requests: IntCounterVec,
    pub(super) seconds: HistogramVec,
    pub(super) peer_up: IntGaugeVec,
    pub(super) batch_keys: HistogramVec,
}

impl ForwardMetrics {
    pub fn register(registry: &Registry, sharding: &Sharding) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            requests: IntCounterVec::new(
                Opts::new(
                    "kv_reader_forwarded_requests_total",
                    "Reads forwarded to the shard holding the key's partition, by peer shard and \
                     outcome (answered, unavailable: a 503, unreachable, timeout)",
                ),
                &["peer", "outcome"],
            )?,
            seconds: HistogramVec::new(
                HistogramOpts::new(
                    "kv_reader_forward_duration_seconds",
                    "Time from sending a forwarded read to the owner's answer headers, by peer",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
                ]),
                &["peer"],
            )?,
            peer_up: IntGaugeVec::new(
                Opts::new(
                    "kv_reader_shard_peer_up",
                    "1 while the peer shard answers its readiness poll, by peer",
                ),
                &["peer"],
            )?,
            batch_keys: HistogramVec::new(
                HistogramOpts::new(
                    "kv_reader_forward_batch_keys",
                    "Reads of one key sent to a peer shard together in one batchGet (reads a \
                     worker forwards to the same owner at the same time), by peer",
                )
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
                &["peer"],
            )?,
        };
        registry.register(Box::new(metrics.requests.clone()))?;
        registry.register(Box::new(metrics.batch_keys.clone()))?;
        registry.register(Box::new(metrics.seconds.clone()))?;
        registry.register(Box::new(metrics.peer_up.clone()))?;
        // Each other peer's series is there at 0 from the start, so the alert on `== 0` fires
        // for a peer that never answers, where a missing series would not. The label is the
        // peer's index, as the forwards and the polls give it.
        for index in 0..sharding.peers.len() {
            if index as u32 != sharding.spec.index {
                metrics
                    .peer_up
                    .with_label_values(&[&index.to_string()])
                    .set(0);
            }
        }
        Ok(metrics)
    }
}
