//! The owner's part of computed state (docs/architecture.md, "Computed state"): on the
//! partitions this process owns and has caught up on, it acts on due timers and forwards
//! publications to their sink topics. Every replica derives the timers and the pending sink
//! records in log order (`store::computed`); this module only produces records, and what they
//! mean is decided by every replica alike, so a duplicate or a stale one from a dying owner is
//! harmless:
//!
//! - a publication is a put of the state key conditional on the version the owner saw
//!   (`If-Match`, or `If-None-Match: *` when absent): a second one for the same change finds the
//!   version moved and is refused everywhere;
//! - a tick evaluates the key at a time named in the record: evaluating twice changes nothing;
//! - a sink mark removes the pending records up to an offset: a sink record produced again
//!   after a failover carries the same `X-KV-Decided-At`, so a consumer drops the repeat.
//!
//! Runs on the consumer thread with the TTL work, in bounded steps.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_core::computed::{
    tick_record_key, DECIDED_AT_HEADER, PUBLISHED_HEADER, SINK_DONE_HEADER, SINK_MARK_KEY,
    TICK_HEADER,
};
use kv_core::conditional::Condition;
use kv_core::kafka::{client_config, ClientRole, PRODUCER_DEFAULTS};
use kv_core::record::{WRITER_HEADER, WRITER_HEADER_VALUE};
use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::settings::Settings;
use crate::store::{DueTimer, Store, StoreError};

/// Most timers acted on per step.
const TIMER_BATCH: usize = 1000;
/// Most sink records one partition has in flight at once: after a failover the next owner
/// produces at most this many again (its predecessor's unmarked batch); one mark per batch.
const SINK_BATCH: usize = 100;
/// How long a record may take to come back through the topic before it is produced again.
const RESEND_AFTER: Duration = Duration::from_secs(5);

/// The kinds of record this module produces: the `kind` label's closed set.
const KINDS: [&str; 4] = ["publication", "tick", "sink", "sink_mark"];

/// Computed-state metrics; labels from closed sets.
#[derive(Debug, Clone)]
pub struct ComputedMetrics {
    produced: IntCounterVec,
    produce_errors: IntCounter,
    ignored_reports: IntCounter,
    sink_pending: IntGauge,
    timer_lag: Gauge,
}

impl ComputedMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            produced: IntCounterVec::new(
                Opts::new(
                    "kv_reader_computed_records_total",
                    "Records this owner produced for computed keys, acknowledged by Kafka, by \
                     kind: publication, tick, sink, sink_mark",
                ),
                &["kind"],
            )?,
            produce_errors: IntCounter::new(
                "kv_reader_computed_produce_errors_total",
                "Computed-state records Kafka did not acknowledge (they are produced again)",
            )?,
            ignored_reports: IntCounter::new(
                "kv_reader_computed_ignored_reports_total",
                "Reports this replica ignored: their key is under no rule here, or more agents \
                 than a key keeps reported on it",
            )?,
            sink_pending: IntGauge::new(
                "kv_reader_computed_sink_pending",
                "Publications whose sink record this replica has not seen marked done",
            )?,
            timer_lag: Gauge::new(
                "kv_reader_computed_timer_lag_seconds",
                "How long the earliest due timer (hold or report expiry) has waited, as this \
                 replica sees it; 0 when none is due",
            )?,
        };
        for kind in KINDS {
            metrics.produced.with_label_values(&[kind]);
        }
        for metric in [
            Box::new(metrics.produced.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.produce_errors.clone()),
            Box::new(metrics.ignored_reports.clone()),
            Box::new(metrics.sink_pending.clone()),
            Box::new(metrics.timer_lag.clone()),
        ] {
            registry.register(metric)?;
        }
        Ok(metrics)
    }

    pub fn ignored_reports(&self, count: u64) {
        self.ignored_reports.inc_by(count);
    }
}

/// What a delivery report is about: a kind, and for a sink record its batch.
struct Delivery {
    kind: usize,
    batch: Option<Arc<SinkBatch>>,
}

/// Sink records of one partition in flight.
struct SinkBatch {
    remaining: AtomicUsize,
    failed: AtomicBool,
}

struct Context {
    metrics: ComputedMetrics,
}

impl ClientContext for Context {}

impl ProducerContext for Context {
    type DeliveryOpaque = Box<Delivery>;

    fn delivery(&self, result: &DeliveryResult<'_>, delivery: Box<Delivery>) {
        match result {
            Ok(_) => self
                .metrics
                .produced
                .with_label_values(&[KINDS[delivery.kind]])
                .inc(),
            Err((error, _)) => {
                self.metrics.produce_errors.inc();
                tracing::warn!(%error, kind = KINDS[delivery.kind], "a computed-state record was not acknowledged; it is produced again");
                if let Some(batch) = &delivery.batch {
                    batch.failed.store(true, Ordering::Relaxed);
                }
            }
        }
        if let Some(batch) = &delivery.batch {
            batch.remaining.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A partition's sink progress on this owner.
struct SinkState {
    batch: Arc<SinkBatch>,
    /// The last offset in the batch: the sink mark's value once all are acknowledged.
    upto: i64,
    /// Set once the mark is produced: when, so it is produced again if it never comes back.
    marked: Option<Instant>,
    sent: Instant,
}

/// The owner's computed-state actions of one process (a candidate owner).
pub struct Acting {
    producer: ThreadedProducer<Context>,
    topic: String,
    metrics: ComputedMetrics,
    /// Timers acted on and not yet seen change, by key and due time.
    in_flight: HashMap<(Vec<u8>, u64), Instant>,
    sinks: BTreeMap<i32, SinkState>,
}

impl std::fmt::Debug for Acting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acting").finish_non_exhaustive()
    }
}

impl Acting {
    pub fn new(settings: &Settings, metrics: ComputedMetrics) -> Result<Self, KafkaError> {
        let mut defaults = PRODUCER_DEFAULTS.to_vec();
        defaults.push(("message.timeout.ms", "30000"));
        defaults.push(("linger.ms", "1"));
        let config = client_config(&defaults, &settings.core.kafka, ClientRole::Producer);
        let producer = config.create_with_context(Context {
            metrics: metrics.clone(),
        })?;
        Ok(Self {
            producer,
            topic: settings.core.topic.clone(),
            metrics,
            in_flight: HashMap::new(),
            sinks: BTreeMap::new(),
        })
    }

    /// Acts on what is due at `now_ms` on the partitions `ready` names (owned, caught up).
    pub fn act(
        &mut self,
        store: &Store,
        now_ms: u64,
        ready: &dyn Fn(i32) -> bool,
    ) -> Result<(), StoreError> {
        self.in_flight
            .retain(|_, sent| sent.elapsed() < RESEND_AFTER);
        let lag = store
            .earliest_timer()?
            .map_or(0, |due| now_ms.saturating_sub(due));
        self.metrics.timer_lag.set(lag as f64 / 1000.0);
        for timer in store.due_timers(now_ms, TIMER_BATCH, ready)? {
            let id = (timer.key.clone(), timer.due_ms);
            if self.in_flight.contains_key(&id) {
                continue;
            }
            if !self.fire(&timer, now_ms) {
                break;
            }
            self.in_flight.insert(id, Instant::now());
        }
        self.forward_sinks(store, ready)?;
        self.metrics
            .sink_pending
            .set(i64::try_from(store.sink_pending_count()?).unwrap_or(i64::MAX));
        Ok(())
    }

    /// Publishes a candidate whose hold passed, or ticks the key at its due time.
    fn fire(&self, timer: &DueTimer, now_ms: u64) -> bool {
        match (&timer.candidate, timer.publish_at) {
            (Some((value, since)), Some(at)) if at <= now_ms => {
                let condition = match timer.version {
                    Some(version) => Condition::IfMatch(vec![version]),
                    None => Condition::IfAbsent,
                };
                let (name, text) = condition.header();
                let since = since.to_string();
                let headers = OwnedHeaders::new_with_capacity(3)
                    .insert(Header {
                        key: WRITER_HEADER,
                        value: Some(WRITER_HEADER_VALUE),
                    })
                    .insert(Header {
                        key: name,
                        value: Some(text.as_bytes()),
                    })
                    .insert(Header {
                        key: PUBLISHED_HEADER,
                        value: Some(since.as_bytes()),
                    });
                let record = BaseRecord::with_opaque_to(
                    &self.topic,
                    Box::new(Delivery {
                        kind: 0,
                        batch: None,
                    }),
                )
                .key(timer.key.as_slice())
                .payload(value.as_slice())
                .partition(timer.partition)
                .headers(headers);
                self.send(record)
            }
            _ => {
                let key = tick_record_key(&timer.key);
                let at = timer.due_ms.to_string();
                let headers = OwnedHeaders::new_with_capacity(2)
                    .insert(Header {
                        key: WRITER_HEADER,
                        value: Some(WRITER_HEADER_VALUE),
                    })
                    .insert(Header {
                        key: TICK_HEADER,
                        value: Some(at.as_bytes()),
                    });
                let record = BaseRecord::with_opaque_to(
                    &self.topic,
                    Box::new(Delivery {
                        kind: 1,
                        batch: None,
                    }),
                )
                .key(key.as_slice())
                .payload(&[][..])
                .partition(timer.partition)
                .headers(headers);
                self.send(record)
            }
        }
    }

    /// Per owned partition, one batch of sink records in flight; once Kafka acknowledged all of
    /// it, the sink mark that tells every replica they are done.
    fn forward_sinks(
        &mut self,
        store: &Store,
        ready: &dyn Fn(i32) -> bool,
    ) -> Result<(), StoreError> {
        let mut marks = Vec::new();
        self.sinks.retain(|&partition, state| {
            if !ready(partition) {
                return false;
            }
            if state.batch.remaining.load(Ordering::Acquire) > 0 {
                // Still in flight; a batch stuck beyond the producer's own timeout is dropped.
                return state.sent.elapsed() < Duration::from_secs(60);
            }
            if state.batch.failed.load(Ordering::Relaxed) {
                return false;
            }
            match state.marked {
                None => {
                    marks.push((partition, state.upto));
                    state.marked = Some(Instant::now());
                    true
                }
                // The mark comes back and clears the pending records; produced again if not.
                Some(at) => {
                    at.elapsed() < RESEND_AFTER
                        && store.sink_waiting(partition, state.upto).unwrap_or(true)
                }
            }
        });
        for (partition, upto) in marks {
            let text = upto.to_string();
            let headers = OwnedHeaders::new_with_capacity(2)
                .insert(Header {
                    key: WRITER_HEADER,
                    value: Some(WRITER_HEADER_VALUE),
                })
                .insert(Header {
                    key: SINK_DONE_HEADER,
                    value: Some(text.as_bytes()),
                });
            let record = BaseRecord::with_opaque_to(
                &self.topic,
                Box::new(Delivery {
                    kind: 3,
                    batch: None,
                }),
            )
            .key(SINK_MARK_KEY)
            .payload(&[][..])
            .partition(partition)
            .headers(headers);
            if !self.send(record) {
                self.sinks.remove(&partition);
            }
        }
        let pending = store.sink_pending(SINK_BATCH * 8, &|p| {
            ready(p) && !self.sinks.contains_key(&p)
        })?;
        let mut by_partition: BTreeMap<i32, Vec<_>> = BTreeMap::new();
        for item in pending {
            let items = by_partition.entry(item.partition).or_default();
            if items.len() < SINK_BATCH {
                items.push(item);
            }
        }
        for (partition, items) in by_partition {
            let batch = Arc::new(SinkBatch {
                remaining: AtomicUsize::new(0),
                failed: AtomicBool::new(false),
            });
            let mut upto = None;
            for item in &items {
                let decided = format!("{}-{}", item.partition, item.offset);
                let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
                    key: DECIDED_AT_HEADER,
                    value: Some(decided.as_bytes()),
                });
                batch.remaining.fetch_add(1, Ordering::AcqRel);
                let record = BaseRecord::with_opaque_to(
                    item.topic.as_str(),
                    Box::new(Delivery {
                        kind: 2,
                        batch: Some(batch.clone()),
                    }),
                )
                .key(item.key.as_slice())
                .payload(item.value.as_slice())
                .headers(headers);
                if !self.send(record) {
                    batch.remaining.fetch_sub(1, Ordering::AcqRel);
                    break;
                }
                upto = Some(item.offset);
            }
            if let Some(upto) = upto {
                self.sinks.insert(
                    partition,
                    SinkState {
                        batch,
                        upto,
                        marked: None,
                        sent: Instant::now(),
                    },
                );
            }
        }
        Ok(())
    }

    fn send(&self, record: BaseRecord<'_, [u8], [u8], Box<Delivery>>) -> bool {
        match self.producer.send(record) {
            Ok(()) => true,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => false,
            Err((error, _)) => {
                self.metrics.produce_errors.inc();
                tracing::error!(%error, "cannot hand a computed-state record to the producer");
                false
            }
        }
    }
}
