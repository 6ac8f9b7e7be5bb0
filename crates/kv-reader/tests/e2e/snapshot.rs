//! Snapshot bootstrap (KV_API_BOOTSTRAP_PEERS): a new reader takes a ready peer's replica over
//! HTTP and then consumes only the tail of the topic; whatever goes wrong, it replays instead.

use crate::READER;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kv_testkit::proxy::{Fault, FaultyProxy};
use kv_testkit::reader::{dump, ready_report, wait_ready};
use kv_testkit::services::reader_env;
use kv_testkit::topic::{self, RawRecord};
use kv_testkit::{eventually, metric, Broker, OidcProvider, Service, Shards, DEADLINE};
use serde_json::Value;

const PARTITIONS: i32 = 3;

fn raw(records: &[(Vec<u8>, Option<Vec<u8>>)]) -> Vec<RawRecord> {
    records
        .iter()
        .map(|(key, value)| RawRecord {
            key: Some(key.clone()),
            value: value.clone(),
            correlation_id: None,
        })
        .collect()
}

/// Waits until `reader` has applied everything on the topic and holds exactly `expected`.
async fn holds(http: &reqwest::Client, reader: &Service, expected: &BTreeMap<Vec<u8>, Vec<u8>>) {
    eventually("the reader to hold the topic's state", DEADLINE, || async {
        let (status, report) = ready_report(http, reader).await;
        if status != 200 || report["lag"] != 0 {
            return None;
        }
        (dump(http, reader).await == *expected).then_some(())
    })
    .await;
}

fn applied(report: &Value) -> u64 {
    report["records_applied"].as_u64().unwrap_or(u64::MAX)
}

#[tokio::test]
async fn a_new_reader_takes_a_peers_snapshot_and_then_only_the_tail_while_writes_go_on() {
    let broker = Broker::start();
    let topic = broker.create_topic("snap", PARTITIONS).await;
    let seed = topic::mixed_records(200_000, 60_000);
    topic::produce_raw(&broker.bootstrap_servers(), &topic, &raw(&seed)).await;
    let peer = Service::start(READER, &reader_env(&broker, &topic, "snap-peer"));
    let http = reqwest::Client::new();
    wait_ready(&http, &peer).await;

    // Writes go on during the transfer: the new reader must end with them too.
    let writing = Arc::new(AtomicBool::new(true));
    let tail = {
        let (writing, bootstrap, topic) =
            (writing.clone(), broker.bootstrap_servers(), topic.clone());
        tokio::spawn(async move {
            let producer = topic::producer(&bootstrap);
            let mut written = Vec::new();
            let mut round = 0;
            while writing.load(Ordering::Relaxed) || round < 3 {
                let batch: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..200)
                    .map(|i| {
                        let key =
                            format!("key-{:05}", (round * 397 + i * 13) % 70_000).into_bytes();
                        let value = (i % 9 != 4).then(|| format!("tail {round}/{i}").into_bytes());
                        (key, value)
                    })
                    .collect();
                topic::produce_all(&producer, &topic, &batch).await;
                written.extend(batch);
                round += 1;
            }
            written
        })
    };
    let mut env = reader_env(&broker, &topic, "snap-new");
    env.push((
        "KV_API_BOOTSTRAP_PEERS",
        format!("http://127.0.0.1:1,{}", peer.base_url),
    ));
    let fresh = Service::start(READER, &env);
    wait_ready(&http, &fresh).await;
    writing.store(false, Ordering::Relaxed);
    let tail = tail.await.expect("tail writes");

    let mut all = seed.clone();
    all.extend(tail.iter().cloned());
    let expected = topic::expected_state(&all);
    holds(&http, &fresh, &expected).await;
    let reference = Service::start(READER, &reader_env(&broker, &topic, "snap-reference"));
    holds(&http, &reference, &expected).await;
    assert_eq!(
        topic::digest(&dump(&http, &fresh).await),
        topic::digest(&dump(&http, &reference).await)
    );
    let (_, report) = ready_report(&http, &fresh).await;
    let from_kafka = applied(&report);
    assert!(
        from_kafka < (all.len() as u64) / 4,
        "the new reader applied {from_kafka} records from Kafka, of {} on the topic: {report}",
        all.len()
    );
    let metrics = fresh.metrics(&http).await;
    assert_eq!(
        kv_testkit::metric(&metrics, "kv_reader_bootstrapped_from_snapshot", &[]),
        Some(1.0)
    );
    let output = fresh.output();
    assert!(
        output.contains("127.0.0.1:1"),
        "the dead peer is named:\n{output}"
    );
    assert!(output.contains("snapshot taken"), "{output}");
    let served = peer.metrics(&http).await;
    assert_eq!(
        kv_testkit::metric(
            &served,
            "kv_reader_snapshots_served_total",
            &[("outcome", "complete")]
        ),
        Some(1.0)
    );
}

/// Starts a reader bootstrapping through `proxy`-like `peers`, and checks it fell back to a
/// full replay that ends exactly at `expected`, with `reason` in its log.
async fn falls_back(
    broker: &Broker,
    topic: &str,
    peers: String,
    expected: &BTreeMap<Vec<u8>, Vec<u8>>,
    reason: &str,
) {
    let http = reqwest::Client::new();
    let mut env = reader_env(
        broker,
        topic,
        &format!("snap-fallback-{}", rand::random::<u32>()),
    );
    env.push(("KV_API_BOOTSTRAP_PEERS", peers));
    let reader = Service::start(READER, &env);
    holds(&http, &reader, expected).await;
    let output = reader.output();
    assert!(
        output.contains("replaying the topic from scratch"),
        "{output}"
    );
    assert!(output.contains(reason), "expected {reason:?} in:\n{output}");
    let metrics = reader.metrics(&http).await;
    assert_eq!(
        kv_testkit::metric(&metrics, "kv_reader_bootstrapped_from_snapshot", &[]),
        Some(0.0)
    );
    let (_, report) = ready_report(&http, &reader).await;
    assert_eq!(report["skipped_records"]["total"], 0, "{report}");
}

#[tokio::test]
async fn a_cut_transfer_a_changed_byte_or_a_peer_of_another_topic_fall_back_to_a_replay() {
    let broker = Broker::start();
    let topic = broker.create_topic("snap-bad", PARTITIONS).await;
    let other = broker.create_topic("snap-other", PARTITIONS).await;
    let records = topic::mixed_records(30_000, 9_000);
    topic::produce_raw(&broker.bootstrap_servers(), &topic, &raw(&records)).await;
    topic::produce_raw(&broker.bootstrap_servers(), &other, &raw(&records[..100])).await;
    let expected = topic::expected_state(&records);
    let peer = Service::start(READER, &reader_env(&broker, &topic, "snap-bad-peer"));
    let stranger = Service::start(READER, &reader_env(&broker, &other, "snap-other-peer"));
    let http = reqwest::Client::new();
    wait_ready(&http, &peer).await;
    wait_ready(&http, &stranger).await;
    let upstream = peer.base_url.trim_start_matches("http://").to_owned();

    let cut = FaultyProxy::start(&upstream, Fault::CutAfter(200_000));
    falls_back(
        &broker,
        &topic,
        cut.url(),
        &expected,
        "the transfer broke off",
    )
    .await;
    let flipped = FaultyProxy::start(&upstream, Fault::FlipAt(300_000));
    falls_back(&broker, &topic, flipped.url(), &expected, &flipped.url()).await;
    falls_back(
        &broker,
        &topic,
        stranger.base_url.clone(),
        &expected,
        "is of topic",
    )
    .await;
}

#[tokio::test]
async fn a_snapshot_of_a_topic_of_the_same_name_on_another_kafka_cluster_is_refused() {
    let ours = Broker::start();
    let theirs = Broker::start_in_cluster("another-kafka-cluster");
    let topic = ours.create_topic("snap-cluster", PARTITIONS).await;
    topic::create_topic(&theirs.bootstrap_servers(), &topic, PARTITIONS, &[]).await;
    let records = topic::mixed_records(3_000, 900);
    topic::produce_raw(&ours.bootstrap_servers(), &topic, &raw(&records)).await;
    let strangers: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..50)
        .map(|i| {
            (
                format!("theirs-{i}").into_bytes(),
                Some(b"not ours".to_vec()),
            )
        })
        .collect();
    topic::produce_raw(&theirs.bootstrap_servers(), &topic, &raw(&strangers)).await;
    let stranger = Service::start(READER, &reader_env(&theirs, &topic, "snap-cluster-peer"));
    let http = reqwest::Client::new();
    wait_ready(&http, &stranger).await;
    // The stranger's snapshot names its cluster once its broker told it.
    eventually("the peer to know its cluster", DEADLINE, || async {
        let response = http
            .get(stranger.url("/admin/v1/snapshot"))
            .send()
            .await
            .ok()?;
        let body = response.bytes().await.ok()?;
        let text = String::from_utf8_lossy(&body[..body.len().min(4096)]).into_owned();
        text.contains("another-kafka-cluster").then_some(())
    })
    .await;
    falls_back(
        &ours,
        &topic,
        stranger.base_url.clone(),
        &topic::expected_state(&records),
        "is of Kafka cluster",
    )
    .await;
}

#[tokio::test]
async fn a_snapshot_needs_the_admin_scope_and_a_bootstrapping_reader_gets_it_itself() {
    let broker = Broker::start();
    let topic = broker.create_topic("snap-auth", PARTITIONS).await;
    let records = topic::mixed_records(5_000, 1_000);
    topic::produce_raw(&broker.bootstrap_servers(), &topic, &raw(&records)).await;
    let idp = OidcProvider::start("key-s");
    let mut env = reader_env(&broker, &topic, "snap-auth-peer");
    env.extend(idp.service_env());
    env.extend([
        ("KV_API_DISABLE_API_AUTH", "false".to_owned()),
        ("KV_API_AUTH_READ", "kv:read".to_owned()),
    ]);
    let peer = Service::start(READER, &env);
    let http = reqwest::Client::new();
    wait_ready(&http, &peer).await;
    let read_only = idp.token("kv-reader", "kv:read").await;
    let refused = http
        .get(peer.url("/admin/v1/snapshot"))
        .bearer_auth(&read_only)
        .send()
        .await
        .expect("snapshot");
    assert_eq!(refused.status(), 403);
    let anonymous = http
        .get(peer.url("/admin/v1/snapshot"))
        .send()
        .await
        .expect("snapshot");
    assert_eq!(anonymous.status(), 401);

    let mut fresh_env = env.clone();
    fresh_env.extend([
        ("KAFKA_GROUP_ID", "snap-auth-new".to_owned()),
        ("KV_API_BOOTSTRAP_PEERS", peer.base_url.clone()),
        ("KV_API_BOOTSTRAP_CLIENT_ID", "kv-full".to_owned()),
        (
            "KV_API_BOOTSTRAP_CLIENT_SECRET",
            "kv-full-secret".to_owned(),
        ),
    ]);
    // The admin token goes to an http:// peer only when the operator allows it.
    let mut cautious_env = fresh_env.clone();
    cautious_env.push(("KAFKA_GROUP_ID", "snap-auth-cautious".to_owned()));
    let cautious = Service::start(READER, &cautious_env);
    wait_ready(&http, &cautious).await;
    let metrics = cautious.metrics(&http).await;
    assert_eq!(
        kv_testkit::metric(&metrics, "kv_reader_bootstrapped_from_snapshot", &[]),
        Some(0.0),
        "{}",
        cautious.output()
    );
    assert!(
        cautious
            .output()
            .contains("the admin token is sent only over https://"),
        "{}",
        cautious.output()
    );
    drop(cautious);
    fresh_env.push(("KV_API_BOOTSTRAP_ALLOW_HTTP_TOKEN", "true".to_owned()));
    let fresh = Service::start(READER, &fresh_env);
    wait_ready(&http, &fresh).await;
    let metrics = fresh.metrics(&http).await;
    assert_eq!(
        kv_testkit::metric(&metrics, "kv_reader_bootstrapped_from_snapshot", &[]),
        Some(1.0),
        "{}",
        fresh.output()
    );
    let (_, report) = ready_report(&http, &fresh).await;
    assert_eq!(
        applied(&report),
        0,
        "nothing was left to read from Kafka: {report}"
    );
}

#[tokio::test]
async fn each_shard_takes_only_its_own_partitions_from_a_full_replica() {
    let broker = Broker::start();
    let topic = broker.create_topic("snap-shards", 6).await;
    let records = topic::mixed_records(20_000, 6_000);
    topic::produce_raw(&broker.bootstrap_servers(), &topic, &raw(&records)).await;
    let expected = topic::expected_state(&records);
    let full = Service::start(READER, &reader_env(&broker, &topic, "snap-full"));
    let http = reqwest::Client::new();
    wait_ready(&http, &full).await;
    let mut env = reader_env(&broker, &topic, "snap-shard");
    env.push(("KV_API_BOOTSTRAP_PEERS", full.base_url.clone()));
    let shards = Shards::start(READER, &env, 3, 1);
    let mut held = 0.0;
    for (i, shard) in shards.running() {
        wait_ready(&http, shard).await;
        let metrics = shard.metrics(&http).await;
        assert_eq!(
            metric(&metrics, "kv_reader_bootstrapped_from_snapshot", &[]),
            Some(1.0),
            "shard {i}: {}",
            shard.output()
        );
        held += metric(&metrics, "kv_reader_store_keys", &[]).expect("keys");
        let (_, report) = ready_report(&http, shard).await;
        assert_eq!(
            report["partitions"].as_object().map(|p| p.len()),
            Some(2),
            "{report}"
        );
        assert_eq!(applied(&report), 0, "{report}");
    }
    assert_eq!(held, expected.len() as f64, "the shards hold each key once");
    assert_eq!(dump(&http, shards.get(1)).await, expected);
}

#[tokio::test]
async fn a_reader_bootstrapped_from_a_snapshot_answers_the_trace_of_the_writes_it_took_in() {
    let broker = Broker::start();
    let topic = broker.create_topic("snap-trace", PARTITIONS).await;
    let write_span = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    topic::produce_with_headers(
        &broker.producer(),
        &topic,
        b"traced",
        b"v",
        &[("traceparent", write_span.as_bytes())],
    )
    .await;
    let peer = Service::start(READER, &reader_env(&broker, &topic, "snap-trace-peer"));
    let http = reqwest::Client::new();
    wait_ready(&http, &peer).await;
    let mut env = reader_env(&broker, &topic, "snap-trace-new");
    env.push(("KV_API_BOOTSTRAP_PEERS", peer.base_url.clone()));
    let fresh = Service::start(READER, &env);
    wait_ready(&http, &fresh).await;

    let metrics = fresh.metrics(&http).await;
    assert_eq!(
        metric(&metrics, "kv_reader_bootstrapped_from_snapshot", &[]),
        Some(1.0),
        "{}",
        fresh.output()
    );
    let read = http
        .get(fresh.url("/v1/kv/traced"))
        .send()
        .await
        .expect("get");
    assert_eq!(read.status(), 200);
    assert_eq!(read.headers()["x-kv-write-traceparent"], write_span);
}
