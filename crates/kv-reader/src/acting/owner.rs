//! The acting owner of a partition (docs/architecture.md, "The acting owner of a partition").
//!
//! Owner candidates (`KV_API_OWNER=true`, alias `KV_API_TTL_SWEEPER`) keep the owner's
//! bookkeeping for every partition they hold (expired entries until their tombstone, repairs
//! owed), so any of them can take a partition over at once; only the partition's current owner
//! produces (the TTL sweep, repairs). Who owns what:
//!
//! - unsharded: leases in the log. Every candidate produces a heartbeat, keyed by an id of its
//!   own, to the one-partition topic `KV_API_OWNER_TOPIC` (default `<topic>-owners`) every
//!   second, and reads everyone's back; a candidate is live while its heartbeat came back within
//!   [`SESSION_TIMEOUT`], and each partition is owned by one live candidate, the same one in
//!   every candidate's view ([`owner_among`]). It needs nothing from the broker but produce and
//!   fetch (no group coordination).
//! - sharded: the first owner of the partition, primary first, that is caught up on it, as this
//!   shard last heard from its peers (the readiness poll, once a second).
//!
//! Nothing here must be exact: two processes acting on one partition at once (a paused process
//! resuming, a partition of the network) only produce records every replica decides in log
//! order, which a duplicate or a stale one cannot turn into a lost or changed write.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kv_core::kafka::{client_config, ClientRole};
use kv_core::record::now_ms;
use kv_core::settings::KafkaProperties;
use prometheus::{IntGauge, Registry};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::cluster::Cluster;
use crate::progress::Progress;

/// How long a candidate's lease lives without a heartbeat: a dead or paused owner's partitions
/// move after about this long (the failover goal is 10 s).
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(100);
const CREATE_TIMEOUT: Duration = Duration::from_secs(5);

/// How this process learns which partitions it owns.
#[derive(Clone)]
pub enum Election {
    /// Not a candidate: it owns nothing.
    Off,
    /// The live candidates' leases.
    Leases(Arc<LeaseOwnership>),
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
            Self::Leases(_) => "leases",
            Self::Shards(_) => "shards",
        }
    }

    /// Whether this process is the acting owner of `partition` now (`progress`: its own).
    pub fn owns(&self, partition: i32, progress: &Progress) -> bool {
        match self {
            Self::Off => false,
            Self::Leases(leases) => leases.owns(partition),
            Self::Shards(cluster) => {
                cluster.acting_owner(partition, progress) == Some(cluster.spec.index)
            }
        }
    }

    pub fn view(&self, progress: &Progress) -> OwnerView {
        let partitions = match self {
            Self::Off => BTreeMap::new(),
            Self::Leases(leases) => leases.owned(),
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

/// Which partitions the live candidates' leases give this process, and since when.
#[derive(Debug, Default)]
pub struct LeaseOwnership {
    owned: RwLock<BTreeMap<i32, u64>>,
    gauge: Option<IntGauge>,
}

impl LeaseOwnership {
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

    /// Makes `partitions` the owned set, keeping the `since` of those already owned.
    fn set(&self, partitions: &[i32]) {
        let mut owned = self.owned.write().unwrap_or_else(PoisonError::into_inner);
        let now = now_ms();
        let before: Vec<i32> = owned.keys().copied().collect();
        owned.retain(|p, _| partitions.contains(p));
        for &p in partitions {
            owned.entry(p).or_insert(now);
        }
        if let Some(gauge) = &self.gauge {
            gauge.set(owned.len() as i64);
        }
        if before.iter().copied().ne(owned.keys().copied()) {
            tracing::info!(
                owned = ?owned.keys().collect::<Vec<_>>(),
                "the partitions this process acts on as owner changed"
            );
        }
    }
}

/// The owner of `partition` among `live` candidates: with their ids in order, the one at
/// `partition mod count`, so every candidate with the same view picks the same one and the
/// partitions are spread evenly.
pub fn owner_among<'a>(live: impl IntoIterator<Item = &'a str>, partition: i32) -> Option<&'a str> {
    let mut live: Vec<&str> = live.into_iter().collect();
    if live.is_empty() {
        return None;
    }
    live.sort_unstable();
    Some(live[partition.unsigned_abs() as usize % live.len()])
}

/// The thread that keeps this candidate's lease; dropping it ends the lease with a tombstone, so
/// the others take its partitions over at once instead of after [`SESSION_TIMEOUT`].
#[derive(Debug)]
pub struct LeaseHolder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for LeaseHolder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts this candidate's lease on `owner_topic` (created, one partition, when missing): a
/// heartbeat record keyed by a random id every [`HEARTBEAT_INTERVAL`], and the others' heartbeats
/// read back. A candidate is live while its last heartbeat came back within [`SESSION_TIMEOUT`]
/// (by this process's clock: no two clocks are compared); `partitions` are the topic's
/// partitions, each owned by [`owner_among`] the live candidates. A new candidate listens one
/// session before it owns anything, so it knows who else is live.
pub async fn hold_lease(
    kafka: &KafkaProperties,
    owner_topic: &str,
    partitions: Arc<crate::cluster::shard::Topology>,
    registry: &Registry,
) -> Result<(Arc<LeaseOwnership>, LeaseHolder), OwnerError> {
    let gauge = IntGauge::new(
        "kv_reader_acting_owner_partitions",
        "Partitions this process acts on as their owner (TTL sweep, repairs) now",
    )?;
    registry.register(Box::new(gauge.clone()))?;
    let ownership = Arc::new(LeaseOwnership {
        owned: RwLock::default(),
        gauge: Some(gauge),
    });
    let lease_config = [
        ("cleanup.policy", "compact,delete"),
        ("retention.ms", "3600000"),
        ("min.compaction.lag.ms", "0"),
    ];
    // A broker that refuses CreateTopics (no right, or none offered) may still have the topic,
    // or create it on first produce: the candidate starts either way, and owns nothing until its
    // own heartbeat comes back (`kv_reader_acting_owner_partitions` stays 0).
    if let Err(error) =
        kv_core::kafka::create_topic(kafka, owner_topic, 1, None, &lease_config, CREATE_TIMEOUT)
            .await
    {
        tracing::warn!(
            %error,
            topic = owner_topic,
            "cannot create the owner lease topic (KV_API_OWNER_TOPIC); create it with one \
             partition, or grant the right to: until it exists this candidate owns nothing"
        );
    }
    let mut producer_defaults = kv_core::kafka::PRODUCER_DEFAULTS.to_vec();
    producer_defaults.push(("linger.ms", "0"));
    let producer: BaseProducer =
        client_config(&producer_defaults, kafka, ClientRole::Producer).create()?;
    let consumer: BaseConsumer = client_config(
        &[
            ("enable.auto.commit", "false"),
            ("fetch.wait.max.ms", "100"),
        ],
        kafka,
        ClientRole::Consumer,
    )
    .set("group.id", "kv-owner-leases-unused")
    .create()?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(owner_topic, 0, Offset::End)?;
    consumer.assign(&assignment)?;
    let mut random = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
        .map_err(|_| OwnerError::Random)?;
    let id: String = random.iter().map(|b| format!("{b:02x}")).collect();
    tracing::info!(%id, topic = owner_topic, "an owner candidate: holding a lease");
    let stop = Arc::new(AtomicBool::new(false));
    let (stopping, owned, topic) = (stop.clone(), ownership.clone(), owner_topic.to_owned());
    let thread = std::thread::Builder::new()
        .name("kv-owner".into())
        .spawn(move || {
            Lease {
                id,
                topic,
                producer,
                consumer,
                seen: HashMap::new(),
                started: Instant::now(),
            }
            .run(&stopping, &owned, &partitions)
        })
        .map_err(OwnerError::Thread)?;
    Ok((
        ownership,
        LeaseHolder {
            stop,
            thread: Some(thread),
        },
    ))
}

struct Lease {
    id: String,
    topic: String,
    producer: BaseProducer,
    consumer: BaseConsumer,
    /// Each candidate's last heartbeat, as this process received it.
    seen: HashMap<String, Instant>,
    started: Instant,
}

impl Lease {
    fn run(
        mut self,
        stop: &AtomicBool,
        owned: &LeaseOwnership,
        topology: &crate::cluster::shard::Topology,
    ) {
        let mut next_beat = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if Instant::now() >= next_beat {
                next_beat = Instant::now() + HEARTBEAT_INTERVAL;
                let record = BaseRecord::<str, [u8]>::to(&self.topic)
                    .key(&self.id)
                    .payload(&b"alive"[..]);
                if let Err((error, _)) = self.producer.send(record) {
                    tracing::warn!(%error, "cannot send the owner lease's heartbeat");
                }
            }
            self.producer.poll(Duration::ZERO);
            match self.consumer.poll(POLL) {
                Some(Ok(message)) => {
                    if let Some(key) = message.key().and_then(|k| std::str::from_utf8(k).ok()) {
                        if message.payload().is_some() {
                            if self.seen.insert(key.to_owned(), Instant::now()).is_none() {
                                tracing::info!(
                                    live = self.seen.len(),
                                    "an owner candidate's lease began"
                                );
                            }
                        } else {
                            self.seen.remove(key);
                        }
                    }
                }
                Some(Err(error)) => tracing::debug!(%error, "owner lease consumer"),
                None => {}
            }
            let before = self.seen.len();
            self.seen.retain(|_, at| at.elapsed() < SESSION_TIMEOUT);
            if self.seen.len() != before {
                tracing::info!(live = self.seen.len(), "an owner candidate's lease ran out");
            }
            // A candidate whose own heartbeat does not come back (cut off from Kafka) owns
            // nothing; a new one listens one session first, to know who else is live.
            let listening = self.started.elapsed() < SESSION_TIMEOUT;
            let mine = match (listening, self.seen.contains_key(&self.id)) {
                (false, true) => {
                    let count = topology.partitions().unwrap_or(0) as i32;
                    let live = || self.seen.keys().map(String::as_str);
                    (0..count)
                        .filter(|&p| owner_among(live(), p) == Some(self.id.as_str()))
                        .collect()
                }
                _ => Vec::new(),
            };
            owned.set(&mine);
        }
        owned.set(&[]);
        // Ends the lease at once: the others stop counting this candidate.
        let record = BaseRecord::<str, [u8]>::to(&self.topic).key(&self.id);
        if self.producer.send(record).is_ok() {
            let _ = self.producer.flush(Duration::from_secs(2));
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("cannot register the owner metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot start the owner lease's thread: {0}")]
    Thread(std::io::Error),
    #[error("the system's random number generator failed")]
    Random,
}
