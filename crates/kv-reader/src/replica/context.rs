//! The librdkafka side of the consumer: the callbacks it makes on the consumer thread, and the
//! guard that marks the replica dead when that thread ends. Kept apart because librdkafka calls
//! into it, not the loop.

use std::sync::Arc;

use kv_core::kafka_stats::KafkaStats;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

use crate::progress::Progress;
use kv_core::record::now_ms;

/// Hands the end offsets librdkafka learns from fetch responses to [`Progress`], so lag is known
/// without blocking the loop on extra broker round trips.
pub(super) struct ReplicaContext {
    pub(super) progress: Arc<Progress>,
    pub(super) topic: String,
    pub(super) kafka: Arc<KafkaStats>,
}

impl ClientContext for ReplicaContext {
    fn error(&self, error: KafkaError, reason: &str) {
        match error {
            // Reaching the end of a partition is how readiness is reached, not a failure.
            // librdkafka reports it both per partition and, through this callback, as a global
            // error; neither is a failure.
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF) => {
                tracing::trace!(reason, "partition end reached")
            }
            error => tracing::error!(%error, reason, "Kafka client error"),
        }
    }

    fn stats(&self, statistics: Statistics) {
        self.kafka.observe(&statistics);
        // `rxidle`: microseconds since the connection last received anything (-1: never).
        let heard = statistics
            .brokers
            .values()
            .filter(|broker| broker.nodeid >= 0 && broker.state == "UP" && broker.rxidle >= 0)
            .map(|broker| broker.rxidle)
            .min();
        if let Some(idle_us) = heard {
            let idle_ms = u64::try_from(idle_us / 1000).unwrap_or(0);
            self.progress
                .note_broker_answer(now_ms().saturating_sub(idle_ms));
        }
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let ends: Vec<(i32, i64)> = topic
            .partitions
            .values()
            .filter(|p| p.partition >= 0 && p.hi_offset >= 0)
            .map(|p| (p.partition, p.hi_offset))
            .collect();
        self.progress.observe_end_offsets(&ends);
    }
}

impl ConsumerContext for ReplicaContext {}

pub(super) type ReplicaConsumer = BaseConsumer<ReplicaContext>;

/// Marks the replica dead when the consumer thread ends for any reason, panics included.
pub(super) struct AliveGuard(pub(super) Arc<Progress>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.mark_dead();
    }
}
