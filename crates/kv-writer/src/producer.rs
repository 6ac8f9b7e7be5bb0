//! The one producer every request shares: writes are answered only once Kafka acknowledged them.

use std::time::Duration;

use kv_core::consistency::RecordPosition;
use kv_core::error::{ApiError, ErrorCode};
use kv_core::kafka::{classify, client_config, ClientRole, KafkaErrorClass};
use kv_core::record::{RecordCodec, CORRELATION_ID_HEADER};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::settings::Settings;

/// How long a write may wait for room in the producer's queue before it is refused with 503.
/// The queue is bounded (`queue.buffering.max.kbytes`), so a slow broker pushes back on clients
/// instead of growing memory.
const QUEUE_WAIT: Duration = Duration::from_secs(1);

/// What a client should wait before retrying a write the broker could not take.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Room for the key, headers and record overhead on top of the largest value.
const RECORD_OVERHEAD_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct KvProducer {
    producer: FutureProducer,
    topic: String,
    codec: RecordCodec,
}

impl std::fmt::Debug for KvProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvProducer")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// One write as it goes to Kafka. `value: None` is a delete (a tombstone).
#[derive(Debug, Clone, Copy)]
pub struct Write<'a> {
    pub key: &'a [u8],
    pub value: Option<&'a [u8]>,
    pub correlation_id: &'a str,
    pub headers: &'a [(String, String)],
}

impl KvProducer {
    pub fn new(settings: &Settings, codec: RecordCodec) -> Result<Self, KafkaError> {
        let timeout_ms = settings.produce_timeout.as_millis().to_string();
        let max_message =
            (settings.max_value_bytes + settings.max_key_bytes + RECORD_OVERHEAD_BYTES).to_string();
        let defaults = [
            ("enable.idempotence", "true"),
            // Same partition for the same key as Java clients, so mixed producers agree.
            ("partitioner", "murmur2_random"),
            // Many concurrent requests share batches; 5 ms costs little latency.
            ("linger.ms", "5"),
            ("message.timeout.ms", timeout_ms.as_str()),
            ("queue.buffering.max.kbytes", "65536"),
            ("message.max.bytes", max_message.as_str()),
        ];
        let mut config = client_config(&defaults, &settings.core.kafka, ClientRole::Producer);
        config.set("acks", settings.acks);
        // The idempotent producer requires acks=all; weaker acks were asked for explicitly.
        if settings.acks != "all" && settings.core.kafka.get("enable.idempotence").is_none() {
            config.set("enable.idempotence", "false");
        }
        Ok(Self {
            producer: config.create()?,
            topic: settings.core.topic.clone(),
            codec,
        })
    }

    /// Sends one write and waits for the broker's acknowledgement.
    pub async fn write(&self, write: Write<'_>) -> Result<RecordPosition, ApiError> {
        let record_key = self.codec.record_key(write.key);
        let value = write
            .value
            .map(|value| self.codec.encode_value(&record_key, write.key, value));
        let mut headers = OwnedHeaders::new_with_capacity(1 + write.headers.len()).insert(Header {
            key: CORRELATION_ID_HEADER,
            value: Some(write.correlation_id),
        });
        for (name, value) in write.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        let mut record = FutureRecord::to(&self.topic)
            .key(record_key.as_ref())
            .headers(headers);
        if let Some(value) = value.as_deref() {
            record = record.payload(value);
        }
        match self.producer.send(record, QUEUE_WAIT).await {
            Ok(delivery) => Ok(RecordPosition {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Err((error, _)) => Err(self.refusal(&error)),
        }
    }

    fn refusal(&self, error: &KafkaError) -> ApiError {
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

    /// Whether the broker answers metadata for the topic within `timeout`. Blocking.
    pub fn topic_reachable(&self, timeout: Duration) -> Result<(), String> {
        let metadata = self
            .producer
            .client()
            .fetch_metadata(Some(&self.topic), timeout)
            .map_err(|e| format!("Kafka metadata request failed: {e}"))?;
        match metadata.topics().first() {
            Some(topic) if topic.error().is_none() && !topic.partitions().is_empty() => Ok(()),
            Some(topic) => Err(format!(
                "topic {} is not available: {:?}",
                self.topic,
                topic.error()
            )),
            None => Err(format!("topic {} is not in the metadata", self.topic)),
        }
    }

    /// Waits for every queued write to be delivered or to fail. Blocking.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }
}
