//! The one value `/healthz/cluster` answers and `/status` shows, so the two cannot drift.

use std::time::Duration;

use serde::Serialize;

use crate::acting::owner::{Election, OwnerView};
use crate::cluster::peers::ShardView;
use crate::cluster::Cluster;
use crate::progress::Progress;

/// What `/healthz/cluster` answers and `/status` shows (the same value, so they cannot drift):
/// the shards and every shard's partitions as this one last heard them, and this replica's own
/// state: its partitions with their owners and progress, the partitions it acts on as their
/// owner ([`Election`]), its replay and its freshness.
#[derive(Debug, Serialize)]
pub struct ClusterHealth {
    pub sharded: bool,
    /// This shard's index; absent on a full replica.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<u32>,
    pub shards: u32,
    pub replicas: u32,
    /// The topic's partitions (a full replica: the partitions it holds).
    pub partitions: u32,
    /// Partitions no reachable, caught-up shard holds; absent on a full replica.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions_without_ready_owner: Option<Vec<i32>>,
    /// The partitions this process acts on as their owner (TTL sweep, repairs) and since when:
    /// [`Election::view`] (docs/architecture.md, "The acting owner of a partition").
    pub owner: OwnerView,
    /// Every shard as this one sees it; absent on a full replica.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Vec<ShardView>>,
    pub topic: String,
    /// This replica's readiness, as `/healthz/ready` names it.
    pub status: &'static str,
    /// Records in the topic this replica has not applied yet, over its partitions.
    pub lag: u64,
    pub replay: ReplayView,
    pub freshness: FreshnessView,
    /// Every partition of the topic this replica knows of, in order.
    pub partition_owners: Vec<PartitionOwners>,
}

/// How far this replica's replay since start-up (or its last rebuild) got.
#[derive(Debug, Serialize)]
pub struct ReplayView {
    pub applied: u64,
    pub remaining: u64,
    pub elapsed_ms: u64,
    pub records_per_second: f64,
    /// `null` before a record was applied, and once ready.
    pub eta_ms: Option<u64>,
    /// Once ready: how long the replay took.
    pub ready_after_ms: Option<u64>,
}

/// How fresh this replica is: what every read answers in `X-Replica-*`.
#[derive(Debug, Serialize)]
pub struct FreshnessView {
    /// The highest offset applied per partition, as a consistency token (`X-Replica-Applied`).
    pub applied: Option<String>,
    /// `X-Replica-Lag`.
    pub lag: u64,
    /// Milliseconds since a broker last sent the consumer anything (`X-Replica-Silence-Ms`).
    pub silence_ms: Option<u64>,
}

/// Who holds a partition and who acts for it, as this replica knows it.
#[derive(Debug, Serialize)]
pub struct PartitionOwners {
    pub partition: i32,
    /// The shards holding it, its primary first; empty on a full replica, which holds them all.
    pub owners: Vec<u32>,
    /// The shard acting as the partition's owner ([`Cluster::acting_owner`]): the first of
    /// `owners` that is reachable and caught up, as this shard last heard; `null` on a full
    /// replica or when none is.
    pub acting_owner: Option<u32>,
    /// Whether this process is the partition's acting owner now ([`Election::owns`]): it
    /// produces the partition's TTL tombstones and repairs (`KV_API_OWNER`, formerly
    /// `KV_API_TTL_SWEEPER`, makes it a candidate).
    pub owned_here: bool,
    /// This replica's progress on it; `null` when it does not hold it.
    pub local: Option<LocalPartition>,
}

#[derive(Debug, Serialize)]
pub struct LocalPartition {
    pub next_offset: i64,
    pub end_offset: i64,
    pub end_offset_at_start: i64,
    pub lag: u64,
    pub caught_up: bool,
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The one function `/healthz/cluster` and `/status` are built from; `election` says which
/// partitions this process acts on as their owner.
pub fn health(
    topic: &str,
    cluster: Option<&Cluster>,
    progress: &Progress,
    election: &Election,
) -> ClusterHealth {
    let report = progress.report();
    let status = report.status();
    let replay = progress.replay();
    let freshness = progress.freshness();
    let local = |p: i32| {
        report.partitions.get(&p).map(|progress| LocalPartition {
            next_offset: progress.next_offset,
            end_offset: progress.end_offset,
            end_offset_at_start: progress.end_offset_at_start,
            lag: (progress.end_offset - progress.next_offset).max(0) as u64,
            caught_up: progress.caught_up,
        })
    };
    let mut health = ClusterHealth {
        sharded: cluster.is_some(),
        shard: None,
        shards: 1,
        replicas: 1,
        partitions: report.partitions.len() as u32,
        partitions_without_ready_owner: None,
        owner: election.view(progress),
        cluster: None,
        topic: topic.to_owned(),
        status,
        lag: report.lag,
        replay: ReplayView {
            applied: replay.applied,
            remaining: replay.remaining,
            elapsed_ms: millis(replay.elapsed),
            records_per_second: (replay.records_per_second * 10.0).round() / 10.0,
            eta_ms: replay
                .eta
                .filter(|_| replay.ready_after.is_none())
                .map(millis),
            ready_after_ms: replay.ready_after.map(millis),
        },
        freshness: FreshnessView {
            applied: freshness
                .applied
                .and_then(|applied| applied.to_str().ok().map(str::to_owned)),
            lag: freshness.lag,
            silence_ms: progress
                .broker_answered_ms()
                .map(|at| kv_core::record::now_ms().saturating_sub(at)),
        },
        partition_owners: Vec::new(),
    };
    let Some(cluster) = cluster else {
        health.partition_owners = report
            .partitions
            .keys()
            .map(|&p| PartitionOwners {
                partition: p,
                owners: Vec::new(),
                acting_owner: None,
                owned_here: election.owns(p, progress),
                local: local(p),
            })
            .collect();
        return health;
    };
    let shards = cluster.view(progress);
    let count = cluster.partitions().unwrap_or(0) as i32;
    health.partition_owners = (0..count)
        .map(|p| PartitionOwners {
            partition: p,
            owners: cluster.spec.owners(p).collect(),
            acting_owner: cluster.acting_owner(p, progress),
            owned_here: election.owns(p, progress),
            local: local(p),
        })
        .collect();
    health.partitions_without_ready_owner = Some(
        health
            .partition_owners
            .iter()
            .filter(|owners| owners.acting_owner.is_none())
            .map(|owners| owners.partition)
            .collect(),
    );
    health.shard = Some(cluster.spec.index);
    health.shards = cluster.spec.count;
    health.replicas = cluster.spec.replicas;
    health.partitions = count as u32;
    health.cluster = Some(shards);
    health
}
