//! KV_API_ENCRYPT_DATA_ON_KAFKA end to end: what lands on the topic, and readers with the same
//! key and with another key.

use crate::{writer, READER};
use std::time::Duration;

use std::collections::BTreeMap;
use std::path::Path;

use kv_reader::settings::Storage;
use kv_reader::store::Store;
use kv_testkit::reader::{all_keys, dump, ready_report, wait_ready};
use kv_testkit::service_env;
use kv_testkit::{eventually, metric, Broker, Service, DEADLINE};
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
    // A good record after it: a plaintext record among encrypted ones is a foreign record, not
    // a reader misconfigured (a topic of nothing but plaintext would make the reader unready).
    let writer = Service::start(writer(), &env(&broker, &topic, "unused", KEY_A));
    let http = reqwest::Client::new();
    let good = http
        .put(writer.url("/v1/kv/good"))
        .body("sealed")
        .send()
        .await
        .expect("put");
    assert_eq!(good.status(), StatusCode::OK, "{}", writer.output());
    let reader = Service::start(READER, &env(&broker, &topic, "reader", KEY_A));
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

const KEYS: usize = 40;

/// Writes `KEYS` keys through a writer with `aes_key` (none: plaintext) and returns them.
async fn write_keys(
    broker: &Broker,
    topic: &str,
    aes_key: Option<&str>,
) -> BTreeMap<String, String> {
    let env = match aes_key {
        Some(key) => env(broker, topic, "unused", key),
        None => service_env(broker, topic),
    };
    let writer = Service::start(writer(), &env);
    let http = reqwest::Client::new();
    let mut written = BTreeMap::new();
    for n in 0..KEYS {
        let (key, value) = (format!("key-{n}"), format!("value {n}"));
        let response = http
            .put(writer.url(&format!("/v1/kv/{key}")))
            .body(value.clone())
            .send()
            .await
            .expect("put");
        assert_eq!(response.status(), StatusCode::OK, "{}", writer.output());
        written.insert(key, value);
    }
    written
}

fn disk(mut env: Vec<(&'static str, String)>, dir: &Path) -> Vec<(&'static str, String)> {
    env.push((
        "KV_API_STATE_STORAGE_DISK_LOCATION",
        dir.display().to_string(),
    ));
    env
}

/// Waits until the reader reports itself misconfigured, after it read every record, and
/// returns its readiness body.
async fn misconfigured(http: &reqwest::Client, reader: &Service) -> serde_json::Value {
    eventually(
        "the reader to say it is misconfigured",
        DEADLINE,
        || async {
            let (status, report) = ready_report(http, reader).await;
            let read: i64 = report["partitions"]
                .as_object()?
                .values()
                .filter_map(|p| p["next_offset"].as_i64())
                .sum();
            (status == 503 && report["status"] == "misconfigured" && read == KEYS as i64)
                .then_some(report)
        },
    )
    .await
}

/// Every written key the reader does not serve with its value.
async fn lost(
    http: &reqwest::Client,
    reader: &Service,
    written: &BTreeMap<String, String>,
) -> usize {
    let state = dump(http, reader).await;
    written
        .iter()
        .filter(|(key, value)| state.get(key.as_bytes()) != Some(&value.as_bytes().to_vec()))
        .count()
}

#[tokio::test]
async fn a_disk_reader_with_the_wrong_key_is_not_ready_and_restarted_with_the_right_key_loses_nothing(
) {
    let broker = Broker::start();
    let topic = broker.create_topic("wrong-key", 3).await;
    let written = write_keys(&broker, &topic, Some(KEY_A)).await;
    let dir = tempfile::tempdir().expect("dir");
    let http = reqwest::Client::new();

    let mut wrong = Service::start(READER, &disk(env(&broker, &topic, "r", KEY_B), dir.path()));
    let report = misconfigured(&http, &wrong).await;
    let reason = report["misconfiguration"]["reason"]
        .as_str()
        .expect("reason");
    assert!(["wrong_key", "undecryptable"].contains(&reason), "{report}");
    assert_eq!(report["error"]["code"], "not_ready", "{report}");
    assert!(
        report["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("KV_API_AES_KEY")),
        "{report}"
    );
    let metrics = wrong.metrics(&http).await;
    assert_eq!(
        metric(&metrics, "kv_reader_misconfigured", &[("reason", reason)]),
        Some(1.0)
    );
    assert_eq!(metric(&metrics, "kv_reader_ready", &[]), Some(0.0));
    wrong.terminate();
    assert_eq!(wrong.wait_for_exit(Duration::from_secs(20)).await, Some(0));

    // What the wrong key left in the store: no offset past the records it refused.
    {
        let store = Store::open(
            &Storage::Disk {
                location: dir.path().to_owned(),
            },
            None,
        )
        .expect("the store");
        let stored = store.next_offsets().expect("offsets");
        assert!(stored.values().all(|&next| next == 0), "{stored:?}");
        assert_eq!(store.key_count().expect("keys"), 0);
    }

    let right = Service::start(READER, &disk(env(&broker, &topic, "r", KEY_A), dir.path()));
    wait_ready(&http, &right).await;
    let lost = lost(&http, &right, &written).await;
    println!("wrong key, then the right one: {KEYS} keys written, {lost} lost");
    assert_eq!(lost, 0, "{}", right.output());
    let metrics = right.metrics(&http).await;
    assert_eq!(
        metric(&metrics, "kv_reader_misconfigured", &[("reason", reason)]),
        Some(0.0)
    );
}

#[tokio::test]
async fn a_plaintext_reader_on_an_encrypted_topic_is_not_ready_and_stores_no_envelope_as_a_value() {
    let broker = Broker::start();
    let topic = broker.create_topic("plain-reader", 2).await;
    write_keys(&broker, &topic, Some(KEY_A)).await;
    let http = reqwest::Client::new();
    let reader = Service::start(READER, &service_env(&broker, &topic));

    let report = misconfigured(&http, &reader).await;
    assert_eq!(
        report["misconfiguration"]["reason"], "encrypted_envelope",
        "{report}"
    );
    assert_eq!(
        report["skipped_records"]["by_reason"]["encrypted_envelope"], KEYS,
        "{report}"
    );
    assert!(
        report["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("KV_API_ENCRYPT_DATA_ON_KAFKA")),
        "{report}"
    );
    assert!(
        all_keys(&http, &reader).await.is_empty(),
        "an envelope was stored"
    );
    let metrics = reader.metrics(&http).await;
    assert_eq!(metric(&metrics, "kv_reader_store_keys", &[]), Some(0.0));
    assert_eq!(
        metric(
            &metrics,
            "kv_reader_misconfigured",
            &[("reason", "encrypted_envelope")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_store_written_under_one_key_and_opened_with_another_is_rebuilt_and_the_log_says_why() {
    let broker = Broker::start();
    let topic = broker.create_topic("rekeyed-store", 2).await;
    let written = write_keys(&broker, &topic, Some(KEY_A)).await;
    let dir = tempfile::tempdir().expect("dir");
    let http = reqwest::Client::new();

    let mut first = Service::start(READER, &disk(env(&broker, &topic, "r", KEY_A), dir.path()));
    wait_ready(&http, &first).await;
    assert_eq!(lost(&http, &first, &written).await, 0);
    first.terminate();
    assert_eq!(first.wait_for_exit(Duration::from_secs(20)).await, Some(0));

    let mut other = Service::start(READER, &disk(env(&broker, &topic, "r", KEY_B), dir.path()));
    misconfigured(&http, &other).await;
    let output = other.output();
    assert!(
        output.contains(
            "rebuilding the replica from scratch: the store was built under another topic key"
        ),
        "{output}"
    );
    let metrics = other.metrics(&http).await;
    assert_eq!(metric(&metrics, "kv_reader_rebuilds_total", &[]), Some(1.0));
    assert_eq!(
        metric(&metrics, "kv_reader_store_keys", &[]),
        Some(0.0),
        "nothing decrypted under the first key is served under the second"
    );
    other.terminate();
    assert_eq!(other.wait_for_exit(Duration::from_secs(20)).await, Some(0));
    let plain = Service::start(READER, &disk(service_env(&broker, &topic), dir.path()));
    misconfigured(&http, &plain).await;
    assert!(
        plain.output().contains(
            "rebuilding the replica from scratch: the store was built under topic encryption"
        ),
        "{}",
        plain.output()
    );
}
