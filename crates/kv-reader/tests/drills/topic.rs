//! What both reader drills need beyond `support`: putting many raw records on a topic fast and
//! knowing where each landed, and a digest of a whole state.

use std::collections::BTreeMap;
use std::time::Duration;

use kv_core::testkit::Broker;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// A record exactly as it goes on the topic: the key and the value may each be absent, as only
/// a producer other than kv-writer would make them.
#[derive(Debug, Clone, Default)]
pub struct RawRecord {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub correlation_id: Option<Vec<u8>>,
}

/// Where a record landed.
pub type Position = (i32, i64);

/// Produces `records` with many in flight (large batches, idempotent so a retry neither
/// duplicates nor reorders) and returns where each landed, in the order given.
pub async fn produce(broker: &Broker, topic: &str, records: &[RawRecord]) -> Vec<Position> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .set("partitioner", "murmur2_random")
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("message.timeout.ms", "120000")
        .create()
        .expect("producer");
    let mut positions = Vec::with_capacity(records.len());
    for chunk in records.chunks(20_000) {
        let sends = chunk.iter().map(|record| {
            let mut outgoing = FutureRecord::<[u8], [u8]>::to(topic);
            if let Some(key) = &record.key {
                outgoing = outgoing.key(key.as_slice());
            }
            if let Some(value) = &record.value {
                outgoing = outgoing.payload(value.as_slice());
            }
            if let Some(id) = &record.correlation_id {
                outgoing = outgoing.headers(OwnedHeaders::new().insert(Header {
                    key: "X-Correlation-Id",
                    value: Some(id.as_slice()),
                }));
            }
            producer.send(outgoing, Duration::from_secs(60))
        });
        for result in futures::future::join_all(sends).await {
            let delivery = result.map_err(|(e, _)| e).expect("produce");
            positions.push((delivery.partition, delivery.offset));
        }
    }
    positions
}

/// The end offset of each partition once `positions` are on an empty topic.
pub fn end_offsets(positions: &[Position]) -> BTreeMap<i32, i64> {
    let mut ends = BTreeMap::new();
    for &(partition, offset) in positions {
        let end = ends.entry(partition).or_insert(0);
        *end = (*end).max(offset + 1);
    }
    ends
}

/// The order a consumer applies records in: by partition, then offset. Only the order within a
/// partition matters to a key, since every version of a key lands in one partition.
pub fn log_order<T>(records: impl IntoIterator<Item = (Position, T)>) -> Vec<T> {
    let mut records: Vec<(Position, T)> = records.into_iter().collect();
    records.sort_by_key(|(position, _)| *position);
    records.into_iter().map(|(_, record)| record).collect()
}

/// SHA-256 over the state's pairs in key order, each part length-prefixed: equal digests mean
/// equal states. The first 16 hex digits, for a report line.
pub fn digest(state: &BTreeMap<Vec<u8>, Vec<u8>>) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for (key, value) in state {
        for part in [key, value] {
            context.update(&(part.len() as u64).to_be_bytes());
            context.update(part);
        }
    }
    context
        .finish()
        .as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Keys whose value differs between two states, a key missing from one counting once.
pub fn diffs(a: &BTreeMap<Vec<u8>, Vec<u8>>, b: &BTreeMap<Vec<u8>, Vec<u8>>) -> usize {
    let differing = a.iter().filter(|(key, value)| b.get(*key) != Some(*value));
    differing.count() + b.keys().filter(|key| !a.contains_key(*key)).count()
}
