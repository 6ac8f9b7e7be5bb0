//! The trace of a write, carried from kv-writer's HTTP request through the Kafka record into the
//! reader's store, and out again on reads of the value and on watch events (a delete's too).

use crate::watch::{next_change, watch};
use crate::{writer, READER};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use kv_testkit::otlp::OtlpReceiver;
use kv_testkit::reader::wait_ready;
use kv_testkit::topic::produce_with_headers;
use kv_testkit::{service_env, Broker, Service};
use serde_json::{json, Value};

/// The caller's span, as a client that traces its own requests sends it.
const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const WRITE_TRACE: &str = "x-kv-write-traceparent";

#[tokio::test]
async fn a_read_and_a_watch_answer_the_trace_of_the_write_that_stored_the_value() {
    let broker = Broker::start();
    let topic = broker.create_topic("write-trace", 2).await;
    let env = service_env(&broker, &topic);
    let writer = Service::start(writer(), &env);
    let reader = Service::start(READER, &env);
    let http = reqwest::Client::new();
    wait_ready(&http, &reader).await;
    let mut live = watch(&http, &reader, "prefix=traced%2F", None).await;

    let written = http
        .put(writer.url("/v1/kv/traced%2Fa"))
        .header("traceparent", CALLER)
        .body("v")
        .send()
        .await
        .expect("put");
    assert_eq!(written.status(), 200, "{}", writer.output());
    // The writer's span, in the caller's trace: what the record carries.
    let write_span = written.headers()["traceparent"]
        .to_str()
        .expect("text")
        .to_owned();
    assert!(write_span.starts_with(&CALLER[..36]), "{write_span}");
    let token = written.headers()["x-consistency-token"].clone();

    let read = http
        .get(reader.url("/v1/kv/traced%2Fa"))
        .header("x-consistency-token", token.clone())
        .send()
        .await
        .expect("get");
    assert_eq!(read.status(), 200, "{}", reader.output());
    assert_eq!(read.headers()[WRITE_TRACE], write_span.as_str());
    // The answer's own `traceparent` stays the read's span, in a trace of its own.
    let read_span = read.headers()["traceparent"].to_str().expect("text");
    assert!(!read_span.starts_with(&CALLER[..36]), "{read_span}");

    for (route, key) in [
        ("/retrieve", "traced/a".to_owned()),
        ("/retrieve/b64", STANDARD.encode("traced/a")),
    ] {
        let retrieved = http
            .post(reader.url(route))
            .json(&json!({ "key": key }))
            .send()
            .await
            .expect("retrieve");
        assert_eq!(retrieved.status(), 200, "{route}");
        assert_eq!(
            retrieved.headers()[WRITE_TRACE],
            write_span.as_str(),
            "{route}"
        );
    }

    let put = next_change(&mut live).await;
    let data: Value = serde_json::from_str(&put.data).expect("json");
    assert_eq!(
        (put.event.as_str(), &data["key"]),
        ("put", &json!("traced/a"))
    );
    assert_eq!(data["traceparent"], write_span.as_str());
    let mut listed = watch(&http, &reader, "prefix=traced%2F&snapshot=true", None).await;
    let entry = next_change(&mut listed).await;
    let data: Value = serde_json::from_str(&entry.data).expect("json");
    assert_eq!(
        data["traceparent"],
        write_span.as_str(),
        "the first listing"
    );

    // A header any producer could have written that is no valid traceparent is not kept.
    let (partition, offset) = produce_with_headers(
        &broker.producer(),
        &topic,
        b"traced/forged",
        b"f",
        &[("traceparent", b"00-not-a-trace-01")],
    )
    .await;
    let forged = next_change(&mut live).await;
    let data: Value = serde_json::from_str(&forged.data).expect("json");
    assert_eq!(data["key"], "traced/forged");
    assert_eq!(data.get("traceparent"), None, "{data}");
    let read = http
        .get(reader.url("/v1/kv/traced%2Fforged"))
        .header("x-consistency-token", format!("{partition}:{offset}"))
        .send()
        .await
        .expect("get");
    assert_eq!(read.status(), 200);
    assert_eq!(read.headers().get(WRITE_TRACE), None);

    let batch: Value = http
        .post(reader.url("/v1/kv:batchGet"))
        .json(&json!({"keys": ["traced/a", "traced/forged", "traced/none"]}))
        .send()
        .await
        .expect("batchGet")
        .json()
        .await
        .expect("json");
    let traces: Vec<&Value> = batch["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|item| &item["traceparent"])
        .collect();
    assert_eq!(
        traces,
        [&json!(write_span), &Value::Null, &Value::Null],
        "{batch}"
    );

    // A delete's event carries the deleting request's span.
    let deleted = http
        .delete(writer.url("/v1/kv/traced%2Fa"))
        .header("traceparent", CALLER)
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), 200, "{}", writer.output());
    let delete_span = deleted.headers()["traceparent"].to_str().expect("text");
    let delete = next_change(&mut live).await;
    let data: Value = serde_json::from_str(&delete.data).expect("json");
    assert_eq!(
        (delete.event.as_str(), &data["key"]),
        ("delete", &json!("traced/a"))
    );
    assert_eq!(data["traceparent"], delete_span);
}

#[tokio::test]
async fn a_reads_span_is_exported_over_otlp_in_the_callers_trace() {
    let broker = Broker::start();
    let topic = broker.create_topic("read-exported", 1).await;
    let collector = OtlpReceiver::start();
    let mut env = service_env(&broker, &topic);
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.clone()));
    env.push(("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()));
    env.push(("OTEL_SERVICE_NAME", "kv-reader-test".to_owned()));
    let reader = Service::start(READER, &env);
    let http = reqwest::Client::new();
    wait_ready(&http, &reader).await;

    let read = http
        .get(reader.url("/v1/kv/nothing"))
        .header("traceparent", CALLER)
        .send()
        .await
        .expect("get");
    assert_eq!(read.status(), 404);
    let answered = read.headers()["traceparent"]
        .to_str()
        .expect("text")
        .to_owned();
    let span = collector.span_in("kv-reader-test", &CALLER[3..35]).await;
    assert_eq!(span.span_id, answered[36..52]);
    assert_eq!(span.parent_span_id, CALLER[36..52]);
    assert_eq!(span.name, "GET /v1/kv/{key}");
    assert_eq!(span.attribute("http.response.status_code"), Some("404"));
}
