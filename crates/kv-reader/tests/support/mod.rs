//! What the end-to-end suites share: a reader's environment, producing records straight to the
//! topic with rdkafka, and reading a reader's whole state back over its HTTP API.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use kv_core::testkit::{eventually, Broker, Service};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

pub const DEADLINE: Duration = Duration::from_secs(30);

/// A record to put on the topic: key, value (`None` = tombstone).
pub type Record = (Vec<u8>, Option<Vec<u8>>);

pub fn reader_env(broker: &Broker, topic: &str, group: &str) -> Vec<(&'static str, String)> {
    let mut env = broker.service_env(topic);
    env.push(("KAFKA_GROUP_ID", group.to_owned()));
    env
}

/// The native route's URL path of a key of any bytes.
pub fn key_path(key: &[u8]) -> String {
    let encoded: String = key
        .iter()
        .map(|b| format!("%{b:02X}"))
        .collect::<Vec<_>>()
        .join("");
    format!("/v1/kv/{encoded}")
}

pub fn query_value(text: &str) -> String {
    utf8_percent_encode(text, NON_ALPHANUMERIC).to_string()
}

/// Produces `records` in order, many in flight at once, and waits for every acknowledgement.
pub async fn produce_all(producer: &FutureProducer, topic: &str, records: &[Record]) {
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
    let record =
        FutureRecord::to(topic)
            .key(key)
            .payload(value)
            .headers(OwnedHeaders::new().insert(Header {
                key: "X-Correlation-Id",
                value: Some(correlation_id),
            }));
    let delivery = producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("produce");
    (delivery.partition, delivery.offset)
}

/// The state `records` leave behind when applied in order.
pub fn expected_state(records: &[Record]) -> BTreeMap<Vec<u8>, Vec<u8>> {
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
pub fn mixed_records(count: usize, keys: usize) -> Vec<Record> {
    (0..count)
        .map(|i| {
            let key = format!("key-{:05}", i % keys).into_bytes();
            let value = (i % 7 != 3).then(|| format!("value {i} of {key:?}").into_bytes());
            (key, value)
        })
        .collect()
}

pub async fn ready_report(http: &reqwest::Client, reader: &Service) -> (u16, Value) {
    let response = http
        .get(reader.url("/healthz/ready"))
        .send()
        .await
        .expect("readiness");
    let status = response.status().as_u16();
    (status, response.json().await.expect("readiness json"))
}

/// Waits until the reader reports ready, and returns its report.
pub async fn wait_ready(http: &reqwest::Client, reader: &Service) -> Value {
    eventually("the reader to be ready", DEADLINE, || async {
        let (status, body) = ready_report(http, reader).await;
        (status == 200).then_some(body)
    })
    .await
}

fn bytes_of(item: &Value, field: &str) -> Option<Vec<u8>> {
    if let Some(text) = item[field].as_str() {
        return Some(text.as_bytes().to_vec());
    }
    item[format!("{field}_b64")]
        .as_str()
        .map(|b64| STANDARD.decode(b64).expect("base64"))
}

/// Every key the reader lists, page by page.
pub async fn all_keys(http: &reqwest::Client, reader: &Service) -> Vec<Vec<u8>> {
    let mut keys = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = reader.url("/v1/kv?limit=1000");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let page: Value = http
            .get(url)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("list json");
        for item in page["keys"].as_array().expect("keys") {
            keys.push(bytes_of(item, "key").expect("a key"));
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return keys,
        }
    }
}

/// The reader's whole state, read through its listing and batchGet routes.
pub async fn dump(http: &reqwest::Client, reader: &Service) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let keys = all_keys(http, reader).await;
    let mut state = BTreeMap::new();
    for chunk in keys.chunks(1000) {
        let keys_b64: Vec<String> = chunk.iter().map(|k| STANDARD.encode(k)).collect();
        let response: Value = http
            .post(reader.url("/v1/kv:batchGet"))
            .json(&serde_json::json!({ "keys_b64": keys_b64 }))
            .send()
            .await
            .expect("batchGet")
            .json()
            .await
            .expect("batchGet json");
        for (key, item) in chunk
            .iter()
            .zip(response["results"].as_array().expect("results"))
        {
            if item["found"] == true {
                state.insert(key.clone(), bytes_of(item, "value").expect("a value"));
            }
        }
    }
    state
}

/// A schema registry that knows only `subjects`, answering every request with that list.
pub fn registry_stub(subjects: Vec<String>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            // Read the request head; requests have no body.
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let body = serde_json::to_string(&subjects).expect("json");
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}
