//! What this shard knows of its peers: their readiness polled once a second, and the view of
//! every shard that `/healthz/cluster` shows.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cluster::forward::{peer_client, read_bounded};
use crate::cluster::Cluster;
use crate::progress::Progress;

/// How often each peer's readiness is read.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// A readiness answer lists every partition a peer holds; no topic needs more than this.
const MAX_HEALTH_BODY: usize = 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What `/healthz/cluster` shows of one shard.
#[derive(Debug, Serialize)]
pub struct ShardView {
    pub shard: u32,
    #[serde(rename = "self")]
    pub this: bool,
    pub reachable: bool,
    pub status: Option<String>,
    /// Milliseconds since its readiness was last read; `null` for this shard or before any.
    pub last_seen_ms_ago: Option<u64>,
    pub partitions: BTreeMap<i32, PartitionView>,
}

#[derive(Debug, Serialize)]
pub struct PartitionView {
    pub caught_up: bool,
    pub lag: u64,
}

impl Cluster {
    /// Every shard as this one sees it; `local` describes this shard.
    pub fn view(&self, local: &Progress) -> Vec<ShardView> {
        let report = local.report();
        (0..self.spec.count)
            .map(|shard| {
                if shard == self.spec.index {
                    let status = match (report.alive, report.ready) {
                        (false, _) => "dead",
                        (true, true) => "ready",
                        (true, false) => "catching_up",
                    };
                    ShardView {
                        shard,
                        this: true,
                        reachable: true,
                        status: Some(status.to_owned()),
                        last_seen_ms_ago: None,
                        partitions: report
                            .partitions
                            .iter()
                            .map(|(&p, progress)| {
                                (
                                    p,
                                    PartitionView {
                                        caught_up: progress.caught_up,
                                        lag: (progress.end_offset - progress.next_offset).max(0)
                                            as u64,
                                    },
                                )
                            })
                            .collect(),
                    }
                } else {
                    let health = self.health(shard);
                    ShardView {
                        shard,
                        this: false,
                        reachable: health.reachable,
                        status: health.status,
                        last_seen_ms_ago: health
                            .last_answer
                            .map(|at| u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX)),
                        partitions: health
                            .partitions
                            .into_iter()
                            .map(|(p, (caught_up, lag))| (p, PartitionView { caught_up, lag }))
                            .collect(),
                    }
                }
            })
            .collect()
    }

    /// Polls every peer's readiness, once a second each, for as long as the process runs.
    pub fn spawn_health_polls(self: &Arc<Self>) -> Result<(), reqwest::Error> {
        let client = peer_client(CONNECT_TIMEOUT)
            .timeout(HEALTH_TIMEOUT)
            .build()?;
        for shard in (0..self.spec.count).filter(|&s| s != self.spec.index) {
            let (cluster, client) = (self.clone(), client.clone());
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(HEALTH_INTERVAL);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    cluster.poll(&client, shard).await;
                }
            });
        }
        Ok(())
    }

    async fn poll(&self, client: &reqwest::Client, shard: u32) {
        let peer = &self.peers[shard as usize];
        let answer = match client
            .get(format!("{}/healthz/ready", peer.url))
            .send()
            .await
        {
            Ok(response) => read_bounded(response, MAX_HEALTH_BODY).await.ok(),
            Err(_) => None,
        };
        let parsed = answer.and_then(|body| serde_json::from_slice::<ReadyBody>(&body).ok());
        let was_reachable;
        {
            let mut health = peer.health.lock().unwrap_or_else(PoisonError::into_inner);
            was_reachable = health.reachable;
            match parsed {
                Some(body) => {
                    health.reachable = true;
                    health.status = Some(body.status);
                    health.partitions = body
                        .partitions
                        .into_iter()
                        .filter_map(|(p, progress)| {
                            let lag = (progress.end_offset - progress.next_offset).max(0) as u64;
                            Some((p.parse().ok()?, (progress.caught_up, lag)))
                        })
                        .collect();
                    health.last_answer = Some(Instant::now());
                }
                None => health.reachable = false,
            }
            self.metrics
                .peer_up
                .with_label_values(&[&peer.label])
                .set(i64::from(health.reachable));
        }
        let reachable = self.health(shard).reachable;
        if reachable != was_reachable {
            if reachable {
                tracing::info!(peer = shard, "peer shard answers again");
            } else {
                tracing::warn!(
                    peer = shard,
                    "peer shard does not answer its readiness poll"
                );
            }
        }
    }
}

#[derive(serde::Deserialize)]
struct ReadyBody {
    status: String,
    #[serde(default)]
    partitions: BTreeMap<String, ReadyPartition>,
}

#[derive(serde::Deserialize)]
struct ReadyPartition {
    next_offset: i64,
    end_offset: i64,
    caught_up: bool,
}
