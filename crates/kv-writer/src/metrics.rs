//! The write gateway's own metrics, on the registry `/metrics` serves: how long Kafka takes to
//! acknowledge, what it refuses, how often the producer is replaced, and how many writes wait.

use std::sync::Arc;
use std::time::Instant;

use kv_core::kafka_stats::KafkaStats;

use kv_core::web::error::{ApiError, ErrorCode};
use kv_core::web::metrics::LATENCY_BUCKETS;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

#[derive(Debug, Clone)]
pub struct ProducerMetrics {
    duration: HistogramVec,
    errors: IntCounterVec,
    replacements: IntCounter,
    in_flight: IntGauge,
    /// librdkafka's statistics of the producer: broker round trips and request errors.
    pub kafka: Arc<KafkaStats>,
}

impl ProducerMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "kv_writer_produce_duration_seconds",
                "Time from handing a write to the producer to Kafka's acknowledgement or failure",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["outcome"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "kv_writer_produce_errors_total",
                "Writes Kafka did not acknowledge, by class: retryable (503), too_large (413), \
                 fatal (502)",
            ),
            &["class"],
        )?;
        let replacements = IntCounter::new(
            "kv_writer_producer_replacements_total",
            "Producers replaced after a fatal or idempotence error",
        )?;
        let in_flight = IntGauge::new(
            "kv_writer_writes_in_flight",
            "Writes queued in the producer and not yet acknowledged or failed",
        )?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(replacements.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        for class in ["retryable", "too_large", "fatal"] {
            // Present at zero from the start, so an alert on its rate has a series to read.
            errors.with_label_values(&[class]);
        }
        Ok(Self {
            duration,
            errors,
            replacements,
            in_flight,
            kafka: KafkaStats::register(registry, None)?,
        })
    }

    /// Counts a write the producer refused or Kafka did not acknowledge, by what the client
    /// was told.
    pub(crate) fn count_error(&self, error: &ApiError) {
        let class = match error.code {
            ErrorCode::PayloadTooLarge => "too_large",
            ErrorCode::KafkaRejected => "fatal",
            _ => "retryable",
        };
        self.errors.with_label_values(&[class]).inc();
    }

    pub(crate) fn count_replacement(&self) {
        self.replacements.inc();
    }

    /// Marks a write as in flight until the returned guard is dropped, answered or abandoned.
    pub(crate) fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    pub(crate) fn observe(&self, started: Instant, acknowledged: bool) {
        let outcome = if acknowledged {
            "acknowledged"
        } else {
            "failed"
        };
        self.duration
            .with_label_values(&[outcome])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// What one reader answered to one outcome request (`kv_writer_outcome_requests_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderReply {
    Decided,
    Unknown,
    NotHeld,
    NotYet,
    Refused,
    Failed,
}

impl ReaderReply {
    const ALL: [ReaderReply; 6] = [
        ReaderReply::Decided,
        ReaderReply::Unknown,
        ReaderReply::NotHeld,
        ReaderReply::NotYet,
        ReaderReply::Refused,
        ReaderReply::Failed,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Decided => "decided",
            Self::Unknown => "unknown",
            Self::NotHeld => "not_held",
            Self::NotYet => "not_yet",
            Self::Refused => "refused",
            Self::Failed => "failed",
        }
    }
}

/// How a conditional write ended (`kv_writer_conditional_writes_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionalEnd {
    /// `200`: it took effect.
    Applied,
    /// `412`: its precondition did not hold.
    PreconditionFailed,
    /// Its idempotency key repeated an earlier record's: answered as that one was.
    Repeat,
    /// `503 outcome_unknown`: no reader told in time.
    Unknown,
}

impl ConditionalEnd {
    const ALL: [ConditionalEnd; 4] = [
        ConditionalEnd::Applied,
        ConditionalEnd::PreconditionFailed,
        ConditionalEnd::Repeat,
        ConditionalEnd::Unknown,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::PreconditionFailed => "precondition_failed",
            Self::Repeat => "repeat",
            Self::Unknown => "unknown",
        }
    }
}

/// Conditional writes: how they ended, how long their outcome took, what the readers answered.
#[derive(Debug, Clone)]
pub struct ConditionalMetrics {
    writes: IntCounterVec,
    wait: Histogram,
    replies: IntCounterVec,
    batches: Histogram,
}

impl ConditionalMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let writes = IntCounterVec::new(
            Opts::new(
                "kv_writer_conditional_writes_total",
                "Conditional writes Kafka acknowledged, by how they were answered: applied (200), \
                 precondition_failed (412), repeat (an Idempotency-Key's retry, answered as the \
                 first), unknown (503 outcome_unknown)",
            ),
            &["outcome"],
        )?;
        let wait = Histogram::with_opts(
            HistogramOpts::new(
                "kv_writer_outcome_wait_seconds",
                "Time from Kafka's acknowledgement of a conditional write to its outcome, or to \
                 giving up (KV_API_CONDITIONAL_TIMEOUT_MS)",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let replies = IntCounterVec::new(
            Opts::new(
                "kv_writer_outcome_requests_total",
                "Outcome questions to readers (one per record asked, alone or in a batch), by \
                 reply: decided, unknown (outcome_not_found), not_held (partition_not_held), \
                 not_yet (not_ready, 503), refused (401/403), failed (unreachable, timed out, \
                 other)",
            ),
            &["reply"],
        )?;
        let batches = Histogram::with_opts(
            HistogramOpts::new(
                "kv_writer_outcome_batch_records",
                "Records asked in one POST /v1/outcomes:batchGet to a reader: conditional writes \
                 waiting at once on one reader share a request",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
        )?;
        registry.register(Box::new(writes.clone()))?;
        registry.register(Box::new(wait.clone()))?;
        registry.register(Box::new(replies.clone()))?;
        registry.register(Box::new(batches.clone()))?;
        for end in ConditionalEnd::ALL {
            writes.with_label_values(&[end.label()]);
        }
        for reply in ReaderReply::ALL {
            replies.with_label_values(&[reply.label()]);
        }
        Ok(Self {
            writes,
            wait,
            replies,
            batches,
        })
    }

    pub(crate) fn count_write(&self, end: ConditionalEnd) {
        self.writes.with_label_values(&[end.label()]).inc();
    }

    pub(crate) fn count_reply(&self, reply: ReaderReply) {
        self.replies.with_label_values(&[reply.label()]).inc();
    }

    pub(crate) fn observe_batch(&self, records: usize) {
        self.batches.observe(records as f64);
    }

    pub(crate) fn observe_wait(&self, started: Instant) {
        self.wait.observe(started.elapsed().as_secs_f64());
    }
}

/// One write in flight; a client that disconnects drops it too, so the gauge never leaks.
#[derive(Debug)]
pub(crate) struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_counted_by_the_class_the_client_was_told() {
        let registry = Registry::new();
        let metrics = ProducerMetrics::register(&registry).expect("register");
        metrics.count_error(&ApiError::new(ErrorCode::KafkaUnavailable, "down"));
        metrics.count_error(&ApiError::new(ErrorCode::PayloadTooLarge, "big"));
        metrics.count_error(&ApiError::new(ErrorCode::KafkaUnavailable, "down"));
        assert_eq!(metrics.errors.with_label_values(&["retryable"]).get(), 2);
        assert_eq!(metrics.errors.with_label_values(&["too_large"]).get(), 1);
        assert_eq!(metrics.errors.with_label_values(&["fatal"]).get(), 0);
    }

    #[test]
    fn conditional_writes_and_reader_replies_are_counted_under_closed_labels() {
        let registry = Registry::new();
        let metrics = ConditionalMetrics::register(&registry).expect("register");
        metrics.count_write(ConditionalEnd::Repeat);
        metrics.count_reply(ReaderReply::NotHeld);
        assert_eq!(metrics.writes.with_label_values(&["repeat"]).get(), 1);
        assert_eq!(metrics.replies.with_label_values(&["not_held"]).get(), 1);
        // Every label is present from the start, at zero.
        let families = registry.gather();
        let writes = families
            .iter()
            .find(|f| f.name() == "kv_writer_conditional_writes_total")
            .expect("registered");
        assert_eq!(writes.get_metric().len(), ConditionalEnd::ALL.len());
    }

    #[test]
    fn a_write_leaves_the_in_flight_gauge_when_its_guard_drops() {
        let metrics = ProducerMetrics::register(&Registry::new()).expect("register");
        let first = metrics.in_flight();
        let second = metrics.in_flight();
        assert_eq!(metrics.in_flight.get(), 2);
        drop(first);
        drop(second);
        assert_eq!(metrics.in_flight.get(), 0);
    }
}
