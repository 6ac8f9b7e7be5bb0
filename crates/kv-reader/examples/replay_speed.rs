//! Replay speed of a fresh kv-reader against a raw rdkafka consumer on the same broker.
//!
//! Starts a test broker (see `kv_testkit`), produces N records with rdkafka, then times
//! (1) a raw `BaseConsumer` reading every record from the beginning and (2) a fresh kv-reader,
//! built in-process with `App::build`, from start until `/healthz/ready` answers 200.
//!
//! ```text
//! cargo run --release -p kv-reader --example replay_speed -- [records] [partitions] [memory|disk]
//! ```
//!
//! For `make bench`: `KV_BENCH_BOOTSTRAP` measures against a broker that is already running (such
//! as kv-core's `mock_cluster` example) instead of a fresh Tansu, and `KV_BENCH_STORE_DIR` keeps
//! the disk replica there (and the topic on the broker) so a kv-reader process can serve it next.
//! `KV_BENCH_KEYS_LIKE=redis-benchmark` names the keys as `redis-benchmark -r N` asks for them
//! (`key:000000000042`) instead of `key-000000042`, for the Redis-protocol port's figures.

use std::time::{Duration, Instant};

use kv_core::settings::Env;
use kv_reader::{App, Settings};
use kv_testkit::BrokerUnderTest;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

const VALUE_BYTES: usize = 100;

fn arg<T: std::str::FromStr>(index: usize, default: T) -> T {
    std::env::args()
        .nth(index)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn produce(broker: &BrokerUnderTest, topic: &str, records: usize) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .set("linger.ms", "20")
        // The writer's partitioner, so sharded readers find every key where they look.
        .set("partitioner", "murmur2_random")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("message.timeout.ms", "300000")
        .create()
        .expect("producer");
    let value = vec![b'v'; VALUE_BYTES];
    let like_redis_benchmark =
        std::env::var("KV_BENCH_KEYS_LIKE").is_ok_and(|like| like == "redis-benchmark");
    for i in 0..records {
        let key = if like_redis_benchmark {
            format!("key:{i:012}")
        } else {
            format!("key-{i:09}")
        };
        let mut record = BaseRecord::to(topic).key(key.as_bytes()).payload(&value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(_), back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
                Err((error, _)) => panic!("produce: {error}"),
            }
        }
    }
    producer.flush(Duration::from_secs(600)).expect("flush");
}

fn raw_consume(broker: &BrokerUnderTest, topic: &str, partitions: i32, records: usize) -> Duration {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .set("group.id", "raw-replay")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50")
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition_offset(topic, partition, Offset::Beginning)
            .expect("partition");
    }
    let start = Instant::now();
    consumer.assign(&list).expect("assign");
    let mut seen = 0;
    let mut bytes = 0usize;
    while seen < records {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            // Touch what a replica reads, so the comparison is not against doing nothing.
            bytes += message.key_len() + message.payload_len();
            seen += 1;
        }
    }
    let elapsed = start.elapsed();
    assert!(bytes > 0);
    elapsed
}

async fn replica_replay(broker: &BrokerUnderTest, topic: &str, storage: &str) -> Duration {
    let dir = tempfile::tempdir().expect("dir");
    let location = std::env::var("KV_BENCH_STORE_DIR")
        .ok()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| dir.path().display().to_string());
    let mut pairs = vec![
        (
            "KAFKA_BOOTSTRAP_SERVERS",
            broker.bootstrap_servers().to_owned(),
        ),
        ("KV_API_KAFKA_KEY_VALUE_TOPIC", topic.to_owned()),
        ("KV_API_DISABLE_API_AUTH", "true".to_owned()),
        ("KAFKA_GROUP_ID", "replica-replay".to_owned()),
        ("KV_API_LISTEN", "127.0.0.1:0".to_owned()),
    ];
    if storage == "disk" {
        pairs.push(("KV_API_STATE_STORAGE_DISK_LOCATION", location));
    }
    let settings = Settings::from_env(&Env::from_pairs(pairs).expect("env")).expect("settings");
    // Hand-rolled: kv-client has no call for `/healthz/ready`.
    let http = reqwest::Client::new();
    let start = Instant::now();
    let app = App::build(settings).await.expect("kv-reader");
    let ready = format!("http://127.0.0.1:{}/healthz/ready", app.port());
    let server = actix_web::rt::spawn(app.run_until_stopped());
    loop {
        if let Ok(response) = http.get(&ready).send().await {
            if response.status() == 200 {
                break;
            }
        }
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = start.elapsed();
    server.abort();
    elapsed
}

#[actix_web::main]
async fn main() {
    let records: usize = arg(1, 1_000_000);
    let partitions: i32 = arg(2, 3);
    let storage: String = arg(3, "memory".to_owned());
    let broker = BrokerUnderTest::start();
    let topic = broker.create_topic("replay", partitions).await;
    let partitions = broker.partitions(&topic);

    let start = Instant::now();
    produce(&broker, &topic, records);
    println!(
        "produced {records} records of {VALUE_BYTES} bytes on {partitions} partitions in {:.2?}",
        start.elapsed()
    );

    // The raw consumer runs before and after the replica, so neither profits alone from a
    // broker cache warmed by the other.
    let raw_before = raw_consume(&broker, &topic, partitions, records);
    let replica = replica_replay(&broker, &topic, &storage).await;
    let raw_after = raw_consume(&broker, &topic, partitions, records);
    let raw = (raw_before + raw_after) / 2;
    let rate = |d: Duration| records as f64 / d.as_secs_f64();
    println!(
        "raw rdkafka BaseConsumer: {raw_before:.2?} before, {raw_after:.2?} after; \
         mean {raw:.2?} ({:.0} records/s)",
        rate(raw)
    );
    println!(
        "kv-reader ({storage}) to ready: {replica:.2?} ({:.0} records/s)",
        rate(replica)
    );
    println!(
        "kv-reader replay takes {:.2}x the raw consumer's time",
        replica.as_secs_f64() / raw.as_secs_f64()
    );
    // One line for scripts/bench.sh to parse.
    println!(
        "BENCH topic={topic} raw_rps={:.0} replica_rps={:.0}",
        rate(raw),
        rate(replica)
    );
}
