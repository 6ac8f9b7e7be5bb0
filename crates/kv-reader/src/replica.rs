//! The consumer loop that keeps the redb replica up to date with the whole topic.
//!
//! It runs on its own OS thread (librdkafka's poll and redb's commit both block), assigns itself
//! every partition, and applies each polled batch in one redb transaction that also records the
//! next offset per partition. Offsets are handed to Kafka for committing only after that commit,
//! so the group's offsets show lag to Kafka tooling but never claim more than redb holds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kv_core::kafka::{client_config, ClientRole};
use kv_core::record::{DecodedRecord, RecordCodec, CORRELATION_ID_HEADER, WRITER_HEADER};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::framing::{BadSchemaHeader, SchemaFraming};
use crate::progress::{PartitionProgress, Progress};
use crate::settings::Settings;
use crate::store::{Change, Store, StoreError};

/// Most records applied in one redb transaction.
const MAX_BATCH_RECORDS: usize = 10_000;
/// Most key and value bytes held in one batch: polled messages pin librdkafka's buffers.
const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;
/// How long one poll waits for the first record of a batch.
const POLL_WAIT: Duration = Duration::from_millis(100);
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
/// How long stopping waits for the consumer to close. Closing commits the last progress to the
/// group and waits for the coordinator, for ever when no broker answers; that commit only shows
/// lag to Kafka tooling (the store holds the offsets that matter), so it is not worth outliving
/// an orchestrator's grace period for.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Partition discovery runs on the consumer thread; keep each look short.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Hands the end offsets librdkafka learns from fetch responses to [`Progress`], so lag is known
/// without blocking the loop on extra broker round trips.
struct ReplicaContext {
    progress: Arc<Progress>,
    topic: String,
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

type ReplicaConsumer = BaseConsumer<ReplicaContext>;

/// Marks the replica dead when the consumer thread ends for any reason, panics included.
struct AliveGuard(Arc<Progress>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.mark_dead();
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
    /// Disconnected once the consumer thread has closed everything and is about to end.
    closed: mpsc::Receiver<()>,
}

impl Replica {
    /// `delete_retention` is the topic's `delete.retention.ms` when the topic is compacted and
    /// the broker reported it: a store that heard nothing from the broker for longer is rebuilt.
    pub fn start(
        settings: &Settings,
        store: Arc<Store>,
        codec: RecordCodec,
        framing: SchemaFraming,
        delete_retention: Option<Duration>,
    ) -> Result<Self, ReplicaError> {
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
        let progress = Arc::new(Progress::default());
        let consumer: ReplicaConsumer = config.create_with_context(ReplicaContext {
            progress: progress.clone(),
            topic: settings.core.topic.clone(),
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let (closing, closed) = mpsc::channel();
        let worker = Worker {
            consumer,
            store,
            codec,
            framing,
            topic: settings.core.topic.clone(),
            progress: progress.clone(),
            stop: stop.clone(),
            discovery_interval: settings.partition_discovery_interval,
            delete_retention,
        };
        let thread = std::thread::Builder::new()
            .name("kv-replica".to_owned())
            .spawn(move || {
                let _closing = closing;
                worker.run();
            })?;
        Ok(Self {
            progress,
            stop,
            thread: Some(thread),
            closed,
        })
    }

    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
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

struct Worker {
    consumer: ReplicaConsumer,
    store: Arc<Store>,
    codec: RecordCodec,
    framing: SchemaFraming,
    topic: String,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
    discovery_interval: Duration,
    delete_retention: Option<Duration>,
}

/// How often the time of the last broker contact is written to the store.
const CONTACT_NOTE_INTERVAL: Duration = Duration::from_secs(30);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Why a store that heard from the broker at `last_contact_ms` cannot be trusted at `now_ms`:
/// compaction removes a tombstone `delete.retention.ms` after it was written, so a replica away
/// for longer may hold a key whose delete it never saw.
fn offline_too_long(
    last_contact_ms: Option<u64>,
    now_ms: u64,
    delete_retention: Option<Duration>,
) -> Option<String> {
    let (last, retention) = (last_contact_ms?, delete_retention?);
    let away = now_ms.saturating_sub(last);
    let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
    (away > retention_ms).then(|| {
        format!(
            "this replica last heard from the broker {} s ago, longer than the topic's \
             delete.retention.ms ({retention_ms} ms): compaction may have removed deletes it \
             never saw",
            away / 1000
        )
    })
}

/// Why a record is skipped.
#[derive(Debug)]
enum Skip {
    Decode(kv_core::record::DecodeError),
    SchemaHeader,
}

impl Skip {
    fn reason(&self) -> &'static str {
        match self {
            Self::Decode(error) => error.reason(),
            Self::SchemaHeader => BadSchemaHeader::REASON,
        }
    }
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Decode(error) => write!(f, "{error}"),
            Self::SchemaHeader => f.write_str(
                "the payload starts with the schema-registry magic byte but is shorter than \
                 its 5-byte header",
            ),
        }
    }
}

impl Worker {
    fn run(self) {
        let _alive = AliveGuard(self.progress.clone());
        if let Err(error) = self.replicate() {
            tracing::error!(%error, "the consumer loop stopped; liveness now fails");
        }
        // The store first: closing the consumer can block on an unreachable broker, and the
        // process may then exit without waiting for it.
        let Worker {
            consumer, store, ..
        } = self;
        drop(store);
        drop(consumer);
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn replicate(&self) -> Result<(), LoopError> {
        let Some(mut assigned) = self.assign_all(None)? else {
            return Ok(());
        };
        let mut next_discovery = Instant::now() + self.discovery_interval;
        let mut next_contact_note = Instant::now() + CONTACT_NOTE_INTERVAL;
        let mut next_offsets = BTreeMap::new();
        let mut at_end = Vec::new();
        let mut batch: Vec<BorrowedMessage<'_>> = Vec::new();
        while !self.stopping() {
            let mut out_of_range = None;
            let mut bytes = 0;
            let mut wait = POLL_WAIT;
            while batch.len() < MAX_BATCH_RECORDS && bytes < MAX_BATCH_BYTES {
                match self.consumer.poll(wait) {
                    None => break,
                    Some(Ok(message)) => {
                        bytes += message.payload_len() + message.key_len();
                        batch.push(message);
                    }
                    Some(Err(KafkaError::PartitionEOF(partition))) => at_end.push(partition),
                    Some(Err(error)) if is_out_of_range(&error) => {
                        out_of_range = Some(error);
                        break;
                    }
                    Some(Err(error)) => tracing::warn!(%error, "Kafka consumer error"),
                }
                wait = Duration::ZERO;
            }
            next_offsets.clear();
            let mut changes = Vec::with_capacity(batch.len());
            for message in &batch {
                next_offsets.insert(message.partition(), message.offset() + 1);
                if let Some(change) = self.change_for(message) {
                    changes.push(change);
                }
            }
            if !next_offsets.is_empty() {
                self.store.apply(&changes, &next_offsets)?;
                self.hand_offsets_to_kafka(&next_offsets);
                let tombstones = changes
                    .iter()
                    .filter(|change| matches!(change, Change::Delete { .. }))
                    .count();
                self.progress.count_tombstones(tombstones);
            }
            drop(changes);
            let records = batch.len();
            batch.clear();
            if !next_offsets.is_empty() || !at_end.is_empty() {
                self.progress.advance(records, &next_offsets, &at_end);
                at_end.clear();
            }
            if let Some(error) = out_of_range {
                let reason = format!(
                    "a stored offset is no longer in the log ({error}): retention removed \
                     records this replica had not read, or the topic was recreated"
                );
                match self.assign_all(Some(reason))? {
                    Some(partitions) => assigned = partitions,
                    None => return Ok(()),
                }
                continue;
            }
            if Instant::now() >= next_contact_note {
                self.note_contact(&assigned)?;
                next_contact_note = Instant::now() + CONTACT_NOTE_INTERVAL;
            }
            if Instant::now() >= next_discovery {
                match self.assign_new_partitions(&mut assigned) {
                    Err(LoopError::Kafka(error)) => {
                        tracing::warn!(%error, "cannot assign new partitions; trying again later")
                    }
                    other => other?,
                }
                next_discovery = Instant::now() + self.discovery_interval;
            }
        }
        Ok(())
    }

    /// Writes down that the broker still answers for the topic (one watermark request), so a
    /// restart can tell how long the replica was away; an unanswered request writes nothing.
    fn note_contact(&self, assigned: &BTreeSet<i32>) -> Result<(), LoopError> {
        let Some(&partition) = assigned.iter().next() else {
            return Ok(());
        };
        match self
            .consumer
            .fetch_watermarks(&self.topic, partition, METADATA_TIMEOUT)
        {
            Ok(_) => self.store.note_broker_contact(now_ms())?,
            Err(error) => tracing::debug!(%error, "the broker did not answer a watermark request"),
        }
        Ok(())
    }

    /// The change a record makes, or `None` (logged and counted) when it cannot be applied.
    fn change_for<'m>(&self, message: &'m BorrowedMessage<'_>) -> Option<Change<'m>> {
        match self.decode(message) {
            Ok(DecodedRecord::Put {
                record_key,
                user_key,
                value,
            }) => Some(Change::Put {
                record_key,
                user_key,
                partition: message.partition(),
                offset: message.offset(),
                correlation_id: correlation_id(message),
                value,
            }),
            Ok(DecodedRecord::Delete { record_key }) => Some(Change::Delete {
                record_key,
                // On an encrypted topic a record key is a MAC, never a user key.
                user_key: matches!(self.codec, RecordCodec::Plaintext).then_some(record_key),
            }),
            Err(skip) => {
                self.progress.count_skipped(skip.reason());
                tracing::warn!(
                    partition = message.partition(),
                    offset = message.offset(),
                    reason = skip.reason(),
                    "skipping a record that cannot be applied: {skip}"
                );
                None
            }
        }
    }

    fn decode<'m>(&self, message: &'m BorrowedMessage<'_>) -> Result<DecodedRecord<'m>, Skip> {
        if self.framing.is_on() && written_by_kv_writer(message) {
            return self
                .codec
                .decode(message.key(), message.payload())
                .map_err(Skip::Decode);
        }
        let key = self
            .framing
            .strip_key(message.key())
            .map_err(|_| Skip::SchemaHeader)?;
        let payload = self
            .framing
            .strip_value(message.payload())
            .map_err(|_| Skip::SchemaHeader)?;
        self.codec.decode(key, payload).map_err(Skip::Decode)
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
            match self.partitions(METADATA_TIMEOUT) {
                Ok(partitions) if !partitions.is_empty() => return Some(partitions),
                Ok(_) => {
                    tracing::warn!(topic = %self.topic, "the topic does not exist yet; retrying")
                }
                Err(error) => tracing::warn!(%error, "cannot reach Kafka for metadata; retrying"),
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Finds the topic's partitions and assigns them all, retrying while Kafka cannot answer:
    /// a broker outage at start-up or during a rebuild is waited out, not fatal. `None` when
    /// stopped.
    fn assign_all(&self, rebuild: Option<String>) -> Result<Option<BTreeSet<i32>>, LoopError> {
        loop {
            let Some(partitions) = self.discover_partitions() else {
                return Ok(None);
            };
            match self.assign(&partitions, rebuild.clone()) {
                Ok(assigned) => return Ok(Some(assigned)),
                Err(LoopError::Kafka(error)) => {
                    tracing::warn!(%error, "cannot assign the topic's partitions yet; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(error) => return Err(error),
            }
        }
    }

    fn partitions(&self, timeout: Duration) -> Result<Vec<i32>, KafkaError> {
        let metadata = self.consumer.fetch_metadata(Some(&self.topic), timeout)?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|t| t.name() == self.topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect())
    }

    /// Assigns every partition from the store's offsets, rebuilding from scratch when told to
    /// or when those offsets cannot continue the log (another topic, retention passed them,
    /// topic recreated).
    fn assign(
        &self,
        partitions: &[i32],
        rebuild: Option<String>,
    ) -> Result<BTreeSet<i32>, LoopError> {
        let mut watermarks = BTreeMap::new();
        for &partition in partitions {
            let (low, high) =
                self.consumer
                    .fetch_watermarks(&self.topic, partition, METADATA_TIMEOUT)?;
            watermarks.insert(partition, (low, high));
        }
        let mut stored = self.store.next_offsets()?;
        let rebuild = match (rebuild, self.store.topic()?) {
            (Some(reason), _) => Some(reason),
            (None, None) => {
                self.store.reset(&self.topic)?;
                stored.clear();
                None
            }
            (None, Some(stored_topic)) => {
                rebuild_reason(&self.topic, &stored_topic, &stored, &watermarks).or_else(|| {
                    let last = self.store.last_broker_contact_ms().ok().flatten();
                    offline_too_long(last, now_ms(), self.delete_retention)
                })
            }
        };
        if let Some(reason) = rebuild {
            tracing::warn!(topic = %self.topic, "rebuilding the replica from scratch: {reason}");
            self.store.reset(&self.topic)?;
            stored.clear();
            self.progress.count_rebuild();
        }
        // The watermarks above are the broker's answer for the topic.
        self.store.note_broker_contact(now_ms())?;
        if !stored.is_empty() {
            tracing::info!(?stored, "resuming from the stored offsets");
        }
        let mut list = TopicPartitionList::with_capacity(partitions.len());
        let mut progress = BTreeMap::new();
        for (&partition, &(low, high)) in &watermarks {
            let next = stored.get(&partition).copied().unwrap_or(low);
            list.add_partition_offset(&self.topic, partition, Offset::Offset(next))?;
            progress.insert(partition, PartitionProgress::new(next, high, false));
        }
        self.consumer.assign(&list)?;
        self.progress.start(progress);
        Ok(watermarks.into_keys().collect())
    }

    /// Adds partitions created since the last look; they are read from their beginning.
    fn assign_new_partitions(&self, assigned: &mut BTreeSet<i32>) -> Result<(), LoopError> {
        let partitions = match self.partitions(DISCOVERY_TIMEOUT) {
            Ok(partitions) => partitions,
            Err(error) => {
                tracing::debug!(%error, "partition discovery failed; trying again later");
                return Ok(());
            }
        };
        let stored = self.store.next_offsets()?;
        // Partitions found once the replica is ready do not make it unready again: it stays
        // in rotation and the lag header tells how far behind it is.
        let already_ready = self.progress.is_ready();
        let mut list = TopicPartitionList::new();
        let mut added = BTreeMap::new();
        for partition in partitions.into_iter().filter(|p| !assigned.contains(p)) {
            let (low, high) = match self.consumer.fetch_watermarks(
                &self.topic,
                partition,
                DISCOVERY_TIMEOUT,
            ) {
                Ok(watermarks) => watermarks,
                Err(error) => {
                    tracing::debug!(%error, partition, "cannot read a new partition's offsets yet");
                    continue;
                }
            };
            let next = stored.get(&partition).copied().unwrap_or(low).max(low);
            list.add_partition_offset(&self.topic, partition, Offset::Offset(next))?;
            added.insert(partition, PartitionProgress::new(next, high, already_ready));
        }
        if added.is_empty() {
            return Ok(());
        }
        self.consumer.incremental_assign(&list)?;
        tracing::info!(partitions = ?added.keys().collect::<Vec<_>>(), "assigned new partitions of the topic");
        assigned.extend(added.keys().copied());
        self.progress.add(added);
        Ok(())
    }
}

fn is_out_of_range(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange)
    )
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
            None => Some(format!(
                "partition {partition} no longer exists (the topic was recreated)"
            )),
            _ => None,
        })
}

/// Whether kv-writer produced the record: its bytes are the user's, never registry-framed.
fn written_by_kv_writer(message: &BorrowedMessage<'_>) -> bool {
    message.headers().is_some_and(|headers| {
        headers
            .iter()
            .any(|h| h.key.eq_ignore_ascii_case(WRITER_HEADER))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_offsets_inside_the_log_resume() {
        let stored = BTreeMap::from([(0, 5), (1, 0)]);
        let watermarks = BTreeMap::from([(0, (0, 9)), (1, (0, 0)), (2, (0, 3))]);
        assert_eq!(rebuild_reason("t", "t", &stored, &watermarks), None);
    }

    #[test]
    fn a_replica_away_for_longer_than_delete_retention_is_rebuilt() {
        let day = Duration::from_secs(86_400);
        let now = 10 * 86_400_000;
        assert!(offline_too_long(Some(now - 86_400_001), now, Some(day)).is_some());
        assert_eq!(
            offline_too_long(Some(now - 86_399_000), now, Some(day)),
            None
        );
        assert_eq!(offline_too_long(None, now, Some(day)), None, "a new store");
        assert_eq!(
            offline_too_long(Some(0), now, None),
            None,
            "no compaction, or nothing reported"
        );
    }

    #[test]
    fn offsets_outside_the_log_or_another_topic_rebuild() {
        let watermarks = BTreeMap::from([(0, (4, 9))]);
        for stored in [BTreeMap::from([(0, 3)]), BTreeMap::from([(0, 10)])] {
            assert!(rebuild_reason("t", "t", &stored, &watermarks).is_some());
        }
        assert!(rebuild_reason("t", "t", &BTreeMap::from([(1, 0)]), &watermarks).is_some());
        assert!(rebuild_reason("t", "u", &BTreeMap::new(), &watermarks).is_some());
    }
}
