//! The writer when the broker goes away, when its queue fills, and when it is told to stop:
//! against a real broker process and the real binary.

use crate::WRITER;
use std::time::Duration;

use kv_testkit::services::service_env_with as writer_env;
use kv_testkit::topic::{record_at, records};
use kv_testkit::{eventually, metric, Broker, Service};
use serde_json::Value;

async fn put(http: &reqwest::Client, writer: &Service, key: &str) -> reqwest::Response {
    http.put(writer.url(&format!("/v1/kv/{key}")))
        .body(key.to_owned())
        .send()
        .await
        .expect("the writer answers")
}

fn queued_writes(writer: &Service) -> usize {
    writer.output().matches("write queued").count()
}

#[tokio::test]
async fn a_write_during_a_broker_outage_gets_503_with_retry_after_and_writes_succeed_again_without_a_restart(
) {
    let mut broker = Broker::start();
    let topic = broker.create_topic("outage", 1).await;
    let mut writer = Service::start(
        WRITER,
        &writer_env(&broker, &topic, &[("KV_API_PRODUCE_TIMEOUT_MS", "2000")]),
    );
    let http = reqwest::Client::new();
    assert_eq!(put(&http, &writer, "before").await.status(), 200);

    broker.stop();
    let refused = put(&http, &writer, "during").await;
    assert_eq!(refused.status(), 503, "{}", writer.output());
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["code"], "kafka_unavailable");
    let metrics = writer.metrics(&http).await;
    assert!(
        metric(
            &metrics,
            "kv_writer_produce_errors_total",
            &[("class", "retryable")]
        )
        .is_some_and(|count| count >= 1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "kv_writer_writes_in_flight", &[]),
        Some(0.0),
        "{metrics}"
    );
    let ready = http
        .get(writer.url("/healthz/ready"))
        .send()
        .await
        .expect("ready");
    assert_eq!(ready.status(), 503);

    broker.restart();
    let after = eventually(
        "a write acknowledged after the restart",
        Duration::from_secs(60),
        || {
            let request = put(&http, &writer, "after");
            async move {
                let response = request.await;
                (response.status() == 200).then_some(response)
            }
        },
    )
    .await;
    let ack: Value = after.json().await.expect("json");
    assert!(writer.is_running(), "the same writer process recovered");
    let all = records(broker.bootstrap_servers(), &topic).await;
    let record = record_at(
        &all,
        ack["partition"].as_i64().expect("partition"),
        ack["offset"].as_i64().expect("offset"),
    );
    assert_eq!(record.key, b"after");
}

#[tokio::test]
async fn a_write_queued_during_an_outage_is_acknowledged_once_when_the_broker_returns() {
    let mut broker = Broker::start();
    let topic = broker.create_topic("retry", 1).await;
    let writer = Service::start(
        WRITER,
        &writer_env(
            &broker,
            &topic,
            &[
                ("KV_API_PRODUCE_TIMEOUT_MS", "60000"),
                ("RUST_LOG", "info,kv_writer=debug"),
            ],
        ),
    );
    let http = reqwest::Client::new();
    assert_eq!(put(&http, &writer, "first").await.status(), 200);

    broker.stop();
    let pending = tokio::spawn({
        let http = http.clone();
        let url = writer.url("/v1/kv/retried");
        async move { http.put(url).body("v").send().await.expect("answer") }
    });
    eventually("the write to be queued", Duration::from_secs(10), || {
        let queued = queued_writes(&writer) == 2;
        async move { queued.then_some(()) }
    })
    .await;
    broker.restart();

    let response = pending.await.expect("request task");
    assert_eq!(response.status(), 200, "{}", writer.output());
    let all = records(broker.bootstrap_servers(), &topic).await;
    let keys: Vec<&[u8]> = all.iter().map(|r| r.key.as_slice()).collect();
    assert_eq!(
        keys,
        vec![&b"first"[..], b"retried"],
        "each write exactly once"
    );
}

#[tokio::test]
async fn a_full_write_queue_answers_503_instead_of_growing_memory() {
    let mut broker = Broker::start();
    let topic = broker.create_topic("queue", 1).await;
    let writer = Service::start(
        WRITER,
        &writer_env(
            &broker,
            &topic,
            &[
                ("KAFKA_QUEUE_BUFFERING_MAX_MESSAGES", "1"),
                ("KV_API_PRODUCE_TIMEOUT_MS", "30000"),
                ("RUST_LOG", "info,kv_writer=debug"),
            ],
        ),
    );
    let http = reqwest::Client::new();
    broker.stop();

    let occupying = tokio::spawn({
        let http = http.clone();
        let url = writer.url("/v1/kv/occupying");
        async move { http.put(url).body("v").send().await.expect("answer") }
    });
    eventually(
        "the first write to be queued",
        Duration::from_secs(10),
        || {
            let queued = queued_writes(&writer) == 1;
            async move { queued.then_some(()) }
        },
    )
    .await;
    let refused = put(&http, &writer, "refused").await;

    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("queue is full"),
        "{body}"
    );
    broker.restart();
    assert_eq!(occupying.await.expect("task").status(), 200);
}

#[tokio::test]
async fn sigterm_finishes_in_flight_writes_and_flushes_before_exiting() {
    let broker = Broker::start();
    let topic = broker.create_topic("shutdown", 2).await;
    let mut writer = Service::start(
        WRITER,
        &writer_env(
            &broker,
            &topic,
            &[
                // Writes linger in the producer long enough to be in flight when SIGTERM lands.
                ("KAFKA_LINGER_MS", "1500"),
                ("RUST_LOG", "info,kv_writer=debug"),
            ],
        ),
    );
    let http = reqwest::Client::new();
    let writes: Vec<_> = (0..20)
        .map(|i| {
            let request = http
                .put(writer.url(&format!("/v1/kv/in-flight-{i}")))
                .body(format!("{i}"))
                .send();
            tokio::spawn(request)
        })
        .collect();
    eventually("every write to be queued", Duration::from_secs(10), || {
        let queued = queued_writes(&writer) == 20;
        async move { queued.then_some(()) }
    })
    .await;

    writer.terminate();

    for write in writes {
        let response = write.await.expect("task").expect("an answer before exit");
        assert_eq!(response.status(), 200);
    }
    assert_eq!(
        writer.wait_for_exit(Duration::from_secs(30)).await,
        Some(0),
        "{}",
        writer.output()
    );
    assert!(
        writer.output().contains("producer flushed"),
        "{}",
        writer.output()
    );
    assert_eq!(records(broker.bootstrap_servers(), &topic).await.len(), 20);
}

#[tokio::test]
async fn a_writer_whose_broker_is_gone_still_stops_on_sigterm_within_its_grace_period() {
    let mut broker = Broker::start();
    let topic = broker.create_topic("sigterm-no-broker", 1).await;
    let mut writer = Service::start(WRITER, &writer_env(&broker, &topic, &[]));
    let http = reqwest::Client::new();
    assert_eq!(put(&http, &writer, "before").await.status(), 200);

    broker.stop();
    writer.terminate();
    // A pod gets 30 s between SIGTERM and SIGKILL by default.
    assert_eq!(
        writer.wait_for_exit(Duration::from_secs(20)).await,
        Some(0),
        "{}",
        writer.output()
    );
}
