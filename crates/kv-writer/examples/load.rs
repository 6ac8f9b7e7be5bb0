//! Acknowledged writes per second: a raw rdkafka producer against HTTP writes through kv-writer,
//! on the same broker with the same producer settings (idempotent, acks=all, linger 5 ms). The
//! HTTP writes are kv-client's `put`, without its retries: a write not acknowledged at once
//! counts as failed, as the raw producer's does.
//!
//! Needs the test broker (`scripts/install-broker.sh`), or set `KV_BENCH_BOOTSTRAP` to measure
//! against a broker that is already running (such as the `mock_cluster` example of kv-core).
//! Run with optimisations (`make bench` does):
//!
//! ```text
//! cargo run --release -p kv-writer --example load -- [writes] [concurrency] [value-bytes] [raw-first|http-first]
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kv_core::settings::Env;
use kv_testkit::BrokerUnderTest;
use kv_writer::{App, Settings};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

fn arg(index: usize, default: usize) -> usize {
    std::env::args()
        .nth(index)
        .map(|a| a.parse().expect("a number"))
        .unwrap_or(default)
}

/// Runs `writes` calls of `write` from `concurrency` tasks; acknowledged writes per second.
async fn measure<F, Fut>(writes: usize, concurrency: usize, write: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let write = Arc::new(write);
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let next = next.clone();
            let write = write.clone();
            tokio::spawn(async move {
                let mut acked = 0usize;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= writes {
                        return acked;
                    }
                    if write(i).await {
                        acked += 1;
                    }
                }
            })
        })
        .collect();
    let mut acked = 0;
    for task in tasks {
        acked += task.await.expect("load task");
    }
    assert_eq!(acked, writes, "every write must be acknowledged");
    acked as f64 / start.elapsed().as_secs_f64()
}

/// Which side runs first. The broker under test may slow down as its log grows (Tansu does), so
/// `make bench` alternates the order between runs instead of always giving one side the fresher
/// broker.
#[derive(Clone, Copy, PartialEq)]
enum Order {
    RawFirst,
    HttpFirst,
}

impl Order {
    fn label(self) -> &'static str {
        match self {
            Order::RawFirst => "raw producer first",
            Order::HttpFirst => "kv-writer first",
        }
    }
}

fn order() -> Order {
    match std::env::args().nth(4).as_deref() {
        None | Some("raw-first") => Order::RawFirst,
        Some("http-first") => Order::HttpFirst,
        Some(other) => panic!("order must be raw-first or http-first, not {other}"),
    }
}

/// Acknowledged writes/s of a raw `FutureProducer` with the writer's producer settings.
async fn raw_producer_run(
    broker: &BrokerUnderTest,
    writes: usize,
    concurrency: usize,
    value: Arc<Vec<u8>>,
) -> f64 {
    let topic = broker.create_topic("load-raw", 3).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("partitioner", "murmur2_random")
        .create()
        .expect("producer");
    // Warm-up: connections and the idempotent producer id, outside the timed run.
    for _ in 0..concurrency {
        let record = FutureRecord::to(&topic)
            .key("warm-up")
            .payload(value.as_slice());
        producer.send(record, Duration::from_secs(10)).await.ok();
    }
    measure(writes, concurrency, move |i| {
        let producer = producer.clone();
        let topic = topic.clone();
        let value = value.clone();
        async move {
            let key = format!("key-{i}");
            let record = FutureRecord::to(&topic).key(&key).payload(value.as_slice());
            producer.send(record, Duration::from_secs(1)).await.is_ok()
        }
    })
    .await
}

/// Acknowledged writes/s of `PUT /v1/kv/{key}` through an in-process kv-writer, sent by kv-client.
async fn http_writer_run(
    broker: &BrokerUnderTest,
    writes: usize,
    concurrency: usize,
    value: Arc<Vec<u8>>,
) -> f64 {
    let topic = broker.create_topic("load-http", 3).await;
    let env = Env::from_pairs([
        (
            "KAFKA_BOOTSTRAP_SERVERS",
            broker.bootstrap_servers().to_owned(),
        ),
        ("KV_API_KAFKA_KEY_VALUE_TOPIC", topic),
        ("KV_API_DISABLE_API_AUTH", "true".to_owned()),
        ("KV_API_LISTEN", "127.0.0.1:0".to_owned()),
    ])
    .expect("env");
    let app = App::build(Settings::from_env(&env).expect("settings"))
        .await
        .expect("writer");
    let client = kv_client::Client::builder()
        .writer(format!("http://127.0.0.1:{}", app.port()))
        .max_retries(0)
        .build()
        .expect("client");
    tokio::spawn(app.run_until_stopped());
    let value = Bytes::from(value.as_ref().clone());
    for _ in 0..concurrency {
        client.put("warm-up", value.clone()).await.ok();
    }
    measure(writes, concurrency, move |i| {
        let (client, value) = (client.clone(), value.clone());
        async move { client.put(&format!("key-{i}"), value).await.is_ok() }
    })
    .await
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let writes = arg(1, 20_000);
    let concurrency = arg(2, 64);
    let value = Arc::new(vec![b'v'; arg(3, 100)]);
    let order = order();
    let broker = BrokerUnderTest::start();

    let (raw, through_writer) = if order == Order::RawFirst {
        let raw = raw_producer_run(&broker, writes, concurrency, value.clone()).await;
        let http = http_writer_run(&broker, writes, concurrency, value.clone()).await;
        (raw, http)
    } else {
        let http = http_writer_run(&broker, writes, concurrency, value.clone()).await;
        let raw = raw_producer_run(&broker, writes, concurrency, value.clone()).await;
        (raw, http)
    };

    println!(
        "{writes} writes, {concurrency} concurrent, {} byte values, {}",
        value.len(),
        order.label()
    );
    println!("raw rdkafka producer: {raw:.0} acked writes/s");
    println!("kv-writer over HTTP:  {through_writer:.0} acked writes/s");
    println!("ratio: {:.2}", through_writer / raw);
    // One line for scripts/bench.sh to parse.
    println!("BENCH raw_wps={raw:.0} http_wps={through_writer:.0}");
}
