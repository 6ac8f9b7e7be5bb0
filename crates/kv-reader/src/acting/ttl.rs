//! Keys that expire (docs/architecture.md, "Keys that expire"): the purge of expired entries and,
//! on the partitions this process sweeps, the tombstones that let compaction reclaim them and
//! the repairs that keep those tombstones from ever eating a newer write.
//!
//! Everything here runs on the consumer thread between two batches, in bounded steps: a purge
//! transaction of at most [`PURGE_BATCH`] entries, a sweep of at most [`SWEEP_BATCH`] tombstones
//! handed to the producer (which sends them from its own thread), at most [`REPAIR_BATCH`]
//! repairs. The store decides what is due (`store::expiry`); this module only acts on it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_core::conditional::VERSION_HEADER;
use kv_core::kafka::{
    breaks_idempotence, classify, client_config, compacted_min_lag, is_compacted, ClientRole,
    KafkaErrorClass, PRODUCER_DEFAULTS,
};
use kv_core::record::{
    now_ms, RecordCodec, CORRELATION_ID_HEADER, EXPIRED_OFFSET_HEADER, EXPIRES_AT_HEADER,
    REPAIR_OF_HEADER, WRITER_HEADER, WRITER_HEADER_VALUE,
};
use kv_core::trace_context::TRACEPARENT;
use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::acting::owner::Election;
use crate::progress::Progress;
use crate::settings::Settings;
use crate::store::{Applied, Expired, PendingRepair, Purged, Store, StoreError};

/// How often the purge and the sweep run.
const TICK: Duration = Duration::from_millis(100);
/// Most expired entries one purge transaction removes.
const PURGE_BATCH: usize = 1000;
/// Most tombstones one sweep hands to the producer.
const SWEEP_BATCH: usize = 5000;
/// Most expiry rows one sweep or purge reads, whatever it finds.
const SCAN: usize = 20_000;
/// Most repairs one tick produces.
const REPAIR_BATCH: usize = 1000;
/// How long a key owes a repair before the owner produces it. A key written with `If-Match`
/// over and over owes one after every write; waiting lets one repair stand for all the writes of
/// this window instead of doubling the topic's writes (one repair per key per window). The window
/// is far inside `min.compaction.lag.ms` ([`MIN_COMPACTION_LAG`]), which is what a repair must
/// land within (docs/architecture.md, "Conditional writes", invariant 6).
const REPAIR_DELAY: Duration = Duration::from_secs(2);
/// How long a tombstone or repair may take to come back through the topic before it is
/// produced again (its first send may have failed, or the process restarted).
const RESEND_AFTER: Duration = Duration::from_secs(30);
/// Most tombstones awaiting their return at once; beyond it the sweep waits.
const MAX_IN_FLIGHT: usize = 200_000;
/// The least `min.compaction.lag.ms` a sweeper runs beside: a repair must land within it, and a
/// sweeper that crashed must be back and caught up by then (docs/architecture.md).
pub const MIN_COMPACTION_LAG: Duration = Duration::from_secs(60);

/// Which partitions this process sweeps: produces tombstones for their expired keys and repairs
/// for their stale sweeper records. Exactly one process may sweep each partition; `app` decides.
#[derive(Clone, Default)]
pub enum SweptPartitions {
    /// A reader that only purges its own store (`KV_API_TTL_SWEEPER=false`).
    #[default]
    None,
    /// Every partition this process holds (`KV_API_TTL_SWEEPER=true`).
    All,
    /// The partitions the predicate names, for a process that shares the sweep with others.
    Where(Arc<dyn Fn(i32) -> bool + Send + Sync>),
}

impl std::fmt::Debug for SweptPartitions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "None",
            Self::All => "All",
            Self::Where(_) => "Where(..)",
        })
    }
}

impl SweptPartitions {
    pub fn sweeps(&self, partition: i32) -> bool {
        match self {
            Self::None => false,
            Self::All => true,
            Self::Where(predicate) => predicate(partition),
        }
    }

    fn sweeps_any(&self) -> bool {
        !matches!(self, Self::None)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TtlError {
    #[error("cannot create the TTL sweeper's Kafka producer: {0}")]
    Kafka(#[from] KafkaError),
    #[error("cannot register the TTL metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(
        "KV_API_TTL_SWEEPER=true on topic {topic}, whose min.compaction.lag.ms is {lag_ms} ms: \
         compaction could then remove a write before the sweeper repairs a tombstone produced \
         just after it; set it to at least {min_ms} ms (900000 recommended, docs/architecture.md)"
    )]
    CompactionLag {
        topic: String,
        lag_ms: u128,
        min_ms: u128,
    },
}

/// The sweeper relies on `min.compaction.lag.ms` (docs/architecture.md): checked when the broker
/// reports the topic's configuration, and said when it does not.
pub fn check_compaction_lag(
    topic: &str,
    config: Option<&std::collections::BTreeMap<String, String>>,
) -> Result<(), TtlError> {
    let Some(config) = config else {
        tracing::warn!(
            %topic,
            "the broker did not report the topic's configuration: the TTL sweeper cannot check \
             min.compaction.lag.ms, which must be at least {} ms (docs/architecture.md, \"Keys that expire\")",
            MIN_COMPACTION_LAG.as_millis()
        );
        return Ok(());
    };
    match compacted_min_lag(config) {
        Some(lag) if lag < MIN_COMPACTION_LAG => Err(TtlError::CompactionLag {
            topic: topic.to_owned(),
            lag_ms: lag.as_millis(),
            min_ms: MIN_COMPACTION_LAG.as_millis(),
        }),
        Some(lag) => {
            tracing::info!(%topic, min_compaction_lag_ms = lag.as_millis() as u64, "the TTL sweeper's tombstones are compaction-safe on this topic");
            Ok(())
        }
        None if is_compacted(config) => {
            tracing::warn!(
                %topic,
                "the broker does not report the topic's min.compaction.lag.ms: the TTL sweeper \
                 relies on it being at least {} ms (docs/architecture.md, \"Keys that expire\")",
                MIN_COMPACTION_LAG.as_millis()
            );
            Ok(())
        }
        // Without compaction nothing removes a record because a later one exists.
        None => Ok(()),
    }
}

/// The TTL metrics (docs/architecture.md, "Keys that expire"); labels from closed sets.
#[derive(Debug, Clone)]
pub struct TtlMetrics {
    expired: IntCounterVec,
    tombstones_produced: IntCounter,
    repairs_produced: IntCounter,
    produce_errors: IntCounter,
    stale_records: IntCounter,
    pending_repairs: IntGauge,
    sweep_lag: Gauge,
    swept_partitions: IntGauge,
}

impl TtlMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            expired: IntCounterVec::new(
                Opts::new(
                    "kv_reader_ttl_expired_total",
                    "Expired keys removed from this replica's store, by how: purged (at \
                     expiry, by this replica), tombstoned (by the sweeper's tombstone), replayed \
                     (the put was already expired when applied)",
                ),
                &["how"],
            )?,
            tombstones_produced: IntCounter::new(
                "kv_reader_ttl_tombstones_produced_total",
                "Tombstones for expired keys this sweeper produced, acknowledged by Kafka",
            )?,
            repairs_produced: IntCounter::new(
                "kv_reader_ttl_repairs_produced_total",
                "Repairs this sweeper produced after one of its records turned out stale, \
                 acknowledged by Kafka",
            )?,
            produce_errors: IntCounter::new(
                "kv_reader_ttl_produce_errors_total",
                "Tombstones and repairs Kafka did not acknowledge (they are produced again)",
            )?,
            stale_records: IntCounter::new(
                "kv_reader_ttl_stale_records_total",
                "Sweeper records this replica ignored because the key changed after they were \
                 decided",
            )?,
            pending_repairs: IntGauge::new(
                "kv_reader_ttl_pending_repairs",
                "Repairs this sweeper owes and has not seen come back yet",
            )?,
            sweep_lag: Gauge::new(
                "kv_reader_ttl_sweep_lag_seconds",
                "How long the earliest expired entry in the store has waited for its purge, or \
                 on a swept partition for its tombstone to come back; 0 when none waits",
            )?,
            swept_partitions: IntGauge::new(
                "kv_reader_ttl_sweeper",
                "1 when this process sweeps (produces tombstones for) the partitions it holds",
            )?,
        };
        for how in ["purged", "tombstoned", "replayed"] {
            metrics.expired.with_label_values(&[how]);
        }
        for metric in [
            Box::new(metrics.expired.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.tombstones_produced.clone()),
            Box::new(metrics.repairs_produced.clone()),
            Box::new(metrics.produce_errors.clone()),
            Box::new(metrics.stale_records.clone()),
            Box::new(metrics.pending_repairs.clone()),
            Box::new(metrics.sweep_lag.clone()),
            Box::new(metrics.swept_partitions.clone()),
        ] {
            registry.register(metric)?;
        }
        Ok(metrics)
    }
}

/// What a delivery report is about.
const TOMBSTONE: usize = 0;
const REPAIR: usize = 1;

/// Counts the sweeper's records as Kafka acknowledges them.
struct SweepContext {
    metrics: TtlMetrics,
    /// Set when a delivery failed in a way no later write on this producer recovers from.
    broken: AtomicBool,
}

impl ClientContext for SweepContext {}

impl ProducerContext for SweepContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, kind: usize) {
        match result {
            Ok(_) if kind == REPAIR => self.metrics.repairs_produced.inc(),
            Ok(_) => self.metrics.tombstones_produced.inc(),
            Err((error, _)) => {
                self.metrics.produce_errors.inc();
                if breaks_idempotence(error) {
                    self.broken.store(true, Ordering::Relaxed);
                }
                match classify(error) {
                    KafkaErrorClass::Retryable => {
                        tracing::warn!(%error, "a TTL tombstone or repair was not acknowledged; it is produced again")
                    }
                    KafkaErrorClass::TooLarge | KafkaErrorClass::Fatal => {
                        tracing::error!(%error, "Kafka refused a TTL tombstone or repair; it is produced again")
                    }
                }
            }
        }
    }
}

type SweepProducer = ThreadedProducer<SweepContext>;

/// The TTL work of one replica, driven by its consumer thread.
pub struct Ttl {
    /// The partitions this process keeps the owner's bookkeeping for (it is a candidate).
    swept: SweptPartitions,
    /// Which of them it acts on now.
    election: Election,
    metrics: TtlMetrics,
    sweeper: Option<Sweeper>,
    /// The owner's computed-state actions, on a candidate with rules.
    acting: Option<crate::acting::computed::Acting>,
    computed_metrics: crate::acting::computed::ComputedMetrics,
    next_tick: Instant,
}

impl std::fmt::Debug for Ttl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ttl")
            .field("swept", &self.swept)
            .finish_non_exhaustive()
    }
}

/// Produces tombstones and repairs for the swept partitions.
struct Sweeper {
    producer: SweepProducer,
    config: ClientConfig,
    topic: String,
    codec: RecordCodec,
    /// Where the sweep continues in expiry order; `None`: from the earliest.
    cursor: Option<(u64, Vec<u8>)>,
    /// Tombstones produced and not seen come back, by record key and the offset they expire.
    in_flight: HashMap<(Vec<u8>, i64), Instant>,
    /// Repairs produced and not seen come back, by record key and the stale offset.
    repairs_in_flight: HashMap<(Vec<u8>, i64), Instant>,
    /// Since when each key has owed a repair, as this process first saw it owing: produced once
    /// [`REPAIR_DELAY`] has passed.
    owing_since: HashMap<Vec<u8>, Instant>,
    next_prune: Instant,
}

impl Ttl {
    /// `swept` comes from `app`; a sweeper gets a producer of its own, with the writer's
    /// idempotent settings and the `KAFKA_*` properties.
    pub fn new(
        settings: &Settings,
        codec: RecordCodec,
        swept: SweptPartitions,
        election: Election,
        metrics: TtlMetrics,
        computed_metrics: crate::acting::computed::ComputedMetrics,
    ) -> Result<Self, TtlError> {
        let acting = if swept.sweeps_any() && !settings.core.state_rules.is_empty() {
            Some(crate::acting::computed::Acting::new(
                settings,
                computed_metrics.clone(),
            )?)
        } else {
            None
        };
        let sweeper = if swept.sweeps_any() {
            let mut defaults = PRODUCER_DEFAULTS.to_vec();
            defaults.push(("message.timeout.ms", "30000"));
            let config = client_config(&defaults, &settings.core.kafka, ClientRole::Producer);
            let producer = config.create_with_context(SweepContext {
                metrics: metrics.clone(),
                broken: AtomicBool::new(false),
            })?;
            Some(Sweeper {
                producer,
                config,
                topic: settings.core.topic.clone(),
                codec,
                cursor: None,
                in_flight: HashMap::new(),
                repairs_in_flight: HashMap::new(),
                owing_since: HashMap::new(),
                next_prune: Instant::now() + RESEND_AFTER,
            })
        } else {
            None
        };
        metrics.swept_partitions.set(i64::from(sweeper.is_some()));
        Ok(Self {
            swept,
            election,
            metrics,
            sweeper,
            acting,
            computed_metrics,
            next_tick: Instant::now(),
        })
    }

    /// How long the consumer may wait for records before the next tick is due.
    pub fn wait_at_most(&self, wait: Duration) -> Duration {
        wait.min(self.next_tick.saturating_duration_since(Instant::now()))
    }

    /// Whether this process sweeps `partition`.
    pub fn sweeps(&self, partition: i32) -> bool {
        self.swept.sweeps(partition)
    }

    /// Counts what the TTL rules of a batch just committed came to.
    pub fn applied(&mut self, applied: &Applied) {
        self.metrics
            .expired
            .with_label_values(&["replayed"])
            .inc_by(applied.expired_on_replay);
        self.metrics
            .expired
            .with_label_values(&["tombstoned"])
            .inc_by(applied.tombstoned);
        self.metrics.stale_records.inc_by(applied.stale);
        self.computed_metrics
            .ignored_reports(applied.ignored_reports);
        if applied.repairs_due > 0 || (applied.evaluated > 0 && self.acting.is_some()) {
            // Produced at the next tick, which may be now.
            self.next_tick = self.next_tick.min(Instant::now());
        }
    }

    /// The purge, the sweep and the repairs, at most every [`TICK`]; the entries purged, which
    /// the consumer publishes to the watches.
    pub fn tick(&mut self, store: &Store, progress: &Progress) -> Result<Vec<Purged>, StoreError> {
        if Instant::now() < self.next_tick {
            return Ok(Vec::new());
        }
        self.next_tick = Instant::now() + TICK;
        let now = now_ms();
        // The sweeper keeps every expired entry of its partitions until its tombstone comes
        // back; everything else is purged here.
        let scan = if matches!(self.swept, SweptPartitions::All) {
            0
        } else {
            SCAN
        };
        let purged = store.purge(now, PURGE_BATCH, scan, &|p| self.swept.sweeps(p))?;
        if store.purge_decisions(now, PURGE_BATCH)? == PURGE_BATCH {
            self.next_tick = Instant::now();
        }
        self.metrics
            .expired
            .with_label_values(&["purged"])
            .inc_by(purged.len() as u64);
        if purged.len() == PURGE_BATCH {
            // More are due: go on at the next turn of the loop.
            self.next_tick = Instant::now();
        }
        if let Some(sweeper) = &mut self.sweeper {
            // A partition still replaying may hold tombstones and repairs further on in the
            // log: sweeping it now would produce them again.
            let caught_up = progress.caught_up_partitions();
            let ready = |p: i32| {
                self.swept.sweeps(p) && caught_up.contains(&p) && self.election.owns(p, progress)
            };
            sweeper.sweep(store, now, &ready)?;
            sweeper.repair(store, now, &ready)?;
            if let Some(acting) = &mut self.acting {
                acting.act(store, now, &ready)?;
                // A timer due before the next tick wakes the loop for it (one already due is in
                // flight, and waits for the tick).
                if let Some(due) = store.earliest_timer()?.filter(|due| *due > now) {
                    let soon = Instant::now() + Duration::from_millis(due - now);
                    self.next_tick = self.next_tick.min(soon);
                }
            }
            self.metrics
                .pending_repairs
                .set(i64::try_from(store.pending_repair_count()?).unwrap_or(i64::MAX));
        }
        let lag_ms = store
            .earliest_expiry()?
            .map_or(0, |earliest| now.saturating_sub(earliest));
        self.metrics.sweep_lag.set(lag_ms as f64 / 1000.0);
        Ok(purged)
    }
}

impl Sweeper {
    /// Hands the tombstones of up to [`SWEEP_BATCH`] expired entries to the producer.
    fn sweep(
        &mut self,
        store: &Store,
        now: u64,
        ready: &dyn Fn(i32) -> bool,
    ) -> Result<(), StoreError> {
        self.renew_if_broken();
        self.prune();
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            return Ok(());
        }
        let expired = store.expired(now, self.cursor.as_ref(), SWEEP_BATCH, SCAN, ready)?;
        let reached_end = expired.len() < SWEEP_BATCH;
        for entry in expired {
            let Expired {
                record_key,
                partition,
                offset,
                cursor,
                ..
            } = entry;
            let in_flight = (record_key, offset);
            if self
                .in_flight
                .get(&in_flight)
                .is_some_and(|sent| sent.elapsed() < RESEND_AFTER)
            {
                self.cursor = Some(cursor);
                continue;
            }
            let offset_text = offset.to_string();
            let headers = OwnedHeaders::new_with_capacity(2)
                .insert(Header {
                    key: EXPIRED_OFFSET_HEADER,
                    value: Some(offset_text.as_bytes()),
                })
                .insert(Header {
                    key: WRITER_HEADER,
                    value: Some(WRITER_HEADER_VALUE),
                });
            let record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(&self.topic, TOMBSTONE)
                .key(in_flight.0.as_slice())
                .partition(partition)
                .headers(headers);
            if !self.send(record) {
                return Ok(());
            }
            self.in_flight.insert(in_flight, Instant::now());
            self.cursor = Some(cursor);
        }
        if reached_end {
            // Puts of shorter TTLs may have expired before the cursor since: start over.
            self.cursor = None;
        }
        Ok(())
    }

    /// Produces the repairs the store says are owed on the partitions `ready` names (owned
    /// and caught up).
    fn repair(
        &mut self,
        store: &Store,
        now: u64,
        ready: &dyn Fn(i32) -> bool,
    ) -> Result<(), StoreError> {
        for repair in store.pending_repairs(now, REPAIR_BATCH)? {
            let PendingRepair {
                record_key,
                partition,
                stale_offset,
                state,
            } = repair;
            if !ready(partition) {
                continue;
            }
            let since = *self
                .owing_since
                .entry(record_key.clone())
                .or_insert_with(Instant::now);
            if since.elapsed() < REPAIR_DELAY {
                continue;
            }
            let in_flight = (record_key, stale_offset);
            if self
                .repairs_in_flight
                .get(&in_flight)
                .is_some_and(|sent| sent.elapsed() < RESEND_AFTER)
            {
                continue;
            }
            let stale_text = stale_offset.to_string();
            let mut headers = OwnedHeaders::new_with_capacity(4)
                .insert(Header {
                    key: REPAIR_OF_HEADER,
                    value: Some(stale_text.as_bytes()),
                })
                .insert(Header {
                    key: WRITER_HEADER,
                    value: Some(WRITER_HEADER_VALUE),
                });
            let record_key = in_flight.0.as_slice();
            // The state keeps its version: its ETag survives the repair, on every replica.
            let version_text = state.as_ref().map(|(_, entry)| entry.offset.to_string());
            if let Some(version) = &version_text {
                headers = headers.insert(Header {
                    key: VERSION_HEADER,
                    value: Some(version.as_bytes()),
                });
            }
            let mut expires_text = None;
            let value = state.as_ref().map(|(user_key, entry)| {
                expires_text = entry.expires_at_ms.map(|at| at.to_string());
                self.codec.encode_expiring_value(
                    record_key,
                    user_key,
                    &entry.value,
                    entry.expires_at_ms,
                )
            });
            if let Some(expires) = &expires_text {
                headers = headers.insert(Header {
                    key: EXPIRES_AT_HEADER,
                    value: Some(expires.as_bytes()),
                });
            }
            if let Some(id) = state
                .as_ref()
                .and_then(|(_, e)| e.correlation_id.as_deref())
            {
                headers = headers.insert(Header {
                    key: CORRELATION_ID_HEADER,
                    value: Some(id.as_bytes()),
                });
            }
            // Like the correlation id, the trace of the write whose state this re-asserts.
            let trace_text = state
                .as_ref()
                .and_then(|(_, e)| e.traceparent)
                .map(|trace| trace.to_string());
            if let Some(trace) = &trace_text {
                headers = headers.insert(Header {
                    key: TRACEPARENT,
                    value: Some(trace.as_bytes()),
                });
            }
            let mut record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(&self.topic, REPAIR)
                .key(record_key)
                .partition(partition)
                .headers(headers);
            if let Some(value) = value.as_deref() {
                record = record.payload(value);
            }
            if !self.send(record) {
                return Ok(());
            }
            tracing::info!(
                partition,
                stale_offset,
                tombstone = state.is_none(),
                "repaired a key after a record that, left last, would state another value"
            );
            // A later write that owes again waits a window of its own.
            self.owing_since.remove(&in_flight.0);
            self.repairs_in_flight.insert(in_flight, Instant::now());
        }
        Ok(())
    }

    /// Hands a record to the producer; `false` when the sweep should stop for now.
    fn send(&self, record: BaseRecord<'_, [u8], [u8], usize>) -> bool {
        match self.producer.send(record) {
            Ok(()) => true,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => false,
            Err((error, _)) => {
                self.producer
                    .client()
                    .context()
                    .metrics
                    .produce_errors
                    .inc();
                tracing::error!(%error, "cannot hand a TTL record to the producer");
                false
            }
        }
    }

    /// A producer whose idempotence state broke refuses everything after: a fresh one sends.
    /// What the old one still holds fails, and is produced again after [`RESEND_AFTER`].
    fn renew_if_broken(&mut self) {
        let context = self.producer.client().context();
        if let Some((code, reason)) = self.producer.client().fatal_error() {
            tracing::error!(?code, %reason, "the TTL sweeper's producer failed fatally; replacing it");
        } else if context.broken.load(Ordering::Relaxed) {
            tracing::warn!("the TTL sweeper's producer lost its idempotence state; replacing it");
        } else {
            return;
        }
        let metrics = context.metrics.clone();
        match self.config.create_with_context(SweepContext {
            metrics,
            broken: AtomicBool::new(false),
        }) {
            Ok(fresh) => {
                self.producer = fresh;
                self.in_flight.clear();
                self.repairs_in_flight.clear();
                self.owing_since.clear();
            }
            Err(error) => tracing::error!(%error, "cannot create a fresh TTL sweeper producer"),
        }
    }

    /// Forgets records long produced: their keys are gone, or they are produced again.
    fn prune(&mut self) {
        if Instant::now() < self.next_prune {
            return;
        }
        self.next_prune = Instant::now() + RESEND_AFTER;
        self.in_flight
            .retain(|_, sent| sent.elapsed() < RESEND_AFTER);
        self.repairs_in_flight
            .retain(|_, sent| sent.elapsed() < RESEND_AFTER);
        // A key forgiven before its repair leaves its entry behind.
        self.owing_since
            .retain(|_, since| since.elapsed() < RESEND_AFTER + REPAIR_DELAY);
    }
}
