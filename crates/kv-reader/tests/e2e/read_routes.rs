//! The read routes of a real kv-reader process over a real broker, with records put on the
//! topic by rdkafka directly (or by a real kv-writer for read-your-writes).

use crate::{writer, READER};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use kv_testkit::reader::*;
use kv_testkit::services::reader_env;
use kv_testkit::topic::*;
use kv_testkit::DEADLINE;
use kv_testkit::{Broker, Service};
use rdkafka::config::ClientConfig;
use rdkafka::producer::FutureProducer;
use serde_json::{json, Value};

async fn error_code(response: reqwest::Response) -> String {
    let body: Value = response.json().await.expect("json error");
    body["error"]["code"]
        .as_str()
        .expect("an error code")
        .to_owned()
}

#[tokio::test]
async fn get_serves_the_raw_value_with_its_etag_correlation_id_and_freshness() {
    let broker = Broker::start();
    let topic = broker.create_topic("get", 2).await;
    let producer = broker.producer();
    let value: Vec<u8> = (0..=255u8).collect();
    let (partition, offset) =
        produce_with_correlation_id(&producer, &topic, b"doc", &value, "corr-42").await;
    let reader = Service::start(READER, &reader_env(&broker, &topic, "g"));
    let http = reqwest::Client::new();
    wait_ready(&http, &reader).await;

    let response = http
        .get(reader.url("/v1/kv/doc"))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "application/octet-stream");
    let etag = format!("\"{partition}-{offset}\"");
    assert_eq!(headers["etag"], etag.as_str());
    assert_eq!(headers["x-correlation-id"], "corr-42");
    assert_eq!(
        headers["x-replica-applied"],
        format!("{partition}:{offset}").as_str()
    );
    assert_eq!(headers["x-replica-lag"], "0");
    assert_eq!(response.bytes().await.expect("body").as_ref(), value);

    let unchanged = http
        .get(reader.url("/v1/kv/doc"))
        .header("If-None-Match", &etag)
        .send()
        .await
        .expect("conditional get");
    assert_eq!(unchanged.status(), 304);
}

#[tokio::test]
async fn an_overwrite_replaces_the_value_and_a_tombstone_removes_the_key() {
    let broker = Broker::start();
    let topic = broker.create_topic("overwrite", 3).await;
    let producer = broker.producer();
    let reader = Service::start(READER, &reader_env(&broker, &topic, "g"));
    let http = reqwest::Client::new();
    wait_ready(&http, &reader).await;

    // Applied while the reader runs, so the live path is what is proven.
    produce_all(
        &producer,
        &topic,
        &[
            (b"k".to_vec(), Some(b"first".to_vec())),
            (b"gone".to_vec(), Some(b"soon deleted".to_vec())),
            (b"k".to_vec(), Some(b"second".to_vec())),
            (b"empty".to_vec(), Some(Vec::new())),
            (b"gone".to_vec(), None),
            (b"last".to_vec(), Some(b"marker".to_vec())),
        ],
    )
    .await;
    kv_testkit::eventually("the last record applied", DEADLINE, || async {
        let response = http.get(reader.url("/v1/kv/last")).send().await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await;

    let k = http.get(reader.url("/v1/kv/k")).send().await.expect("get");
    assert_eq!(k.bytes().await.expect("body").as_ref(), b"second");
    let empty = http
        .get(reader.url("/v1/kv/empty"))
        .send()
        .await
        .expect("get");
    assert_eq!(empty.status(), 200, "an empty value is a value");
    assert!(empty.bytes().await.expect("body").is_empty());
    let gone = http
        .get(reader.url("/v1/kv/gone"))
        .send()
        .await
        .expect("get");
    assert_eq!(gone.status(), 404);
    assert!(
        gone.headers().contains_key("x-replica-lag"),
        "a miss also says how fresh it is"
    );
    assert_eq!(error_code(gone).await, "key_not_found");
}

#[tokio::test]
async fn a_missing_key_is_a_json_404_on_every_read_route() {
    let broker = Broker::start();
    let topic = broker.create_topic("missing", 1).await;
    let reader = Service::start(READER, &reader_env(&broker, &topic, "g"));
    let http = reqwest::Client::new();
    wait_ready(&http, &reader).await;

    let get = http
        .get(reader.url("/v1/kv/never-written"))
        .send()
        .await
        .expect("get");
    assert_eq!(get.status(), 404);
    assert_eq!(error_code(get).await, "key_not_found");
    let retrieve = http
        .post(reader.url("/retrieve"))
        .json(&json!({"key": "never-written"}))
        .send()
        .await
        .expect("retrieve");
    assert_eq!(retrieve.status(), 404);
    assert_eq!(error_code(retrieve).await, "key_not_found");
    let retrieve_b64 = http
        .post(reader.url("/retrieve/b64"))
        .json(&json!({"key": STANDARD.encode("never-written")}))
        .send()
        .await
        .expect("retrieve b64");
    assert_eq!(retrieve_b64.status(), 404);
    assert_eq!(error_code(retrieve_b64).await, "key_not_found");
    let batch: Value = http
        .post(reader.url("/v1/kv:batchGet"))
        .json(&json!({"keys": ["never-written"]}))
        .send()
        .await
        .expect("batchGet")
        .json()
        .await
        .expect("json");
    assert_eq!(batch["results"][0]["found"], false);
    assert_eq!(batch["results"][0]["error"]["code"], "key_not_found");
}

#[tokio::test]
async fn unicode_and_binary_keys_round_trip_through_every_read_route() {
    let broker = Broker::start();
    let topic = broker.create_topic("keys", 2).await;
    let producer = broker.producer();
    let unicode = "clé/ünï code?&%🙂".as_bytes().to_vec();
    let binary = vec![0x00, 0xff, b'/', 0xfe, b'%', 0x80];
    produce_all(
        &producer,
        &topic,
        &[
            (unicode.clone(), Some("wörld".as_bytes().to_vec())),
            (binary.clone(), Some(vec![0xde, 0xad, 0xbe, 0xef])),
        ],
    )
    .await;
    let reader = Service::start(READER, &reader_env(&broker, &topic, "g"));
    let http = reqwest::Client::new();
    wait_ready(&http, &reader).await;

    for (key, value) in [
        (&unicode, "wörld".as_bytes()),
        (&binary, &[0xde, 0xad, 0xbe, 0xef][..]),
    ] {
        let got = http
            .get(reader.url(&key_path(key)))
            .send()
            .await
            .expect("get");
        assert_eq!(got.status(), 200, "key {key:?}");
        assert_eq!(got.bytes().await.expect("body").as_ref(), value);
    }
    let text = http
        .post(reader.url("/retrieve"))
        .json(&json!({"Key": "clé/ünï code?&%🙂"}))
        .send()
        .await
        .expect("retrieve");
    assert_eq!(text.headers()["content-type"], "application/json");
    assert_eq!(text.json::<String>().await.expect("a JSON string"), "wörld");
    let b64 = http
        .post(reader.url("/retrieve/b64"))
        .json(&json!({"key": STANDARD.encode(&binary)}))
        .send()
        .await
        .expect("retrieve b64");
    assert_eq!(b64.status(), 200);
    assert_eq!(
        STANDARD
            .decode(b64.json::<String>().await.expect("a JSON string"))
            .expect("base64"),
        [0xde, 0xad, 0xbe, 0xef]
    );
    let mut keys = all_keys(&http, &reader).await;
    keys.sort();
    let mut expected = vec![unicode.clone(), binary.clone()];
    expected.sort();
    assert_eq!(keys, expected);
    let state = dump(&http, &reader).await;
    assert_eq!(state[&binary], [0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(state[&unicode], "wörld".as_bytes());
}

#[tokio::test]
async fn a_one_mebibyte_value_is_served_whole() {
    let broker = Broker::start();
    let topic = broker.create_topic("large", 1).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .set("message.max.bytes", "4000000")
        .set("message.timeout.ms", "10000")
        .create()
        .expect("producer");
    let value: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    produce_all(&producer, &topic, &[(b"big".to_vec(), Some(value.clone()))]).await;
    let reader = Service::start(READER, &reader_env(&broker, &topic, "g"));
    let http = reqwest::Client::new();
    wait_ready(&http, &reader).await;

    let got = http
        .get(reader.url("/v1/kv/big"))
        .send()
        .await
        .expect("get");
    assert_eq!(got.status(), 200);
    let body = got.bytes().await.expect("body");
    assert_eq!(body.len(), value.len());
    assert!(body.as_ref() == value.as_slice());
}

#[tokio::test]
async fn listing_pages_through_a_prefix_in_key_order_with_a_cursor() {
    let broker = Broker::start();
    let topic = broker.create_topic("list", 3).await;
    let producer = broker.producer();
    let mut records: Vec<KeyValue> = (0..250)
        .map(|i| (format!("user/{i:03}").into_bytes(), Some(b"x".to_vec())))
        .collect();
    records.push((b"other/1".to_vec(), Some(b"x".to_vec())));
    records.push((b"user/007".to_vec(), None));
    produce_all(&producer, &topic, &records).await;
    let reader = Service::start(READER, &reader_env(&broker, &topic, "g"));
    let http = reqwest::Client::new();
    wait_ready(&http, &reader).await;

    let mut listed = Vec::new();
    let mut pages = 0;
    let mut url = reader.url(&format!("/v1/kv?prefix={}&limit=100", query_value("user/")));
    loop {
        let page: Value = http
            .get(&url)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        pages += 1;
        for item in page["keys"].as_array().expect("keys") {
            listed.push(item["key"].as_str().expect("a text key").to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                url = reader.url(&format!(
                    "/v1/kv?prefix={}&limit=100&cursor={cursor}",
                    query_value("user/")
                ))
            }
            None => break,
        }
    }
    let expected: Vec<String> = (0..250)
        .filter(|i| *i != 7)
        .map(|i| format!("user/{i:03}"))
        .collect();
    assert_eq!(listed, expected, "every key once, in order, none deleted");
    assert_eq!(pages, 3);

    for bad in [
        "limit=0",
        "limit=1001",
        "limit=ten",
        "cursor=%21%21",
        "colour=red",
    ] {
        let response = http
            .get(reader.url(&format!("/v1/kv?{bad}")))
            .send()
            .await
            .expect("list");
        assert_eq!(response.status(), 400, "{bad}");
        assert_eq!(error_code(response).await, "invalid_request", "{bad}");
    }
}

#[tokio::test]
async fn batch_get_answers_every_key_in_request_order_and_refuses_bad_batches() {
    let broker = Broker::start();
    let topic = broker.create_topic("batch", 2).await;
    let producer = broker.producer();
    produce_all(
        &producer,
        &topic,
        &[
            (b"a".to_vec(), Some(b"alpha".to_vec())),
            (b"b".to_vec(), Some(vec![0xff, 0x00])),
        ],
    )
    .await;
    let reader = Service::start(READER, &reader_env(&broker, &topic, "g"));
    let http = reqwest::Client::new();
    wait_ready(&http, &reader).await;

    let response: Value = http
        .post(reader.url("/v1/kv:batchGet"))
        .json(&json!({"keys": ["b", "missing", "a"]}))
        .send()
        .await
        .expect("batchGet")
        .json()
        .await
        .expect("json");
    let results = response["results"].as_array().expect("results");
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["key"], "b");
    assert_eq!(results[0]["value_b64"], STANDARD.encode([0xff, 0x00]));
    assert_eq!(results[1]["found"], false);
    assert_eq!(results[2]["value"], "alpha");
    assert!(results[2]["etag"].as_str().is_some());

    let too_many: Vec<String> = (0..1001).map(|i| format!("k{i}")).collect();
    for (body, status) in [
        (json!({"keys": []}), 400),
        (json!({"keys": [""]}), 400),
        (json!({"keys_b64": ["not base64!"]}), 400),
        (json!({"keys": ["a"], "keys_b64": ["YQ=="]}), 400),
        (json!({"kes": ["a"]}), 400),
        (json!({"keys": too_many}), 413),
    ] {
        let response = http
            .post(reader.url("/v1/kv:batchGet"))
            .json(&body)
            .send()
            .await
            .expect("batchGet");
        assert_eq!(response.status(), status, "{body}");
        let error: Value = response.json().await.expect("json error");
        assert!(error["error"]["message"].as_str().is_some(), "{error}");
    }
}

#[tokio::test]
async fn a_read_carrying_the_writers_consistency_token_sees_that_write() {
    let broker = Broker::start();
    let topic = broker.create_topic("ryw", 3).await;
    let mut env = reader_env(&broker, &topic, "g");
    env.push(("KV_API_READ_YOUR_WRITES_TIMEOUT_MS", "10000".to_owned()));
    let writer = Service::start(writer(), &env);
    let reader = Service::start(READER, &env);
    let http = reqwest::Client::new();
    wait_ready(&http, &reader).await;

    for round in 0..20 {
        let value = format!("version {round}");
        let written = http
            .put(writer.url("/v1/kv/counter"))
            .body(value.clone())
            .send()
            .await
            .expect("write");
        assert_eq!(written.status(), 200, "{}", writer.output());
        let token = written.headers()["x-consistency-token"]
            .to_str()
            .expect("token")
            .to_owned();
        // Alternate between the header and the query parameter.
        let read = if round % 2 == 0 {
            http.get(reader.url("/v1/kv/counter"))
                .header("X-Consistency-Token", &token)
                .send()
                .await
        } else {
            http.get(reader.url(&format!(
                "/v1/kv/counter?consistency_token={}",
                query_value(&token)
            )))
            .send()
            .await
        }
        .expect("read");
        assert_eq!(read.status(), 200, "round {round}");
        assert_eq!(read.text().await.expect("body"), value, "round {round}");
    }
}

#[tokio::test]
async fn a_token_this_replica_cannot_reach_in_time_is_a_503_and_a_malformed_one_a_400() {
    let broker = Broker::start();
    let topic = broker.create_topic("ryw-timeout", 1).await;
    let mut env = reader_env(&broker, &topic, "g");
    env.push(("KV_API_READ_YOUR_WRITES_TIMEOUT_MS", "300".to_owned()));
    let reader = Service::start(READER, &env);
    let http = reqwest::Client::new();
    wait_ready(&http, &reader).await;

    let late = http
        .get(reader.url("/v1/kv/anything"))
        .header("X-Consistency-Token", "0:1000000")
        .send()
        .await
        .expect("read");
    assert_eq!(late.status(), 503);
    assert!(late.headers().contains_key("retry-after"));
    assert_eq!(error_code(late).await, "not_ready");

    let malformed = http
        .post(reader.url("/retrieve?consistency_token=zero"))
        .json(&json!({"key": "anything"}))
        .send()
        .await
        .expect("read");
    assert_eq!(malformed.status(), 400);
    assert_eq!(error_code(malformed).await, "invalid_request");
}

#[tokio::test]
async fn a_malformed_query_token_is_refused_even_beside_a_good_header_token_and_both_are_waited_for(
) {
    let broker = Broker::start();
    let topic = broker.create_topic("ryw-both", 1).await;
    let mut env = reader_env(&broker, &topic, "g");
    env.push(("KV_API_READ_YOUR_WRITES_TIMEOUT_MS", "300".to_owned()));
    let reader = Service::start(READER, &env);
    let http = reqwest::Client::new();
    wait_ready(&http, &reader).await;
    let producer = broker.producer();
    let (partition, offset) = broker.produce(&producer, &topic, b"k", Some(b"v")).await;
    let token = format!("{partition}:{offset}");
    let read = |query: &'static str| {
        http.get(reader.url(&format!("/v1/kv/k{query}")))
            .header("X-Consistency-Token", &token)
            .send()
    };
    kv_testkit::eventually("the replica applies the record", DEADLINE, || async {
        (read("").await.expect("read").status() == 200).then_some(())
    })
    .await;

    let beside_a_good_header = read("?consistency_token=zero").await.expect("read");
    assert_eq!(beside_a_good_header.status(), 400);
    assert_eq!(error_code(beside_a_good_header).await, "invalid_request");

    // A good header and a good query parameter: the read waits for both.
    let both = read("?consistency_token=0:1000000").await.expect("read");
    assert_eq!(both.status(), 503);
    assert_eq!(error_code(both).await, "not_ready");
}

#[tokio::test]
async fn batch_get_holds_a_repeated_key_once_and_refuses_an_answer_over_its_byte_limit() {
    let broker = Broker::start();
    let topic = broker.create_topic("batch-bytes", 1).await;
    let producer = broker.producer();
    let big = vec![b'v'; 900 * 1024];
    broker.produce(&producer, &topic, b"big", Some(&big)).await;
    let reader = Service::start(READER, &reader_env(&broker, &topic, "g"));
    let http = reqwest::Client::new();
    wait_ready(&http, &reader).await;

    let attack = http
        .post(reader.url("/v1/kv:batchGet"))
        .json(&json!({ "keys": vec!["big"; 1000] }))
        .send()
        .await
        .expect("batchGet");
    assert_eq!(attack.status(), 413);
    let body: Value = attack.json().await.expect("json error");
    assert_eq!(body["error"]["code"], "payload_too_large");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("KV_API_MAX_BATCH_GET_BYTES")),
        "{body}"
    );

    let fits: Value = http
        .post(reader.url("/v1/kv:batchGet"))
        .json(&json!({ "keys": ["big", "missing", "big"] }))
        .send()
        .await
        .expect("batchGet")
        .json()
        .await
        .expect("json");
    let results = fits["results"].as_array().expect("results");
    assert_eq!(results.len(), 3, "one result per key named, duplicates too");
    assert_eq!(results[0]["value"].as_str().map(str::len), Some(big.len()));
    assert_eq!(results[1]["found"], false);
    assert_eq!(results[2], results[0]);
}

#[tokio::test]
async fn a_token_naming_a_missing_partition_is_a_400_one_past_the_log_end_a_quick_503_and_waiters_are_bounded(
) {
    let broker = Broker::start();
    let topic = broker.create_topic("ryw-fail-fast", 2).await;
    let producer = broker.producer();
    broker.produce(&producer, &topic, b"k", Some(b"v")).await;
    let mut env = reader_env(&broker, &topic, "g");
    env.push(("KV_API_READ_YOUR_WRITES_TIMEOUT_MS", "30000".to_owned()));
    env.push(("KV_API_MAX_READ_YOUR_WRITES_WAITERS", "2".to_owned()));
    let reader = Service::start(READER, &env);
    let http = reqwest::Client::new();
    wait_ready(&http, &reader).await;
    let read = |token: &'static str| {
        http.get(reader.url("/v1/kv/k"))
            .header("X-Consistency-Token", token)
            .send()
    };

    let started = std::time::Instant::now();
    let unknown = read("0:0,5:0").await.expect("read");
    let unknown_after = started.elapsed();
    assert_eq!(unknown.status(), 400);
    let body: Value = unknown.json().await.expect("json error");
    assert_eq!(body["error"]["code"], "invalid_request");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no partition 5")),
        "{body}"
    );
    assert!(unknown_after < std::time::Duration::from_secs(2));

    let started = std::time::Instant::now();
    let beyond = read("1:1000000").await.expect("read");
    let beyond_after = started.elapsed();
    assert_eq!(beyond.status(), 503);
    assert!(beyond.headers().contains_key("retry-after"));
    let body: Value = beyond.json().await.expect("json error");
    assert_eq!(body["error"]["code"], "not_ready");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("beyond the partition's end offset")),
        "{body}"
    );
    println!(
        "read-your-writes: unknown partition answered in {unknown_after:?}, an offset past \
         the end in {beyond_after:?} (timeout 30 s)"
    );
    assert!(
        beyond_after < std::time::Duration::from_secs(10),
        "{beyond_after:?}"
    );

    // Two reads wait (for an offset past the end, until the broker's reports settle it); a
    // third finds no room.
    let waiting = [read("0:1000000"), read("0:1000001")];
    let waiting = tokio::spawn(futures_join(waiting));
    kv_testkit::eventually("two waiting reads", DEADLINE, || async {
        let metrics = reader.metrics(&http).await;
        (kv_testkit::metric(&metrics, "kv_reader_read_your_writes_waiters", &[]) == Some(2.0))
            .then_some(())
    })
    .await;
    let refused = read("0:1000002").await.expect("read");
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.expect("json error");
    assert_eq!(body["error"]["code"], "not_ready");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("KV_API_MAX_READ_YOUR_WRITES_WAITERS")),
        "{body}"
    );
    for status in waiting.await.expect("join") {
        assert_eq!(status, 503);
    }
}

async fn futures_join<F>(reads: [F; 2]) -> Vec<u16>
where
    F: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
{
    let [a, b] = reads;
    let (a, b) = tokio::join!(a, b);
    vec![
        a.expect("read").status().as_u16(),
        b.expect("read").status().as_u16(),
    ]
}
