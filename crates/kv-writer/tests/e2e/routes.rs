//! Each route of the real kv-writer binary against a real broker process, checked down to the
//! records on the topic.

use crate::WRITER;
use base64::Engine;
use kv_testkit::otlp::OtlpReceiver;
use kv_testkit::services::service_env_with as writer_env;
use kv_testkit::topic::{record_at, records};
use kv_testkit::{Broker, Service};
use serde_json::{json, Value};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.expect("a JSON body")
}

/// Where a seed route's write landed, from the headers: its body is the original's JSON string.
async fn seed_position(response: reqwest::Response, body: &str) -> (i64, i64) {
    let header = |name: &str| {
        response.headers()[name]
            .to_str()
            .expect("ascii")
            .parse::<i64>()
            .expect("a number")
    };
    let at = (header("x-kafka-partition"), header("x-kafka-offset"));
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(json_of(response).await, Value::from(body));
    at
}

fn position(ack: &Value) -> (i64, i64) {
    (
        ack["partition"].as_i64().expect("partition"),
        ack["offset"].as_i64().expect("offset"),
    )
}

#[tokio::test]
async fn put_answers_with_where_kafka_stored_the_value_and_the_record_holds_its_raw_bytes() {
    let broker = Broker::start();
    let topic = broker.create_topic("put", 3).await;
    let writer = Service::start(WRITER, &writer_env(&broker, &topic, &[]));
    let value: Vec<u8> = (0..=255u8).collect();

    let response = reqwest::Client::new()
        .put(writer.url("/v1/kv/users%2Fada"))
        .header("X-Correlation-Id", "put-test-1")
        .header("Content-Type", "image/png")
        .body(value.clone())
        .send()
        .await
        .expect("put");

    assert_eq!(response.status(), 200, "{}", writer.output());
    let headers = response.headers().clone();
    assert_eq!(headers["x-correlation-id"], "put-test-1");
    let ack = json_of(response).await;
    let (partition, offset) = position(&ack);
    assert_eq!(headers["x-kafka-partition"], partition.to_string().as_str());
    assert_eq!(headers["x-kafka-offset"], offset.to_string().as_str());
    assert_eq!(ack["consistency_token"], format!("{partition}:{offset}"));
    assert_eq!(
        headers["x-consistency-token"],
        format!("{partition}:{offset}").as_str()
    );
    let all = records(broker.bootstrap_servers(), &topic).await;
    let record = record_at(&all, partition, offset);
    assert_eq!(record.key, b"users/ada");
    assert_eq!(record.value.as_deref(), Some(value.as_slice()));
    assert_eq!(record.header("X-Correlation-Id"), Some(&b"put-test-1"[..]));
}

#[tokio::test]
async fn an_empty_put_stores_an_empty_value_and_delete_stores_a_tombstone() {
    let broker = Broker::start();
    let topic = broker.create_topic("delete", 1).await;
    let writer = Service::start(WRITER, &writer_env(&broker, &topic, &[]));
    let http = reqwest::Client::new();

    let empty = http.put(writer.url("/v1/kv/k")).send().await.expect("put");
    assert_eq!(empty.status(), 200);
    let empty = position(&json_of(empty).await);
    let deleted = http
        .delete(writer.url("/v1/kv/k"))
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), 200);
    let deleted = position(&json_of(deleted).await);

    let all = records(broker.bootstrap_servers(), &topic).await;
    assert_eq!(record_at(&all, empty.0, empty.1).value, Some(Vec::new()));
    assert_eq!(record_at(&all, deleted.0, deleted.1).value, None);
    assert_eq!(record_at(&all, deleted.0, deleted.1).key, b"k");
}

#[tokio::test]
async fn store_accepts_the_originals_capitalised_fields_and_carries_headers_and_the_correlation_id()
{
    let broker = Broker::start();
    let topic = broker.create_topic("store", 2).await;
    let writer = Service::start(WRITER, &writer_env(&broker, &topic, &[]));

    let response = reqwest::Client::new()
        .post(writer.url("/store"))
        .json(&json!({"Key": "greeting", "Value": "hello, wörld", "Headers": {"source": "usage.http"}}))
        .send()
        .await
        .expect("store");

    assert_eq!(response.status(), 200);
    let correlation = response.headers()["x-correlation-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(!correlation.is_empty(), "a correlation id is generated");
    let (partition, offset) = seed_position(response, "Stored").await;
    let all = records(broker.bootstrap_servers(), &topic).await;
    let record = record_at(&all, partition, offset);
    assert_eq!(record.key, b"greeting");
    assert_eq!(record.value.as_deref(), Some("hello, wörld".as_bytes()));
    assert_eq!(record.header("source"), Some(&b"usage.http"[..]));
    assert_eq!(
        record.header("X-Correlation-Id"),
        Some(correlation.as_bytes())
    );
}

#[tokio::test]
async fn store_b64_decodes_binary_keys_values_and_header_values() {
    let broker = Broker::start();
    let topic = broker.create_topic("b64", 1).await;
    let writer = Service::start(WRITER, &writer_env(&broker, &topic, &[]));

    let response = reqwest::Client::new()
        .post(writer.url("/store/b64"))
        .json(&json!({
            "key": B64.encode([0u8, 1, 2, 255]),
            "value": B64.encode([9u8, 0, 9]),
            "headers": {"checksum": B64.encode([0xAB_u8, 0xCD])}
        }))
        .send()
        .await
        .expect("store");

    assert_eq!(response.status(), 200);
    let (partition, offset) = seed_position(response, "Stored").await;
    let all = records(broker.bootstrap_servers(), &topic).await;
    let record = record_at(&all, partition, offset);
    assert_eq!(record.key, [0u8, 1, 2, 255]);
    assert_eq!(record.value.as_deref(), Some(&[9u8, 0, 9][..]));
    assert_eq!(record.header("checksum"), Some(&[0xAB_u8, 0xCD][..]));
}

#[tokio::test]
async fn remove_writes_a_tombstone_for_the_key() {
    let broker = Broker::start();
    let topic = broker.create_topic("remove", 1).await;
    let writer = Service::start(WRITER, &writer_env(&broker, &topic, &[]));

    let response = reqwest::Client::new()
        .post(writer.url("/remove"))
        .json(&json!({"KEY": "greeting"}))
        .send()
        .await
        .expect("remove");

    assert_eq!(response.status(), 200);
    let (partition, offset) = seed_position(response, "Removed").await;
    let all = records(broker.bootstrap_servers(), &topic).await;
    let record = record_at(&all, partition, offset);
    assert_eq!(record.key, b"greeting");
    assert_eq!(record.value, None);
}

#[tokio::test]
async fn a_batch_writes_every_item_in_order_and_answers_one_result_per_item() {
    let broker = Broker::start();
    let topic = broker.create_topic("batch", 3).await;
    let writer = Service::start(WRITER, &writer_env(&broker, &topic, &[]));

    let response = reqwest::Client::new()
        .post(writer.url("/v1/kv:batch"))
        .header("X-Correlation-Id", "batch-1")
        .json(&json!({"items": [
            {"key": "a", "value": "first"},
            {"key": "b", "value": ""},
            {"key": "a", "value": "second"},
            {"key": "c", "delete": true},
        ]}))
        .send()
        .await
        .expect("batch");

    assert_eq!(response.status(), 200, "{}", writer.output());
    let token_header = response.headers()["x-consistency-token"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let body = json_of(response).await;
    let items = body["items"].as_array().expect("items");
    assert_eq!(items.len(), 4);
    assert!(items.iter().all(|i| i["status"] == 200), "{body}");
    assert_eq!(body["consistency_token"], token_header.as_str());
    let positions: Vec<(i64, i64)> = items.iter().map(position).collect();
    let all = records(broker.bootstrap_servers(), &topic).await;
    assert_eq!(all.len(), 4, "{all:?}");
    let expected: [(&[u8], Option<&[u8]>); 4] = [
        (b"a", Some(b"first")),
        (b"b", Some(b"")),
        (b"a", Some(b"second")),
        (b"c", None),
    ];
    for ((partition, offset), (key, value)) in positions.iter().zip(expected) {
        let record = record_at(&all, *partition, *offset);
        assert_eq!(record.key, key);
        assert_eq!(record.value.as_deref(), value);
        assert_eq!(record.header("X-Correlation-Id"), Some(&b"batch-1"[..]));
    }
    assert_eq!(positions[0].0, positions[2].0, "one key, one partition");
    assert!(positions[0].1 < positions[2].1, "items land in order");
    // The token names the highest offset written on each partition.
    for (partition, offset) in &positions {
        assert!(
            token_header.split(',').any(|pair| {
                let (p, o) = pair.split_once(':').expect("p:o");
                p == partition.to_string() && o.parse::<i64>().expect("offset") >= *offset
            }),
            "{token_header} does not cover {partition}:{offset}"
        );
    }
}

#[tokio::test]
async fn a_base64_batch_decodes_keys_and_values() {
    let broker = Broker::start();
    let topic = broker.create_topic("batch64", 1).await;
    let writer = Service::start(WRITER, &writer_env(&broker, &topic, &[]));

    let response = reqwest::Client::new()
        .post(writer.url("/v1/kv:batch"))
        .json(&json!({"encoding": "base64", "items": [
            {"key": B64.encode([0xFF_u8]), "value": B64.encode([0u8, 0])},
        ]}))
        .send()
        .await
        .expect("batch");

    assert_eq!(response.status(), 200);
    let body = json_of(response).await;
    let (partition, offset) = position(&body["items"][0]);
    let all = records(broker.bootstrap_servers(), &topic).await;
    let record = record_at(&all, partition, offset);
    assert_eq!(record.key, [0xFF_u8]);
    assert_eq!(record.value.as_deref(), Some(&[0u8, 0][..]));
}

/// A bad request, what the answer must be, and a word the message must contain.
struct BadInput {
    case: &'static str,
    method: reqwest::Method,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    names: &'static str,
}

fn bad(
    case: &'static str,
    method: reqwest::Method,
    path: &'static str,
    body: impl Into<Vec<u8>>,
    status: u16,
    code: &'static str,
    names: &'static str,
) -> BadInput {
    BadInput {
        case,
        method,
        path,
        headers: &[("Content-Type", "application/json")],
        body: body.into(),
        status,
        code,
        names,
    }
}

#[tokio::test]
async fn every_bad_input_gets_a_json_error_naming_what_was_wrong_and_nothing_is_written() {
    use reqwest::Method;
    let broker = Broker::start();
    let topic = broker.create_topic("bad", 1).await;
    let writer = Service::start(
        WRITER,
        &writer_env(
            &broker,
            &topic,
            &[
                ("KV_API_MAX_KEY_BYTES", "8"),
                ("KV_API_MAX_VALUE_BYTES", "16"),
                ("KV_API_MAX_BATCH_ITEMS", "2"),
                ("KV_API_MAX_BATCH_BYTES", "4096"),
            ],
        ),
    );
    let long_value = json!({"key": "k", "value": "x".repeat(17)}).to_string();
    let long_key = json!({"key": "123456789", "value": "v"}).to_string();
    let long_b64 = json!({"key": "aw==", "value": B64.encode([7u8; 17])}).to_string();
    let batch_too_long = json!({"items": [
        {"key": "a", "value": "1"}, {"key": "b", "value": "2"}, {"key": "c", "value": "3"}
    ]})
    .to_string();
    let batch_bad_item =
        json!({"items": [{"key": "a", "value": "1"}, {"key": "", "value": "2"}]}).to_string();
    let batch_body_too_large =
        json!({"items": [{"key": "a", "value": "x".repeat(5000)}]}).to_string();
    let cases = vec![
        bad(
            "malformed JSON",
            Method::POST,
            "/store",
            "{\"key\": ",
            400,
            "invalid_request",
            "JSON",
        ),
        bad(
            "missing key",
            Method::POST,
            "/store",
            r#"{"value":"v"}"#,
            400,
            "invalid_request",
            "`key`",
        ),
        bad(
            "missing value",
            Method::POST,
            "/store",
            r#"{"key":"k"}"#,
            400,
            "invalid_request",
            "`value`",
        ),
        bad(
            "key not a string",
            Method::POST,
            "/store",
            r#"{"key":5,"value":"v"}"#,
            400,
            "invalid_request",
            "`key`",
        ),
        bad(
            "empty key",
            Method::POST,
            "/store",
            r#"{"key":"","value":"v"}"#,
            400,
            "invalid_key",
            "`key`",
        ),
        bad(
            "empty key on remove",
            Method::POST,
            "/remove",
            r#"{"key":""}"#,
            400,
            "invalid_key",
            "`key`",
        ),
        bad(
            "key over the limit",
            Method::POST,
            "/store",
            long_key,
            413,
            "payload_too_large",
            "`key`",
        ),
        bad(
            "value over the limit",
            Method::POST,
            "/store",
            long_value,
            413,
            "payload_too_large",
            "`value`",
        ),
        bad(
            "bad base64 key",
            Method::POST,
            "/store/b64",
            r#"{"key":"%%%","value":""}"#,
            400,
            "invalid_request",
            "`key`",
        ),
        bad(
            "bad base64 value",
            Method::POST,
            "/store/b64",
            r#"{"key":"aw==","value":"a b"}"#,
            400,
            "invalid_request",
            "`value`",
        ),
        bad(
            "decoded base64 value over the limit",
            Method::POST,
            "/store/b64",
            long_b64,
            413,
            "payload_too_large",
            "`value`",
        ),
        bad(
            "headers not an object",
            Method::POST,
            "/store",
            r#"{"key":"k","value":"v","headers":[1]}"#,
            400,
            "invalid_request",
            "`headers`",
        ),
        bad(
            "PUT body over the limit",
            Method::PUT,
            "/v1/kv/k",
            "x".repeat(17),
            413,
            "payload_too_large",
            "body",
        ),
        bad(
            "PUT key over the limit",
            Method::PUT,
            "/v1/kv/123456789",
            "v",
            413,
            "payload_too_large",
            "key",
        ),
        bad(
            "PUT with an empty key",
            Method::PUT,
            "/v1/kv/",
            "v",
            400,
            "invalid_key",
            "key",
        ),
        bad(
            "batch without items",
            Method::POST,
            "/v1/kv:batch",
            "{}",
            400,
            "invalid_request",
            "`items`",
        ),
        bad(
            "batch with no items",
            Method::POST,
            "/v1/kv:batch",
            r#"{"items":[]}"#,
            400,
            "invalid_request",
            "`items`",
        ),
        bad(
            "batch over the item limit",
            Method::POST,
            "/v1/kv:batch",
            batch_too_long,
            413,
            "payload_too_large",
            "`items`",
        ),
        bad(
            "batch body over its own limit",
            Method::POST,
            "/v1/kv:batch",
            batch_body_too_large,
            413,
            "payload_too_large",
            "4096",
        ),
        bad(
            "batch with one bad item",
            Method::POST,
            "/v1/kv:batch",
            batch_bad_item,
            400,
            "invalid_key",
            "`items[1].key`",
        ),
        bad(
            "batch with an unknown encoding",
            Method::POST,
            "/v1/kv:batch",
            r#"{"encoding":"hex","items":[{"key":"a","value":"1"}]}"#,
            400,
            "invalid_request",
            "`encoding`",
        ),
        bad(
            "store with the wrong method",
            Method::GET,
            "/store",
            "",
            405,
            "method_not_allowed",
            "GET",
        ),
        bad(
            "an unknown route",
            Method::POST,
            "/stor",
            "",
            404,
            "not_found",
            "/stor",
        ),
        BadInput {
            headers: &[("Content-Type", "text/plain")],
            ..bad(
                "store without a JSON content type",
                Method::POST,
                "/store",
                r#"{"key":"k","value":"v"}"#,
                415,
                "unsupported_media_type",
                "JSON",
            )
        },
        BadInput {
            headers: &[("X-Correlation-Id", "has spaces in it")],
            ..bad(
                "a malformed correlation id",
                Method::PUT,
                "/v1/kv/k",
                "v",
                400,
                "invalid_request",
                "X-Correlation-Id",
            )
        },
    ];
    let http = reqwest::Client::new();
    for case in cases {
        let mut request = http
            .request(case.method.clone(), writer.url(case.path))
            .body(case.body.clone());
        for (name, value) in case.headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("request");
        assert_eq!(response.status(), case.status, "{}", case.case);
        // An unusable correlation id cannot be echoed; every other error carries one.
        let echoable = !case.headers.iter().any(|(n, _)| *n == "X-Correlation-Id");
        assert!(
            !echoable || response.headers().contains_key("x-correlation-id"),
            "{}: no correlation id on the error",
            case.case
        );
        let body: Value = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", case.case));
        assert_eq!(body["error"]["code"], case.code, "{}: {body}", case.case);
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(case.names),
            "{}: message {message:?} does not name {:?}",
            case.case,
            case.names
        );
    }
    assert_eq!(records(broker.bootstrap_servers(), &topic).await, vec![]);
}

#[tokio::test]
async fn a_record_larger_than_the_producer_may_send_is_refused_with_413() {
    let broker = Broker::start();
    let topic = broker.create_topic("toolarge", 1).await;
    let writer = Service::start(
        WRITER,
        &writer_env(&broker, &topic, &[("KAFKA_MESSAGE_MAX_BYTES", "2000")]),
    );

    let response = reqwest::Client::new()
        .put(writer.url("/v1/kv/big"))
        .body(vec![b'x'; 10_000])
        .send()
        .await
        .expect("put");

    assert_eq!(response.status(), 413, "{}", writer.output());
    let body = json_of(response).await;
    assert_eq!(body["error"]["code"], "payload_too_large");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Kafka"),
        "{body}"
    );
}

#[tokio::test]
async fn readiness_reports_whether_the_topic_is_reachable() {
    let broker = Broker::start();
    let topic = broker.create_topic("ready", 1).await;
    let writer = Service::start(WRITER, &writer_env(&broker, &topic, &[]));
    let missing = Service::start(WRITER, &writer_env(&broker, "no-such-topic-for-ready", &[]));
    let http = reqwest::Client::new();

    for path in ["/healthz", "/healthz/live", "/healthz/ready"] {
        let response = http.get(writer.url(path)).send().await.expect("health");
        assert_eq!(response.status(), 200, "{path}");
    }
    let response = http
        .get(missing.url("/healthz/ready"))
        .send()
        .await
        .expect("health");
    assert_eq!(response.status(), 503);
    assert_eq!(json_of(response).await["error"]["code"], "not_ready");
}

#[tokio::test]
async fn a_batch_with_an_item_kafka_refuses_is_not_2xx_and_reports_each_item() {
    let broker = Broker::start();
    let topic = broker.create_topic("partial", 1).await;
    let writer = Service::start(
        WRITER,
        &writer_env(&broker, &topic, &[("KAFKA_MESSAGE_MAX_BYTES", "2000")]),
    );

    let response = reqwest::Client::new()
        .post(writer.url("/v1/kv:batch"))
        .json(&json!({"items": [
            {"key": "small", "value": "fits"},
            {"key": "big", "value": "x".repeat(10_000)},
        ]}))
        .send()
        .await
        .expect("batch");

    assert_eq!(response.status(), 413);
    let token = response.headers()["x-consistency-token"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let body = json_of(response).await;
    assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
    assert_eq!(body["items"][0]["status"], 200, "{body}");
    assert_eq!(body["items"][1]["status"], 413, "{body}");
    assert_eq!(body["items"][1]["error"]["code"], "payload_too_large");
    let (partition, offset) = position(&body["items"][0]);
    assert_eq!(token, format!("{partition}:{offset}"));
    let all = records(broker.bootstrap_servers(), &topic).await;
    assert_eq!(
        all.len(),
        1,
        "only the acknowledged item is stored: {all:?}"
    );
    assert_eq!(record_at(&all, partition, offset).key, b"small");
}

#[tokio::test]
async fn with_acks_none_a_write_answers_without_an_offset_or_a_token_a_reader_would_refuse() {
    let broker = Broker::start();
    let topic = broker.create_topic("acks0", 1).await;
    let writer = Service::start(
        WRITER,
        &writer_env(&broker, &topic, &[("KAFKA_ACKS", "none")]),
    );

    let response = reqwest::Client::new()
        .put(writer.url("/v1/kv/fire-and-forget"))
        .body("v")
        .send()
        .await
        .expect("put");

    assert_eq!(response.status(), 200, "{}", writer.output());
    assert!(!response.headers().contains_key("x-consistency-token"));
    let ack = json_of(response).await;
    assert_eq!(ack["offset"], Value::Null, "{ack}");
    assert_eq!(ack["consistency_token"], Value::Null, "{ack}");
}

#[tokio::test]
async fn readiness_probes_while_the_broker_is_down_reuse_one_answer_a_second() {
    let mut broker = Broker::start();
    let topic = broker.create_topic("ready-down", 1).await;
    let writer = Service::start(WRITER, &writer_env(&broker, &topic, &[]));
    broker.stop();
    let http = reqwest::Client::new();
    let started = std::time::Instant::now();
    let probes = (0..40).map(|_| http.get(writer.url("/healthz/ready")).send());
    let answers = futures::future::join_all(probes).await;
    for answer in answers {
        assert_eq!(answer.expect("an answer").status(), 503);
    }
    let mut sequential = 0;
    while started.elapsed() < std::time::Duration::from_secs(3) {
        let answer = http
            .get(writer.url("/healthz/ready"))
            .send()
            .await
            .expect("an answer");
        assert_eq!(answer.status(), 503);
        sequential += 1;
    }
    // Each fresh answer costs a metadata request of up to two seconds; without the cache three
    // seconds would hold one or two probes, not dozens.
    assert!(sequential > 10, "{sequential} probes in 3 s");
}

/// Sends a request whose body stops arriving halfway, and reads what the writer answers.
async fn answer_to_a_stalled_body(base_url: &str, method_and_path: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = base_url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let head = format!(
        "{method_and_path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{{\"items\": ["
    );
    stream.write_all(head.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("the writer answers a stalled body and closes")
    .expect("read");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    let (_, body) = text.split_once("\r\n\r\n").expect("a body");
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, json)
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_answered_408_naming_the_timeout_and_nothing_is_written() {
    let broker = Broker::start();
    let topic = broker.create_topic("slowbody", 1).await;
    let writer = Service::start(
        WRITER,
        &writer_env(&broker, &topic, &[("KV_API_BODY_TIMEOUT_MS", "500")]),
    );

    for route in ["PUT /v1/kv/slow", "POST /v1/kv:batch", "POST /store"] {
        let started = std::time::Instant::now();
        let (status, body) = answer_to_a_stalled_body(&writer.base_url, route).await;

        assert_eq!(status, 408, "{route}: {body}");
        assert_eq!(body["error"]["code"], "request_timeout", "{route}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("KV_API_BODY_TIMEOUT_MS"),
            "{route}: {message}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{route}: answered after {:?}",
            started.elapsed()
        );
    }
    assert_eq!(records(broker.bootstrap_servers(), &topic).await, vec![]);
}

#[tokio::test]
async fn a_batch_of_1001_items_is_refused_with_the_item_limit_error_and_nothing_is_written() {
    let broker = Broker::start();
    let topic = broker.create_topic("batch1001", 1).await;
    let writer = Service::start(WRITER, &writer_env(&broker, &topic, &[]));
    let items: Vec<Value> = (0..1001)
        .map(|i| json!({"key": format!("k{i}"), "value": "v"}))
        .collect();

    let response = reqwest::Client::new()
        .post(writer.url("/v1/kv:batch"))
        .json(&json!({ "items": items }))
        .send()
        .await
        .expect("batch");

    assert_eq!(response.status(), 413);
    let body = json_of(response).await;
    assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
    assert_eq!(
        body["error"]["message"],
        "field `items` has 1001 writes, over the limit of 1000"
    );
    assert_eq!(records(broker.bootstrap_servers(), &topic).await, vec![]);
}

/// Before the batch body was parsed into typed items, a 16 MiB body of tiny items became a
/// generic JSON tree about 25 times its size, and nothing bounded how many were held at once.
#[tokio::test]
async fn eight_concurrent_16_mib_batches_keep_the_writers_peak_memory_bounded() {
    let broker = Broker::start();
    let topic = broker.create_topic("batchrss", 1).await;
    let writer = Service::start(WRITER, &writer_env(&broker, &topic, &[]));
    let item = r#"{"key":"k","value":"v"},"#;
    let count = (16 * 1024 * 1024 - 64) / item.len();
    let mut body = String::with_capacity(16 * 1024 * 1024);
    body.push_str(r#"{"items":["#);
    for _ in 0..count - 1 {
        body.push_str(item);
    }
    body.push_str(r#"{"key":"k","value":"v"}]}"#);
    assert!(body.len() <= 16 * 1024 * 1024);
    let (_, before) = writer.rss_bytes();
    let http = reqwest::Client::new();

    let answers = futures::future::join_all((0..8).map(|_| {
        http.post(writer.url("/v1/kv:batch"))
            .header("Content-Type", "application/json")
            .body(body.clone())
            .send()
    }))
    .await;

    let mut refused_for_count = 0;
    for answer in answers {
        let answer = answer.expect("an answer");
        let status = answer.status().as_u16();
        let json = json_of(answer).await;
        match status {
            413 => {
                assert_eq!(json["error"]["code"], "payload_too_large", "{json}");
                refused_for_count += 1;
            }
            503 => assert_eq!(json["error"]["code"], "overloaded", "{json}"),
            other => panic!("unexpected {other}: {json}"),
        }
    }
    assert!(refused_for_count >= 1, "no batch was read to its end");
    let (_, peak) = writer.rss_bytes();
    println!(
        "writer peak RSS {} MiB (before the batches {} MiB)",
        peak >> 20,
        before >> 20
    );
    assert!(
        peak < 256 << 20,
        "peak RSS {} MiB after 8 concurrent 16 MiB batches",
        peak >> 20
    );
}

#[tokio::test]
async fn a_request_finding_the_body_budget_full_gets_503_overloaded_and_succeeds_once_it_frees() {
    use tokio::io::AsyncWriteExt;
    let broker = Broker::start();
    let topic = broker.create_topic("budget", 1).await;
    // The budget is exactly the largest body: 2 × 16 + 8 + 64 KiB for a single write's JSON.
    let budget = (2 * 16 + 8 + 64 * 1024).to_string();
    let writer = Service::start(
        WRITER,
        &writer_env(
            &broker,
            &topic,
            &[
                ("KV_API_MAX_KEY_BYTES", "8"),
                ("KV_API_MAX_VALUE_BYTES", "16"),
                ("KV_API_MAX_BATCH_BYTES", "4096"),
                ("KV_API_MAX_BUFFERED_BODY_BYTES", &budget),
                ("KV_API_BODY_TIMEOUT_MS", "3000"),
            ],
        ),
    );
    let http = reqwest::Client::new();
    // A body declaring the whole budget that never arrives holds all of it until it times out.
    let address = writer.base_url.trim_start_matches("http://").to_owned();
    let mut stalled = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    let head = format!(
        "POST /store HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {budget}\r\n\r\n{{"
    );
    stalled.write_all(head.as_bytes()).await.expect("send");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let refused = http
        .put(writer.url("/v1/kv/k"))
        .body("v")
        .send()
        .await
        .expect("put");

    assert_eq!(refused.status(), 503, "{}", writer.output());
    assert!(refused.headers().contains_key("retry-after"));
    let body = json_of(refused).await;
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("KV_API_MAX_BUFFERED_BODY_BYTES"),
        "{message}"
    );
    // Once the stalled body timed out, its room is free again.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let accepted = http
        .put(writer.url("/v1/kv/k"))
        .body("v")
        .send()
        .await
        .expect("put");
    assert_eq!(accepted.status(), 200, "{}", writer.output());
    let all = records(broker.bootstrap_servers(), &topic).await;
    assert_eq!(all.len(), 1, "only the accepted write landed: {all:?}");
    drop(stalled);
}

#[tokio::test]
async fn a_write_carries_the_callers_trace_into_the_record_and_starts_one_without_it() {
    let broker = Broker::start();
    let topic = broker.create_topic("traced", 1).await;
    let writer = Service::start(WRITER, &writer_env(&broker, &topic, &[]));
    let http = reqwest::Client::new();
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    let traced = http
        .put(writer.url("/v1/kv/traced"))
        .header("traceparent", caller)
        .body("v")
        .send()
        .await
        .expect("put");
    assert_eq!(traced.status(), 200, "{}", writer.output());
    let answered = traced.headers()["traceparent"]
        .to_str()
        .expect("text")
        .to_owned();
    // The writer's span: the caller's trace and flags, its own parent id.
    assert!(
        answered.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{answered}"
    );
    assert!(answered.ends_with("-01"), "{answered}");
    assert_ne!(answered, caller);
    let (partition, offset) = position(&json_of(traced).await);

    let untraced = http
        .put(writer.url("/v1/kv/untraced"))
        .header("traceparent", "not a trace")
        .body("v")
        .send()
        .await
        .expect("put");
    let started = untraced.headers()["traceparent"]
        .to_str()
        .expect("text")
        .to_owned();
    assert_eq!(started.len(), 55, "{started}");
    assert!(!started.contains("4bf92f35"), "{started}");
    let (other_partition, other_offset) = position(&json_of(untraced).await);

    let all = records(broker.bootstrap_servers(), &topic).await;
    let record = record_at(&all, partition, offset);
    assert_eq!(record.header("traceparent"), Some(answered.as_bytes()));
    let record = record_at(&all, other_partition, other_offset);
    assert_eq!(record.header("traceparent"), Some(started.as_bytes()));

    // A client cannot set the header through the original's `headers` field.
    let refused = http
        .post(writer.url("/store"))
        .json(&serde_json::json!({"key": "k", "value": "v", "headers": {"traceparent": caller}}))
        .send()
        .await
        .expect("store");
    assert_eq!(refused.status(), 400);
}

#[tokio::test]
async fn a_writes_span_is_exported_over_otlp_in_the_callers_trace_and_a_collector_that_is_down_costs_no_write(
) {
    let broker = Broker::start();
    let topic = broker.create_topic("exported", 1).await;
    let collector = OtlpReceiver::start();
    let writer = Service::start(
        WRITER,
        &writer_env(
            &broker,
            &topic,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.as_str()),
                ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ],
        ),
    );
    let http = reqwest::Client::new();
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    let written = http
        .put(writer.url("/v1/kv/exported"))
        .header("traceparent", caller)
        .body("v")
        .send()
        .await
        .expect("put");
    assert_eq!(written.status(), 200, "{}", writer.output());
    let answered = written.headers()["traceparent"]
        .to_str()
        .expect("text")
        .to_owned();
    let span = collector
        .span_in("kv-writer", "4bf92f3577b34da6a3ce929d0e0e4736")
        .await;
    // The span the answer and the record name, a child of the caller's.
    assert_eq!(span.span_id, answered[36..52]);
    assert_eq!(span.parent_span_id, "00f067aa0ba902b7");
    assert_eq!(span.name, "PUT /v1/kv/{key}");
    assert_eq!(span.attribute("http.response.status_code"), Some("200"));

    // A trace the writer starts is sampled, so its span is exported too.
    let untraced = http
        .put(writer.url("/v1/kv/exported"))
        .body("v")
        .send()
        .await
        .expect("put");
    let started = untraced.headers()["traceparent"].to_str().expect("text");
    assert!(started.ends_with("-01"), "{started}");
    let span = collector.span_in("kv-writer", &started[3..35]).await;
    assert_eq!(span.parent_span_id, "");

    // No collector where one is configured: writes are answered as ever, spans are counted.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let nowhere = format!("http://{}", closed.local_addr().expect("address"));
    drop(closed);
    let alone = Service::start(
        WRITER,
        &writer_env(
            &broker,
            &topic,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", nowhere.as_str()),
                ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ],
        ),
    );
    for _ in 0..3 {
        let written = http
            .put(alone.url("/v1/kv/exported"))
            .body("v")
            .send()
            .await
            .expect("put");
        assert_eq!(written.status(), 200, "{}", alone.output());
    }
    kv_testkit::eventually(
        "the failed export counted",
        kv_testkit::DEADLINE,
        || async {
            let text = alone.metrics(&http).await;
            let failed = kv_testkit::metric(
                &text,
                "kv_otlp_spans_dropped_total",
                &[("reason", "export_failed")],
            )?;
            (failed >= 3.0).then_some(())
        },
    )
    .await;
}
