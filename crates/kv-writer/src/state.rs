//! What the writer's handlers share: the limits, the producer, the readers conditional writes
//! ask, and the one write path every single write takes (`crate::answer` says how it is
//! answered).

use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse};
use kv_core::consistency::RecordPosition;
use kv_core::record;
use kv_core::web::error::ApiError;
use kv_core::web::http::{CorrelationId, RequestTrace};

use crate::answer::{acknowledged, Answer};
use crate::body::BodyLimits;
use crate::conditional::{self, answered, Asker, ConditionalRequest, Readers};
use crate::input::{check_key, check_value, MaxTtl, WriteInput};
use crate::metrics::ConditionalEnd;
use crate::producer::{KvProducer, Write};
use crate::settings::Settings;

/// What the handlers share.
#[derive(Debug)]
pub struct WriterState {
    pub producer: KvProducer,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_batch_items: usize,
    pub max_ttl: MaxTtl,
    /// The time limit and the shared byte budget every request body is read under.
    pub bodies: BodyLimits,
    /// Where conditional writes learn their outcome (KV_API_READERS); `None`: not configured.
    pub readers: Option<Readers>,
    /// The last readiness answer and when it was taken: `/healthz/ready` is anonymous, and each
    /// fresh answer costs a metadata request and a blocking thread for up to two seconds.
    readiness: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
    /// KV_API_STATE_RULES: which keys take reports.
    pub rules: std::sync::Arc<kv_core::computed::StateRules>,
    /// The topic's partition count, for a report's partition.
    pub partitions: crate::producer::Partitions,
}

/// How long a readiness answer is reused.
const READINESS_CACHE: Duration = Duration::from_secs(1);
/// How long the broker may take to answer the readiness metadata request.
const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

impl WriterState {
    pub fn new(settings: &Settings, producer: KvProducer, readers: Option<Readers>) -> Self {
        Self {
            producer,
            max_key_bytes: settings.max_key_bytes,
            max_value_bytes: settings.max_value_bytes,
            max_batch_items: settings.max_batch_items,
            max_ttl: MaxTtl(settings.max_ttl_seconds),
            bodies: BodyLimits::new(settings.body_timeout, settings.max_buffered_body_bytes),
            readers,
            readiness: tokio::sync::Mutex::new(None),
            rules: settings.core.state_rules.clone(),
            partitions: Default::default(),
        }
    }

    /// Whether the broker answers for the topic, asked at most once per [`READINESS_CACHE`]
    /// however many probes arrive: concurrent callers wait for the one request under way.
    pub async fn readiness(&self) -> Result<Result<(), String>, ApiError> {
        let mut cached = self.readiness.lock().await;
        if let Some((at, answer)) = cached.as_ref() {
            if at.elapsed() < READINESS_CACHE {
                return Ok(answer.clone());
            }
        }
        let producer = self.producer.clone();
        // librdkafka's metadata call blocks; it must not run on an actix worker thread.
        let answer = actix_web::web::block(move || producer.topic_reachable(READINESS_TIMEOUT))
            .await
            .map_err(|e| ApiError::internal(format!("readiness check failed: {e}")))?;
        *cached = Some((Instant::now(), answer.clone()));
        Ok(answer)
    }

    /// Refuses a write from a JSON body whose key or value is over the limits.
    pub fn check(&self, write: &WriteInput<'_>, path: &str) -> Result<(), ApiError> {
        check_key(&write.key, self.max_key_bytes, || {
            format!("field `{path}key`")
        })?;
        if let Some(value) = &write.value {
            check_value(value, self.max_value_bytes, || {
                format!("field `{path}value`")
            })?;
        }
        Ok(())
    }

    pub async fn write_one(
        &self,
        request: &HttpRequest,
        write: &WriteInput<'_>,
        answer: Answer,
    ) -> Result<HttpResponse, ApiError> {
        let (position, _) = self.produce(request, write).await?;
        Ok(acknowledged(position, answer))
    }

    /// Produces one write under the request's correlation id: where Kafka stored it, and the id.
    async fn produce(
        &self,
        request: &HttpRequest,
        write: &WriteInput<'_>,
    ) -> Result<(RecordPosition, CorrelationId), ApiError> {
        let correlation = CorrelationId::of(request);
        let position = self
            .producer
            .write(Write {
                key: &write.key,
                value: write.value.as_deref(),
                correlation_id: &correlation.0,
                trace: Some(RequestTrace::of(request)),
                headers: &write.headers,
                expires_at_ms: expiry(write.ttl_seconds),
                partition: None,
            })
            .await?;
        Ok((position, correlation))
    }

    /// The conditional part of a native write from its headers: `None` for an ordinary write,
    /// `400` naming a header with bad syntax, `501` when this writer has no `KV_API_READERS`.
    /// Checked before the body is read.
    pub fn conditional_of(
        &self,
        request: &HttpRequest,
    ) -> Result<Option<ConditionalRequest>, ApiError> {
        let conditional = ConditionalRequest::from_headers(request.headers())?;
        if conditional.is_some() && self.readers.is_none() {
            return Err(conditional::not_configured());
        }
        Ok(conditional)
    }

    /// A native write with a precondition or an idempotency key: produced with their record
    /// headers, then answered from the outcome a reader tells (docs/api.md, "Conditional
    /// writes").
    pub async fn write_conditional(
        &self,
        request: &HttpRequest,
        mut write: WriteInput<'_>,
        conditional: &ConditionalRequest,
    ) -> Result<HttpResponse, ApiError> {
        let readers = self
            .readers
            .as_ref()
            .ok_or_else(conditional::not_configured)?;
        // Taken before producing: a write refused for want of room was not written.
        let _waiting = readers.wait_slot()?;
        write.headers.extend(conditional.record_headers());
        let (position, correlation) = self.produce(request, &write).await?;
        let metrics = readers.metrics();
        let outcome = match readers
            .outcome(position, Asker::of(request, &correlation.0))
            .await
        {
            Ok(outcome) => outcome,
            Err(error) => {
                tracing::warn!(
                    partition = position.partition,
                    offset = position.offset,
                    "a conditional write's outcome is unknown: {}",
                    error.message
                );
                metrics.count_write(ConditionalEnd::Unknown);
                return Ok(conditional::unknown_response(&error, position));
            }
        };
        let answer = answered(position, &outcome, conditional.condition.as_ref());
        metrics.count_write(match (&answer, outcome.first) {
            (_, Some(_)) => ConditionalEnd::Repeat,
            (conditional::Answered::Applied { .. }, None) => ConditionalEnd::Applied,
            (conditional::Answered::Failed { .. }, None) => ConditionalEnd::PreconditionFailed,
        });
        Ok(conditional::respond(
            answer,
            position,
            write.value.is_none(),
        ))
    }
}

/// When a write with this TTL expires, by this writer's clock: the writer's end of
/// [`record::EXPIRES_AT_HEADER`], whose readers compare it with theirs.
pub fn expiry(ttl_seconds: Option<u64>) -> Option<u64> {
    let now_ms = record::now_ms();
    ttl_seconds.map(|seconds| record::expires_at_ms(now_ms, seconds))
}
