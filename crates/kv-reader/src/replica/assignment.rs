//! Which partitions this replica reads and where it starts each: all of the topic's or its
//! shard's, from the store's offsets, found again while it runs so partitions added to the topic
//! are read too. The reader assigns them itself rather than through the group: each replica
//! needs every partition it keeps, which a group would share out among the replicas.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::progress::PartitionProgress;
use crate::replica::worker::{LoopError, Worker};
use kv_core::record::now_ms;

pub(super) const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// Partition discovery runs on the consumer thread; keep each look short.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(2);

impl Worker {
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
    pub(super) fn assign_all(
        &self,
        rebuild: Option<String>,
    ) -> Result<Option<BTreeSet<i32>>, LoopError> {
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
        let stored = self.resume_offsets(rebuild, &watermarks)?;
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
    pub(super) fn assign_new_partitions(
        &self,
        assigned: &mut BTreeSet<i32>,
    ) -> Result<(), LoopError> {
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
