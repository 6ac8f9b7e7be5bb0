//! How a real kv-reader process follows a topic on a real broker: readiness, resuming, poison
//! records, rebuilds, partition discovery, several replicas, schema-registry framing.

use crate::{writer, READER};
use std::time::Duration;

use kv_testkit::reader::*;
use kv_testkit::services::reader_env;
use kv_testkit::topic::*;
use kv_testkit::DEADLINE;
use kv_testkit::{eventually, run_to_exit, Broker, Service};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

async fn produce_to(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    key: &str,
    value: &str,
) {
    producer
        .send(
            FutureRecord::to(topic)
                .partition(partition)
                .key(key)
                .payload(value),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce");
}

fn admin(broker: &Broker) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .create()
        .expect("admin client")
}

async fn recreate_topic(broker: &Broker, topic: &str) {
    let admin = admin(broker);
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin
        .delete_topics(&[topic], &options)
        .await
        .expect("delete")
    {
        result.expect("topic deleted");
    }
    eventually("the topic to be re-created", DEADLINE, || {
        let admin = &admin;
        let options = &options;
        async move {
            let new_topic = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
            let results = admin.create_topics([&new_topic], options).await.ok()?;
            results.into_iter().all(|r| r.is_ok()).then_some(())
        }
    })
    .await;
}

fn partition_of(report: &Value, partition: i32) -> &Value {
    &report["partitions"][partition.to_string()]
}

#[tokio::test]
async fn a_reader_is_ready_only_once_every_partition_reached_its_start_up_end_including_empty_and_single_record_ones(
) {
    let mut broker = Broker::start();
    let topic = broker.create_topic("ready", 3).await;
    let producer = broker.producer();
    produce_to(&producer, &topic, 0, "only", "one record").await;
    for i in 0..300 {
        produce_to(&producer, &topic, 2, &format!("k{i}"), "v").await;
    }
    drop(producer);
    broker.stop();
    let reader = Service::start(READER, &reader_env(&broker, &topic, "g"));
    let http = reqwest::Client::new();

    let (status, report) = ready_report(&http, &reader).await;
    assert_eq!(status, 503, "not ready before reading anything: {report}");
    assert_eq!(report["status"], "catching_up");
    let live = http
        .get(reader.url("/healthz/live"))
        .send()
        .await
        .expect("live");
    assert_eq!(live.status(), 200, "waiting for the broker is not dying");

    broker.restart();
    let report = wait_ready(&http, &reader).await;
    assert_eq!(partition_of(&report, 0)["next_offset"], 1);
    assert_eq!(partition_of(&report, 1)["next_offset"], 0);
    assert_eq!(partition_of(&report, 2)["next_offset"], 300);
    assert_eq!(report["lag"], 0);
    let only = http
        .get(reader.url("/v1/kv/only"))
        .send()
        .await
        .expect("get");
    assert_eq!(only.text().await.expect("body"), "one record");
}

#[tokio::test]
async fn a_reader_started_before_its_topic_exists_waits_for_it_and_then_follows_it() {
    let broker = Broker::start();
    let topic = kv_testkit::topic::random_topic("later");
    let reader = Service::start(READER, &reader_env(&broker, &topic, "g"));
    let http = reqwest::Client::new();
    let (status, report) = ready_report(&http, &reader).await;
    assert_eq!(status, 503, "no topic, not ready: {report}");

    kv_testkit::topic::create_topic(&broker.bootstrap_servers(), &topic, 2, &[]).await;
    let report = wait_ready(&http, &reader).await;
    assert_eq!(
        report["partitions"].as_object().expect("partitions").len(),
        2
    );
    produce_all(
        &broker.producer(),
        &topic,
        &[(b"k".to_vec(), Some(b"v".to_vec()))],
    )
    .await;
    eventually("the record on the reader", DEADLINE, || async {
        let response = http.get(reader.url("/v1/kv/k")).send().await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn poison_records_are_skipped_counted_and_never_stop_the_consumer() {
    let broker = Broker::start();
    let topic = broker.create_topic("poison", 2).await;
    let producer = broker.producer();
    produce_all(
        &producer,
        &topic,
        &[(b"before".to_vec(), Some(b"1".to_vec()))],
    )
    .await;
    for _ in 0..3 {
        producer
            .send(
                FutureRecord::<[u8], [u8]>::to(&topic).payload(b"no key".as_slice()),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce a keyless record");
    }
    produce_all(
        &producer,
        &topic,
        &[(b"after".to_vec(), Some(b"2".to_vec()))],
    )
    .await;
    let reader = Service::start(READER, &reader_env(&broker, &topic, "g"));
    let http = reqwest::Client::new();

    let report = wait_ready(&http, &reader).await;
    assert_eq!(report["skipped_records"]["total"], 3, "{report}");
    assert_eq!(report["skipped_records"]["by_reason"]["missing_key"], 3);
    assert!(reader
        .output()
        .contains("skipping a record that cannot be applied"));
    let state = dump(&http, &reader).await;
    assert_eq!(state.len(), 2, "both good records are there");

    produce_all(
        &producer,
        &topic,
        &[(b"later".to_vec(), Some(b"3".to_vec()))],
    )
    .await;
    eventually("a record after the poison applied", DEADLINE, || async {
        let response = http.get(reader.url("/v1/kv/later")).send().await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
    let live = http
        .get(reader.url("/healthz/live"))
        .send()
        .await
        .expect("live");
    assert_eq!(live.status(), 200);
}

#[tokio::test]
async fn two_readers_with_different_groups_hold_the_same_state_and_commit_their_progress() {
    let broker = Broker::start();
    let topic = broker.create_topic("replicas", 3).await;
    let producer = broker.producer();
    let records = mixed_records(600, 150);
    produce_all(&producer, &topic, &records).await;
    let readers: Vec<Service> = ["group-a", "group-b"]
        .into_iter()
        .map(|group| {
            let mut env = reader_env(&broker, &topic, group);
            env.push(("KAFKA_AUTO_COMMIT_INTERVAL_MS", "200".to_owned()));
            Service::start(READER, &env)
        })
        .collect();
    let http = reqwest::Client::new();

    let expected = expected_state(&records);
    for reader in &readers {
        wait_ready(&http, reader).await;
        assert_eq!(dump(&http, reader).await, expected);
    }

    // Tooling sees each group's progress: committed offsets reach the end of every partition.
    let mut ends = Vec::new();
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .set("group.id", "probe")
        .create()
        .expect("probe consumer");
    for partition in 0..3 {
        let (_, high) = probe
            .fetch_watermarks(&topic, partition, Duration::from_secs(5))
            .expect("watermarks");
        ends.push(high);
    }
    for group in ["group-a", "group-b"] {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap_servers())
            .set("group.id", group)
            .create()
            .expect("consumer");
        let mut list = TopicPartitionList::new();
        for partition in 0..3 {
            list.add_partition(&topic, partition);
        }
        eventually("the group's committed offsets at the end", DEADLINE, || {
            let committed = consumer.committed_offsets(list.clone(), Duration::from_secs(5));
            let ends = &ends;
            let topic = &topic;
            async move {
                let committed = committed.ok()?;
                (0..3)
                    .all(|p| {
                        committed
                            .find_partition(topic, p)
                            .is_some_and(|tp| tp.offset() == Offset::Offset(ends[p as usize]))
                    })
                    .then_some(())
            }
        })
        .await;
    }
}

#[tokio::test]
async fn a_reader_killed_during_replay_restarts_from_its_stored_offsets_with_identical_state() {
    let broker = Broker::start();
    let topic = broker.create_topic("crash", 3).await;
    let producer = broker.producer();
    let records: Vec<KeyValue> = mixed_records(4000, 1000)
        .into_iter()
        .map(|(key, value)| (key, value.map(|v| [v.as_slice(); 8].concat())))
        .collect();
    produce_all(&producer, &topic, &records).await;
    let dir = tempfile::tempdir().expect("store dir");
    let mut env = reader_env(&broker, &topic, "g");
    env.push((
        "KV_API_STATE_STORAGE_DISK_LOCATION",
        dir.path().display().to_string(),
    ));
    let http = reqwest::Client::new();

    let mut first = Service::start(READER, &env);
    // Kill as soon as part of the topic is stored (if replay wins the race, after all of it).
    let killed_with = eventually("some records applied", DEADLINE, || async {
        let (_, report) = ready_report(&http, &first).await;
        let applied = report["records_applied"].as_u64().unwrap_or(0);
        (applied > 0).then_some(report)
    })
    .await;
    first.kill();

    let second = Service::start(READER, &env);
    let report = wait_ready(&http, &second).await;
    assert!(
        second.output().contains("resuming from the stored offsets"),
        "{}",
        second.output()
    );
    assert!(!second.output().contains("rebuilding"));
    assert_eq!(dump(&http, &second).await, expected_state(&records));
    assert!(
        report["records_applied"].as_u64().expect("count")
            + killed_with["records_applied"].as_u64().expect("count")
            <= records.len() as u64,
        "the restart applied again records already stored: {report} after {killed_with}"
    );
    drop(second);

    // A caught-up replica restarted applies nothing at all.
    let third = Service::start(READER, &env);
    let report = wait_ready(&http, &third).await;
    assert_eq!(report["records_applied"], 0, "{report}");
    assert_eq!(dump(&http, &third).await, expected_state(&records));
}

#[tokio::test]
async fn a_reader_stopped_with_sigterm_exits_cleanly_and_resumes_without_applying_anything_again() {
    let broker = Broker::start();
    let topic = broker.create_topic("sigterm", 2).await;
    let records = mixed_records(300, 100);
    produce_all(&broker.producer(), &topic, &records).await;
    let dir = tempfile::tempdir().expect("store dir");
    let mut env = reader_env(&broker, &topic, "g");
    env.push((
        "KV_API_STATE_STORAGE_DISK_LOCATION",
        dir.path().display().to_string(),
    ));
    let http = reqwest::Client::new();
    let mut reader = Service::start(READER, &env);
    wait_ready(&http, &reader).await;

    reader.terminate();
    assert_eq!(
        reader.wait_for_exit(DEADLINE).await,
        Some(0),
        "{}",
        reader.output()
    );
    let reader = Service::start(READER, &env);
    let report = wait_ready(&http, &reader).await;
    assert_eq!(report["records_applied"], 0, "{report}");
    assert_eq!(dump(&http, &reader).await, expected_state(&records));
}

#[tokio::test]
async fn a_reader_whose_broker_is_gone_still_stops_on_sigterm_within_its_grace_period() {
    let mut broker = Broker::start();
    let topic = broker.create_topic("sigterm-no-broker", 2).await;
    produce_all(&broker.producer(), &topic, &mixed_records(50, 10)).await;
    let http = reqwest::Client::new();
    let mut reader = Service::start(READER, &reader_env(&broker, &topic, "g"));
    wait_ready(&http, &reader).await;

    broker.stop();
    reader.terminate();
    // A pod gets 30 s between SIGTERM and SIGKILL by default; a reader that cannot commit its
    // last progress must still leave well within that.
    assert_eq!(
        reader.wait_for_exit(Duration::from_secs(20)).await,
        Some(0),
        "{}",
        reader.output()
    );
}

#[tokio::test]
async fn a_disk_replica_of_a_recreated_topic_rebuilds_from_scratch_and_says_so() {
    let broker = Broker::start();
    let topic = broker.create_topic("recreate", 1).await;
    let producer = broker.producer();
    let old = mixed_records(100, 20);
    produce_all(&producer, &topic, &old).await;
    let dir = tempfile::tempdir().expect("store dir");
    let mut env = reader_env(&broker, &topic, "g");
    env.push((
        "KV_API_STATE_STORAGE_DISK_LOCATION",
        dir.path().display().to_string(),
    ));
    let http = reqwest::Client::new();
    let mut reader = Service::start(READER, &env);
    wait_ready(&http, &reader).await;
    reader.kill();

    recreate_topic(&broker, &topic).await;
    let new: Vec<KeyValue> = (0..5)
        .map(|i| (format!("new-{i}").into_bytes(), Some(b"fresh".to_vec())))
        .collect();
    produce_all(&broker.producer(), &topic, &new).await;

    let reader = Service::start(READER, &env);
    let report = wait_ready(&http, &reader).await;
    assert!(
        reader
            .output()
            .contains("rebuilding the replica from scratch"),
        "{}",
        reader.output()
    );
    assert_eq!(report["rebuilds"], 1);
    assert_eq!(dump(&http, &reader).await, expected_state(&new));
}

#[tokio::test]
async fn schema_registry_headers_are_stripped_only_from_payloads_that_carry_one() {
    let broker = Broker::start();
    let topic = broker.create_topic("registry", 1).await;
    let producer = broker.producer();
    produce_all(
        &producer,
        &topic,
        &[
            (
                b"framed".to_vec(),
                Some(b"\x00\x00\x00\x00\x2a{\"a\":1}".to_vec()),
            ),
            (b"plain".to_vec(), Some(b"{\"b\":2}".to_vec())),
            (b"truncated".to_vec(), Some(b"\x00\x00\x01".to_vec())),
            // Keys have no subject: a key that looks framed is kept whole.
            (
                b"\x00\x00\x00\x00\x01k".to_vec(),
                Some(b"\x00\x00\x00\x00\x01v".to_vec()),
            ),
        ],
    )
    .await;
    let registry = registry_stub(vec![
        (format!("{topic}-value"), vec![42, 1]),
        ("other-topic-key".to_owned(), vec![1]),
    ]);
    let mut env = reader_env(&broker, &topic, "g");
    env.push(("KAFKA_SCHEMA_REGISTRY_URL", registry));
    let reader = Service::start(READER, &env);
    let http = reqwest::Client::new();
    let report = wait_ready(&http, &reader).await;

    assert_eq!(
        report["skipped_records"]["by_reason"]["bad_schema_header"], 1,
        "{report}"
    );
    let state = dump(&http, &reader).await;
    assert_eq!(state[b"framed".as_slice()], b"{\"a\":1}");
    assert_eq!(state[b"plain".as_slice()], b"{\"b\":2}");
    assert_eq!(state[b"\x00\x00\x00\x00\x01k".as_slice()], b"v");
    assert!(!state.contains_key(b"truncated".as_slice()));
}

#[tokio::test]
async fn a_reader_told_to_use_an_unreachable_schema_registry_refuses_to_start() {
    let broker = Broker::start();
    let topic = broker.create_topic("no-registry", 1).await;
    let unused = kv_testkit::free_port();
    let mut env = reader_env(&broker, &topic, "g");
    env.push((
        "KAFKA_SCHEMA_REGISTRY_URL",
        format!("http://127.0.0.1:{unused}"),
    ));
    env.push(("KV_API_LISTEN", "127.0.0.1:0".to_owned()));
    let (code, output) = run_to_exit(READER, &env, Duration::from_secs(30));
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("KAFKA_SCHEMA_REGISTRY_URL"), "{output}");
}

#[tokio::test]
async fn values_kv_writer_stored_are_never_stripped_and_an_unknown_schema_id_keeps_a_value_whole() {
    let broker = Broker::start();
    let topic = broker.create_topic("registry-own", 2).await;
    let writer = Service::start(writer(), &kv_testkit::service_env(&broker, &topic));
    let http = reqwest::Client::new();
    // Values of kv-writer's own users that happen to look framed, or to start with 0x00.
    let own: [(&str, &[u8]); 3] = [
        ("looks-framed", b"\x00\x00\x00\x00\x2a{\"a\":1}"),
        ("short-zero", b"\x00\x01"),
        ("zero", b"\x00"),
    ];
    for (key, value) in own {
        let written = http
            .put(writer.url(&format!("/v1/kv/{key}")))
            .body(value.to_vec())
            .send()
            .await
            .expect("write");
        assert_eq!(written.status(), 200, "{}", writer.output());
    }
    let producer = broker.producer();
    produce_all(
        &producer,
        &topic,
        &[
            (
                b"foreign".to_vec(),
                Some(b"\x00\x00\x00\x00\x2a{\"b\":2}".to_vec()),
            ),
            (
                b"unknown-id".to_vec(),
                Some(b"\x00\x00\x00\x00\x09{\"c\":3}".to_vec()),
            ),
        ],
    )
    .await;
    let registry = registry_stub(vec![
        (format!("{topic}-value"), vec![42]),
        (format!("{topic}-key"), vec![42]),
    ]);
    let mut env = reader_env(&broker, &topic, "g");
    env.push(("KAFKA_SCHEMA_REGISTRY_URL", registry));
    let reader = Service::start(READER, &env);
    let report = wait_ready(&http, &reader).await;

    assert_eq!(report["skipped_records"]["total"], 0, "{report}");
    let state = dump(&http, &reader).await;
    for (key, value) in own {
        assert_eq!(state[key.as_bytes()], value, "{key} was altered");
    }
    assert_eq!(state[b"foreign".as_slice()], b"{\"b\":2}");
    assert_eq!(
        state[b"unknown-id".as_slice()],
        b"\x00\x00\x00\x00\x09{\"c\":3}"
    );
}

#[tokio::test]
async fn a_disk_replica_away_for_longer_than_delete_retention_rebuilds_and_says_why() {
    let broker = Broker::start();
    let topic = kv_testkit::topic::random_topic("retention");
    kv_testkit::topic::create_topic(
        &broker.bootstrap_servers(),
        &topic,
        1,
        &[
            ("cleanup.policy", "compact"),
            ("delete.retention.ms", "2000"),
        ],
    )
    .await;
    let producer = broker.producer();
    produce_all(&producer, &topic, &[(b"k".to_vec(), Some(b"v".to_vec()))]).await;
    let dir = tempfile::tempdir().expect("store dir");
    let mut env = reader_env(&broker, &topic, "g");
    env.push((
        "KV_API_STATE_STORAGE_DISK_LOCATION",
        dir.path().display().to_string(),
    ));
    let http = reqwest::Client::new();
    let mut first = Service::start(READER, &env);
    wait_ready(&http, &first).await;
    // Read beside the start-up; the reader logs it once the broker answered.
    eventually("the topic's configuration read", DEADLINE, || async {
        first
            .output()
            .contains("delete_retention_ms=\"2000\"")
            .then_some(())
    })
    .await;
    first.terminate();
    first.wait_for_exit(DEADLINE).await;

    // Away for longer than the topic keeps tombstones.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let second = Service::start(READER, &env);
    let report = wait_ready(&http, &second).await;
    assert!(
        second.output().contains("delete.retention.ms"),
        "{}",
        second.output()
    );
    assert_eq!(report["rebuilds"], 1, "{report}");
    assert_eq!(dump(&http, &second).await[b"k".as_slice()], b"v");
}

#[tokio::test]
async fn a_schema_registered_while_the_reader_runs_is_stripped_at_once() {
    let broker = Broker::start();
    let topic = broker.create_topic("registry-new", 1).await;
    let (registry, subjects) =
        kv_testkit::reader::registry_stub_shared(vec![(format!("{topic}-value"), vec![42])]);
    let mut env = reader_env(&broker, &topic, "g");
    env.push(("KAFKA_SCHEMA_REGISTRY_URL", registry));
    let reader = Service::start(READER, &env);
    let http = reqwest::Client::new();
    wait_ready(&http, &reader).await;

    // A producer registers version 2 (id 43) and writes with it at once, long before the
    // reader's next refresh; id 99 was never registered.
    subjects.lock().expect("registry")[0].1.push(43);
    let producer = broker.producer();
    produce_all(
        &producer,
        &topic,
        &[
            (
                b"new-schema".to_vec(),
                Some(b"\x00\x00\x00\x00\x2b{\"d\":4}".to_vec()),
            ),
            (
                b"never-registered".to_vec(),
                Some(b"\x00\x00\x00\x00\x63{\"e\":5}".to_vec()),
            ),
        ],
    )
    .await;
    let state = eventually("both records applied", DEADLINE, || async {
        let state = dump(&http, &reader).await;
        (state.len() == 2).then_some(state)
    })
    .await;
    assert_eq!(state[b"new-schema".as_slice()], b"{\"d\":4}");
    assert_eq!(
        state[b"never-registered".as_slice()],
        b"\x00\x00\x00\x00\x63{\"e\":5}"
    );
}

#[tokio::test]
async fn a_long_replay_logs_its_progress_and_when_it_is_ready_and_shows_both_as_metrics() {
    const RECORDS: usize = 200_000;
    let broker = Broker::start();
    let topic = broker.create_topic("replay-progress", 3).await;
    let records: Vec<RawRecord> = mixed_records(RECORDS, 50_000)
        .into_iter()
        .map(|(key, value)| RawRecord {
            key: Some(key),
            value,
            correlation_id: None,
        })
        .collect();
    produce_raw(&broker.bootstrap_servers(), &topic, &records).await;
    let mut env = reader_env(&broker, &topic, "replay-progress");
    env.push(("KV_API_REPLAY_PROGRESS_INTERVAL_MS", "200".to_owned()));
    let reader = Service::start(READER, &env);
    let http = reqwest::Client::new();
    wait_ready(&http, &reader).await;
    let output = eventually("the ready line", DEADLINE, || async {
        let output = reader.output();
        output.contains("ready after").then_some(output)
    })
    .await;
    let total = format!("of {RECORDS} records applied");
    let progress = output
        .lines()
        .find(|line| line.contains("replaying: ") && line.contains(&total))
        .unwrap_or_else(|| panic!("no progress line saying {total:?}:\n{output}"));
    assert!(
        progress.contains("records/s") && progress.contains("ready in about"),
        "{progress}"
    );
    assert!(
        output.contains(&format!(", {RECORDS} records")),
        "the ready line counts every record: {output}"
    );
    let metrics = http
        .get(reader.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} is missing: {metrics}"))
    };
    assert!(value("kv_reader_ready_after_seconds") > 0.0);
    assert_eq!(value("kv_reader_replay_remaining_records"), 0.0);
    assert_eq!(value("kv_reader_replay_eta_seconds"), 0.0);
}
