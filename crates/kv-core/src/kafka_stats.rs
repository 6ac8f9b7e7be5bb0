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

#[derive(Debug)]
pub struct KafkaStats {
    rtt: GaugeVec,
    rtt_p99: GaugeVec,
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
                    "Average request round trip to the broker over the last statistics interval",
                ),
                &["broker"],
            )?,
            rtt_p99: GaugeVec::new(
                Opts::new(
                    "kv_kafka_broker_rtt_p99_seconds",
                    "99th percentile of the request round trip to the broker over the last \
                     statistics interval",
                ),
                &["broker"],
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
        registry.register(Box::new(stats.rtt_p99.clone()))?;
        registry.register(Box::new(stats.errors.clone()))?;
        if stats.topic.is_some() {
            registry.register(Box::new(stats.fetch_lag.clone()))?;
        }
        Ok(Arc::new(stats))
    }

    /// Takes one statistics report.
    pub fn observe(&self, statistics: &Statistics) {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        // Bootstrap connections (node id -1) are not brokers of the cluster.
        for broker in statistics.brokers.values().filter(|b| b.nodeid >= 0) {
            let label = broker.nodeid.to_string();
            if let Some(rtt) = &broker.rtt {
                // Microseconds; a window without requests reports 0.
                self.rtt
                    .with_label_values(&[label.as_str()])
                    .set(rtt.avg as f64 / 1e6);
                self.rtt_p99
                    .with_label_values(&[label.as_str()])
                    .set(rtt.p99 as f64 / 1e6);
            }
            for (kind, total) in ERROR_KINDS.into_iter().zip([
                broker.txerrs,
                broker.rxerrs,
                broker.req_timeouts,
            ]) {
                let before = last.insert((broker.nodeid, kind), total).unwrap_or(0);
                let counter = self.errors.with_label_values(&[label.as_str(), kind]);
                counter.inc_by(total.saturating_sub(before));
            }
        }
        let Some(topic) = self.topic.as_ref().and_then(|t| statistics.topics.get(t)) else {
            return;
        };
        for partition in topic.partitions.values().filter(|p| p.partition >= 0) {
            // -1 while unknown (no fetch yet).
            if partition.consumer_lag >= 0 {
                self.fetch_lag
                    .with_label_values(&[partition.partition.to_string().as_str()])
                    .set(partition.consumer_lag);
            }
        }
    }
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

    fn report(txerrs: u64) -> Statistics {
        let json = format!(
            r#"{{"name":"c","client_id":"c","type":"consumer","ts":0,"time":0,"age":0,"replyq":0,
            "msg_cnt":0,"msg_size":0,"msg_max":0,"msg_size_max":0,"simple_cnt":0,
            "metadata_cache_cnt":0,"tx":0,"tx_bytes":0,"rx":0,"rx_bytes":0,"txmsgs":0,
            "txmsg_bytes":0,"rxmsgs":0,"rxmsg_bytes":0,
            "brokers":{{"b:9092/1":{{"name":"b:9092/1","nodeid":1,"nodename":"b:9092",
              "source":"configured","state":"UP","stateage":0,"outbuf_cnt":0,"outbuf_msg_cnt":0,
              "waitresp_cnt":0,"waitresp_msg_cnt":0,"tx":0,"txbytes":0,"txerrs":{txerrs},
              "txretries":0,"req_timeouts":2,"rx":0,"rxbytes":0,"rxerrs":0,"rxcorriderrs":0,
              "rxpartial":0,"zbuf_grow":0,"buf_grow":0,"wakeups":0,
              "rtt":{{"min":0,"max":0,"avg":2500,"sum":0,"cnt":0,"stddev":0,"hdrsize":0,
                "p50":0,"p75":0,"p90":0,"p95":0,"p99":9000,"p99_99":0,"outofrange":0}},
              "toppars":{{}}}}}},
            "topics":{{"kv":{{"topic":"kv","age":0,"metadata_age":0,"batchsize":{{"min":0,"max":0,
              "avg":0,"sum":0,"cnt":0,"stddev":0,"hdrsize":0,"p50":0,"p75":0,"p90":0,"p95":0,
              "p99":0,"p99_99":0,"outofrange":0}},"batchcnt":{{"min":0,"max":0,"avg":0,"sum":0,
              "cnt":0,"stddev":0,"hdrsize":0,"p50":0,"p75":0,"p90":0,"p95":0,"p99":0,
              "p99_99":0,"outofrange":0}},"partitions":{{}}}}}}}}"#
        );
        serde_json::from_str(&json).expect("a statistics report")
    }

    #[test]
    fn a_report_sets_the_round_trip_and_counts_only_new_errors() {
        let registry = Registry::new();
        let stats = KafkaStats::register(&registry, Some("kv")).expect("register");
        stats.observe(&report(3));
        stats.observe(&report(5));
        let text = {
            let mut buffer = Vec::new();
            prometheus::Encoder::encode(
                &prometheus::TextEncoder::new(),
                &registry.gather(),
                &mut buffer,
            )
            .expect("encode");
            String::from_utf8(buffer).expect("utf-8")
        };
        assert!(text.contains("kv_kafka_broker_rtt_seconds{broker=\"1\"} 0.0025"), "{text}");
        assert!(text.contains("kv_kafka_broker_rtt_p99_seconds{broker=\"1\"} 0.009"), "{text}");
        assert!(
            text.contains("kv_kafka_broker_errors_total{broker=\"1\",kind=\"transmit\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("kv_kafka_broker_errors_total{broker=\"1\",kind=\"timeout\"} 2"),
            "{text}"
        );
    }
}
