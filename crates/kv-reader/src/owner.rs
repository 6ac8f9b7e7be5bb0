//! The acting owner of a partition (docs/architecture.md, "The acting owner of a partition").
//!
//! Owner candidates (`KV_API_OWNER=true`, alias `KV_API_TTL_SWEEPER`) keep the owner's
//! bookkeeping for every partition they hold (expired entries until their tombstone, repairs
//! owed), so any of them can take a partition over at once; only the partition's current owner
//! produces (the TTL sweep, repairs). Who owns what:
//!
//! - unsharded: Kafka's own group membership. Every candidate joins the consumer group
//!   `KV_API_OWNER_GROUP_ID` (default `kv-owners.<topic>`) on the topic, with its partitions
//!   paused (it fetches nothing); the group's assignment is the ownership, and the broker
//!   reassigns a dead or paused member's partitions after its session timeout.
//! - sharded: the first owner of the partition, primary first, that is caught up on it, as this
//!   shard last heard from its peers (the readiness poll, once a second).
//!
//! Nothing here must be exact: two processes acting on one partition at once (a paused process
//! resuming, a partition of the network) only produce records every replica decides in log
//! order, which a duplicate or a stale one cannot turn into a lost or changed write.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use kv_core::kafka::{client_config, ClientRole};
use kv_core::settings::KafkaProperties;
use prometheus::{IntGauge, Registry};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::{ClientContext, TopicPartitionList};
use serde::Serialize;

use crate::cluster::Cluster;
use crate::progress::Progress;
use crate::store::now_ms;

/// How long a candidate's group session lives without a heartbeat: a dead or paused owner's
/// partitions move after about this long (the failover goal is 10 s).
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(200);

/// How this process learns which partitions it owns.
#[derive(Clone)]
pub enum Election {
    /// Not a candidate: it owns nothing.
    Off,
    /// The consumer group's assignment.
    Group(Arc<GroupOwnership>),
    /// The shards' readiness, as this shard last heard it.
    Shards(Arc<Cluster>),
}

impl std::fmt::Debug for Election {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.mode())
    }
}

/// What `/healthz/cluster` shows of this process's ownership.
#[derive(Debug, Serialize)]
pub struct OwnerView {
    pub mode: &'static str,
    /// Partition → since when (milliseconds since the Unix epoch) this process owns it.
    pub partitions: BTreeMap<i32, u64>,
}

impl Election {
    pub fn mode(&self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Group(_) => "group",
            Self::Shards(_) => "shards",
        }
    }

    /// Whether this process is the acting owner of `partition` now (`progress`: its own).
    pub fn owns(&self, partition: i32, progress: &Progress) -> bool {
        match self {
            Self::Off => false,
            Self::Group(group) => group.owns(partition),
            Self::Shards(cluster) => {
                cluster.acting_owner(partition, progress) == Some(cluster.spec.index)
            }
        }
    }

    pub fn view(&self, progress: &Progress) -> OwnerView {
        let partitions = match self {
            Self::Off => BTreeMap::new(),
            Self::Group(group) => group.owned(),
            Self::Shards(cluster) => {
                let count = cluster.partitions().unwrap_or(0) as i32;
                let mut since = cluster
                    .owned_since
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let now = now_ms();
                let owned: BTreeMap<i32, u64> = (0..count)
                    .filter(|&p| cluster.acting_owner(p, progress) == Some(cluster.spec.index))
                    .map(|p| (p, *since.entry(p).or_insert(now)))
                    .collect();
                since.retain(|p, _| owned.contains_key(p));
                owned
            }
        };
        OwnerView {
            mode: self.mode(),
            partitions,
        }
    }
}

/// The partitions the owner group assigned this process, and since when.
#[derive(Debug, Default)]
pub struct GroupOwnership {
    owned: RwLock<BTreeMap<i32, u64>>,
    gauge: Option<IntGauge>,
}

impl GroupOwnership {
    fn owns(&self, partition: i32) -> bool {
        self.owned
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&partition)
    }

    fn owned(&self) -> BTreeMap<i32, u64> {
        self.owned
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn change(&self, list: &TopicPartitionList, assigned: bool) {
        let mut owned = self.owned.write().unwrap_or_else(PoisonError::into_inner);
        let now = now_ms();
        for element in list.elements() {
            if assigned {
                owned.entry(element.partition()).or_insert(now);
            } else {
                owned.remove(&element.partition());
            }
        }
        if let Some(gauge) = &self.gauge {
            gauge.set(owned.len() as i64);
        }
        tracing::info!(
            owned = ?owned.keys().collect::<Vec<_>>(),
            "the partitions this process acts on as owner changed"
        );
    }
}

/// The owner group's consumer context: its rebalances are the ownership.
struct OwnerContext {
    ownership: Arc<GroupOwnership>,
}

impl ClientContext for OwnerContext {}

impl ConsumerContext for OwnerContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            // Given up before the group hands them on.
            self.ownership.change(list, false);
            let _ = consumer;
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                // The candidate only needs the membership: it fetches nothing.
                if let Err(error) = consumer.pause(list) {
                    tracing::warn!(%error, "cannot pause the owner group's partitions");
                }
                self.ownership.change(list, true);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => {
                tracing::warn!(%error, "the owner group's rebalance failed");
            }
        }
    }

    fn commit_callback(&self, _: KafkaResult<()>, _: &TopicPartitionList) {}
}

/// The thread that keeps this candidate in the owner group; dropping it leaves the group, so a
/// stopping owner hands its partitions on at once instead of after its session timeout.
#[derive(Debug)]
pub struct GroupMember {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Joins the owner group `group_id` on `topic`.
pub fn join_group(
    kafka: &KafkaProperties,
    topic: &str,
    group_id: &str,
    registry: &Registry,
) -> Result<(Arc<GroupOwnership>, GroupMember), OwnerError> {
    let gauge = IntGauge::new(
        "kv_reader_owned_partitions",
        "Partitions this process acts on as their owner (TTL sweep, repairs) now",
    )?;
    registry.register(Box::new(gauge.clone()))?;
    let ownership = Arc::new(GroupOwnership {
        owned: RwLock::default(),
        gauge: Some(gauge),
    });
    let session = SESSION_TIMEOUT.as_millis().to_string();
    let heartbeat = HEARTBEAT_INTERVAL.as_millis().to_string();
    let defaults = [
        ("group.id", group_id),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("auto.offset.reset", "latest"),
        ("session.timeout.ms", session.as_str()),
        ("heartbeat.interval.ms", heartbeat.as_str()),
        ("partition.assignment.strategy", "roundrobin"),
    ];
    let mut config = client_config(&defaults, kafka, ClientRole::Consumer);
    // The group is the project's, whatever KAFKA_GROUP_ID says.
    config.set("group.id", group_id);
    let consumer: BaseConsumer<OwnerContext> = config.create_with_context(OwnerContext {
        ownership: ownership.clone(),
    })?;
    consumer.subscribe(&[topic])?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let thread = std::thread::Builder::new()
        .name("kv-owner".into())
        .spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                if let Some(Err(error)) = consumer.poll(POLL) {
                    tracing::debug!(%error, "owner group consumer");
                }
            }
            consumer.unsubscribe();
            // Serves the revocation, so the group hands the partitions on now.
            let _ = consumer.poll(POLL);
        })
        .map_err(OwnerError::Thread)?;
    Ok((
        ownership,
        GroupMember {
            stop,
            thread: Some(thread),
        },
    ))
}

#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error("cannot join the owner group: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("cannot register the owner metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot start the owner group's thread: {0}")]
    Thread(std::io::Error),
}
