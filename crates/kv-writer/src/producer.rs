//! The one producer every request shares: writes are answered only once Kafka acknowledged them.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use kv_core::consistency::RecordPosition;
use kv_core::kafka::{
    breaks_idempotence, classify, client_config, ClientRole, KafkaErrorClass, PRODUCER_DEFAULTS,
};
use kv_core::kafka_stats::StatsContext;
use kv_core::record::{
    RecordCodec, CORRELATION_ID_HEADER, EXPIRES_AT_HEADER, WRITER_HEADER, WRITER_HEADER_VALUE,
};
use kv_core::trace_context::{TraceParent, TRACEPARENT};
use kv_core::web::error::{ApiError, ErrorCode};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer, PurgeConfig};

use crate::metrics::{InFlight, ProducerMetrics};
use crate::settings::Settings;

/// How long a write may wait for room in the producer's queue before it is refused with 503.
/// The queue is bounded (`queue.buffering.max.kbytes`), so a slow broker pushes back on clients
/// instead of growing memory.
const QUEUE_WAIT: Duration = Duration::from_secs(1);

/// How often a write waiting for room in the queue tries again.
const QUEUE_POLL: Duration = Duration::from_millis(5);

/// What a client should wait before retrying a write the broker could not take.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// How long past `message.timeout.ms` a write waits for librdkafka's delivery report before the
/// writer answers by itself. librdkafka scans for timed-out messages about once a second, and
/// only while a broker thread serves the partition: after the broker went away, the thread
/// waits out its reconnect backoff (up to `reconnect.backoff.max.ms`, 10 s by default) first, so
/// without this bound a write could be held for the backoff instead of the produce timeout.
const DELIVERY_REPORT_GRACE: Duration = Duration::from_secs(1);

/// Room for the key, headers and record overhead on top of the largest value.
const RECORD_OVERHEAD_BYTES: usize = 64 * 1024;

/// Least time between two producer replacements, so a broker that keeps failing does not make
/// the gateway churn through connections.
const MIN_RESET_INTERVAL: Duration = Duration::from_secs(1);

/// The producer every request shares, cheap to clone.
///
/// It is replaced by a fresh one when its idempotence state breaks (librdkafka's fatal errors,
/// or a broker refusing its producer id or sequence, as some brokers do after a restart): that
/// state never heals by itself, and librdkafka's answer to a fatal error is a new producer.
#[derive(Clone)]
pub struct KvProducer {
    shared: Arc<Shared>,
}

struct Shared {
    config: ClientConfig,
    current: RwLock<Current>,
    topic: String,
    codec: RecordCodec,
    /// How long a replaced producer may take to report on the writes it was made to fail.
    drain_timeout: Duration,
    /// How long after it was queued a write is answered at the latest: librdkafka's message
    /// timeout plus [`DELIVERY_REPORT_GRACE`].
    answer_within: Duration,
    idempotent: bool,
    metrics: ProducerMetrics,
}

/// The producer, with a context that turns librdkafka's statistics into metrics.
type KvFutureProducer = FutureProducer<StatsContext>;

#[derive(Clone)]
struct Current {
    /// Behind its own `Arc` so a replaced producer can be dropped by its last owner on a blocking
    /// thread: dropping one joins librdkafka's threads, which must not stall an HTTP worker.
    producer: Arc<KvFutureProducer>,
    generation: u64,
    created: Instant,
}

impl std::fmt::Debug for KvProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvProducer")
            .field("topic", &self.shared.topic)
            .finish_non_exhaustive()
    }
}

/// One producer generation, taken once by a request whose writes must all go to the same
/// producer: a batch's items keep their order on a partition only on one producer, since two
/// producers' queues drain independently. Once that producer is replaced, every further write
/// through the handle is refused instead of moving to the new one.
#[derive(Debug, Clone)]
pub struct ProducerHandle {
    producer: KvProducer,
    generation: u64,
}

impl ProducerHandle {
    /// As [`KvProducer::enqueue`], on this handle's producer only.
    pub async fn enqueue(&self, write: Write<'_>) -> Result<Pending, ApiError> {
        self.producer.enqueue_on(write, Some(self.generation)).await
    }
}

/// One write as it goes to Kafka. `value: None` is a delete (a tombstone).
#[derive(Debug, Clone, Copy)]
pub struct Write<'a> {
    pub key: &'a [u8],
    pub value: Option<&'a [u8]>,
    pub correlation_id: &'a str,
    /// The request's span in its W3C trace, sent as `traceparent` for whoever reads the record.
    pub trace: Option<TraceParent>,
    /// Extra Kafka headers the client asked for (the original's `headers` field).
    pub headers: &'a [(String, Vec<u8>)],
    /// When a put expires, in milliseconds since the Unix epoch; sent as `X-KV-Expires-At`.
    pub expires_at_ms: Option<u64>,
    /// The partition, when not the one the key hashes to (a report goes to its state key's).
    pub partition: Option<i32>,
}

/// A write librdkafka has queued; resolves once the broker acknowledged it or it failed.
pub struct Pending {
    delivery: DeliveryFuture,
    producer: KvProducer,
    generation: u64,
    started: Instant,
    /// When the write is answered even if librdkafka has not reported on it yet.
    deadline: tokio::time::Instant,
    _in_flight: InFlight,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Pending {
    pub async fn acknowledged(self) -> Result<RecordPosition, ApiError> {
        let outcome = match tokio::time::timeout_at(self.deadline, self.delivery).await {
            Ok(Ok(Ok(delivery))) => Ok(RecordPosition {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Ok(Ok(Err((error, _)))) => Err(self.producer.refusal(&error, self.generation)),
            Ok(Err(_canceled)) => Err(refusal(&KafkaError::Canceled)),
            // librdkafka holds the write past its timeout (see DELIVERY_REPORT_GRACE). Answered
            // as the timeout it is; the producer holding it is replaced like after any timeout,
            // and it times the write out before it could send it again.
            Err(_elapsed) => {
                tracing::warn!(
                    "no delivery report within the produce timeout; answering without it"
                );
                let timed_out = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
                Err(self.producer.refusal(&timed_out, self.generation))
            }
        };
        let metrics = &self.producer.shared.metrics;
        metrics.observe(self.started, outcome.is_ok());
        if let Err(error) = &outcome {
            metrics.count_error(error);
        }
        outcome
    }
}

impl KvProducer {
    pub fn new(
        settings: &Settings,
        codec: RecordCodec,
        metrics: ProducerMetrics,
    ) -> Result<Self, KafkaError> {
        let timeout_ms = settings.produce_timeout.as_millis().to_string();
        let max_message =
            (settings.max_value_bytes + settings.max_key_bytes + RECORD_OVERHEAD_BYTES).to_string();
        let mut defaults = PRODUCER_DEFAULTS.to_vec();
        defaults.extend([
            ("message.timeout.ms", timeout_ms.as_str()),
            ("queue.buffering.max.kbytes", "65536"),
            ("message.max.bytes", max_message.as_str()),
            // Feeds the kv_kafka_broker_* metrics.
            ("statistics.interval.ms", "5000"),
        ]);
        let mut config = client_config(&defaults, &settings.core.kafka, ClientRole::Producer);
        config.set("acks", settings.acks);
        // The idempotent producer requires acks=all; weaker acks were asked for explicitly.
        if settings.acks != "all" && settings.core.kafka.get("enable.idempotence").is_none() {
            config.set("enable.idempotence", "false");
        }
        let configured_max = settings
            .core
            .kafka
            .get("message.max.bytes")
            .and_then(|v| v.parse::<usize>().ok());
        if let Some(configured) = configured_max {
            if configured < settings.max_value_bytes + settings.max_key_bytes {
                tracing::warn!(
                    "KAFKA_MESSAGE_MAX_BYTES={configured} is below KV_API_MAX_VALUE_BYTES + \
                     KV_API_MAX_KEY_BYTES; writes between the two are refused with 413 by the \
                     producer rather than by the gateway's own checks"
                );
            }
        }
        // A user's KAFKA_MESSAGE_TIMEOUT_MS (or its alias) is what librdkafka enforces.
        let message_timeout = ["message.timeout.ms", "delivery.timeout.ms"]
            .iter()
            .filter_map(|property| config.get(property)?.parse::<u64>().ok())
            .max()
            .map_or(settings.produce_timeout, Duration::from_millis);
        let producer: KvFutureProducer =
            config.create_with_context(StatsContext(metrics.kafka.clone()))?;
        Ok(Self {
            shared: Arc::new(Shared {
                current: RwLock::new(Current {
                    producer: Arc::new(producer),
                    generation: 0,
                    created: Instant::now(),
                }),
                topic: settings.core.topic.clone(),
                codec,
                drain_timeout: settings.produce_timeout,
                answer_within: message_timeout + DELIVERY_REPORT_GRACE,
                idempotent: config.get("enable.idempotence") == Some("true"),
                config,
                metrics,
            }),
        })
    }

    /// The producer now current, for a request that must not be split across two.
    pub fn handle(&self) -> ProducerHandle {
        ProducerHandle {
            producer: self.clone(),
            generation: self.current().generation,
        }
    }

    fn current(&self) -> Current {
        self.shared
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The answer for a write that failed on producer `generation`. Replaces that producer when
    /// its state is broken, so that the client's retry can succeed on a fresh one.
    fn refusal(&self, error: &KafkaError, generation: u64) -> ApiError {
        let (current_generation, created, fatal) = {
            let current = self.current();
            let fatal = current.producer.client().fatal_error().is_some();
            (current.generation, current.created, fatal)
        };
        let broken = fatal || breaks_idempotence(error);
        // After a write timed out, librdkafka bumps the producer epoch to close the sequence gap;
        // some Kafka-compatible brokers (Tansu 0.6) mishandle the bumped epoch and then stop
        // serving every client. A fresh producer id needs no bump, so it is the safer recovery.
        let gap = self.shared.idempotent && leaves_sequence_gap(error);
        let due = gap || (broken && created.elapsed() >= MIN_RESET_INTERVAL);
        if current_generation == generation && due {
            self.replace(generation);
        }
        if !broken {
            return refusal(error);
        }
        tracing::warn!(%error, "write failed on a broken producer");
        ApiError::new(
            ErrorCode::KafkaUnavailable,
            format!("Kafka did not acknowledge the write and the producer is being reset: {error}"),
        )
        .with_retry_after(RETRY_AFTER)
    }

    fn replace(&self, generation: u64) {
        let old = {
            let mut current = self
                .shared
                .current
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if current.generation != generation {
                return; // Another request replaced it already.
            }
            let context = StatsContext(self.shared.metrics.kafka.clone());
            let fresh = match self.shared.config.create_with_context(context) {
                Ok(fresh) => fresh,
                Err(error) => {
                    tracing::error!(%error, "cannot create a replacement Kafka producer");
                    return;
                }
            };
            std::mem::replace(
                &mut *current,
                Current {
                    producer: Arc::new(fresh),
                    generation: generation + 1,
                    created: Instant::now(),
                },
            )
        };
        self.shared.metrics.count_replacement();
        tracing::warn!(
            generation = generation + 1,
            "replaced the Kafka producer after a fatal or idempotence error"
        );
        // Fenced before anything else runs: no write is sent after this swap (sends check the
        // generation under the lock), and what the old producer still queues or retries fails
        // now instead of landing later, after newer writes of the same keys made on the fresh
        // producer, while its client was told 503 or is told so now. A request already on the
        // wire cannot be recalled (docs/architecture.md, "What a writer promises"). Purging
        // blocks only while librdkafka empties its queues, and replacements are rare.
        old.producer
            .purge(PurgeConfig::default().queue().inflight());
        let timeout = self.shared.drain_timeout;
        tokio::task::spawn_blocking(move || {
            // Serves the delivery reports of the purged writes, so their clients are answered.
            old.producer.flush(timeout).ok();
            // Requests hold a clone for a moment at most; wait to be the last owner.
            let mut producer = old.producer;
            loop {
                match Arc::try_unwrap(producer) {
                    Ok(last) => return drop(last),
                    Err(shared) => producer = shared,
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
    }

    /// Sends one write and waits for the broker's acknowledgement.
    pub async fn write(&self, write: Write<'_>) -> Result<RecordPosition, ApiError> {
        self.enqueue(write).await?.acknowledged().await
    }

    /// Hands one write to librdkafka without waiting for the broker. Writes enqueued one after
    /// the other keep that order on their partition (the idempotent producer preserves it), which
    /// a batch that writes the same key twice relies on.
    ///
    /// A full queue is retried for a short while, then refused with 503.
    pub async fn enqueue(&self, write: Write<'_>) -> Result<Pending, ApiError> {
        self.enqueue_on(write, None).await
    }

    /// `pinned`: the generation a [`ProducerHandle`] holds; `None` follows replacements, which a
    /// single write may since nothing orders it after another write of the request.
    async fn enqueue_on(&self, write: Write<'_>, pinned: Option<u64>) -> Result<Pending, ApiError> {
        let started = Instant::now();
        let queued = self.send(write, started, pinned).await;
        if let Err(error) = &queued {
            self.shared.metrics.observe(started, false);
            self.shared.metrics.count_error(error);
        }
        queued
    }

    async fn send(
        &self,
        write: Write<'_>,
        started: Instant,
        pinned: Option<u64>,
    ) -> Result<Pending, ApiError> {
        let codec = &self.shared.codec;
        let record_key = codec.record_key(write.key);
        let value = write.value.map(|value| {
            codec.encode_expiring_value(&record_key, write.key, value, write.expires_at_ms)
        });
        let mut headers = OwnedHeaders::new_with_capacity(4 + write.headers.len())
            .insert(Header {
                key: CORRELATION_ID_HEADER,
                value: Some(write.correlation_id),
            })
            .insert(Header {
                key: WRITER_HEADER,
                value: Some(WRITER_HEADER_VALUE),
            });
        let trace = write.trace.map(|trace| trace.to_string());
        if let Some(trace) = &trace {
            headers = headers.insert(Header {
                key: TRACEPARENT,
                value: Some(trace.as_bytes()),
            });
        }
        let expires_at = write.expires_at_ms.map(|at| at.to_string());
        if let Some(expires_at) = &expires_at {
            headers = headers.insert(Header {
                key: EXPIRES_AT_HEADER,
                value: Some(expires_at.as_bytes()),
            });
        }
        for (name, value) in write.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        let mut record = FutureRecord::to(&self.shared.topic)
            .key(record_key.as_ref())
            .headers(headers);
        if let Some(value) = value.as_deref() {
            record = record.payload(value);
        }
        if let Some(partition) = write.partition {
            record = record.partition(partition);
        }
        let give_up_at = started + QUEUE_WAIT;
        loop {
            let (generation, sent) = {
                // Held across the send, so `replace` cannot purge the producer between the
                // generation check and the write entering its queue. `send_result` never waits.
                let current = self
                    .shared
                    .current
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if pinned.is_some_and(|pinned| pinned != current.generation) {
                    return Err(replaced());
                }
                (current.generation, current.producer.send_result(record))
            };
            match sent {
                Ok(delivery) => {
                    tracing::debug!(correlation_id = write.correlation_id, "write queued");
                    return Ok(Pending {
                        delivery,
                        producer: self.clone(),
                        generation,
                        started,
                        deadline: tokio::time::Instant::now() + self.shared.answer_within,
                        _in_flight: self.shared.metrics.in_flight(),
                    });
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned))
                    if Instant::now() < give_up_at =>
                {
                    record = returned;
                    tokio::time::sleep(QUEUE_POLL).await;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tracing::warn!("producer queue full; refusing a write");
                    return Err(ApiError::new(
                        ErrorCode::KafkaUnavailable,
                        "the write queue is full because Kafka is slow or unreachable; retry later",
                    )
                    .with_retry_after(RETRY_AFTER));
                }
                Err((error, _)) => return Err(self.refusal(&error, generation)),
            }
        }
    }

    /// Whether the broker answers metadata for the topic within `timeout`. Blocking.
    pub fn topic_reachable(&self, timeout: Duration) -> Result<(), String> {
        // A producer in a fatal state refuses every write until the next write replaces it.
        if let Some((code, reason)) = self.current().producer.client().fatal_error() {
            return Err(format!(
                "the Kafka producer failed fatally: {code:?}: {reason}"
            ));
        }
        self.partition_count(timeout).map(|_| ())
    }

    /// How many partitions the topic has, from a metadata request. Blocking.
    pub fn partition_count(&self, timeout: Duration) -> Result<u32, String> {
        let producer = self.current().producer;
        let topic = &self.shared.topic;
        let metadata = producer
            .client()
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| format!("Kafka metadata request failed: {e}"))?;
        match metadata.topics().first() {
            Some(found) if found.error().is_none() && !found.partitions().is_empty() => {
                Ok(found.partitions().len() as u32)
            }
            Some(found) => Err(format!(
                "topic {topic} is not available: {:?}",
                found.error()
            )),
            None => Err(format!("topic {topic} is not in the metadata")),
        }
    }

    /// Waits for every queued write to be delivered or to fail. Blocking.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.current().producer.flush(timeout)
    }
}

/// Errors after which the broker may or may not hold the write, so the producer's sequence
/// numbers may have a gap.
fn leaves_sequence_gap(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageTimedOut)
    )
}

/// The answer for a write of a request whose producer was replaced while the request was being
/// queued: its earlier writes were fenced with the producer, so the request is retried whole.
fn replaced() -> ApiError {
    ApiError::new(
        ErrorCode::KafkaUnavailable,
        "the Kafka producer was replaced while this request was being queued; retry it",
    )
    .with_retry_after(RETRY_AFTER)
}

/// What a client is told about a write Kafka did not acknowledge.
fn refusal(error: &KafkaError) -> ApiError {
    match classify(error) {
        KafkaErrorClass::Retryable => {
            tracing::warn!(%error, "write not acknowledged by Kafka");
            ApiError::new(
                ErrorCode::KafkaUnavailable,
                format!("Kafka did not acknowledge the write: {error}"),
            )
            .with_retry_after(RETRY_AFTER)
        }
        KafkaErrorClass::TooLarge => ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the record is larger than Kafka accepts: {error}"),
        ),
        KafkaErrorClass::Fatal => {
            tracing::error!(%error, "Kafka refused the write");
            ApiError::new(
                ErrorCode::KafkaRejected,
                format!("Kafka refused the write: {error}"),
            )
        }
    }
}

/// How long a partition count read from the broker is used before it is asked again.
const PARTITIONS_FRESH: Duration = Duration::from_secs(60);
/// Longest a report waits for the topic's metadata.
const PARTITION_METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// The topic's partition count, asked of the broker at most once a minute (reports are
/// produced to their state key's partition).
#[derive(Debug, Default)]
pub struct Partitions(Mutex<Option<(u32, Instant)>>);

impl Partitions {
    pub(crate) async fn count(&self, producer: &KvProducer) -> Result<u32, ApiError> {
        if let Some((count, at)) = *self.0.lock().unwrap_or_else(|e| e.into_inner()) {
            if at.elapsed() < PARTITIONS_FRESH {
                return Ok(count);
            }
        }
        let producer = producer.clone();
        let count = tokio::task::spawn_blocking(move || {
            producer.partition_count(PARTITION_METADATA_TIMEOUT)
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|reason| {
            ApiError::new(ErrorCode::KafkaUnavailable, reason)
                .with_retry_after(Duration::from_secs(1))
        })?;
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((count, Instant::now()));
        Ok(count)
    }
}
