//! KV_API_STATE_STORAGE_PASSWORD end to end: the real binary keeps its redb file encrypted,
//! resumes with the right password and refuses to start with a wrong one.

use crate::READER;
use std::time::Duration;

use kv_testkit::{eventually, run_to_exit, Broker, Service};
use reqwest::StatusCode;

fn env(
    broker: &Broker,
    topic: &str,
    dir: &std::path::Path,
    password: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_servers()),
        ("KV_API_KAFKA_KEY_VALUE_TOPIC", topic.to_owned()),
        ("KV_API_DISABLE_API_AUTH", "true".to_owned()),
        ("KAFKA_GROUP_ID", format!("{topic}-reader")),
        ("KV_API_STATE_STORAGE_TYPE", "disk".to_owned()),
        (
            "KV_API_STATE_STORAGE_DISK_LOCATION",
            dir.display().to_string(),
        ),
        ("KV_API_STATE_STORAGE_PASSWORD", password.to_owned()),
    ]
}

fn dir_holds(dir: &std::path::Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).expect("dir").any(|entry| {
        let bytes = std::fs::read(entry.expect("entry").path()).unwrap_or_default();
        bytes.windows(needle.len()).any(|w| w == needle)
    })
}

async fn get(http: &reqwest::Client, reader: &Service, key: &str) -> (StatusCode, String) {
    let response = http
        .get(reader.url(&format!("/v1/kv/{key}")))
        .send()
        .await
        .expect("get");
    (response.status(), response.text().await.expect("body"))
}

#[tokio::test]
async fn an_encrypted_replica_keeps_no_plaintext_on_disk_and_opens_only_with_its_password() {
    let broker = Broker::start();
    let topic = broker.create_topic("at-rest", 2).await;
    let producer = broker.producer();
    for i in 0..50 {
        let key = format!("patient-{i:03}");
        let value = format!("diagnosis-{i:03}-confidential");
        broker
            .produce(&producer, &topic, key.as_bytes(), Some(value.as_bytes()))
            .await;
    }
    let dir = tempfile::tempdir().expect("dir");
    let http = reqwest::Client::new();

    let mut reader = Service::start(READER, &env(&broker, &topic, dir.path(), "s3cret pass"));
    eventually(
        "the replica to hold the records",
        Duration::from_secs(30),
        || {
            let read = get(&http, &reader, "patient-049");
            async move {
                (read.await == (StatusCode::OK, "diagnosis-049-confidential".into())).then_some(())
            }
        },
    )
    .await;
    reader.terminate();
    assert!(
        reader
            .wait_for_exit(Duration::from_secs(20))
            .await
            .is_some(),
        "clean exit"
    );
    for secret in [&b"patient-0"[..], b"confidential"] {
        assert!(
            !dir_holds(dir.path(), secret),
            "the store holds {secret:?} in clear"
        );
    }

    let (code, output) = run_to_exit(
        READER,
        &env(&broker, &topic, dir.path(), "a wrong guess"),
        Duration::from_secs(30),
    );
    assert!(matches!(code, Some(c) if c != 0), "exit {code:?}: {output}");
    assert!(output.contains("KV_API_STATE_STORAGE_PASSWORD"), "{output}");
    assert!(output.contains("wrong password"), "{output}");

    let reader = Service::start(READER, &env(&broker, &topic, dir.path(), "s3cret pass"));
    assert_eq!(
        get(&http, &reader, "patient-007").await,
        (StatusCode::OK, "diagnosis-007-confidential".to_owned()),
        "a restart with the right password serves what it stored before"
    );
}

#[tokio::test]
async fn listings_of_an_encrypted_store_run_a_few_at_a_time_off_the_workers_and_reads_go_on() {
    let broker = Broker::start();
    let topic = broker.create_topic("sealed-list", 2).await;
    let producer = broker.producer();
    let records: Vec<kv_testkit::topic::KeyValue> = (0..20_000)
        .map(|i| (format!("key-{i:05}").into_bytes(), Some(b"v".to_vec())))
        .collect();
    kv_testkit::topic::produce_all(&producer, &topic, &records).await;
    let dir = tempfile::tempdir().expect("store dir");
    let reader = Service::start(READER, &env(&broker, &topic, dir.path(), "pw"));
    let http = reqwest::Client::new();
    kv_testkit::reader::wait_ready(&http, &reader).await;

    let listings = (0..12).map(|_| {
        let request = http.get(reader.url("/v1/kv?prefix=key-&limit=3")).send();
        async move {
            let response = request.await.expect("list");
            let status = response.status();
            let retry_after = response.headers().contains_key("retry-after");
            let body: serde_json::Value = response.json().await.expect("json");
            (status, retry_after, body)
        }
    });
    let read = async {
        let (status, body) = get(&http, &reader, "key-00042").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "v"));
    };
    let (answers, ()) = tokio::join!(futures::future::join_all(listings), read);
    let mut listed = 0;
    for (status, retry_after, body) in answers {
        match status {
            StatusCode::OK => {
                listed += 1;
                let keys: Vec<&str> = body["keys"]
                    .as_array()
                    .expect("keys")
                    .iter()
                    .filter_map(|k| k["key"].as_str())
                    .collect();
                assert_eq!(keys, ["key-00000", "key-00001", "key-00002"]);
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(body["error"]["code"], "overloaded", "{body}");
                assert!(retry_after, "a 503 says when to come back");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(listed > 0, "some listings were served");
}
