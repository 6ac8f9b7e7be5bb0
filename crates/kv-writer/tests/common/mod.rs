//! What the writer's test suites share: the environment a writer needs and a way to read back
//! exactly what landed on the topic.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use kv_core::testkit::Broker;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The environment of a kv-writer talking to `broker` about `topic`, plus `extra`.
pub fn writer_env(
    broker: &Broker,
    topic: &str,
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let mut env = broker.service_env(topic);
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    env
}

/// One record as it is stored on the topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    /// `None` is a tombstone.
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// Every record on `topic`, in partition then offset order.
pub async fn records(bootstrap_servers: String, topic: &str) -> Vec<Record> {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || read_all(&bootstrap_servers, &topic))
        .await
        .expect("reader thread")
}

fn read_all(bootstrap_servers: &str, topic: &str) -> Vec<Record> {
    let timeout = Duration::from_secs(10);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap_servers)
        .set("group.id", format!("{topic}-test-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .expect("metadata");
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    assert!(!partitions.is_empty(), "topic {topic} has no partitions");
    let mut ends = Vec::new();
    let mut list = TopicPartitionList::new();
    for &partition in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, timeout)
            .expect("watermarks");
        if high > low {
            ends.push((partition, high));
            list.add_partition_offset(topic, partition, Offset::Offset(low))
                .expect("partition");
        }
    }
    let mut records = Vec::new();
    if ends.is_empty() {
        return records;
    }
    consumer.assign(&list).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(20);
    let done = |records: &[Record]| {
        ends.iter().all(|(partition, high)| {
            records
                .iter()
                .any(|r| r.partition == *partition && r.offset + 1 >= *high)
        })
    };
    while !done(&records) {
        assert!(
            Instant::now() < deadline,
            "timed out reading {topic}: got {records:?}, expected ends {ends:?}"
        );
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.expect("consume");
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        records.push(Record {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().unwrap_or_default().to_vec(),
            value: message.payload().map(<[u8]>::to_vec),
            headers,
        });
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    records
}

/// The one record at `partition`/`offset`.
pub fn record_at(records: &[Record], partition: i64, offset: i64) -> &Record {
    records
        .iter()
        .find(|r| i64::from(r.partition) == partition && r.offset == offset)
        .unwrap_or_else(|| panic!("no record at {partition}/{offset} in {records:?}"))
}
