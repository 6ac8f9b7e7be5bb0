//! The topic format stays the original service's: raw key and value bytes, Java's partitioner.
//! Existing topics must keep working in both directions.

use crate::{writer, READER};
use std::time::Duration;

use kv_core::kafka::kafka_partition;
use kv_testkit::service_env;
use kv_testkit::{eventually, Broker, Service};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

#[tokio::test]
async fn kv_writer_puts_raw_bytes_on_the_partition_java_clients_choose() {
    let broker = Broker::start();
    let topic = broker.create_topic("compat-raw", 6).await;
    let writer = Service::start(writer(), &service_env(&broker, &topic));
    let http = reqwest::Client::new();

    let mut written = Vec::new();
    for key in ["alpha", "beta", "gamma", "δέλτα", "user/42", "k"] {
        let response = http
            .post(writer.url("/store"))
            .json(&serde_json::json!({"key": key, "value": format!("value of {key}")}))
            .send()
            .await
            .expect("store");
        assert_eq!(response.status(), 200, "{}", writer.output());
        // The seed route says where the write landed in its headers; its body is "Stored".
        let header = |name: &str| -> i64 {
            response.headers()[name]
                .to_str()
                .expect("ascii")
                .parse()
                .expect("a number")
        };
        let (partition, offset) = (header("x-kafka-partition") as i32, header("x-kafka-offset"));
        assert_eq!(
            response.json::<String>().await.expect("a JSON string"),
            "Stored"
        );
        assert_eq!(
            partition,
            kafka_partition(key.as_bytes(), 6),
            "key {key:?} landed on another partition than a Java client would choose"
        );
        written.push((key, partition, offset));
    }

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .set("group.id", format!("{topic}-raw"))
        .create()
        .expect("consumer");
    for (key, partition, offset) in written {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&topic, partition, Offset::Offset(offset))
            .expect("partition");
        consumer.assign(&list).expect("assign");
        let message = eventually("the raw record", Duration::from_secs(10), || {
            let found = consumer
                .poll(Duration::from_millis(100))
                .and_then(Result::ok)
                .map(|m| (m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec)));
            async move { found }
        })
        .await;
        assert_eq!(message.0.as_deref(), Some(key.as_bytes()));
        assert_eq!(
            message.1.as_deref(),
            Some(format!("value of {key}").as_bytes())
        );
    }
}

#[tokio::test]
async fn kv_reader_serves_records_a_plain_producer_put_on_an_existing_topic() {
    let broker = Broker::start();
    let topic = broker.create_topic("compat-existing", 3).await;
    let producer = broker.producer();
    broker
        .produce(&producer, &topic, b"config/feature-x", Some(b"enabled"))
        .await;
    broker
        .produce(&producer, &topic, b"config/feature-y", Some(b"disabled"))
        .await;
    broker
        .produce(&producer, &topic, b"config/feature-y", None)
        .await;
    let reader = Service::start(READER, &service_env(&broker, &topic));
    let http = reqwest::Client::new();

    let value = eventually("the value on the reader", Duration::from_secs(20), || {
        let request = http.get(reader.url("/v1/kv/config%2Ffeature-x")).send();
        async move {
            let response = request.await.ok()?;
            if response.status() != 200 {
                return None;
            }
            response.text().await.ok()
        }
    })
    .await;
    assert_eq!(value, "enabled");
    eventually("the replica to be ready", Duration::from_secs(20), || {
        let request = http.get(reader.url("/healthz/ready")).send();
        async move { (request.await.ok()?.status() == 200).then_some(()) }
    })
    .await;
    let deleted = http
        .get(reader.url("/v1/kv/config%2Ffeature-y"))
        .send()
        .await
        .expect("get");
    assert_eq!(deleted.status(), 404, "a tombstone must remove the key");
}
