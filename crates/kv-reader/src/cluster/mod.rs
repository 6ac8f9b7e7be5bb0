//! A sharded reader's view of its peers, and the one hop that forwards a read to a shard
//! holding the key's partition.
//!
//! Each peer's `/healthz/ready` is polled once a second in the background (anonymous, no keys):
//! which partitions it holds, whether each caught up, and its lag. A read picks among a
//! partition's owners with that view, least lag first; a connection error marks the peer down
//! at once, so the next read goes to another owner without waiting for the poll. Nothing a
//! caller sends makes the reader call anywhere but the configured peers, and only after its
//! own token check passed.

pub mod coalesce;
pub mod fanout;
pub mod forward;
pub mod metrics;
pub mod peers;
pub mod shard;

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use kv_core::record::RecordCodec;
use std::sync::Arc;

use crate::cluster::metrics::ForwardMetrics;
use crate::cluster::shard::Sharding;
use crate::cluster::shard::{partition_of, ShardSpec, Topology};
use crate::progress::Progress;

/// What this shard last heard of a peer.
#[derive(Debug, Clone, Default)]
pub struct PeerHealth {
    /// The last poll got an answer and no forward failed to connect since.
    pub reachable: bool,
    /// The peer's readiness status (`ready`, `catching_up`, `dead`, `misconfigured`).
    pub status: Option<String>,
    /// Per partition the peer holds: caught up, and its lag.
    pub partitions: BTreeMap<i32, (bool, u64)>,
    pub last_answer: Option<Instant>,
}

impl PeerHealth {
    fn serves(&self, partition: i32) -> bool {
        self.reachable
            && matches!(self.status.as_deref(), Some("ready" | "catching_up"))
            && self
                .partitions
                .get(&partition)
                .is_some_and(|(caught_up, _)| *caught_up)
    }

    fn lag(&self, partition: i32) -> u64 {
        self.partitions
            .get(&partition)
            .map_or(u64::MAX, |(_, lag)| *lag)
    }
}

#[derive(Debug)]
struct Peer {
    url: String,
    label: String,
    health: Mutex<PeerHealth>,
}

/// Where a read of a partition can be served from, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Local,
    Peer(u32),
}

#[derive(Debug)]
pub struct Cluster {
    pub spec: ShardSpec,
    peers: Vec<Peer>,
    topology: Arc<Topology>,
    codec: RecordCodec,
    pub forward_timeout: Duration,
    metrics: ForwardMetrics,
    /// Since when this shard has been the acting owner of each partition it owns, as
    /// `acting::owner::Election::view` last saw.
    pub owned_since: Mutex<BTreeMap<i32, u64>>,
}

impl Cluster {
    pub fn new(
        sharding: &Sharding,
        topology: Arc<Topology>,
        codec: RecordCodec,
        metrics: ForwardMetrics,
    ) -> Self {
        let peers = sharding
            .peers
            .iter()
            .enumerate()
            .map(|(i, url)| Peer {
                url: url.clone(),
                label: i.to_string(),
                health: Mutex::default(),
            })
            .collect();
        Self {
            spec: sharding.spec,
            peers,
            topology,
            codec,
            forward_timeout: sharding.forward_timeout,
            metrics,
            owned_since: Mutex::default(),
        }
    }

    /// The acting owner of `partition` (docs/architecture.md, "The acting owner of a
    /// partition"): its first owner, primary first, that is caught up on it as this shard last
    /// heard; `None` while none is.
    pub fn acting_owner(&self, partition: i32, local: &Progress) -> Option<u32> {
        self.spec.owners(partition).find(|&shard| {
            if shard == self.spec.index {
                local.is_alive()
                    && local
                        .partition_state(partition)
                        .is_some_and(|(caught_up, _)| caught_up)
            } else {
                self.peers[shard as usize]
                    .health
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .serves(partition)
            }
        })
    }

    /// This shard's index, as `X-Served-By` carries it.
    pub fn partitions(&self) -> Option<u32> {
        self.topology.partitions()
    }

    pub fn partition_of(&self, user_key: &[u8], partitions: u32) -> i32 {
        partition_of(&self.codec, user_key, partitions)
    }

    /// The base URL of shard `shard` (`KV_API_SHARD_PEERS`), this one's included.
    pub fn peer_url(&self, shard: u32) -> &str {
        &self.peers[shard as usize].url
    }

    pub fn holds(&self, partition: i32) -> bool {
        self.spec.holds(partition)
    }

    fn health(&self, shard: u32) -> PeerHealth {
        self.peers[shard as usize]
            .health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The owners of `partition` to try, best first: those that serve it (caught up, within
    /// `max_lag`), this shard first among them; then peers not heard of yet or not serving it;
    /// then this shard behind (it answers with its lag headers, or `replica_lagging`); peers
    /// known to be down last, still tried.
    pub fn targets(&self, partition: i32, max_lag: Option<u64>, local: &Progress) -> Vec<Target> {
        let bound = max_lag.unwrap_or(u64::MAX);
        let mut ranked: Vec<((u8, u64), Target)> = self
            .spec
            .owners(partition)
            .map(|shard| {
                if shard == self.spec.index {
                    let (caught_up, lag) = local
                        .partition_state(partition)
                        .unwrap_or((false, u64::MAX));
                    let rank = if caught_up && lag <= bound && local.is_alive() {
                        0
                    } else {
                        3
                    };
                    ((rank, lag), Target::Local)
                } else {
                    // Read under the lock, never cloned: this runs for every forwarded read.
                    let health = self.peers[shard as usize]
                        .health
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    let lag = health.lag(partition);
                    let rank = if health.serves(partition) && lag <= bound {
                        1
                    } else if health.reachable || health.last_answer.is_none() {
                        2
                    } else {
                        4
                    };
                    ((rank, lag), Target::Peer(shard))
                }
            })
            .collect();
        ranked.sort_by_key(|(rank, _)| *rank);
        ranked.into_iter().map(|(_, target)| target).collect()
    }

    /// Counts a batch of `keys` coalesced reads sent to `peer`.
    pub fn observe_batch(&self, peer: u32, keys: usize) {
        self.metrics
            .batch_keys
            .with_label_values(&[&self.peers[peer as usize].label])
            .observe(keys as f64);
    }

    fn mark_down(&self, peer: u32) {
        let mut health = self.peers[peer as usize]
            .health
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        health.reachable = false;
    }
}
