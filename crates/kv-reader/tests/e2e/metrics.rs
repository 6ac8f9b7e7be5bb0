//! Both services' `/metrics` after real traffic: a writer and a reader process on a real broker,
//! and the role metrics they report about it. Also the writer's JSON logs, found by a request's
//! correlation id.

use crate::{writer, READER};
use std::time::Duration;

use kv_testkit::{eventually, metric as sample, Broker, Service};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(30);

/// The sum of every sample of `name`.
fn total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .map(|line| {
            line.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .expect("a number")
        })
        .sum()
}

async fn metrics_of(http: &reqwest::Client, service: &Service) -> String {
    let response = http
        .get(service.url("/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(response.status(), 200);
    response.text().await.expect("metrics text")
}

#[tokio::test]
async fn after_writes_and_reads_both_services_report_their_role_metrics() {
    let broker = Broker::start();
    let topic = broker.create_topic("metrics", 2).await;
    let store = tempfile::tempdir().expect("store dir");
    let common = vec![
        ("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_servers()),
        ("KV_API_KAFKA_KEY_VALUE_TOPIC", topic.clone()),
        ("KV_API_DISABLE_API_AUTH", "true".to_owned()),
    ];
    let mut writer_env = common.clone();
    writer_env.extend([
        ("KV_API_LOG_FORMAT", "json".to_owned()),
        ("RUST_LOG", "info,kv_writer=debug".to_owned()),
    ]);
    let mut reader_env = common;
    reader_env.extend([
        ("KAFKA_GROUP_ID", format!("{topic}-reader")),
        ("KV_API_STATE_STORAGE_TYPE", "disk".to_owned()),
        (
            "KV_API_STATE_STORAGE_DISK_LOCATION",
            store.path().display().to_string(),
        ),
    ]);
    let writer = Service::start(writer(), &writer_env);
    let reader = Service::start(READER, &reader_env);
    let http = reqwest::Client::new();

    for key in ["a", "b", "c"] {
        let written = http
            .put(writer.url(&format!("/v1/kv/{key}")))
            .header("X-Correlation-Id", format!("metrics-put-{key}"))
            .body(format!("value of {key}"))
            .send()
            .await
            .expect("put");
        assert_eq!(written.status(), 200, "{}", writer.output());
    }
    let deleted = http
        .delete(writer.url("/v1/kv/b"))
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), 200);
    // A record no reader can apply: an empty key.
    let producer = broker.producer();
    broker
        .produce(&producer, &topic, b"", Some(b"orphan"))
        .await;

    let reader_metrics = eventually("the reader to apply all 5 records", DEADLINE, || async {
        let text = metrics_of(&http, &reader).await;
        (sample(&text, "kv_reader_records_applied_total", &[]) == Some(5.0)).then_some(text)
    })
    .await;
    let found = http.get(reader.url("/v1/kv/a")).send().await.expect("get");
    assert_eq!(found.status(), 200);
    let missing = http.get(reader.url("/v1/kv/b")).send().await.expect("get");
    assert_eq!(missing.status(), 404);

    assert_eq!(
        sample(&reader_metrics, "kv_reader_tombstones_applied_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &reader_metrics,
            "kv_reader_records_skipped_total",
            &[("reason", "empty_key")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &reader_metrics,
            "kv_reader_records_skipped_total",
            &[("reason", "wrong_key")]
        ),
        Some(0.0),
        "every reason is shown from the start"
    );
    assert_eq!(
        sample(&reader_metrics, "kv_reader_store_keys", &[]),
        Some(2.0)
    );
    assert!(
        sample(&reader_metrics, "kv_reader_store_file_size_bytes", &[]).is_some_and(|b| b > 0.0),
        "{reader_metrics}"
    );
    assert_eq!(
        sample(&reader_metrics, "kv_reader_consumer_alive", &[]),
        Some(1.0)
    );
    assert_eq!(
        sample(&reader_metrics, "kv_reader_rebuilds_total", &[]),
        Some(0.0)
    );
    // Offsets are 0-based: the highest applied offsets of a partition sum to its count less one.
    assert_eq!(
        total(&reader_metrics, "kv_reader_partition_applied_offset"),
        5.0 - 2.0,
        "{reader_metrics}"
    );
    let reader_metrics = eventually("the lag to reach zero", DEADLINE, || async {
        let text = metrics_of(&http, &reader).await;
        (total(&text, "kv_reader_partition_lag_records") == 0.0
            && sample(&text, "kv_reader_ready", &[]) == Some(1.0))
        .then_some(text)
    })
    .await;
    for status in ["200", "404"] {
        assert_eq!(
            sample(
                &reader_metrics,
                "kv_http_requests_total",
                &[
                    ("method", "GET"),
                    ("route", "/v1/kv/{key}"),
                    ("status", status)
                ]
            ),
            Some(1.0),
            "{reader_metrics}"
        );
    }
    assert!(
        !reader_metrics.contains("/v1/kv/a"),
        "raw paths must not become labels"
    );
    // How long ago the broker last answered: statistics come every second.
    eventually(
        "a read saying the broker answered lately",
        DEADLINE,
        || async {
            let read = http.get(reader.url("/v1/kv/a")).send().await.ok()?;
            let silence: u64 = read
                .headers()
                .get("x-replica-silence-ms")?
                .to_str()
                .ok()?
                .parse()
                .ok()?;
            (silence < 5_000).then_some(())
        },
    )
    .await;
    // The access log: one JSON line per request (the writer logs JSON here), with the route
    // pattern, the status and the correlation id, never the key.
    let access = eventually("the writer's access-log lines", DEADLINE, || async {
        let output = writer.output();
        let lines: Vec<Value> = output
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|line| line["target"] == "kv_access")
            .collect();
        (lines.len() >= 4).then_some(lines)
    })
    .await;
    let put = access
        .iter()
        .find(|line| line["span"]["correlation_id"] == "metrics-put-a")
        .unwrap_or_else(|| panic!("no access line of the first put: {access:?}"));
    assert_eq!(put["level"], "INFO", "{put}");
    assert_eq!(put["status"], 200, "{put}");
    assert_eq!(put["span"]["method"], "PUT", "{put}");
    assert_eq!(put["span"]["route"], "/v1/kv/{key}", "{put}");
    assert!(put["duration_ms"].as_f64().is_some(), "{put}");
    assert!(
        !writer.output().contains("/v1/kv/a\""),
        "paths, which hold keys, must not be logged"
    );

    // librdkafka's statistics: every second on the reader, every 5 s on the writer.
    for service in [&reader, &writer] {
        eventually(
            "the Kafka client statistics as metrics",
            DEADLINE,
            || async {
                let text = metrics_of(&http, service).await;
                (text.contains("kv_kafka_broker_rtt_seconds{broker=\"")
                    && text.contains("kv_kafka_broker_errors_total{broker=\""))
                .then_some(())
            },
        )
        .await;
    }
    let writer_metrics = metrics_of(&http, &writer).await;
    for (service, text) in [("reader", &reader_metrics), ("writer", &writer_metrics)] {
        for process in ["process_resident_memory_bytes", "process_open_fds"] {
            assert!(
                sample(text, process, &[]).is_some_and(|v| v > 0.0),
                "{service} has no {process}: {text}"
            );
        }
    }
    assert_eq!(
        sample(
            &writer_metrics,
            "kv_writer_produce_duration_seconds_count",
            &[("outcome", "acknowledged")]
        ),
        Some(4.0),
        "{writer_metrics}"
    );
    assert_eq!(
        sample(&writer_metrics, "kv_writer_writes_in_flight", &[]),
        Some(0.0)
    );
    for class in ["retryable", "too_large", "fatal"] {
        assert_eq!(
            sample(
                &writer_metrics,
                "kv_writer_produce_errors_total",
                &[("class", class)]
            ),
            Some(0.0),
            "{writer_metrics}"
        );
    }
    assert_eq!(
        sample(
            &writer_metrics,
            "kv_writer_producer_replacements_total",
            &[]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &writer_metrics,
            "kv_build_info",
            &[("service", "kv-writer")]
        ),
        Some(1.0)
    );

    let logs = writer.output();
    let line: serde_json::Value = logs
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["span"]["correlation_id"] == "metrics-put-c")
        .unwrap_or_else(|| panic!("no JSON log line carries the correlation id:\n{logs}"));
    assert_eq!(line["span"]["method"], "PUT", "{line}");
    assert_eq!(line["span"]["route"], "/v1/kv/{key}", "{line}");

    for (service, text) in [("kv-writer", writer_metrics), ("kv-reader", reader_metrics)] {
        let problems = kv_testkit::prometheus::promtool_check_metrics(&text);
        assert_eq!(problems, None, "{service}'s /metrics, as promtool reads it");
    }
}
