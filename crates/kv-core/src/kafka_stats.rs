//! librdkafka's own statistics (emitted every `statistics.interval.ms`) as Prometheus metrics:
//! each broker's request round trip, its transmit and receive errors and request timeouts, and a
//! consumer's fetch lag per partition. The `broker` label is the broker's node id, so it is
//! bounded by the cluster's size; nothing a client of the service sends reaches a label.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;

/// The kinds of `kv_kafka_broker_errors_total`.
const ERROR_KINDS: [&str; 3] = ["transmit", "receive", "timeout"];

/// The `percentile` label of `kv_kafka_broker_rtt_seconds`: one series per percentile of
/// librdkafka's window, rather than a percentile inside a metric's name. Not `quantile`, which
/// Prometheus keeps for summaries (this is a gauge of what librdkafka computed).
const RTT_PERCENTILES: [&str; 2] = ["50", "99"];

#[derive(Debug)]
pub struct KafkaStats {
    rtt: GaugeVec,
    errors: IntCounterVec,
    fetch_lag: IntGaugeVec,
    /// librdkafka's totals at the last report, per broker and kind: the counters grow by the
    /// difference. A client replaced (a writer's producer after a fatal error) starts from 0.
    last: Mutex<BTreeMap<(i32, &'static str), u64>>,
    /// The topic whose partitions' fetch lag is shown (a consumer's), if any.
    topic: Option<String>,
}

impl KafkaStats {
    /// Registers the metrics; `topic` is the consumer's topic whose fetch lag to show.
    pub fn register(registry: &Registry, topic: Option<&str>) -> prometheus::Result<Arc<Self>> {
        let stats = Self {
            rtt: GaugeVec::new(
                Opts::new(
                    "kv_kafka_broker_rtt_seconds",
                    "Request round trip to the broker over the last statistics interval, by \
                     percentile (50, 99)",
                ),
                &["broker", "percentile"],
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "kv_kafka_broker_errors_total",
                    "Requests to the broker that failed: transmit or receive errors, timeouts",
                ),
                &["broker", "kind"],
            )?,
            fetch_lag: IntGaugeVec::new(
                Opts::new(
                    "kv_kafka_consumer_fetch_lag_records",
                    "Records between the consumer's fetch position and the partition's end, as \
                     librdkafka reports it (the store's own lag is kv_reader_partition_lag_records)",
                ),
                &["partition"],
            )?,
            last: Mutex::default(),
            topic: topic.map(str::to_owned),
        };
        registry.register(Box::new(stats.rtt.clone()))?;
        registry.register(Box::new(stats.errors.clone()))?;
        if stats.topic.is_some() {
            registry.register(Box::new(stats.fetch_lag.clone()))?;
        }
        Ok(Arc::new(stats))
    }

    /// Takes one statistics report.
    pub fn observe(&self, statistics: &Statistics) {
        // Bootstrap connections (node id -1) are not brokers of the cluster.
        let brokers: Vec<BrokerSample> = statistics
            .brokers
            .values()
            .filter(|b| b.nodeid >= 0)
            .map(|b| BrokerSample {
                node: b.nodeid,
                rtt_us: b.rtt.as_ref().map(|w| [w.p50, w.p99]),
                errors: [b.txerrs, b.rxerrs, b.req_timeouts],
            })
            .collect();
        // -1 while unknown (no fetch yet).
        let lags: Vec<(i32, i64)> = self
            .topic
            .as_ref()
            .and_then(|t| statistics.topics.get(t))
            .map(|topic| {
                topic
                    .partitions
                    .values()
                    .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
                    .map(|p| (p.partition, p.consumer_lag))
                    .collect()
            })
            .unwrap_or_default();
        self.observe_samples(&brokers, &lags);
    }

    fn observe_samples(&self, brokers: &[BrokerSample], lags: &[(i32, i64)]) {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        for broker in brokers {
            let label = broker.node.to_string();
            if let Some(percentiles) = broker.rtt_us {
                // Microseconds; a window without requests reports 0.
                for (percentile, us) in RTT_PERCENTILES.into_iter().zip(percentiles) {
                    self.rtt
                        .with_label_values(&[label.as_str(), percentile])
                        .set(us as f64 / 1e6);
                }
            }
            for (kind, total) in ERROR_KINDS.into_iter().zip(broker.errors) {
                let before = last.insert((broker.node, kind), total).unwrap_or(0);
                self.errors
                    .with_label_values(&[label.as_str(), kind])
                    .inc_by(total.saturating_sub(before));
            }
        }
        for (partition, lag) in lags {
            self.fetch_lag
                .with_label_values(&[partition.to_string().as_str()])
                .set(*lag);
        }
    }
}

/// What one report says of one broker: its node id, the round trip's percentiles
/// ([`RTT_PERCENTILES`]) in microseconds, and its totals of transmit errors, receive errors and timeouts.
#[derive(Debug, Clone, Copy)]
struct BrokerSample {
    node: i32,
    rtt_us: Option<[i64; 2]>,
    errors: [u64; 3],
}

/// A client context that only feeds [`KafkaStats`]: for clients with no other callback (the
/// writer's producer).
#[derive(Debug, Clone)]
pub struct StatsContext(pub Arc<KafkaStats>);

impl ClientContext for StatsContext {
    fn stats(&self, statistics: Statistics) {
        self.0.observe(&statistics);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(transmit_errors: u64) -> BrokerSample {
        BrokerSample {
            node: 1,
            rtt_us: Some([2500, 9000]),
            errors: [transmit_errors, 0, 2],
        }
    }

    #[test]
    fn a_report_sets_the_round_trip_and_counts_only_new_errors() {
        let registry = Registry::new();
        let stats = KafkaStats::register(&registry, Some("kv")).expect("register");
        stats.observe_samples(&[sample(3)], &[(0, 7)]);
        stats.observe_samples(&[sample(5)], &[(0, 4)]);
        // A replaced client starts its totals from 0: nothing is taken back.
        stats.observe_samples(&[sample(1)], &[]);
        let mut buffer = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut buffer,
        )
        .expect("encode");
        let text = String::from_utf8(buffer).expect("utf-8");
        for line in [
            "kv_kafka_broker_rtt_seconds{broker=\"1\",percentile=\"50\"} 0.0025",
            "kv_kafka_broker_rtt_seconds{broker=\"1\",percentile=\"99\"} 0.009",
            "kv_kafka_broker_errors_total{broker=\"1\",kind=\"transmit\"} 5",
            "kv_kafka_broker_errors_total{broker=\"1\",kind=\"timeout\"} 2",
            "kv_kafka_consumer_fetch_lag_records{partition=\"0\"} 4",
        ] {
            assert!(text.contains(line), "{line} is missing: {text}");
        }
    }
}
