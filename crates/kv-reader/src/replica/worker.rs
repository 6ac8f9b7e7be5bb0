//! The consume-apply loop: poll a batch, turn it into changes, commit them with their offsets in
//! one store transaction, then tell the change feed, the TTL sweeper, Kafka and the progress.
//! Its side concerns (room on disk, decoding, assignment, rebuilds) sit in their own files as
//! further `impl Worker` blocks, so this file shows the order of a batch's steps.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_core::record::{RecordCodec, CORRELATION_ID_HEADER};
use kv_core::trace_context::{TraceParent, TRACEPARENT};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::acting::ttl::Ttl;
use crate::changes::feed::{ChangeFeed, Committed};
use crate::cluster::shard::{ShardSpec, Topology};
use crate::progress::{Progress, ReplayNote};
use crate::replica::context::{AliveGuard, ReplicaConsumer};
use crate::replica::refusals::Refusals;
use crate::replica::retention::{DeleteRetention, RETENTION_WAIT};
use crate::replica::schema_registry::SchemaFraming;
use kv_core::record::now_ms;

use crate::store::{Change, Store, StoreError};
use crate::transfer::bootstrap::{self, BootstrapConfig};
use crate::transfer::format::ImportProgress;

/// Most records applied in one redb transaction.
const MAX_BATCH_RECORDS: usize = 10_000;
/// Most key and value bytes held in one batch: polled messages pin librdkafka's buffers.
const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

/// How long one poll waits for the first record of a batch.
pub(super) const POLL_WAIT: Duration = Duration::from_millis(100);

pub(super) struct Worker {
    pub(super) bootstrap: Option<BootstrapConfig>,
    pub(super) import: Arc<ImportProgress>,
    /// Set on a sharded reader: only the shard's partitions are assigned.
    pub(super) shard: Option<ShardSpec>,
    pub(super) topology: Arc<Topology>,
    pub(super) consumer: ReplicaConsumer,
    pub(super) store: Arc<Store>,
    /// How records are read ([`super::rebuild::source_format`]); the store remembers it and a
    /// store built under another one is rebuilt.
    pub(super) format: String,
    pub(super) codec: RecordCodec,
    pub(super) framing: SchemaFraming,
    pub(super) topic: String,
    pub(super) progress: Arc<Progress>,
    pub(super) feed: Arc<ChangeFeed>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) discovery_interval: Duration,
    /// Free space a disk store's file system keeps beyond what a batch needs.
    pub(super) min_free_bytes: u64,
    pub(super) delete_retention: DeleteRetention,
    /// Only the consumer thread uses it, between batches.
    pub(super) ttl: RefCell<Ttl>,
}

impl Worker {
    pub(super) fn run(self) {
        let _alive = AliveGuard(self.progress.clone());
        if let Some(config) = &self.bootstrap {
            // A bug in taking a snapshot must cost a replay, never the replica.
            let taken = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                bootstrap::run(
                    config,
                    &self.store,
                    &self.codec,
                    &self.format,
                    &self.import,
                    self.delete_retention.wait(RETENTION_WAIT),
                )
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

    pub(super) fn stopping(&self) -> bool {
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
                let now = now_ms();
                let applied = self
                    .store
                    .apply_at(&changes, &durable, now, &|p| ttl.sweeps(p))?;
                drop(ttl);
                // Watches are told the durable offsets, not the ones read: a resume after the
                // configuration is fixed must see the held records applied.
                self.feed.publish(
                    &changes,
                    &origins,
                    &Committed {
                        removed: &applied.removed,
                        not_applied: &applied.not_applied,
                        durable: &durable,
                        now_ms: now,
                    },
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
            let purged = self.ttl.borrow_mut().tick(&self.store, &self.progress)?;
            // A replica that is not the sweeper sees no record of these deletes.
            self.feed.publish_expired(&purged);
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
}

#[derive(Debug, thiserror::Error)]
pub(super) enum LoopError {
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

/// How often the time of the last broker contact is written to the store.
pub(super) const CONTACT_NOTE_INTERVAL: Duration = Duration::from_secs(30);

pub(super) fn is_out_of_range(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange)
    )
}

pub(super) fn correlation_id<'m>(message: &'m BorrowedMessage<'_>) -> Option<&'m [u8]> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(CORRELATION_ID_HEADER))
        .and_then(|h| h.value)
}

/// The writing request's span from the record's `traceparent` header. Anyone who can produce
/// to the topic could have written that header: only a value that parses is kept, and anything
/// else is as if there were none.
pub(super) fn traceparent(message: &BorrowedMessage<'_>) -> Option<TraceParent> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(TRACEPARENT))
        .and_then(|h| h.value)
        .and_then(TraceParent::parse)
}
