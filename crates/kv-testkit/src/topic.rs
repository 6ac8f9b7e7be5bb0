//! Topics and what is on them: creating one, putting records on it with a plain rdkafka
//! producer (as a producer other than kv-writer would), reading back exactly what landed, and
//! the state a sequence of records leaves behind.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// The header kv-writer carries a request's correlation id in (docs/wire-format.md).
pub const CORRELATION_ID: &str = "X-Correlation-Id";

/// A key and its value as a test writes them: `None` is a tombstone.
pub type KeyValue = (Vec<u8>, Option<Vec<u8>>);

/// A topic name no other test uses.
pub fn random_topic(prefix: &str) -> String {
    let suffix: u64 = rand::rng().random();
    format!("{prefix}-{suffix:016x}")
}

/// Creates `topic` unless it exists, failing the test otherwise.
pub async fn create_topic(
    bootstrap_servers: &str,
    topic: &str,
    partitions: i32,
    config: &[(&str, &str)],
) {
    if let Err(error) = try_create_topic(bootstrap_servers, topic, partitions, config).await {
        panic!("cannot create topic {topic}: {error}");
    }
}

/// Whether `topic` could be created (or exists): false where the broker has no CreateTopics.
pub(crate) async fn create_topic_within(
    bootstrap_servers: &str,
    topic: &str,
    partitions: i32,
) -> bool {
    try_create_topic(bootstrap_servers, topic, partitions, &[])
        .await
        .is_ok()
}

async fn try_create_topic(
    bootstrap_servers: &str,
    topic: &str,
    partitions: i32,
    config: &[(&str, &str)],
) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap_servers)
        .create()
        .map_err(|e| e.to_string())?;
    let mut new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (name, value) in config {
        new_topic = new_topic.set(name, value);
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics([&new_topic], &options)
        .await
        .map_err(|e| e.to_string())?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(code.to_string()),
        }
    }
    Ok(())
}

/// A plain producer that partitions keys as kv-writer and the Java client do.
pub fn producer(bootstrap_servers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap_servers)
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", "10000")
        .create()
        .expect("producer")
}

/// Produces one record and waits for the acknowledgement; `value: None` is a tombstone.
pub async fn produce_one(
    producer: &FutureProducer,
    topic: &str,
    key: &[u8],
    value: Option<&[u8]>,
) -> (i32, i64) {
    let mut record = FutureRecord::to(topic).key(key);
    if let Some(value) = value {
        record = record.payload(value);
    }
    delivered(producer, record).await
}

/// Sends `record` and waits for its acknowledgement: where it landed.
async fn delivered(producer: &FutureProducer, record: FutureRecord<'_, [u8], [u8]>) -> (i32, i64) {
    let delivery = producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("produce");
    (delivery.partition, delivery.offset)
}

/// Produces `records` in order, many in flight at once, and waits for every acknowledgement.
pub async fn produce_all(producer: &FutureProducer, topic: &str, records: &[KeyValue]) {
    for chunk in records.chunks(500) {
        let sends = chunk.iter().map(|(key, value)| {
            let mut record = FutureRecord::to(topic).key(key.as_slice());
            if let Some(value) = value {
                record = record.payload(value.as_slice());
            }
            producer.send(record, Duration::from_secs(10))
        });
        for result in futures::future::join_all(sends).await {
            result.map_err(|(e, _)| e).expect("produce");
        }
    }
}

/// Produces one record with an `X-Correlation-Id` header, returning where it landed.
pub async fn produce_with_correlation_id(
    producer: &FutureProducer,
    topic: &str,
    key: &[u8],
    value: &[u8],
    correlation_id: &str,
) -> (i32, i64) {
    produce_with_headers(
        producer,
        topic,
        key,
        value,
        &[(CORRELATION_ID, correlation_id.as_bytes())],
    )
    .await
}

/// Produces one record with `headers` (any names and bytes, as any producer to the topic may
/// write them), returning where it landed.
pub async fn produce_with_headers(
    producer: &FutureProducer,
    topic: &str,
    key: &[u8],
    value: &[u8],
    headers: &[(&str, &[u8])],
) -> (i32, i64) {
    let headers = headers
        .iter()
        .fold(OwnedHeaders::new(), |headers, (name, value)| {
            headers.insert(Header {
                key: name,
                value: Some(*value),
            })
        });
    let record = FutureRecord::to(topic)
        .key(key)
        .payload(value)
        .headers(headers);
    delivered(producer, record).await
}

/// The state `records` leave behind when applied in order.
pub fn expected_state(records: &[KeyValue]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut state = BTreeMap::new();
    for (key, value) in records {
        match value {
            Some(value) => state.insert(key.clone(), value.clone()),
            None => state.remove(key),
        };
    }
    state
}

/// A mix of puts, overwrites and deletes over `keys` keys, `count` records in all.
pub fn mixed_records(count: usize, keys: usize) -> Vec<KeyValue> {
    (0..count)
        .map(|i| {
            let key = format!("key-{:05}", i % keys).into_bytes();
            let value = (i % 7 != 3).then(|| format!("value {i} of {key:?}").into_bytes());
            (key, value)
        })
        .collect()
}

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
pub async fn produce_raw(
    bootstrap_servers: &str,
    topic: &str,
    records: &[RawRecord],
) -> Vec<Position> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap_servers)
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
                    key: CORRELATION_ID,
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
        records.push(Record::of(&message.expect("consume")));
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    records
}

impl Record {
    fn of(message: &BorrowedMessage<'_>) -> Record {
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        Record {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().unwrap_or_default().to_vec(),
            value: message.payload().map(<[u8]>::to_vec),
            headers,
        }
    }
}

/// Every record of a topic, read from its start as it lands. The test broker serves a topic of
/// tens of thousands of records read whole from offset 0 so slowly that [`records`] times out
/// (its fetches seem to cost more the further the log reaches); a consumer that follows the
/// topic along, as a replica does, keeps up. Start it before the load.
#[derive(Debug)]
pub struct TopicTail {
    bootstrap_servers: String,
    topic: String,
    records: Arc<Mutex<Vec<Record>>>,
    /// Each partition's fetch position when the consumer last reached its end: past the last
    /// record when the log ends in offsets that hold no record for a consumer.
    ends_reached: Arc<Mutex<BTreeMap<i32, i64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TopicTail {
    pub fn start(bootstrap_servers: &str, topic: &str) -> TopicTail {
        let connect = {
            let (bootstrap_servers, topic) = (bootstrap_servers.to_owned(), topic.to_owned());
            move || -> BaseConsumer {
                ClientConfig::new()
                    .set("bootstrap.servers", &bootstrap_servers)
                    .set("group.id", format!("{topic}-test-tail"))
                    .set("enable.auto.commit", "false")
                    .set("fetch.wait.max.ms", "50")
                    .set("enable.partition.eof", "true")
                    .create()
                    .expect("consumer")
            }
        };
        let mut consumer = connect();
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        let partitions: Vec<i32> = metadata.topics()[0]
            .partitions()
            .iter()
            .map(|p| p.id())
            .collect();
        let mut list = TopicPartitionList::new();
        for &partition in &partitions {
            list.add_partition_offset(topic, partition, Offset::Beginning)
                .expect("partition");
        }
        consumer.assign(&list).expect("assign");
        let records = Arc::new(Mutex::new(Vec::new()));
        let ends_reached = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (records, ends_reached, stop) =
                (records.clone(), ends_reached.clone(), stop.clone());
            let topic = topic.to_owned();
            std::thread::spawn(move || {
                // After the broker was away, a consumer may stay idle on the restarted broker
                // (seen with Tansu): a new one, at the next offsets not read yet, fetches.
                let mut next: BTreeMap<i32, i64> = BTreeMap::new();
                let mut broker_was_away = false;
                while !stop.load(Ordering::Relaxed) {
                    match consumer.poll(Duration::from_millis(100)) {
                        Some(Ok(message)) => {
                            next.insert(message.partition(), message.offset() + 1);
                            records.lock().expect("tail").push(Record::of(&message));
                        }
                        Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => {
                            let Ok(positions) = consumer.position() else {
                                continue;
                            };
                            let mut ends = ends_reached.lock().expect("tail ends");
                            for element in positions.elements() {
                                if let Offset::Offset(position) = element.offset() {
                                    ends.insert(element.partition(), position);
                                }
                            }
                        }
                        // Errors while the broker is away are retried by librdkafka itself.
                        Some(Err(_)) => broker_was_away = true,
                        None if broker_was_away => {
                            broker_was_away = false;
                            let mut list = TopicPartitionList::new();
                            for &partition in &partitions {
                                let offset = next
                                    .get(&partition)
                                    .map_or(Offset::Beginning, |&o| Offset::Offset(o));
                                if list
                                    .add_partition_offset(&topic, partition, offset)
                                    .is_err()
                                {
                                    continue;
                                }
                            }
                            consumer = connect();
                            consumer.assign(&list).ok();
                        }
                        None => {}
                    }
                }
            })
        };
        TopicTail {
            bootstrap_servers: bootstrap_servers.to_owned(),
            topic: topic.to_owned(),
            records,
            ends_reached,
            stop,
            thread: Some(thread),
        }
    }

    /// Every record on the topic, in partition then offset order, once the tail has reached the
    /// end of each partition as the broker reports it now; fails the test after `deadline`.
    pub async fn records(&self, deadline: Duration) -> Vec<Record> {
        match self.try_records(deadline).await {
            Some(records) => records,
            None => panic!(
                "timed out after {deadline:?} waiting for the broker to tell its high watermarks \
                 and the tail to reach them"
            ),
        }
    }

    /// [`TopicTail::records`], or `None` after `deadline`, for a drill that heals its broker
    /// (see [`crate::Broker::restart_if_failed`]) and asks again.
    pub async fn try_records(&self, deadline: Duration) -> Option<Vec<Record>> {
        let start = std::time::Instant::now();
        // A broker just restarted may refuse a first metadata request: asked again until the
        // deadline.
        let ends = crate::within(deadline, || {
            let (bootstrap, topic) = (self.bootstrap_servers.clone(), self.topic.clone());
            async move {
                tokio::task::spawn_blocking(move || high_watermarks(&bootstrap, &topic))
                    .await
                    .expect("watermarks thread")
                    .ok()
            }
        })
        .await?;
        crate::within(deadline.saturating_sub(start.elapsed()), || async {
            let records = self.records.lock().expect("tail");
            let positions = self.ends_reached.lock().expect("tail ends");
            let reached = ends.iter().all(|(&partition, &high)| {
                high == 0
                    || positions.get(&partition).is_some_and(|&at| at >= high)
                    || records
                        .iter()
                        .any(|r| r.partition == partition && r.offset + 1 >= high)
            });
            reached.then(|| {
                let mut records = records.clone();
                records.sort_by_key(|r| (r.partition, r.offset));
                records
            })
        })
        .await
    }
}

impl Drop for TopicTail {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().ok();
        }
    }
}

/// Each partition's high watermark, or the broker's error.
fn high_watermarks(
    bootstrap_servers: &str,
    topic: &str,
) -> Result<BTreeMap<i32, i64>, rdkafka::error::KafkaError> {
    let timeout = Duration::from_secs(10);
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap_servers)
        .create()?;
    let metadata = client.fetch_metadata(Some(topic), timeout)?;
    metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            let (_, high) = client.fetch_watermarks(topic, p.id(), timeout)?;
            Ok((p.id(), high))
        })
        .collect()
}

/// The one record at `partition`/`offset`.
pub fn record_at(records: &[Record], partition: i64, offset: i64) -> &Record {
    records
        .iter()
        .find(|r| i64::from(r.partition) == partition && r.offset == offset)
        .unwrap_or_else(|| panic!("no record at {partition}/{offset} in {records:?}"))
}

/// What compaction keeps of `records`: the last record of every key, in log order. The local
/// broker compacts only now and then, so tests about compaction build this view themselves.
pub fn last_per_key(records: &[Record]) -> Vec<&Record> {
    let mut last: BTreeMap<&[u8], &Record> = BTreeMap::new();
    for record in records {
        last.insert(&record.key, record);
    }
    let mut kept: Vec<&Record> = last.into_values().collect();
    kept.sort_by_key(|r| (r.partition, r.offset));
    kept
}

/// Produces `records` to `topic` exactly as they are: same partition, key, value and headers,
/// in the order given.
pub async fn produce_as_they_are<'r>(
    bootstrap_servers: &str,
    topic: &str,
    records: impl IntoIterator<Item = &'r Record>,
) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap_servers)
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    let sends: Vec<_> = records
        .into_iter()
        .map(|record| {
            let mut headers = OwnedHeaders::new();
            for (name, value) in &record.headers {
                headers = headers.insert(Header {
                    key: name,
                    value: Some(value),
                });
            }
            let mut outgoing = FutureRecord::<[u8], [u8]>::to(topic)
                .key(&record.key)
                .partition(record.partition)
                .headers(headers);
            if let Some(value) = &record.value {
                outgoing = outgoing.payload(value);
            }
            producer.send(outgoing, Duration::from_secs(10))
        })
        .collect();
    for sent in futures::future::join_all(sends).await {
        sent.map_err(|(e, _)| e)
            .expect("produce the records as they are");
    }
}
