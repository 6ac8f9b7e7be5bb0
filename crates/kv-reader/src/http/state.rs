//! What every HTTP handler shares: the read core, and what the transfer and health routes
//! need beside it.

use std::rc::Rc;
use std::sync::Arc;

use kv_core::record::RecordCodec;

use crate::acting::owner::Election;
use crate::cluster::coalesce::ForwardBatches;
use crate::cluster::shard::Topology;
use crate::read::ReadCore;
use crate::transfer::cluster::KafkaCluster;
use crate::transfer::metrics::SnapshotMetrics;

#[derive(Debug)]
pub struct HttpState {
    /// Shared with the Redis port.
    pub read: Arc<ReadCore>,
    /// What a snapshot needs: the topic, its partition count, how records are encoded on it.
    pub topic: String,
    pub topology: Arc<Topology>,
    pub codec: RecordCodec,
    /// Snapshots being served (KV_API_SNAPSHOT_CONCURRENCY).
    pub snapshots: Arc<tokio::sync::Semaphore>,
    pub snapshot_metrics: SnapshotMetrics,
    /// Which partitions this process acts on as their owner.
    pub election: Election,
    /// The Kafka cluster this reader reads, once its brokers named it: its snapshots say so.
    pub kafka_cluster: KafkaCluster,
}

/// The HTTP client a worker forwards reads with, and on a shard the lanes its forwarded reads
/// of one key share batches in; one per worker, so its connections and lanes stay on the
/// worker's own runtime.
#[derive(Debug, Clone)]
pub struct PeerClient(pub reqwest::Client, pub Option<Rc<ForwardBatches>>);
