//! TTLs through the real kv-writer binary: every write route records the absolute expiry a TTL
//! asks for in the `X-KV-Expires-At` header (authenticated under topic encryption), a write
//! without one records none, and a bad TTL is a 400 naming the field with nothing written.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use kv_core::crypto::TopicCipher;
use kv_core::record::{RecordCodec, EXPIRES_AT_HEADER};
use kv_testkit::services::service_env_with as writer_env;
use kv_testkit::topic::{records, Record};
use kv_testkit::{Broker, Service};
use serde_json::{json, Value};

use crate::WRITER;

const AES_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms")
}

fn expiry_of(record: &Record) -> Option<u64> {
    record.header(EXPIRES_AT_HEADER).map(|raw| {
        std::str::from_utf8(raw)
            .expect("ascii")
            .parse()
            .expect("a number")
    })
}

/// The record of `key` on the topic, the last one when there are several.
fn last_of<'r>(all: &'r [Record], key: &[u8]) -> &'r Record {
    all.iter()
        .rev()
        .find(|r| r.key == key)
        .unwrap_or_else(|| panic!("no record of {key:?} in {all:?}"))
}

#[tokio::test]
async fn every_write_route_records_the_expiry_its_ttl_asks_for_and_a_write_without_one_records_none(
) {
    let broker = Broker::start();
    let topic = broker.create_topic("ttl-routes", 2).await;
    let writer = Service::start(WRITER, &writer_env(&broker, &topic, &[]));
    let http = reqwest::Client::new();

    let before = now_ms();
    let put = |path: &str| http.put(writer.url(path)).body("v");
    let answers = [
        put("/v1/kv/by-header")
            .header("X-KV-TTL-Seconds", "30")
            .send()
            .await,
        put("/v1/kv/by-parameter?ttl_seconds=40").send().await,
        put("/v1/kv/by-both?ttl_seconds=45&other=ignored")
            .header("X-KV-TTL-Seconds", "45")
            .send()
            .await,
        http.post(writer.url("/store"))
            .json(&json!({"key": "by-store", "value": "v", "ttlSeconds": 50}))
            .send()
            .await,
        http.post(writer.url("/store/b64"))
            .json(&json!({"Key": "YnktYjY0", "Value": "dg==", "TtlSeconds": 60}))
            .send()
            .await,
        http.post(writer.url("/v1/kv:batch"))
            .json(&json!({"items": [
                {"key": "by-batch", "value": "v", "ttl_seconds": 70},
                {"key": "lasting", "value": "v"},
            ]}))
            .send()
            .await,
    ];
    let after = now_ms();
    for answer in answers {
        let answer = answer.expect("write");
        assert_eq!(answer.status(), 200, "{}", writer.output());
    }

    let all = records(broker.bootstrap_servers(), &topic).await;
    for (key, ttl) in [
        ("by-header", 30),
        ("by-parameter", 40),
        ("by-both", 45),
        ("by-store", 50),
        ("by-b64", 60),
        ("by-batch", 70),
    ] {
        let expiry = expiry_of(last_of(&all, key.as_bytes())).expect(key);
        assert!(
            (before + ttl * 1000..=after + ttl * 1000).contains(&expiry),
            "{key}: expires at {expiry}, written between {before} and {after} with a TTL of {ttl} s"
        );
    }
    assert_eq!(expiry_of(last_of(&all, b"lasting")), None);

    let rewritten = http
        .put(writer.url("/v1/kv/by-header"))
        .body("again")
        .send()
        .await
        .expect("put");
    assert_eq!(rewritten.status(), 200);
    let all = records(broker.bootstrap_servers(), &topic).await;
    assert_eq!(
        expiry_of(last_of(&all, b"by-header")),
        None,
        "a later write without a TTL carries no expiry, so it clears the TTL"
    );
}

#[tokio::test]
async fn a_bad_ttl_is_a_400_naming_the_field_and_nothing_is_written() {
    let broker = Broker::start();
    let topic = broker.create_topic("ttl-bad", 1).await;
    let writer = Service::start(
        WRITER,
        &writer_env(&broker, &topic, &[("KV_API_MAX_TTL_SECONDS", "3600")]),
    );
    let http = reqwest::Client::new();

    let mut refused = Vec::new();
    for bad in ["0", "-1", "1.5", "3601", "soon", "", "99999999999999999999"] {
        refused.push((
            http.put(writer.url("/v1/kv/k"))
                .header("X-KV-TTL-Seconds", bad)
                .body("v")
                .send()
                .await,
            "header X-KV-TTL-Seconds",
        ));
        refused.push((
            http.put(writer.url(&format!(
                "/v1/kv/k?ttl_seconds={}",
                kv_testkit::reader::query_value(bad)
            )))
            .body("v")
            .send()
            .await,
            "parameter `ttl_seconds`",
        ));
    }
    for bad in [
        json!(0),
        json!(-3),
        json!(2.5),
        json!(3601),
        json!("60"),
        json!(true),
    ] {
        refused.push((
            http.post(writer.url("/store"))
                .json(&json!({"key": "k", "value": "v", "ttlSeconds": bad}))
                .send()
                .await,
            "field `ttlSeconds`",
        ));
        refused.push((
            http.post(writer.url("/store/b64"))
                .json(&json!({"key": "aw==", "value": "dg==", "ttlSeconds": bad}))
                .send()
                .await,
            "field `ttlSeconds`",
        ));
        refused.push((
            http.post(writer.url("/v1/kv:batch"))
                .json(&json!({"items": [
                    {"key": "fine", "value": "v", "ttl_seconds": 10},
                    {"key": "k", "value": "v", "ttl_seconds": bad},
                ]}))
                .send()
                .await,
            "field `items[1].ttl_seconds`",
        ));
    }
    refused.push((
        http.put(writer.url("/v1/kv/k?ttl_seconds=5"))
            .header("X-KV-TTL-Seconds", "6")
            .body("v")
            .send()
            .await,
        "name different TTLs",
    ));
    refused.push((
        http.delete(writer.url("/v1/kv/k"))
            .header("X-KV-TTL-Seconds", "5")
            .send()
            .await,
        "a delete takes no TTL",
    ));
    refused.push((
        http.post(writer.url("/remove"))
            .json(&json!({"key": "k", "ttlSeconds": 5}))
            .send()
            .await,
        "field `ttlSeconds`",
    ));
    refused.push((
        http.post(writer.url("/v1/kv:batch"))
            .json(&json!({"items": [{"key": "k", "delete": true, "ttl_seconds": 5}]}))
            .send()
            .await,
        "field `items[0].ttl_seconds`",
    ));
    refused.push((
        http.post(writer.url("/store"))
            .json(&json!({"key": "k", "value": "v", "headers": {"X-KV-Expires-At": "1"}}))
            .send()
            .await,
        "reserved",
    ));

    for (answer, names) in refused {
        let answer = answer.expect("request");
        assert_eq!(answer.status(), 400, "{names}");
        let body: Value = answer.json().await.expect("a JSON error");
        assert_eq!(body["error"]["code"], "invalid_request", "{body}");
        let message = body["error"]["message"].as_str().expect("message");
        assert!(message.contains(names), "expected {names:?} in {message:?}");
    }
    assert!(
        records(broker.bootstrap_servers(), &topic).await.is_empty(),
        "a refused write writes nothing, the good items of a refused batch included"
    );
}

#[tokio::test]
async fn under_topic_encryption_the_expiry_is_authenticated_with_the_envelope() {
    let broker = Broker::start();
    let topic = broker.create_topic("ttl-sealed", 1).await;
    let writer = Service::start(
        WRITER,
        &writer_env(
            &broker,
            &topic,
            &[
                ("KV_API_ENCRYPT_DATA_ON_KAFKA", "true"),
                ("KV_API_AES_KEY", AES_KEY),
            ],
        ),
    );
    let answer = reqwest::Client::new()
        .put(writer.url("/v1/kv/sealed"))
        .header("X-KV-TTL-Seconds", "600")
        .body("secret")
        .send()
        .await
        .expect("put");
    assert_eq!(answer.status(), 200, "{}", writer.output());

    let all = records(broker.bootstrap_servers(), &topic).await;
    let record = &all[0];
    let expiry = expiry_of(record).expect("the expiry stays readable beside the envelope");
    let mut key = [0u8; 32];
    hex_into(AES_KEY, &mut key);
    let codec = RecordCodec::Encrypted(Arc::new(TopicCipher::new(&key)));
    assert!(codec
        .decode_expiring(Some(&record.key), record.value.as_deref(), Some(expiry))
        .is_ok());
    for forged in [None, Some(expiry + 3_600_000), Some(expiry - 1)] {
        assert_eq!(
            codec
                .decode_expiring(Some(&record.key), record.value.as_deref(), forged)
                .expect_err("a changed expiry")
                .reason(),
            "undecryptable",
            "{forged:?}"
        );
    }
}

fn hex_into(text: &str, out: &mut [u8; 32]) {
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("hex");
    }
}
