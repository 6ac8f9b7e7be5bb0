//! The consumer loop that keeps the redb replica up to date with the topic: all of it, or the
//! partitions of this reader's shard.
//!
//! It runs on its own OS thread (librdkafka's poll and redb's commit both block), assigns itself
//! the partitions it keeps, and applies each polled batch in one redb transaction that also
//! records the next offset per partition. Offsets are handed to Kafka for committing only after
//! that commit, so the group's offsets show lag to Kafka tooling but never claim more than redb
//! holds.
//!
//! This file is what the rest of the reader sees of it (start, stop, what it is wired with); the
//! loop's concerns each have a file of their own below it, so one can be read without the others.

mod assignment;
mod context;
mod decode;
pub mod metrics;
mod rebuild;
mod refusals;
mod retention;
mod room;
pub mod schema_registry;
mod worker;

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use kv_core::kafka::{client_config, ClientRole};
use kv_core::kafka_stats::KafkaStats;
use kv_core::record::RecordCodec;
use rdkafka::error::KafkaError;

use crate::acting::ttl::Ttl;
use crate::changes::feed::ChangeFeed;
use crate::cluster::shard::Topology;
use crate::progress::Progress;
use crate::replica::context::{ReplicaConsumer, ReplicaContext};
use crate::replica::rebuild::source_format;
use crate::replica::schema_registry::SchemaFraming;
use crate::replica::worker::Worker;
use crate::settings::Settings;
use crate::store::Store;
use crate::transfer::bootstrap::BootstrapConfig;
use crate::transfer::format::ImportProgress;

pub use decode::{CONDITION_HEADER_REASON, CONFIGURATION_REASONS, CONTROL_RECORD_REASON};
pub use refusals::{ENCRYPTED_ENVELOPE_REASON, MISCONFIGURED_RUN};
pub use retention::DeleteRetention;

/// How long stopping waits for the consumer to close. Closing commits the last progress to the
/// group and waits for the coordinator, for ever when no broker answers; that commit only shows
/// lag to Kafka tooling (the store holds the offsets that matter), so it is not worth outliving
/// an orchestrator's grace period for.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("cannot create the Kafka consumer: {0}")]
    Kafka(#[from] KafkaError),
    #[error("cannot start the consumer thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// The running consumer thread.
#[derive(Debug)]
pub struct Replica {
    /// A snapshot being taken at start-up (`KV_API_BOOTSTRAP_PEERS`), for the metrics.
    import: Arc<ImportProgress>,
    progress: Arc<Progress>,
    feed: Arc<ChangeFeed>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Disconnected once the consumer thread has closed everything and is about to end.
    closed: mpsc::Receiver<()>,
}

/// What the consumer thread works with besides the settings and the store.
#[derive(Debug)]
pub struct Wiring {
    pub codec: RecordCodec,
    pub framing: SchemaFraming,
    /// Gets the topic's `delete.retention.ms` when the topic is compacted and the broker
    /// reports it: a store that heard nothing from the broker for longer is rebuilt.
    pub delete_retention: DeleteRetention,
    /// Where the topic's partition count goes, for routing.
    pub topology: Arc<Topology>,
    /// Where a store without a replica takes a snapshot from first.
    pub bootstrap: Option<BootstrapConfig>,
    /// Purges expired entries and sweeps the partitions it is given, between batches.
    pub ttl: Ttl,
    /// Where the consumer's librdkafka statistics become metrics.
    pub kafka_stats: Arc<KafkaStats>,
}

impl Replica {
    pub fn start(
        settings: &Settings,
        store: Arc<Store>,
        wiring: Wiring,
    ) -> Result<Self, ReplicaError> {
        let Wiring {
            codec,
            framing,
            delete_retention,
            topology,
            bootstrap,
            ttl,
            kafka_stats,
        } = wiring;
        let interval = settings.commit_interval.as_millis().to_string();
        let commit = if settings.commit_progress {
            "true"
        } else {
            "false"
        };
        let defaults = [
            ("enable.partition.eof", "true"),
            // Records arrive fast after a write: don't let the broker hold fetches long.
            ("fetch.wait.max.ms", "50"),
            // Feeds the lag figure; see ReplicaContext.
            ("statistics.interval.ms", "1000"),
        ];
        let mut config = client_config(&defaults, &settings.core.kafka, ClientRole::Consumer);
        config
            .set("group.id", &settings.group_id)
            .set("enable.auto.commit", commit)
            .set("auto.commit.interval.ms", &interval)
            // Offsets are stored by hand, and only after the redb commit that holds them.
            .set("enable.auto.offset.store", "false")
            // Every fetch position comes from the store. When it falls out of the log (retention
            // passed it, the topic was recreated) the loop must hear of it and rebuild; a silent
            // reset would skip deletes and keep stale keys forever.
            .set("auto.offset.reset", "error");
        let progress = Arc::new(Progress::new(
            settings.max_read_your_writes_waiters,
            settings.replay_progress_interval,
        ));
        let feed = Arc::new(ChangeFeed::new(&settings.watch, store.clone()));
        let consumer: ReplicaConsumer = config.create_with_context(ReplicaContext {
            progress: progress.clone(),
            topic: settings.core.topic.clone(),
            kafka: kafka_stats,
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let (closing, closed) = mpsc::channel();
        let shard = settings.shard.as_ref().map(|sharding| sharding.spec);
        let import = Arc::new(ImportProgress::default());
        let worker = Worker {
            bootstrap,
            import: import.clone(),
            shard,
            topology,
            consumer,
            store,
            format: source_format(&codec, &framing, shard.as_ref()),
            codec,
            framing,
            topic: settings.core.topic.clone(),
            progress: progress.clone(),
            feed: feed.clone(),
            stop: stop.clone(),
            discovery_interval: settings.partition_discovery_interval,
            min_free_bytes: settings.storage_min_free_bytes,
            delete_retention,
            ttl: RefCell::new(ttl),
        };
        let thread = std::thread::Builder::new()
            .name("kv-replica".to_owned())
            .spawn(move || {
                let _closing = closing;
                worker.run();
            })?;
        Ok(Self {
            import,
            progress,
            feed,
            stop,
            thread: Some(thread),
            closed,
        })
    }

    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    pub fn import_progress(&self) -> Arc<ImportProgress> {
        self.import.clone()
    }

    /// The changes the consumer committed, for watches.
    pub fn feed(&self) -> Arc<ChangeFeed> {
        self.feed.clone()
    }

    /// Stops consuming and waits for the thread; the last batch is either committed or not begun.
    /// When the consumer cannot close within [`CLOSE_GRACE`] (no broker answers its last group
    /// commit), the thread is left behind: the store is already closed by then.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        match self.closed.recv_timeout(CLOSE_GRACE) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                if let Some(thread) = self.thread.take() {
                    if thread.join().is_err() {
                        tracing::error!("the consumer thread panicked");
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => tracing::warn!(
                grace = ?CLOSE_GRACE,
                "the consumer did not close in time (no broker answers its last progress commit); \
                 stopping anyway: the replica's offsets are in its store"
            ),
        }
    }
}
