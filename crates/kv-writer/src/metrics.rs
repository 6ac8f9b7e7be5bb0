//! The write gateway's own metrics, on the registry `/metrics` serves: how long Kafka takes to
//! acknowledge, what it refuses, how often the producer is replaced, and how many writes wait.

use std::sync::Arc;
use std::time::Instant;

use kv_core::kafka_stats::KafkaStats;

use kv_core::web::error::{ApiError, ErrorCode};
use kv_core::web::metrics::LATENCY_BUCKETS;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
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
