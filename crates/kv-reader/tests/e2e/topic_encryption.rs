//! KV_API_ENCRYPT_DATA_ON_KAFKA end to end: what lands on the topic, and readers with the same
//! key and with another key.

use crate::{writer, READER};
use std::time::Duration;

use kv_testkit::service_env;
use kv_testkit::{eventually, Broker, Service};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use reqwest::StatusCode;

const KEY_A: &str = "8f2c6a1e9b7d4c3a5e0f1b2d3c4a5b6c7d8e9f0a1b2c3d4e5f60718293a4b5c6";
const KEY_B: &str = "1111111111111111111111111111111111111111111111111111111111111111";

fn env(broker: &Broker, topic: &str, group: &str, aes_key: &str) -> Vec<(&'static str, String)> {
    let mut env = service_env(broker, topic);
    env.extend([
        ("KAFKA_GROUP_ID", group.to_owned()),
        ("KV_API_ENCRYPT_DATA_ON_KAFKA", "true".to_owned()),
        ("KV_API_AES_KEY", aes_key.to_owned()),
    ]);
    env
}

/// Every (key, value) on partition `partition` of `topic`, in offset order.
fn raw_records(
    broker: &Broker,
    topic: &str,
    partition: i32,
    count: usize,
) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .set("group.id", format!("{topic}-raw"))
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, partition, Offset::Beginning)
        .expect("partition");
    consumer.assign(&list).expect("assign");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut records = Vec::new();
    while records.len() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} records arrived",
            records.len()
        );
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            records.push((
                message.key().map(<[u8]>::to_vec).unwrap_or_default(),
                message.payload().map(<[u8]>::to_vec),
            ));
        }
    }
    records
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn status_of(http: &reqwest::Client, url: String) -> StatusCode {
    http.get(url).send().await.expect("get").status()
}

#[tokio::test]
async fn an_encrypted_topic_hides_keys_and_values_and_keeps_compaction_and_tombstones_working() {
    let broker = Broker::start();
    let topic = broker.create_topic("encrypted", 1).await;
    let writer = Service::start(writer(), &env(&broker, &topic, "unused", KEY_A));
    let reader = Service::start(READER, &env(&broker, &topic, "same-key", KEY_A));
    let dir = tempfile::tempdir().expect("dir");
    let mut disk_env = env(&broker, &topic, "same-key-disk", KEY_A);
    disk_env.push((
        "KV_API_STATE_STORAGE_DISK_LOCATION",
        dir.path().display().to_string(),
    ));
    let disk_reader = Service::start(READER, &disk_env);
    let stranger = Service::start(READER, &env(&broker, &topic, "other-key", KEY_B));
    let http = reqwest::Client::new();

    for value in ["first secret value", "second secret value"] {
        let response = http
            .put(writer.url("/v1/kv/customer%2F4711"))
            .body(value)
            .send()
            .await
            .expect("put");
        assert_eq!(response.status(), StatusCode::OK, "{}", writer.output());
    }
    let empty = http
        .put(writer.url("/v1/kv/empty"))
        .body("")
        .send()
        .await
        .expect("put");
    assert_eq!(empty.status(), StatusCode::OK);

    let value = eventually("the decrypted value", Duration::from_secs(20), || {
        let request = http.get(reader.url("/v1/kv/customer%2F4711")).send();
        async move {
            let response = request.await.ok()?;
            let text = response.text().await.ok()?;
            (text == "second secret value").then_some(text)
        }
    })
    .await;
    assert_eq!(value, "second secret value");
    // Written after the secret, but the replica may have applied only the records before it.
    let empty = eventually("the empty value", Duration::from_secs(20), || {
        let request = http.get(reader.url("/v1/kv/empty")).send();
        async move {
            let response = request.await.ok()?;
            (response.status() == StatusCode::OK).then_some(response)
        }
    })
    .await;
    assert_eq!(
        empty.bytes().await.expect("body").len(),
        0,
        "an empty value stays empty"
    );

    let records = raw_records(&broker, &topic, 0, 3);
    let (first_key, second_key) = (&records[0].0, &records[1].0);
    assert_eq!(
        first_key, second_key,
        "the same key must give the same record key"
    );
    assert_eq!(first_key.len(), 32, "the record key is a MAC");
    for (key, value) in &records {
        assert!(
            !contains(key, b"customer"),
            "the record key holds the key in clear"
        );
        let value = value.as_deref().expect("a put");
        for secret in [&b"customer/4711"[..], b"secret value"] {
            assert!(!contains(value, secret), "the record value holds plaintext");
        }
    }

    let deleted = http
        .delete(writer.url("/v1/kv/customer%2F4711"))
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), StatusCode::OK);
    let records = raw_records(&broker, &topic, 0, 4);
    assert_eq!(
        &records[3].0, first_key,
        "the tombstone carries the same record key"
    );
    assert_eq!(records[3].1, None, "a delete stays a null-value tombstone");
    for replica in [&reader, &disk_reader] {
        eventually(
            "the delete on every reader",
            Duration::from_secs(20),
            || {
                let status = status_of(&http, replica.url("/v1/kv/customer%2F4711"));
                async move { (status.await == StatusCode::NOT_FOUND).then_some(()) }
            },
        )
        .await;
    }
    assert_eq!(
        status_of(&http, disk_reader.url("/v1/kv/empty")).await,
        StatusCode::OK,
        "the disk replica holds what the memory replica holds"
    );

    // A reader with another key never applies what it cannot authenticate, and counts it.
    let report = eventually(
        "the stranger to skip every record",
        Duration::from_secs(20),
        || {
            let request = http.get(stranger.url("/healthz/ready")).send();
            async move {
                let report: serde_json::Value = request.await.ok()?.json().await.ok()?;
                let skipped = report["skipped_records"]["total"].as_u64()?;
                (skipped == 3).then_some(report)
            }
        },
    )
    .await;
    let by_reason = &report["skipped_records"]["by_reason"];
    assert!(
        by_reason.get("wrong_key").is_some() || by_reason.get("undecryptable").is_some(),
        "{report}"
    );
    assert!(stranger.output().contains("skipping"), "skips are logged");
    assert_eq!(
        status_of(&http, stranger.url("/v1/kv/empty")).await,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_plaintext_record_on_an_encrypted_topic_is_skipped_and_counted() {
    let broker = Broker::start();
    let topic = broker.create_topic("encrypted-poison", 1).await;
    let producer = broker.producer();
    broker
        .produce(&producer, &topic, b"plain-key", Some(b"plain value"))
        .await;
    let reader = Service::start(READER, &env(&broker, &topic, "reader", KEY_A));
    let http = reqwest::Client::new();
    let report = eventually("the reader to be ready", Duration::from_secs(20), || {
        let request = http.get(reader.url("/healthz/ready")).send();
        async move {
            let response = request.await.ok()?;
            (response.status() == StatusCode::OK).then_some(response.json::<serde_json::Value>())
        }
    })
    .await
    .await
    .expect("report");
    assert_eq!(
        report["skipped_records"]["by_reason"]["not_encrypted"], 1,
        "{report}"
    );
    assert_eq!(
        status_of(&http, reader.url("/v1/kv/plain-key")).await,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_tombstone_naming_a_user_key_in_clear_on_an_encrypted_topic_deletes_nothing() {
    let broker = Broker::start();
    let topic = broker.create_topic("encrypted-clear-delete", 1).await;
    let writer = Service::start(writer(), &env(&broker, &topic, "unused", KEY_A));
    let reader = Service::start(READER, &env(&broker, &topic, "reader", KEY_A));
    let http = reqwest::Client::new();
    // The second key is as long as a record key on this topic (a MAC): 32 bytes.
    let keys = ["customer%2F4711", "0123456789abcdef0123456789abcdef"];
    for key in keys {
        let response = http
            .put(writer.url(&format!("/v1/kv/{key}")))
            .body("kept")
            .send()
            .await
            .expect("put");
        assert_eq!(response.status(), StatusCode::OK, "{}", writer.output());
    }

    // What a writer without the topic key would send to delete them; then a marker, which
    // the reader applies only after them (one partition).
    let producer = broker.producer();
    for key in [&b"customer/4711"[..], b"0123456789abcdef0123456789abcdef"] {
        broker.produce(&producer, &topic, key, None).await;
    }
    let marker = http
        .put(writer.url("/v1/kv/marker"))
        .body("after the tombstones")
        .send()
        .await
        .expect("put");
    assert_eq!(marker.status(), StatusCode::OK);
    eventually("the marker on the reader", Duration::from_secs(20), || {
        let status = status_of(&http, reader.url("/v1/kv/marker"));
        async move { (status.await == StatusCode::OK).then_some(()) }
    })
    .await;

    for key in keys {
        let response = http
            .get(reader.url(&format!("/v1/kv/{key}")))
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), StatusCode::OK, "{key} was deleted");
        assert_eq!(response.text().await.expect("body"), "kept");
    }
}
