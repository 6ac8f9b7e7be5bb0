//! Waiting for room on the store's file system. A redb commit that runs out of space leaves the
//! database unusable until it is reopened, so the loop stops short of one here, and this wait has
//! to keep the consumer polled and its partitions paused while it holds a batch.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::progress::StoreFull;
use crate::replica::assignment::METADATA_TIMEOUT;
use crate::replica::worker::{Worker, POLL_WAIT};

/// The longest a replica waiting for room in its store sleeps between two looks.
const ROOM_WAIT_MAX: Duration = Duration::from_secs(2);

impl Worker {
    /// Holds the polled batch, unapplied, while a disk store's file system has less free space
    /// than `batch_bytes` twice over (redb writes new pages before it frees the old) plus the
    /// reserve: a commit that runs out of space leaves redb unusable until it is reopened, so
    /// the replica stops short of it and says so (not ready, `kv_reader_store_writable` 0, an
    /// error naming the path) and goes on serving reads from what it holds. The partitions are
    /// paused meanwhile and the consumer still polled, so librdkafka's callbacks are served;
    /// paused partitions are not fetched, so the lag reads report is the one known when it
    /// stopped. Nothing past the held batch is stored as applied, so nothing is lost
    /// or skipped; it resumes by itself once the room is there. False when stopped meanwhile.
    pub(super) fn wait_for_room(&self, batch_bytes: usize, assigned: &BTreeSet<i32>) -> bool {
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
}
