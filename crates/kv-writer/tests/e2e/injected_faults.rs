//! Produce errors injected with librdkafka's mock cluster, which a real broker cannot be made to
//! return on demand. The writer runs in-process, built by the same composition root as `main`.

use std::time::{Duration, Instant};

use kv_core::settings::Env;
use kv_testkit::topic::records;
use kv_testkit::{eventually, metric};
use kv_writer::{App, Settings};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use serde_json::Value;

const TOPIC: &str = "injected";

/// A writer on its own port, talking to `cluster`.
async fn start_writer(
    cluster: &MockCluster<'static, DefaultProducerContext>,
    extra: &[(&str, &str)],
) -> String {
    let mut env = vec![
        ("KAFKA_BOOTSTRAP_SERVERS", cluster.bootstrap_servers()),
        ("KV_API_KAFKA_KEY_VALUE_TOPIC", TOPIC.to_owned()),
        ("KV_API_DISABLE_API_AUTH", "true".to_owned()),
        ("KV_API_LISTEN", "127.0.0.1:0".to_owned()),
        // Retries stay fast so each test is quick.
        ("KAFKA_RETRY_BACKOFF_MS", "10".to_owned()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let settings = Settings::from_env(&Env::from_pairs(env).expect("env")).expect("settings");
    let app = App::build(settings).await.expect("the writer starts");
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    base
}

fn cluster() -> MockCluster<'static, DefaultProducerContext> {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, 1, 1).expect("topic");
    cluster
}

async fn put(base: &str, key: &str) -> reqwest::Response {
    reqwest::Client::new()
        .put(format!("{base}/v1/kv/{key}"))
        .body("value")
        .send()
        .await
        .expect("the writer answers")
}

async fn offset_of(response: reqwest::Response) -> i64 {
    assert_eq!(response.status(), 200);
    let ack: Value = response.json().await.expect("json");
    ack["offset"].as_i64().expect("offset")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retriable_produce_error_is_retried_and_the_write_is_stored_once() {
    let cluster = cluster();
    let base = start_writer(&cluster, &[]).await;
    let first = offset_of(put(&base, "before").await).await;
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        ],
    );

    let retried = offset_of(put(&base, "retried").await).await;
    let next = offset_of(put(&base, "after").await).await;

    assert_eq!(retried, first + 1);
    assert_eq!(
        next,
        retried + 1,
        "the retried write was stored exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_too_large_for_the_broker_is_refused_with_413() {
    let cluster = cluster();
    let base = start_writer(&cluster, &[]).await;
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );

    let response = put(&base, "big").await;

    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "payload_too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_authorization_failure_is_refused_with_502_and_no_retry_after() {
    let cluster = cluster();
    let base = start_writer(&cluster, &[]).await;
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
    );

    let response = put(&base, "forbidden").await;

    assert_eq!(response.status(), 502);
    assert!(!response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "kafka_rejected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_keeps_failing_gets_503_with_retry_after_once_the_produce_timeout_passes() {
    let cluster = cluster();
    let base = start_writer(&cluster, &[("KV_API_PRODUCE_TIMEOUT_MS", "1000")]).await;
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 1000],
    );

    let response = put(&base, "never").await;

    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "kafka_unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_writes_kafka_refuses_answers_503_with_one_error_per_item() {
    let cluster = cluster();
    let base = start_writer(&cluster, &[("KV_API_PRODUCE_TIMEOUT_MS", "1000")]).await;
    cluster.broker_down(1).expect("broker down");

    let response = reqwest::Client::new()
        .post(format!("{base}/v1/kv:batch"))
        .json(&serde_json::json!({"items": [
            {"key": "a", "value": "1"}, {"key": "b", "value": "2"}
        ]}))
        .send()
        .await
        .expect("batch");

    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert!(!response.headers().contains_key("x-consistency-token"));
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "kafka_unavailable");
    let items = body["items"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    for item in items {
        assert_eq!(item["status"], 503, "{body}");
        assert_eq!(item["error"]["code"], "kafka_unavailable");
    }
    cluster.broker_up(1).expect("broker up");
}

/// Found by drill 2 (docs/reliability.md): librdkafka times messages out only while a broker
/// thread serves their partition, so after the broker went away a write outlived
/// `message.timeout.ms` by the reconnect backoff (up to `reconnect.backoff.max.ms`, 10 s by
/// default) and the client waited for it. A long backoff makes that deterministic: the write must
/// still be answered soon after the produce timeout, while the broker stays down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_the_wire_when_the_broker_goes_down_gets_503_while_the_broker_stays_down() {
    let cluster = cluster();
    let base = start_writer(
        &cluster,
        &[
            ("KV_API_PRODUCE_TIMEOUT_MS", "1000"),
            ("KAFKA_LINGER_MS", "0"),
            ("KAFKA_RECONNECT_BACKOFF_MS", "120000"),
            ("KAFKA_RECONNECT_BACKOFF_MAX_MS", "120000"),
        ],
    )
    .await;
    // The first write also waits for metadata and a producer id, which a loaded machine can
    // take longer than the 1 s produce timeout to get: retry it until the producer is set up.
    eventually(
        "a first write to be acknowledged",
        Duration::from_secs(30),
        || {
            let written = put(&base, "before");
            async move { (written.await.status() == 200).then_some(()) }
        },
    )
    .await;
    // The broker holds its answers, so the next write stays in a request on the wire...
    cluster
        .broker_round_trip_time(1, Duration::from_secs(600))
        .expect("round trip time");
    let pending = tokio::spawn({
        let base = base.clone();
        async move { put(&base, "on-the-wire").await }
    });
    eventually("the write to be in flight", Duration::from_secs(10), || {
        let metrics = reqwest::get(format!("{base}/metrics"));
        async move {
            let text = metrics.await.ok()?.text().await.ok()?;
            (metric(&text, "kv_writer_writes_in_flight", &[]) == Some(1.0)).then_some(())
        }
    })
    .await;
    // ...until the connection breaks, and the broker stays down for the rest of the test.
    cluster.broker_down(1).expect("broker down");

    let response = tokio::time::timeout(Duration::from_secs(30), pending)
        .await
        .expect("the write is answered while the broker is still down")
        .expect("request task");

    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "kafka_unavailable");
}

/// A writer's `/metrics` value of `name`, once it is `want`.
async fn wait_for_metric(base: &str, name: &str, want: f64) {
    eventually(
        &format!("{name} to be {want}"),
        Duration::from_secs(10),
        || {
            let metrics = reqwest::get(format!("{base}/metrics"));
            async move {
                let text = metrics.await.ok()?.text().await.ok()?;
                (metric(&text, name, &[]) == Some(want)).then_some(())
            }
        },
    )
    .await;
}

/// A key the writer puts on `partition`, found by writing candidates (the partitioner is
/// murmur2, as Java clients'); each candidate write is acknowledged.
async fn key_on(base: &str, partition: i64) -> String {
    for candidate in 0..64 {
        let key = format!("key-{candidate}");
        let ack: Value = put(base, &key).await.json().await.expect("json");
        if ack["partition"].as_i64() == Some(partition) {
            return key;
        }
    }
    panic!("no key among 64 lands on partition {partition}");
}

/// Issue 15, item 9. A batch waiting for room in the producer's queue while another write's
/// timeout replaces the producer used to put its first item on the old producer and the rest on
/// the new one, and answered 200: when the new producer's write landed first and the old one's
/// retry after it, the batch `[k=1, k=2]` left `k` at 1. Two brokers keep the old producer
/// working on the batch's partition while the other write's broker is gone; a retriable error
/// on the first item holds it in the old producer (retrying) across the replacement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_never_split_across_a_replaced_producer_and_its_successor() {
    let topic = "split";
    let cluster = MockCluster::new(2).expect("mock cluster");
    cluster.create_topic(topic, 2, 1).expect("topic");
    cluster.partition_leader(topic, 0, Some(1)).expect("leader");
    cluster.partition_leader(topic, 1, Some(2)).expect("leader");
    let mut env = vec![
        ("KAFKA_BOOTSTRAP_SERVERS", cluster.bootstrap_servers()),
        ("KV_API_KAFKA_KEY_VALUE_TOPIC", topic.to_owned()),
        ("KV_API_DISABLE_API_AUTH", "true".to_owned()),
        ("KV_API_LISTEN", "127.0.0.1:0".to_owned()),
    ];
    env.extend(
        [
            // A write times out at 3 s; a replaced producer is kept 3 s for its reports.
            ("KV_API_PRODUCE_TIMEOUT_MS", "3000"),
            ("KAFKA_LINGER_MS", "0"),
            // Two writes fill the queue: the stuck write and the batch's first item.
            ("KAFKA_QUEUE_BUFFERING_MAX_MESSAGES", "2"),
            ("KAFKA_RETRY_BACKOFF_MS", "2000"),
            ("KAFKA_RETRY_BACKOFF_MAX_MS", "2000"),
            // The stuck write's broker stays away from the old producer.
            ("KAFKA_RECONNECT_BACKOFF_MS", "120000"),
            ("KAFKA_RECONNECT_BACKOFF_MAX_MS", "120000"),
        ]
        .map(|(k, v)| (k, v.to_owned())),
    );
    let settings = Settings::from_env(&Env::from_pairs(env).expect("env")).expect("settings");
    let app = App::build(settings).await.expect("the writer starts");
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    let stuck_key = key_on(&base, 0).await;
    let batch_key = key_on(&base, 1).await;

    // A write on partition 0 stays on the wire, then its broker goes away for good...
    cluster
        .broker_round_trip_time(1, Duration::from_secs(600))
        .expect("round trip time");
    let sent = Instant::now();
    let stuck = tokio::spawn({
        let base = base.clone();
        async move { put(&base, &stuck_key).await }
    });
    wait_for_metric(&base, "kv_writer_writes_in_flight", 1.0).await;
    cluster.broker_down(1).expect("broker down");
    // ...so it times out at 3 s and the writer replaces the producer. The batch starts 0.7 s
    // before: its first item is refused once by the broker and retried 2 s later, its second
    // waits for room in the full queue across the replacement.
    tokio::time::sleep_until((sent + Duration::from_millis(2300)).into()).await;
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS],
    );
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/kv:batch"))
        .json(&serde_json::json!({"items": [
            {"key": batch_key, "value": "1"}, {"key": batch_key, "value": "2"}
        ]}))
        .send()
        .await
        .expect("batch");
    let status = response.status();
    let retry_after = response.headers().contains_key("retry-after");
    let body: Value = response.json().await.expect("json");
    assert_eq!(stuck.await.expect("stuck write").status(), 503);
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert_eq!(
        metric(&text, "kv_writer_producer_replacements_total", &[]),
        Some(1.0),
        "the stuck write replaced the producer: {status} {body}"
    );

    // What the old producer still held may only have landed before the replacement.
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.broker_up(1).expect("broker up");
    cluster
        .broker_round_trip_time(1, Duration::ZERO)
        .expect("round trip time");
    let landed: Vec<Vec<u8>> = records(cluster.bootstrap_servers(), topic)
        .await
        .into_iter()
        .filter(|r| r.key == batch_key.as_bytes() && r.value.as_deref() != Some(&b"value"[..]))
        .filter_map(|r| r.value)
        .collect();
    assert!(
        status != 200 || landed.last().map(Vec::as_slice) == Some(&b"2"[..]),
        "the batch answered {status} and left {landed:?} for its key: {body}"
    );
    assert_ne!(status, 200, "the batch spanned the replacement: {body}");
    assert_eq!(status, 503, "{body}");
    assert!(retry_after);
    assert_eq!(body["error"]["code"], "kafka_unavailable", "{body}");
    assert!(
        body["items"][1]["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("replaced"),
        "the second item is refused rather than sent on the new producer: {body}"
    );
    assert_eq!(
        body["items"][0]["status"], 503,
        "the fenced first item fails: {body}"
    );
    assert!(
        landed.is_empty(),
        "nothing of the fenced batch landed: {landed:?}"
    );
}
