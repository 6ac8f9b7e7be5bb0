//! The whole slice as users run it: a broker process, kv-writer and kv-reader processes, HTTP.

use crate::{writer, READER};
use std::time::Duration;

use kv_testkit::service_env;
use kv_testkit::{eventually, Broker, Service};

#[tokio::test]
async fn a_value_written_through_kv_writer_is_read_back_byte_for_byte_from_kv_reader() {
    let broker = Broker::start();
    let topic = broker.create_topic("slice", 3).await;
    let writer = Service::start(writer(), &service_env(&broker, &topic));
    let reader = Service::start(READER, &service_env(&broker, &topic));
    let http = reqwest::Client::new();
    let value: Vec<u8> = (0..=255u8).chain("ünïcødé".bytes()).collect();

    let written = http
        .put(writer.url("/v1/kv/users%2Fada"))
        .body(value.clone())
        .send()
        .await
        .expect("write");
    assert_eq!(written.status(), 200, "{}", writer.output());
    let ack: serde_json::Value = written.json().await.expect("json ack");
    assert!(
        ack["offset"].as_i64().is_some(),
        "ack without offset: {ack}"
    );

    let read = eventually("the value on the reader", Duration::from_secs(20), || {
        let request = http.get(reader.url("/v1/kv/users%2Fada")).send();
        async move {
            let response = request.await.ok()?;
            (response.status() == 200).then_some(response)
        }
    })
    .await;
    assert_eq!(read.headers()["content-type"], "application/octet-stream");
    assert_eq!(read.bytes().await.expect("body").as_ref(), value.as_slice());
    assert!(
        !reader.output().contains("PartitionEOF"),
        "reaching the end of a partition is not an error to log:\n{}",
        reader.output()
    );
}

#[tokio::test]
async fn the_original_store_and_retrieve_routes_round_trip_a_string() {
    let broker = Broker::start();
    let topic = broker.create_topic("compat", 1).await;
    let writer = Service::start(writer(), &service_env(&broker, &topic));
    let reader = Service::start(READER, &service_env(&broker, &topic));
    let http = reqwest::Client::new();

    let stored = http
        .post(writer.url("/store"))
        .json(&serde_json::json!({"Key": "greeting", "Value": "hello, wörld"}))
        .send()
        .await
        .expect("store");
    assert_eq!(stored.status(), 200);

    let body = eventually("the value on the reader", Duration::from_secs(20), || {
        let request = http
            .post(reader.url("/retrieve"))
            .json(&serde_json::json!({"key": "greeting"}))
            .send();
        async move {
            let response = request.await.ok()?;
            if response.status() != 200 {
                return None;
            }
            response.json::<String>().await.ok()
        }
    })
    .await;
    assert_eq!(body, "hello, wörld");

    let missing = http
        .post(reader.url("/retrieve"))
        .json(&serde_json::json!({"key": "never-written"}))
        .send()
        .await
        .expect("retrieve");
    assert_eq!(missing.status(), 404);
    let error: serde_json::Value = missing.json().await.expect("json error");
    assert_eq!(error["error"]["code"], "key_not_found");
}

#[tokio::test]
async fn a_base64_key_without_padding_is_read_back_with_the_same_string() {
    let broker = Broker::start();
    let topic = broker.create_topic("b64", 1).await;
    let writer = Service::start(writer(), &service_env(&broker, &topic));
    let reader = Service::start(READER, &service_env(&broker, &topic));
    let http = reqwest::Client::new();

    // "aw" is "k" without its "==": the writer has always accepted it.
    let stored = http
        .post(writer.url("/store/b64"))
        .json(&serde_json::json!({"key": "aw", "value": "dg"}))
        .send()
        .await
        .expect("store");
    assert_eq!(stored.status(), 200, "{}", writer.output());
    for spelling in ["aw", "aw=="] {
        let read = eventually("the key on the reader", Duration::from_secs(20), || {
            let request = http
                .post(reader.url("/retrieve/b64"))
                .json(&serde_json::json!({ "key": spelling }))
                .send();
            async move {
                let response = request.await.ok()?;
                (response.status() == 200).then_some(response)
            }
        })
        .await;
        let body = read.text().await.expect("body");
        assert!(body.contains("dg=="), "{spelling}: {body}");
    }
}
