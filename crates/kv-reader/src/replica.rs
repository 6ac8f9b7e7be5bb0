//! The consumer loop that keeps the redb replica up to date with the whole topic.
//!
//! It runs on its own OS thread (librdkafka's poll and redb's commit both block), assigns itself
//! every partition, and applies each polled batch in one redb transaction that also records the
//! next offset per partition. Offsets are handed to Kafka for committing only after that commit.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use kv_core::consistency::ConsistencyToken;
use kv_core::kafka::{client_config, ClientRole};
use kv_core::record::{DecodedRecord, RecordCodec, CORRELATION_ID_HEADER};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use tokio::sync::watch;

use crate::settings::Settings;
use crate::store::{Change, Store, StoreError};

/// Most records applied in one redb transaction.
const MAX_BATCH_RECORDS: usize = 10_000;
/// How long one poll waits for the first record of a batch.
const POLL_WAIT: Duration = Duration::from_millis(100);
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// A partition's progress, as the readiness endpoint reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PartitionProgress {
    /// Offset of the next record to apply; everything below it is in the store.
    pub next_offset: i64,
    /// The partition's end offset when this reader started.
    pub end_offset_at_start: i64,
    pub caught_up: bool,
}

/// What the consumer thread shares with HTTP handlers.
#[derive(Debug)]
pub struct Progress {
    partitions: Mutex<BTreeMap<i32, PartitionProgress>>,
    /// Bumped after every applied batch, so read-your-writes waiters re-check.
    applied: watch::Sender<u64>,
    alive: AtomicBool,
    skipped: AtomicU64,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            partitions: Mutex::default(),
            applied: watch::channel(0).0,
            alive: AtomicBool::new(true),
            skipped: AtomicU64::new(0),
        }
    }
}

impl Progress {
    pub fn snapshot(&self) -> BTreeMap<i32, PartitionProgress> {
        self.partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Ready once partitions are assigned and each reached its end offset seen at start-up.
    pub fn is_ready(&self) -> bool {
        let partitions = self
            .partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        !partitions.is_empty() && partitions.values().all(|p| p.caught_up)
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Whether every offset the token names is already in the store.
    pub fn has_applied(&self, token: &ConsistencyToken) -> bool {
        let partitions = self
            .partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        token.offsets().all(|(partition, offset)| {
            partitions
                .get(&partition)
                .is_some_and(|p| p.next_offset > offset)
        })
    }

    /// Waits until the token's offsets are applied; `false` when `timeout` ran out first.
    pub async fn wait_for(&self, token: &ConsistencyToken, timeout: Duration) -> bool {
        let mut applied = self.applied.subscribe();
        let wait = async {
            loop {
                if self.has_applied(token) {
                    return;
                }
                if applied.changed().await.is_err() {
                    // The sender lives in `self`; this cannot close while we hold `self`.
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    fn start(&self, partitions: BTreeMap<i32, PartitionProgress>) {
        *self
            .partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = partitions;
        self.applied.send_modify(|n| *n += 1);
    }

    fn advance(&self, next_offsets: &BTreeMap<i32, i64>, at_end: &[i32]) {
        {
            let mut partitions = self
                .partitions
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for (partition, &next) in next_offsets {
                if let Some(p) = partitions.get_mut(partition) {
                    p.next_offset = next;
                    p.caught_up |= next >= p.end_offset_at_start;
                }
            }
            for partition in at_end {
                if let Some(p) = partitions.get_mut(partition) {
                    p.caught_up = true;
                }
            }
        }
        self.applied.send_modify(|n| *n += 1);
    }
}

/// Marks the replica dead when the consumer thread ends for any reason, panics included.
struct AliveGuard(Arc<Progress>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Relaxed);
    }
}

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
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Replica {
    pub fn start(
        settings: &Settings,
        store: Arc<Store>,
        codec: RecordCodec,
    ) -> Result<Self, ReplicaError> {
        let interval = settings.commit_interval.as_millis().to_string();
        let commit = if settings.commit_progress {
            "true"
        } else {
            "false"
        };
        let defaults = [
            ("auto.offset.reset", "earliest"),
            ("enable.partition.eof", "true"),
            // Records arrive fast after a write: don't let the broker hold fetches long.
            ("fetch.wait.max.ms", "50"),
        ];
        let mut config = client_config(&defaults, &settings.core.kafka, ClientRole::Consumer);
        config
            .set("group.id", &settings.group_id)
            .set("enable.auto.commit", commit)
            .set("auto.commit.interval.ms", &interval)
            // Offsets are stored by hand, and only after the redb commit that holds them.
            .set("enable.auto.offset.store", "false");
        let consumer: BaseConsumer = config.create()?;
        let progress = Arc::new(Progress::default());
        let stop = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            consumer,
            store,
            codec,
            topic: settings.core.topic.clone(),
            progress: progress.clone(),
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("kv-replica".to_owned())
            .spawn(move || worker.run())?;
        Ok(Self {
            progress,
            stop,
            thread: Some(thread),
        })
    }

    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// Stops consuming and waits for the thread; the last batch is either committed or not begun.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the consumer thread panicked");
            }
        }
    }
}

struct Worker {
    consumer: BaseConsumer,
    store: Arc<Store>,
    codec: RecordCodec,
    topic: String,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
}

impl Worker {
    fn run(self) {
        let _alive = AliveGuard(self.progress.clone());
        if let Err(error) = self.replicate() {
            tracing::error!(%error, "the consumer loop stopped; liveness now fails");
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn replicate(&self) -> Result<(), LoopError> {
        let Some(partitions) = self.discover_partitions() else {
            return Ok(());
        };
        self.assign(&partitions)?;
        let mut next_offsets = BTreeMap::new();
        let mut at_end = Vec::new();
        while !self.stopping() {
            let mut batch: Vec<BorrowedMessage<'_>> = Vec::new();
            let mut wait = POLL_WAIT;
            while batch.len() < MAX_BATCH_RECORDS {
                match self.consumer.poll(wait) {
                    None => break,
                    Some(Ok(message)) => batch.push(message),
                    Some(Err(KafkaError::PartitionEOF(partition))) => at_end.push(partition),
                    Some(Err(error)) => tracing::warn!(%error, "Kafka consumer error"),
                }
                wait = Duration::ZERO;
            }
            let mut changes = Vec::with_capacity(batch.len());
            next_offsets.clear();
            for message in &batch {
                next_offsets.insert(message.partition(), message.offset() + 1);
                if let Some(change) = self.change_for(message) {
                    changes.push(change);
                }
            }
            if !next_offsets.is_empty() {
                self.store.apply(&changes, &next_offsets)?;
                self.hand_offsets_to_kafka(&next_offsets);
            }
            if !next_offsets.is_empty() || !at_end.is_empty() {
                self.progress.advance(&next_offsets, &at_end);
                at_end.clear();
            }
        }
        Ok(())
    }

    /// The change a record makes, or `None` (logged and counted) when it cannot be decoded.
    fn change_for<'m>(&self, message: &'m BorrowedMessage<'_>) -> Option<Change<'m>> {
        match self.codec.decode(message.key(), message.payload()) {
            Ok(DecodedRecord::Put {
                record_key, value, ..
            }) => Some(Change::Put {
                record_key,
                partition: message.partition(),
                offset: message.offset(),
                correlation_id: correlation_id(message),
                value,
            }),
            Ok(DecodedRecord::Delete { record_key }) => Some(Change::Delete { record_key }),
            Err(error) => {
                self.progress.skipped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    partition = message.partition(),
                    offset = message.offset(),
                    reason = error.reason(),
                    "skipping a record that cannot be applied: {error}"
                );
                None
            }
        }
    }

    fn hand_offsets_to_kafka(&self, next_offsets: &BTreeMap<i32, i64>) {
        let mut list = TopicPartitionList::with_capacity(next_offsets.len());
        for (&partition, &next) in next_offsets {
            if let Err(error) =
                list.add_partition_offset(&self.topic, partition, Offset::Offset(next))
            {
                tracing::warn!(%error, partition, "cannot record an offset to commit");
            }
        }
        // Progress is safe in redb already; a failed store only delays what the group shows.
        if let Err(error) = self.consumer.store_offsets(&list) {
            tracing::debug!(%error, "cannot store offsets for commit");
        }
    }

    /// The topic's partitions, retrying while the broker is unreachable; `None` when stopped.
    fn discover_partitions(&self) -> Option<Vec<i32>> {
        loop {
            if self.stopping() {
                return None;
            }
            match self
                .consumer
                .fetch_metadata(Some(&self.topic), METADATA_TIMEOUT)
            {
                Ok(metadata) => {
                    let partitions: Vec<i32> = metadata
                        .topics()
                        .iter()
                        .filter(|t| t.error().is_none())
                        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                        .collect();
                    if !partitions.is_empty() {
                        return Some(partitions);
                    }
                    tracing::warn!(topic = %self.topic, "the topic has no partitions yet; retrying");
                }
                Err(error) => tracing::warn!(%error, "cannot reach Kafka for metadata; retrying"),
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Assigns every partition from the store's offsets, rebuilding from scratch when those
    /// offsets cannot continue the log (another topic, retention passed them, topic recreated).
    fn assign(&self, partitions: &[i32]) -> Result<(), LoopError> {
        let mut watermarks = BTreeMap::new();
        for &partition in partitions {
            let (low, high) =
                self.consumer
                    .fetch_watermarks(&self.topic, partition, METADATA_TIMEOUT)?;
            watermarks.insert(partition, (low, high));
        }
        let mut stored = self.store.next_offsets()?;
        match self.store.topic()? {
            None => self.store.reset(&self.topic)?,
            Some(stored_topic) => {
                if let Some(reason) =
                    rebuild_reason(&self.topic, &stored_topic, &stored, &watermarks)
                {
                    tracing::warn!("rebuilding the replica from scratch: {reason}");
                    self.store.reset(&self.topic)?;
                    stored.clear();
                } else if !stored.is_empty() {
                    tracing::info!(?stored, "resuming from the stored offsets");
                }
            }
        }
        let mut list = TopicPartitionList::with_capacity(partitions.len());
        let mut progress = BTreeMap::new();
        for (&partition, &(low, high)) in &watermarks {
            let next = stored.get(&partition).copied().unwrap_or(low);
            list.add_partition_offset(&self.topic, partition, Offset::Offset(next))?;
            progress.insert(
                partition,
                PartitionProgress {
                    next_offset: next,
                    end_offset_at_start: high,
                    caught_up: next >= high,
                },
            );
        }
        self.consumer.assign(&list)?;
        self.progress.start(progress);
        Ok(())
    }
}

/// Why stored offsets cannot continue the log, if they cannot.
fn rebuild_reason(
    topic: &str,
    stored_topic: &str,
    stored: &BTreeMap<i32, i64>,
    watermarks: &BTreeMap<i32, (i64, i64)>,
) -> Option<String> {
    if stored_topic != topic {
        return Some(format!("the store held topic {stored_topic}, not {topic}"));
    }
    stored
        .iter()
        .find_map(|(partition, &next)| match watermarks.get(partition) {
            Some(&(low, _)) if next < low => Some(format!(
                "partition {partition} now starts at {low}, past the stored offset {next} \
             (retention removed records)"
            )),
            Some(&(_, high)) if next > high => Some(format!(
                "partition {partition} ends at {high}, before the stored offset {next} \
             (the topic was recreated)"
            )),
            None => Some(format!("partition {partition} no longer exists")),
            _ => None,
        })
}

fn correlation_id<'m>(message: &'m BorrowedMessage<'_>) -> Option<&'m [u8]> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(CORRELATION_ID_HEADER))
        .and_then(|h| h.value)
}

#[derive(Debug, thiserror::Error)]
enum LoopError {
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
}
