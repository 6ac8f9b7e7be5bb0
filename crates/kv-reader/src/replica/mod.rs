//! The consumer loop that keeps the redb replica up to date with the whole topic.
//!
//! It runs on its own OS thread (librdkafka's poll and redb's commit both block), assigns itself
//! every partition, and applies each polled batch in one redb transaction that also records the
//! next offset per partition. Offsets are handed to Kafka for committing only after that commit,
//! so the group's offsets show lag to Kafka tooling but never claim more than redb holds.

pub mod progress;
pub mod schema_registry;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kv_core::computed::{control_record, Control};
use kv_core::conditional::RecordConditions;
use kv_core::crypto::{ENVELOPE_FORMAT, RECORD_KEY_LEN};
use kv_core::kafka::{client_config, kafka_partition, ClientRole};
use kv_core::kafka_stats::KafkaStats;
use kv_core::record::{
    now_ms, BadTtlHeader, DecodeError, DecodedRecord, RecordCodec, TtlHeaders,
    CORRELATION_ID_HEADER, WRITER_HEADER,
};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::acting::ttl::Ttl;
use crate::changes::feed::ChangeFeed;
use crate::cluster::shard::{ShardSpec, Topology};
use crate::replica::progress::{
    Misconfiguration, PartitionProgress, Progress, ReplayNote, StoreFull,
};
use crate::replica::schema_registry::{BadSchemaHeader, SchemaFraming};
use crate::settings::Settings;
use crate::store::{Change, Decided, Precondition, Store, StoreError};
use crate::transfer::bootstrap::{self, BootstrapConfig};
use crate::transfer::format::ImportProgress;

/// Most records applied in one redb transaction.
const MAX_BATCH_RECORDS: usize = 10_000;
/// Most key and value bytes held in one batch: polled messages pin librdkafka's buffers.
const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;
/// The longest a replica waiting for room in its store sleeps between two looks.
const ROOM_WAIT_MAX: Duration = Duration::from_secs(2);
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
/// Records refused in a row for a configuration reason, with no put applied between them, that
/// make a replica that did apply puts since it started report itself misconfigured. A few
/// foreign records among good ones never come near it; a writer switched to another key does.
pub const MISCONFIGURED_RUN: u64 = 100;
/// The shortest envelope (docs/wire-format.md): format, key id, nonce, key length, tag.
const MIN_ENVELOPE_LEN: usize = 2 + 12 + 4 + 16;
/// What the topic key's fingerprint in the store is the MAC of. A keyed MAC names the key
/// without revealing it; it is also the record key a user key of these bytes would get, which
/// is no secret either: record keys are on the topic.
const KEY_FINGERPRINT_LABEL: &[u8] = b"kv-store-key-id";

/// Hands the end offsets librdkafka learns from fetch responses to [`Progress`], so lag is known
/// without blocking the loop on extra broker round trips.
struct ReplicaContext {
    progress: Arc<Progress>,
    topic: String,
    kafka: Arc<KafkaStats>,
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

struct Worker {
    bootstrap: Option<BootstrapConfig>,
    import: Arc<ImportProgress>,
    /// Set on a sharded reader: only the shard's partitions are assigned.
    shard: Option<ShardSpec>,
    topology: Arc<Topology>,
    consumer: ReplicaConsumer,
    store: Arc<Store>,
    /// How records are read ([`source_format`]); the store remembers it and a store built
    /// under another one is rebuilt.
    format: String,
    codec: RecordCodec,
    framing: SchemaFraming,
    topic: String,
    progress: Arc<Progress>,
    feed: Arc<ChangeFeed>,
    stop: Arc<AtomicBool>,
    discovery_interval: Duration,
    /// Free space a disk store's file system keeps beyond what a batch needs.
    min_free_bytes: u64,
    delete_retention: DeleteRetention,
    /// Only the consumer thread uses it, between batches.
    ttl: RefCell<Ttl>,
}

/// The topic's `delete.retention.ms` (when compacted), read at start-up beside the replica:
/// `None` inside until the answer came, `Some(None)` when there is nothing to check against.
#[derive(Debug, Clone, Default)]
pub struct DeleteRetention(Arc<(Mutex<Option<Option<Duration>>>, Condvar)>);

/// How long a resuming replica waits for the topic's configuration.
const RETENTION_WAIT: Duration = Duration::from_secs(10);

impl DeleteRetention {
    pub fn set(&self, retention: Option<Duration>) {
        let (value, ready) = &*self.0;
        *value.lock().unwrap_or_else(PoisonError::into_inner) = Some(retention);
        ready.notify_all();
    }

    /// The retention, waiting up to `timeout` for the answer; `None` when there is none.
    fn wait(&self, timeout: Duration) -> Option<Duration> {
        let (value, ready) = &*self.0;
        let guard = value.lock().unwrap_or_else(PoisonError::into_inner);
        let (guard, _) = ready
            .wait_timeout_while(guard, timeout, |answer| answer.is_none())
            .unwrap_or_else(PoisonError::into_inner);
        guard.flatten()
    }
}

/// How often the time of the last broker contact is written to the store.
const CONTACT_NOTE_INTERVAL: Duration = Duration::from_secs(30);

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
    Decode(DecodeError),
    SchemaHeader,
    /// A plaintext reader met what has the shape of an envelope of an encrypted topic.
    EncryptedEnvelope,
    TtlHeader(BadTtlHeader),
    /// A condition, idempotency or version header that does not parse: such a record is never
    /// applied as if it had no condition.
    ConditionHeader(String),
    /// A report, tick or sink mark whose record key or header does not fit its header.
    ControlRecord(String),
}

/// The skip reason of [`Skip::ControlRecord`].
pub const CONTROL_RECORD_REASON: &str = "bad_control_record";

/// The skip reason of [`Skip::ConditionHeader`].
pub const CONDITION_HEADER_REASON: &str = "bad_condition_header";

/// The skip reason of [`Skip::EncryptedEnvelope`].
pub const ENCRYPTED_ENVELOPE_REASON: &str = "encrypted_envelope";

/// Skip reasons that mean the reader and the topic disagree on encryption, not that a record is
/// bad: `undecryptable` too, since the key id is one byte and one other key in 256 shares it.
pub const CONFIGURATION_REASONS: [&str; 4] = [
    "wrong_key",
    "undecryptable",
    "not_encrypted",
    ENCRYPTED_ENVELOPE_REASON,
];

impl Skip {
    fn reason(&self) -> &'static str {
        match self {
            Self::Decode(error) => error.reason(),
            Self::SchemaHeader => BadSchemaHeader::REASON,
            Self::EncryptedEnvelope => ENCRYPTED_ENVELOPE_REASON,
            Self::TtlHeader(_) => BadTtlHeader::REASON,
            Self::ConditionHeader(_) => CONDITION_HEADER_REASON,
            Self::ControlRecord(_) => CONTROL_RECORD_REASON,
        }
    }

    fn is_configuration(&self) -> bool {
        CONFIGURATION_REASONS.contains(&self.reason())
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
            Self::EncryptedEnvelope => f.write_str(
                "the record looks encrypted (a 32-byte binary key and an envelope value) but \
                 this reader has no KV_API_ENCRYPT_DATA_ON_KAFKA",
            ),
            Self::TtlHeader(error) => write!(f, "{error}"),
            Self::ConditionHeader(error) | Self::ControlRecord(error) => f.write_str(error),
        }
    }
}

impl Worker {
    fn run(self) {
        let _alive = AliveGuard(self.progress.clone());
        if let Some(config) = &self.bootstrap {
            // A bug in taking a snapshot must cost a replay, never the replica.
            let taken = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                bootstrap::run(config, &self.store, &self.codec, &self.format, &self.import)
                    .is_some()
            }))
            .unwrap_or_else(|_| {
                tracing::error!("taking a snapshot failed unexpectedly; replaying the topic");
                false
            });
            self.import.finished(taken);
        }
        if let Err(error) = self.replicate() {
            let path = self.store.path().map(|p| p.display().to_string());
            tracing::error!(%error, store = path.as_deref().unwrap_or("(memory)"), "the consumer loop stopped; liveness now fails");
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
        // Entries already in the store were applied under the same source format (or it would
        // have been rebuilt), so the key was right for them: a refused record at a partition's
        // tail, held over from the last run, is then a foreign one, not a misconfiguration.
        let mut refusals = Refusals::new(self.store.key_count()? > 0);
        let mut next_discovery = Instant::now() + self.discovery_interval;
        let mut next_contact_note = Instant::now() + CONTACT_NOTE_INTERVAL;
        let mut next_offsets = BTreeMap::new();
        let mut at_end = Vec::new();
        let mut batch: Vec<BorrowedMessage<'_>> = Vec::new();
        while !self.stopping() {
            let mut out_of_range = None;
            let mut bytes = 0;
            let mut wait = self.ttl.borrow().wait_at_most(POLL_WAIT);
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
            if !self.wait_for_room(bytes, &assigned) {
                return Ok(());
            }
            next_offsets.clear();
            let mut changes = Vec::with_capacity(batch.len());
            let mut origins = Vec::with_capacity(batch.len());
            for message in &batch {
                next_offsets.insert(message.partition(), message.offset() + 1);
                match self.change_for(message) {
                    Ok(change) => {
                        if matches!(change, Change::Put { .. }) {
                            refusals.applied_put(message.partition());
                        }
                        changes.push(change);
                        origins.push((
                            message.partition(),
                            message.offset(),
                            correlation_id(message),
                        ));
                    }
                    Err(skip) if skip.is_configuration() => {
                        refusals.refused(message.partition(), message.offset(), skip.reason())
                    }
                    Err(_) => {}
                }
            }
            if !next_offsets.is_empty() {
                // Records refused for a configuration reason are not stepped over for good:
                // the stored offset stays at the first of them until a put after them shows
                // they were foreign records among good ones.
                let durable = refusals.durable(&next_offsets);
                let ttl = self.ttl.borrow();
                let applied = self
                    .store
                    .apply_at(&changes, &durable, now_ms(), &|p| ttl.sweeps(p))?;
                drop(ttl);
                self.feed.publish(
                    &changes,
                    &origins,
                    &applied.removed,
                    &applied.not_applied,
                    &next_offsets,
                );
                self.ttl.borrow_mut().applied(&applied);
                self.hand_offsets_to_kafka(&durable);
                let tombstones = changes
                    .iter()
                    .filter(|change| matches!(change, Change::Delete { .. }))
                    .count();
                self.progress.count_tombstones(tombstones);
            }
            drop((changes, origins));
            let records = batch.len();
            batch.clear();
            if !next_offsets.is_empty() || !at_end.is_empty() {
                self.progress.advance(records, &next_offsets, &at_end);
                at_end.clear();
            }
            if records > 0 {
                let misconfiguration = refusals.misconfiguration();
                if misconfiguration.is_some() != self.progress.misconfiguration().is_some() {
                    match &misconfiguration {
                        Some(m) => tracing::error!(
                            reason = m.reason,
                            refused = m.refused_records,
                            "not ready: {}",
                            m.message
                        ),
                        None => tracing::info!(
                            "records apply again; the replica is no longer misconfigured"
                        ),
                    }
                }
                self.progress.set_misconfiguration(misconfiguration);
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
                refusals = Refusals::new(false);
                self.progress.set_misconfiguration(None);
                continue;
            }
            self.ttl.borrow_mut().tick(&self.store, &self.progress)?;
            note_replay(&self.progress);
            if Instant::now() >= next_contact_note {
                self.note_contact()?;
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

    /// Holds the polled batch, unapplied, while a disk store's file system has less free space
    /// than `batch_bytes` twice over (redb writes new pages before it frees the old) plus the
    /// reserve: a commit that runs out of space leaves redb unusable until it is reopened, so
    /// the replica stops short of it and says so (not ready, `kv_reader_store_writable` 0, an
    /// error naming the path) and goes on serving reads from what it holds. The partitions are
    /// paused meanwhile and the consumer still polled, so librdkafka's callbacks are served;
    /// paused partitions are not fetched, so the lag reads report is the one known when it
    /// stopped. Nothing past the held batch is stored as applied, so nothing is lost
    /// or skipped; it resumes by itself once the room is there. False when stopped meanwhile.
    fn wait_for_room(&self, batch_bytes: usize, assigned: &BTreeSet<i32>) -> bool {
        let needed = self
            .min_free_bytes
            .saturating_add(2 * u64::try_from(batch_bytes).unwrap_or(u64::MAX));
        let free = match self.store.free_bytes() {
            None => return true,
            Some(Ok(free)) if free >= needed => return true,
            Some(Ok(free)) => free,
            Some(Err(error)) => {
                tracing::warn!(%error, "cannot read the store's free space; applying anyway");
                return true;
            }
        };
        let path = self
            .store
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let message = format!(
            "the file system of the store at {path} has {free} bytes free, fewer than the next \
             batch needs ({needed} with KV_API_STATE_STORAGE_MIN_FREE_MB): records are not \
             applied until space is freed; reads are served from what the store holds"
        );
        tracing::error!(store = %path, free_bytes = free, needed_bytes = needed, "not ready: {message}");
        self.progress.set_store_full(Some(StoreFull {
            path: path.clone(),
            free_bytes: free,
            needed_bytes: needed,
            message,
        }));
        let mut partitions = TopicPartitionList::with_capacity(assigned.len());
        for &partition in assigned {
            partitions.add_partition(&self.topic, partition);
        }
        if let Err(error) = self.consumer.pause(&partitions) {
            tracing::warn!(%error, "cannot pause the partitions while the store is full");
        }
        // A record delivered while paused (librdkafka drops what it fetched before the pause,
        // so none should be) is fetched again from its offset after the resume.
        let mut rewind: BTreeMap<i32, i64> = BTreeMap::new();
        let mut wait = POLL_WAIT;
        let resumed = loop {
            if self.stopping() {
                break false;
            }
            match self.consumer.poll(wait) {
                Some(Ok(message)) => {
                    rewind
                        .entry(message.partition())
                        .or_insert(message.offset());
                }
                Some(Err(KafkaError::PartitionEOF(_))) | None => {}
                Some(Err(error)) => tracing::warn!(%error, "Kafka consumer error"),
            }
            wait = (wait * 2).min(ROOM_WAIT_MAX);
            match self.store.free_bytes() {
                Some(Ok(free)) if free < needed => {}
                _ => break true,
            }
        };
        if let Err(error) = self.consumer.resume(&partitions) {
            tracing::warn!(%error, "cannot resume the partitions");
        }
        for (partition, offset) in rewind {
            if let Err(error) = self.consumer.seek(
                &self.topic,
                partition,
                Offset::Offset(offset),
                METADATA_TIMEOUT,
            ) {
                tracing::warn!(%error, partition, "cannot fetch a record again after the pause");
            }
        }
        self.progress.set_store_full(None);
        if resumed {
            tracing::info!(store = %path, "the store has room again; applying records");
        }
        resumed
    }

    /// Writes down when a broker last sent the consumer anything (librdkafka's statistics), so
    /// a restart can tell how long the replica was away. No request of its own: the consumer's
    /// connection is not to be held up by one.
    fn note_contact(&self) -> Result<(), LoopError> {
        if let Some(at) = self.progress.broker_answered_ms() {
            self.store.note_broker_contact(at)?;
        }
        Ok(())
    }

    /// The change a record makes, or why (logged and counted) it cannot be applied.
    fn change_for<'m>(&self, message: &'m BorrowedMessage<'_>) -> Result<Change<'m>, Skip> {
        match self.control_change(message) {
            Ok(None) => {}
            Ok(Some(change)) => return Ok(change),
            Err(skip) => return Err(self.skipping(message, skip)),
        }
        let decoded = self.decode(message);
        if let Ok((
            DecodedRecord::Put { record_key, .. } | DecodedRecord::Delete { record_key },
            _,
        )) = &decoded
        {
            self.check_routing(message.partition(), message.offset(), record_key);
        }
        let conditions = decoded.and_then(|decoded| {
            let headers = message
                .headers()
                .into_iter()
                .flat_map(|headers| headers.iter().map(|h| (h.key, h.value)));
            RecordConditions::from_headers(headers)
                .map(|conditions| (decoded, conditions))
                .map_err(Skip::ConditionHeader)
        });
        match conditions {
            Ok((
                (
                    DecodedRecord::Put {
                        record_key,
                        user_key,
                        value,
                    },
                    ttl,
                ),
                conditions,
            )) => Ok(Change::Put {
                record_key,
                user_key,
                partition: message.partition(),
                offset: message.offset(),
                correlation_id: correlation_id(message),
                value,
                expires_at_ms: ttl.expires_at_ms,
                precondition: precondition(&ttl, conditions.version),
                decided: decided(message, conditions),
            }),
            Ok(((DecodedRecord::Delete { record_key }, ttl), conditions)) => Ok(Change::Delete {
                record_key,
                // On an encrypted topic a record key is a MAC, never a user key.
                user_key: matches!(self.codec, RecordCodec::Plaintext).then_some(record_key),
                partition: message.partition(),
                offset: message.offset(),
                precondition: precondition(&ttl, None),
                decided: decided(message, conditions),
            }),
            Err(skip) => Err(self.skipping(message, skip)),
        }
    }

    fn skipping(&self, message: &BorrowedMessage<'_>, skip: Skip) -> Skip {
        self.progress.count_skipped(skip.reason());
        tracing::warn!(
            partition = message.partition(),
            offset = message.offset(),
            reason = skip.reason(),
            "skipping a record that cannot be applied: {skip}"
        );
        skip
    }

    /// A report, tick or sink mark (`kv_core::computed`), recognised by its header whether or
    /// not this reader has rules: such a record is never an entry.
    fn control_change<'m>(
        &self,
        message: &'m BorrowedMessage<'_>,
    ) -> Result<Option<Change<'m>>, Skip> {
        let Some(headers) = message.headers() else {
            return Ok(None);
        };
        let record_key = message.key().unwrap_or_default();
        let control = control_record(record_key, headers.iter().map(|h| (h.key, h.value)))
            .map_err(Skip::ControlRecord)?;
        let at_ms = || {
            message
                .timestamp()
                .to_millis()
                .and_then(|at| u64::try_from(at).ok())
                .unwrap_or(0)
        };
        let (partition, offset) = (message.partition(), message.offset());
        Ok(control.map(|control| match control {
            Control::Report { key, agent } => Change::Report {
                key,
                agent,
                value: message.payload().unwrap_or_default(),
                partition,
                offset,
                at_ms: at_ms(),
            },
            Control::Tick { key, at_ms } => Change::Tick {
                key,
                partition,
                offset,
                at_ms,
            },
            Control::SinkDone { upto } => Change::SinkDone {
                partition,
                offset,
                upto,
            },
        }))
    }

    /// Counts a record that sits on another partition than the writer's partitioner gives its
    /// key (a foreign producer with another partitioner): a sharded reader routes the key to
    /// that other partition's owners, which never saw it.
    fn check_routing(&self, partition: i32, offset: i64, record_key: &[u8]) {
        let Some(partitions) = self.topology.partitions() else {
            return;
        };
        let expected = kafka_partition(record_key, partitions);
        if expected != partition && self.progress.count_misrouted(partition) {
            tracing::warn!(
                partition,
                offset,
                expected,
                "a record sits on another partition than murmur2 of its key gives (a producer \
                 with another partitioner); sharded readers cannot route its key. Logged once \
                 per partition; kv_reader_misrouted_records_total counts them all"
            );
        }
    }

    /// The record's change and its TTL headers (docs/wire-format.md).
    fn decode<'m>(
        &self,
        message: &'m BorrowedMessage<'_>,
    ) -> Result<(DecodedRecord<'m>, TtlHeaders), Skip> {
        let headers = message
            .headers()
            .into_iter()
            .flat_map(|headers| headers.iter().map(|h| (h.key, h.value)));
        let ttl = TtlHeaders::from_headers(headers, message.payload().is_none())
            .map_err(Skip::TtlHeader)?;
        self.decode_framed(message, ttl.expires_at_ms)
            .map(|record| (record, ttl))
    }

    fn decode_framed<'m>(
        &self,
        message: &'m BorrowedMessage<'_>,
        expires_at_ms: Option<u64>,
    ) -> Result<DecodedRecord<'m>, Skip> {
        if self.framing.is_on() && written_by_kv_writer(message) {
            return self
                .codec
                .decode_expiring(message.key(), message.payload(), expires_at_ms)
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
        let record = self
            .codec
            .decode_expiring(key, payload, expires_at_ms)
            .map_err(Skip::Decode)?;
        match (&self.codec, &record) {
            (
                RecordCodec::Plaintext,
                DecodedRecord::Put {
                    record_key, value, ..
                },
            ) if looks_encrypted(record_key, value) => Err(Skip::EncryptedEnvelope),
            _ => Ok(record),
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
            match self.partitions(METADATA_TIMEOUT) {
                Ok(partitions) if !partitions.is_empty() => return Some(self.held(partitions)),
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

    /// Notes the topic's partition count for routing, and keeps the partitions this replica
    /// holds: all of them, or its shard's.
    fn held(&self, partitions: Vec<i32>) -> Vec<i32> {
        let count = partitions.iter().map(|&p| p + 1).max().unwrap_or(0);
        self.topology
            .set_partitions(u32::try_from(count).unwrap_or(0));
        let Some(shard) = &self.shard else {
            return partitions;
        };
        let held: Vec<i32> = partitions.into_iter().filter(|&p| shard.holds(p)).collect();
        if held.is_empty() {
            tracing::warn!(
                shard = %shard,
                partitions = count,
                "this shard holds none of the topic's partitions (more shards than partitions \
                 × replicas); it forwards every read"
            );
        }
        held
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
                self.store.reset(&self.topic, &self.format)?;
                stored.clear();
                None
            }
            (None, Some(stored_topic)) => {
                let stored_format = self.store.source_format()?;
                (stored_topic == self.topic)
                    .then(|| format_change(stored_format.as_deref(), &self.format))
                    .flatten()
                    .or_else(|| rebuild_reason(&self.topic, &stored_topic, &stored, &watermarks))
                    .or_else(|| {
                        let last = self.store.last_broker_contact_ms().ok().flatten();
                        // Only a resuming replica has a contact to compare, and waits for it.
                        last.and_then(|_| {
                            offline_too_long(
                                last,
                                now_ms(),
                                self.delete_retention.wait(RETENTION_WAIT),
                            )
                        })
                    })
            }
        };
        if let Some(reason) = rebuild {
            tracing::warn!(topic = %self.topic, "rebuilding the replica from scratch: {reason}");
            self.store.reset(&self.topic, &self.format)?;
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
        self.feed.restart(
            progress
                .iter()
                .map(|(&p, started)| (p, started.next_offset)),
        );
        self.progress.start(progress);
        Ok(watermarks.into_keys().collect())
    }

    /// Adds partitions created since the last look; they are read from their beginning.
    fn assign_new_partitions(&self, assigned: &mut BTreeSet<i32>) -> Result<(), LoopError> {
        let partitions = match self.partitions(DISCOVERY_TIMEOUT) {
            Ok(partitions) => self.held(partitions),
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

/// Records refused for a configuration reason since the last put each partition applied.
#[derive(Debug, Default)]
struct Refusals {
    /// Per partition, the offset of the first record refused since its last applied put: the
    /// offset stored for the partition stays there.
    held: BTreeMap<i32, i64>,
    /// Whether the store holds puts: applied since start-up, or found in it at start-up.
    applied_any: bool,
    /// Refused in a row, over all partitions, since the last put applied anywhere.
    run: u64,
    reason: Option<&'static str>,
}

impl Refusals {
    fn new(store_holds_entries: bool) -> Self {
        Self {
            applied_any: store_holds_entries,
            ..Self::default()
        }
    }

    fn applied_put(&mut self, partition: i32) {
        self.held.remove(&partition);
        self.applied_any = true;
        self.run = 0;
        self.reason = None;
    }

    fn refused(&mut self, partition: i32, offset: i64, reason: &'static str) {
        self.held.entry(partition).or_insert(offset);
        self.run += 1;
        self.reason = Some(reason);
    }

    /// The next offsets that may be stored: none past a held record.
    fn durable(&self, next_offsets: &BTreeMap<i32, i64>) -> BTreeMap<i32, i64> {
        next_offsets
            .iter()
            .map(|(&partition, &next)| {
                let held = self.held.get(&partition).copied();
                (partition, held.map_or(next, |held| held.min(next)))
            })
            .collect()
    }

    /// Misconfigured: records were refused and no put applied since, and either the store holds
    /// no put at all (none found at start-up, none applied since) or the refusals reach
    /// [`MISCONFIGURED_RUN`].
    fn misconfiguration(&self) -> Option<Misconfiguration> {
        let reason = self.reason?;
        if self.run == 0 || (self.applied_any && self.run < MISCONFIGURED_RUN) {
            return None;
        }
        let what = match reason {
            "not_encrypted" => {
                "the topic's records are not encrypted, but this reader has \
                 KV_API_ENCRYPT_DATA_ON_KAFKA=true"
            }
            ENCRYPTED_ENVELOPE_REASON => {
                "the topic's records are encrypted, but this reader has no \
                 KV_API_ENCRYPT_DATA_ON_KAFKA (and KV_API_AES_KEY)"
            }
            _ => "the topic's records are encrypted under another key than this reader's KV_API_AES_KEY",
        };
        Some(Misconfiguration {
            reason,
            refused_records: self.run,
            message: format!(
                "{what} ({} records refused as {reason} since the last one applied); their \
                 offsets are not stored, so a restart with the topic's settings applies them",
                self.run
            ),
        })
    }
}

/// A record a plaintext reader must not store as a value: the shape kv-writer gives records on
/// an encrypted topic, a 32-byte record key that is not UTF-8 text (a MAC) and a value that
/// starts with the envelope format byte and holds at least an empty envelope. A text key of 32
/// characters never matches; a binary one matches only beside such a value.
fn looks_encrypted(record_key: &[u8], value: &[u8]) -> bool {
    record_key.len() == RECORD_KEY_LEN
        && std::str::from_utf8(record_key).is_err()
        && value.len() >= MIN_ENVELOPE_LEN
        && value[0] == ENVELOPE_FORMAT
}

/// How this reader reads records, as the store remembers it: the topic encryption and a keyed
/// fingerprint of its key (never the key), and which parts carry schema-registry framing.
/// A sharded store also names its layout: another layout holds other partitions.
pub(crate) fn source_format(
    codec: &RecordCodec,
    framing: &SchemaFraming,
    shard: Option<&ShardSpec>,
) -> String {
    let encryption = match codec {
        RecordCodec::Plaintext => "off".to_owned(),
        RecordCodec::Encrypted(cipher) => {
            let fingerprint = cipher.record_key(KEY_FINGERPRINT_LABEL);
            let hex: String = fingerprint[..16]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("aes-256-gcm/{hex}")
        }
    };
    let framing = match (framing.key.is_some(), framing.value.is_some()) {
        (false, false) => "none",
        (true, false) => "key",
        (false, true) => "value",
        (true, true) => "key+value",
    };
    match shard {
        None => format!("encryption={encryption} schema_framing={framing}"),
        Some(shard) => format!(
            "encryption={encryption} schema_framing={framing} shard={}",
            shard.layout()
        ),
    }
}

/// Why a store built under `stored` cannot serve a reader reading records as `current`.
fn format_change(stored: Option<&str>, current: &str) -> Option<String> {
    let Some(stored) = stored else {
        return Some(
            "the store does not say which topic encryption and schema framing it was built \
             under (an older kv-reader wrote it)"
                .to_owned(),
        );
    };
    if stored == current {
        return None;
    }
    let field = |format: &str, name: &str| -> String {
        format
            .split_whitespace()
            .find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or("unknown")
            .to_owned()
    };
    let (was, now) = (field(stored, "encryption"), field(current, "encryption"));
    let key = |encryption: &str| encryption.split_once('/').map(|(_, f)| f.to_owned());
    if was != now {
        return Some(match (key(&was), key(&now)) {
            (Some(was), Some(now)) => format!(
                "the store was built under another topic key (fingerprint {was}) than \
                 KV_API_AES_KEY now gives (fingerprint {now})"
            ),
            (None, Some(_)) => "the store was built from plaintext records, and this reader \
                                now decrypts them (KV_API_ENCRYPT_DATA_ON_KAFKA=true)"
                .to_owned(),
            (Some(was), None) => format!(
                "the store was built under topic encryption (key fingerprint {was}), and this \
                 reader now reads plaintext (no KV_API_ENCRYPT_DATA_ON_KAFKA)"
            ),
            (None, None) => format!("the store was built with encryption {was}, now {now}"),
        });
    }
    let layout = |format: &str| match field(format, "shard") {
        unknown if unknown == "unknown" => "none (a full replica)".to_owned(),
        layout => layout,
    };
    let (was, now) = (layout(stored), layout(current));
    if was != now {
        return Some(format!(
            "the store was built for shard layout {was} (index/shards x replicas), this reader \
             is {now} (KV_API_SHARD, KV_API_SHARD_REPLICAS): it holds other partitions"
        ));
    }
    Some(format!(
        "the store was built with schema-registry framing stripped from {}, now from {} \
         (the registry's subjects for the topic changed)",
        field(stored, "schema_framing"),
        field(current, "schema_framing")
    ))
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

/// When a record a partition's owner wrote applies, from its headers (`version`: a repair's
/// `X-KV-Version`); `None` for any other record.
fn precondition(ttl: &TtlHeaders, version: Option<i64>) -> Option<Precondition> {
    match (ttl.expired_offset, ttl.repair_of) {
        (Some(expired), _) => Some(Precondition::Expires(expired)),
        (None, Some(stale)) => Some(Precondition::Repairs(stale, version)),
        (None, None) => None,
    }
}

/// What a writer waits to have decided about the record, if anything.
fn decided<'m>(
    message: &BorrowedMessage<'_>,
    conditions: RecordConditions<'m>,
) -> Option<Decided<'m>> {
    conditions.is_decided().then(|| Decided {
        published: conditions.published,
        condition: conditions.condition,
        idempotency_key: conditions.idempotency_key,
        timestamp_ms: message
            .timestamp()
            .to_millis()
            .and_then(|at| u64::try_from(at).ok())
            .unwrap_or(0),
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

/// Says how far a replay got every KV_API_REPLAY_PROGRESS_INTERVAL_MS, and when the replica is
/// ready: a replay of millions of records otherwise shows nothing between
/// "rebuilding" and ready.
fn note_replay(progress: &Progress) {
    match progress.replay_note() {
        None => {}
        Some(ReplayNote::Progress(replay)) => {
            let eta = replay.eta.map(|eta| eta.as_secs());
            tracing::info!(
                applied = replay.applied,
                total = replay.applied + replay.remaining,
                records_per_second = replay.records_per_second.round() as u64,
                eta_seconds = eta,
                "replaying: {} of {} records applied, {:.0} records/s, ready in about {}",
                replay.applied,
                replay.applied + replay.remaining,
                replay.records_per_second,
                eta.map_or_else(|| "?".to_owned(), |s| format!("{s} s")),
            );
        }
        Some(ReplayNote::Ready(replay)) => tracing::info!(
            seconds = replay.elapsed.as_secs_f64(),
            records = replay.applied,
            "ready after {:.1} s, {} records",
            replay.elapsed.as_secs_f64(),
            replay.applied
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::schema_registry::SchemaIds;

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

    #[test]
    fn a_few_refused_records_among_puts_neither_hold_offsets_nor_flag_the_replica() {
        let mut refusals = Refusals::default();
        refusals.applied_put(0);
        refusals.refused(0, 1, "wrong_key");
        refusals.refused(1, 7, "wrong_key");
        refusals.applied_put(0);
        let next = BTreeMap::from([(0, 3), (1, 9)]);
        assert_eq!(
            refusals.durable(&next),
            BTreeMap::from([(0, 3), (1, 7)]),
            "partition 1 holds until a put lands after its refused record"
        );
        assert_eq!(refusals.misconfiguration(), None);
        refusals.applied_put(1);
        assert_eq!(refusals.durable(&next), next);
    }

    #[test]
    fn refusing_everything_since_start_up_is_a_misconfiguration_and_holds_the_offsets() {
        let mut refusals = Refusals::default();
        for offset in 4..7 {
            refusals.refused(0, offset, "wrong_key");
        }
        let misconfiguration = refusals.misconfiguration().expect("misconfigured");
        assert_eq!(misconfiguration.reason, "wrong_key");
        assert_eq!(misconfiguration.refused_records, 3);
        assert!(misconfiguration.message.contains("KV_API_AES_KEY"));
        assert_eq!(
            refusals.durable(&BTreeMap::from([(0, 7)])),
            BTreeMap::from([(0, 4)])
        );
    }

    #[test]
    fn a_refused_record_held_over_a_restart_of_a_store_with_entries_is_a_foreign_one() {
        let mut refusals = Refusals::new(true);
        refusals.refused(2, 40, "wrong_key");
        assert_eq!(refusals.misconfiguration(), None);
        assert_eq!(
            refusals.durable(&BTreeMap::from([(2, 41)])),
            BTreeMap::from([(2, 40)]),
            "still held: a restart reads it again"
        );
        let mut empty = Refusals::new(false);
        empty.refused(2, 40, "wrong_key");
        assert!(empty.misconfiguration().is_some());
    }

    #[test]
    fn a_long_run_of_refusals_after_good_puts_is_a_misconfiguration() {
        let mut refusals = Refusals::default();
        refusals.applied_put(0);
        for offset in 1..MISCONFIGURED_RUN as i64 {
            refusals.refused(0, offset, "not_encrypted");
        }
        assert_eq!(refusals.misconfiguration(), None);
        refusals.refused(0, MISCONFIGURED_RUN as i64, "not_encrypted");
        let misconfiguration = refusals.misconfiguration().expect("misconfigured");
        assert!(misconfiguration
            .message
            .contains("KV_API_ENCRYPT_DATA_ON_KAFKA=true"));
        refusals.applied_put(0);
        assert_eq!(refusals.misconfiguration(), None, "a put clears it");
    }

    #[test]
    fn a_plaintext_reader_knows_an_envelope_by_its_mac_key_and_format_byte() {
        let cipher = kv_core::crypto::TopicCipher::new(&[3; 32]);
        let record_key = cipher.record_key(b"user-1");
        let envelope = cipher.seal(&record_key, b"user-1", b"");
        assert!(looks_encrypted(&record_key, &envelope));
        let hex_id = b"0123456789abcdef0123456789abcdef";
        assert!(
            !looks_encrypted(hex_id, &envelope),
            "a 32-character text key is a user key"
        );
        assert!(!looks_encrypted(&record_key, b"\x01short"));
        assert!(!looks_encrypted(&record_key[..31], &envelope));
    }

    #[test]
    fn the_store_format_names_the_key_by_fingerprint_never_the_key() {
        let key = [0x42u8; 32];
        let encrypted = RecordCodec::Encrypted(Arc::new(kv_core::crypto::TopicCipher::new(&key)));
        let format = source_format(&encrypted, &SchemaFraming::default(), None);
        let key_hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!format.contains(&key_hex[..8]), "{format}");
        assert!(format.starts_with("encryption=aes-256-gcm/"), "{format}");
        assert_eq!(
            format,
            source_format(&encrypted, &SchemaFraming::default(), None)
        );
        let other = RecordCodec::Encrypted(Arc::new(kv_core::crypto::TopicCipher::new(&[7; 32])));
        assert_ne!(
            format,
            source_format(&other, &SchemaFraming::default(), None)
        );
        assert_eq!(
            source_format(
                &RecordCodec::Plaintext,
                &SchemaFraming::of_parts(None, Some(SchemaIds::default())),
                None
            ),
            "encryption=off schema_framing=value"
        );
    }

    #[test]
    fn a_store_built_under_another_key_encryption_or_framing_is_rebuilt_with_the_reason() {
        let plain = source_format(&RecordCodec::Plaintext, &SchemaFraming::default(), None);
        let a = source_format(
            &RecordCodec::Encrypted(Arc::new(kv_core::crypto::TopicCipher::new(&[1; 32]))),
            &SchemaFraming::default(),
            None,
        );
        let b = source_format(
            &RecordCodec::Encrypted(Arc::new(kv_core::crypto::TopicCipher::new(&[2; 32]))),
            &SchemaFraming::default(),
            None,
        );
        assert_eq!(format_change(Some(&a), &a), None);
        let reason = format_change(Some(&a), &b).expect("another key");
        assert!(reason.contains("another topic key"), "{reason}");
        let reason = format_change(Some(&plain), &a).expect("now encrypted");
        assert!(reason.contains("plaintext"), "{reason}");
        let reason = format_change(Some(&a), &plain).expect("now plaintext");
        assert!(reason.contains("now reads plaintext"), "{reason}");
        let framed = source_format(
            &RecordCodec::Plaintext,
            &SchemaFraming::of_parts(Some(SchemaIds::default()), Some(SchemaIds::default())),
            None,
        );
        let reason = format_change(Some(&plain), &framed).expect("framing");
        assert!(reason.contains("schema-registry framing"), "{reason}");
        assert!(format_change(None, &plain).is_some(), "an older store");
        let shard = ShardSpec::parse("1/3", 2).expect("spec");
        let sharded = source_format(
            &RecordCodec::Plaintext,
            &SchemaFraming::default(),
            Some(&shard),
        );
        let reason = format_change(Some(&plain), &sharded).expect("now sharded");
        assert!(reason.contains("full replica"), "{reason}");
        assert!(reason.contains("1/3x2"), "{reason}");
    }
}
