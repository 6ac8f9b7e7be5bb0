//! A sharded reader's view of its peers, and the one hop that forwards a read to a shard
//! holding the key's partition.
//!
//! Each peer's `/healthz/ready` is polled once a second in the background (anonymous, no keys):
//! which partitions it holds, whether each caught up, and its lag. A read picks among a
//! partition's owners with that view, least lag first; a connection error marks the peer down
//! at once, so the next read goes to another owner without waiting for the poll. Nothing a
//! caller sends makes the reader call anywhere but the configured peers, and only after its
//! own token check passed.

pub mod fanout;
pub mod shard;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::HttpRequest;
use kv_core::record::RecordCodec;
use kv_core::web::http::{CorrelationId, CORRELATION_ID};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::Serialize;

use crate::acting::owner::{Election, OwnerView};
use crate::cluster::shard::{partition_of, ShardSpec, Topology};
use crate::replica::progress::Progress;
use crate::settings::Sharding;

/// Names the shard that answered a read (a comma list when several did).
pub const SERVED_BY_HEADER: HeaderName = HeaderName::from_static("x-served-by");
/// The loop guard: set on a forwarded request, which is then never forwarded again.
pub const FORWARDED_BY_HEADER: HeaderName = HeaderName::from_static("x-kv-forwarded-by");
/// A read's bound on the replica's lag, in records, on the partitions it reads.
pub const MAX_LAG_HEADER: HeaderName = HeaderName::from_static("x-max-replica-lag");

/// How often each peer's readiness is read.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// A readiness answer lists every partition a peer holds; no topic needs more than this.
const MAX_HEALTH_BODY: usize = 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Request headers a forwarded read carries on: the caller's credentials (the owner checks them
/// itself), its read-your-writes token, its correlation id, its conditions.
const FORWARDED_REQUEST_HEADERS: [&str; 6] = [
    "authorization",
    "x-consistency-token",
    "x-max-replica-lag",
    "if-none-match",
    "content-type",
    "accept",
];

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

/// How a forward ended, as the metrics label it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The owner answered (any status but 503).
    Answered,
    /// The owner answered 503: not ready, lagging past the bound, or overloaded.
    Unavailable,
    /// No connection, or it broke before the answer.
    Unreachable,
    TimedOut,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::Unavailable => "unavailable",
            Self::Unreachable => "unreachable",
            Self::TimedOut => "timeout",
        }
    }
}

#[derive(Debug)]
struct ForwardMetrics {
    requests: IntCounterVec,
    seconds: HistogramVec,
    peer_up: IntGaugeVec,
}

/// A forward that got no usable answer.
#[derive(Debug, thiserror::Error)]
#[error("shard {peer}: {message}")]
pub struct ForwardError {
    pub peer: u32,
    pub outcome: Outcome,
    pub message: String,
}

#[derive(Debug)]
pub struct Cluster {
    pub spec: ShardSpec,
    peers: Vec<Peer>,
    topology: Arc<Topology>,
    codec: RecordCodec,
    pub forward_timeout: Duration,
    metrics: ForwardMetrics,
    served_by: HeaderValue,
    /// Since when this shard has been the acting owner of each partition it owns, as
    /// `owner::Election::view` last saw.
    pub owned_since: Mutex<BTreeMap<i32, u64>>,
}

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
    pub fn new(
        sharding: &Sharding,
        topology: Arc<Topology>,
        codec: RecordCodec,
    ) -> Result<Self, prometheus::Error> {
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
        let metrics = ForwardMetrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "kv_reader_forwarded_requests_total",
                    "Reads forwarded to the shard holding the key's partition, by peer shard and \
                     outcome (answered, unavailable: a 503, unreachable, timeout)",
                ),
                &["peer", "outcome"],
            )?,
            seconds: HistogramVec::new(
                HistogramOpts::new(
                    "kv_reader_forward_duration_seconds",
                    "Time from sending a forwarded read to the owner's answer headers, by peer",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
                ]),
                &["peer"],
            )?,
            peer_up: IntGaugeVec::new(
                Opts::new(
                    "kv_reader_shard_peer_up",
                    "1 while the peer shard answers its readiness poll, by peer",
                ),
                &["peer"],
            )?,
        };
        Ok(Self {
            spec: sharding.spec,
            peers,
            topology,
            codec,
            forward_timeout: sharding.forward_timeout,
            metrics,
            served_by: HeaderValue::from(sharding.spec.index),
            owned_since: Mutex::default(),
        })
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

    pub fn register_metrics(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.metrics.requests.clone()))?;
        registry.register(Box::new(self.metrics.seconds.clone()))?;
        registry.register(Box::new(self.metrics.peer_up.clone()))?;
        for (i, peer) in self.peers.iter().enumerate() {
            if i as u32 != self.spec.index {
                self.metrics
                    .peer_up
                    .with_label_values(&[&peer.label])
                    .set(0);
            }
        }
        Ok(())
    }

    /// This shard's index, as `X-Served-By` carries it.
    pub fn served_by(&self) -> HeaderValue {
        self.served_by.clone()
    }

    pub fn partitions(&self) -> Option<u32> {
        self.topology.partitions()
    }

    pub fn partition_of(&self, user_key: &[u8], partitions: u32) -> i32 {
        partition_of(&self.codec, user_key, partitions)
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

    /// Sends `request`'s method and headers (and `body`) to `peer` at `path_and_query`, with
    /// the loop guard set. A 503 is an error here too, so the caller tries the next owner.
    pub async fn forward(
        &self,
        client: &reqwest::Client,
        peer: u32,
        request: &HttpRequest,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<reqwest::Response, ForwardError> {
        let target = &self.peers[peer as usize];
        let url = format!("{}{path_and_query}", target.url);
        let method = reqwest::Method::from_bytes(request.method().as_str().as_bytes())
            .unwrap_or(reqwest::Method::GET);
        let mut outgoing = client.request(method, url).timeout(self.forward_timeout);
        for name in FORWARDED_REQUEST_HEADERS {
            for value in request.headers().get_all(name) {
                outgoing = outgoing.header(name, value.as_bytes());
            }
        }
        outgoing = outgoing
            .header(CORRELATION_ID.as_str(), CorrelationId::of(request).0)
            .header(FORWARDED_BY_HEADER.as_str(), self.spec.index.to_string());
        if let Some(body) = body {
            outgoing = outgoing.body(body);
        }
        let started = Instant::now();
        let answer = outgoing.send().await;
        self.metrics
            .seconds
            .with_label_values(&[&target.label])
            .observe(started.elapsed().as_secs_f64());
        let (outcome, result) = match answer {
            Ok(response) if response.status() == StatusCode::SERVICE_UNAVAILABLE.as_u16() => {
                let message = format!("answered 503 ({})", error_code(response).await);
                (Outcome::Unavailable, Err(message))
            }
            Ok(response) => (Outcome::Answered, Ok(response)),
            Err(error) if error.is_timeout() => (
                Outcome::TimedOut,
                Err(format!(
                    "no answer within {} ms (KV_API_SHARD_FORWARD_TIMEOUT_MS)",
                    self.forward_timeout.as_millis()
                )),
            ),
            Err(error) => {
                self.mark_down(peer);
                (
                    Outcome::Unreachable,
                    Err(format!("unreachable: {}", error_chain(&error))),
                )
            }
        };
        self.metrics
            .requests
            .with_label_values(&[&target.label, outcome.label()])
            .inc();
        result.map_err(|message| ForwardError {
            peer,
            outcome,
            message,
        })
    }

    fn mark_down(&self, peer: u32) {
        let mut health = self.peers[peer as usize]
            .health
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        health.reachable = false;
    }

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
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
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

/// The `error.code` of an error answer, for the log and the next owner's choice.
async fn error_code(response: reqwest::Response) -> String {
    #[derive(serde::Deserialize)]
    struct Body {
        error: Detail,
    }
    #[derive(serde::Deserialize)]
    struct Detail {
        code: String,
    }
    read_bounded(response, 64 * 1024)
        .await
        .ok()
        .and_then(|body| serde_json::from_slice::<Body>(&body).ok())
        .map_or_else(|| "no error body".to_owned(), |body| body.error.code)
}

/// Why a peer's answer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the answer broke off: {0}")]
    Broken(String),
}

/// A peer's answer body, refused past `limit` bytes: a peer is trusted to answer, not to
/// answer small.
pub async fn read_bounded(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(BodyError::TooLarge(limit));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| BodyError::Broken(error_chain(&e)))?
    {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

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

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The headers of an owner's answer a forwarder passes back: all but the hop-by-hop ones.
pub fn passed_back(name: &str) -> bool {
    !matches!(
        name,
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "content-length"
            | "te"
            | "trailer"
            | "upgrade"
            | "proxy-authenticate"
            | "date"
    )
}
