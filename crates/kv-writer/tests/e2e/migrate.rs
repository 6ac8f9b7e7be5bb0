//! `kv-writer migrate-seed-topic` end to end: records sealed the original .NET service's way by
//! another language's crypto library (Python's `cryptography`) and produced by another Kafka
//! client (`kafka-python`), migrated by the real binary, then served by a real kv-reader.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kv_testkit::reader::{key_path, wait_ready};
use kv_testkit::services::run_command_to_exit;
use kv_testkit::tools::{seed_producer_script, seed_python};
use kv_testkit::topic::records;
use kv_testkit::{service_env, workspace_binary, Broker, Service};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::WRITER;

/// The key the "original service" sealed the source topic with.
const SEED_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
/// Another key, for records the migrator cannot open.
const OTHER_KEY: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";
/// This project's topic encryption key of an encrypted destination.
const DESTINATION_KEY: &str = "8f2c6a1e9b7d4c3a5e0f1b2d3c4a5b6c7d8e9f0a1b2c3d4e5f60718293a4b5c6";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// Seals and produces `records` with the Python tools; the (partition, offset) of each.
fn produce_seed_records(
    broker: &Broker,
    topic: &str,
    key_hex: &str,
    records: Value,
) -> Vec<(i32, i64)> {
    let spec = json!({
        "bootstrap": broker.bootstrap_servers(),
        "topic": topic,
        "key_hex": key_hex,
        "records": records,
    });
    let mut child = Command::new(seed_python())
        .arg(seed_producer_script())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the seed producer");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(spec.to_string().as_bytes())
        .expect("feed the seed producer");
    let output = child.wait_with_output().expect("seed producer output");
    assert!(
        output.status.success(),
        "the seed producer failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let (partition, offset) = line.split_once(' ').expect("partition offset");
            (
                partition.parse().expect("partition"),
                offset.parse().expect("offset"),
            )
        })
        .collect()
}

fn migrate(env: &[(&'static str, String)], args: &[&str]) -> (Option<i32>, String) {
    let mut all = vec!["migrate-seed-topic"];
    all.extend_from_slice(args);
    run_command_to_exit(WRITER, &all, env, Duration::from_secs(120))
}

async fn get(http: &reqwest::Client, reader: &Service, key: &str) -> (StatusCode, Vec<u8>) {
    let response = http
        .get(reader.url(&key_path(key.as_bytes())))
        .send()
        .await
        .expect("read");
    let status = response.status();
    (status, response.bytes().await.expect("body").to_vec())
}

#[tokio::test]
async fn a_seed_encrypted_topic_migrates_to_the_latest_value_of_each_key_and_a_reader_serves_it() {
    let broker = Broker::start();
    let source = broker.create_topic("seed", 3).await;
    let destination = broker.create_topic("migrated", 3).await;
    let t = now_ms() - 60_000;
    let positions = produce_seed_records(
        &broker,
        &source,
        SEED_KEY,
        json!([
            {"key": "user-1", "value": "Ada", "partition": 0, "timestamp_ms": t,
             "headers": {"source": "billing"}},
            {"key": "user-2", "value": "Grace v1", "partition": 1, "timestamp_ms": t + 1},
            // The random IV puts each version of a key under another record key, so a later
            // version may sit on another partition: the later timestamp wins.
            {"key": "user-2", "value": "Grace v2", "partition": 2, "timestamp_ms": t + 2},
            {"key": "user-3", "value": "deleted later", "partition": 0, "timestamp_ms": t + 3},
            {"key": "user-3", "value": null, "partition": 1, "timestamp_ms": t + 4},
            {"key": "empty", "value": "", "partition": 2, "timestamp_ms": t + 5},
            {"key": "clé/ünïcode", "value": "ok", "partition": 0, "timestamp_ms": t + 6},
        ]),
    );
    assert_eq!(positions.len(), 7);
    let sealed = records(broker.bootstrap_servers(), &source).await;
    assert!(
        sealed.iter().all(|r| !r.key.starts_with(b"user")),
        "the source holds sealed keys: {sealed:?}"
    );

    let mut env = service_env(&broker, &destination);
    // The writer's environment, less auth (the command serves nothing) and the readers' group.
    env.retain(|(name, _)| !matches!(*name, "KV_API_DISABLE_API_AUTH" | "KAFKA_GROUP_ID"));
    env.push(("KV_API_SEED_AES_KEY", SEED_KEY.to_owned()));
    let (code, output) = migrate(&env, &["--from", &source]);
    assert_eq!(code, Some(0), "{output}");
    assert!(
        output.contains("read 7, migrated 4, deleted 1, undecryptable 0, ambiguous 0"),
        "{output}"
    );

    let migrated = records(broker.bootstrap_servers(), &destination).await;
    assert_eq!(migrated.len(), 4, "{migrated:?}");
    let user_1 = migrated
        .iter()
        .find(|r| r.key == b"user-1")
        .expect("user-1 in plaintext");
    assert_eq!(user_1.value.as_deref(), Some(&b"Ada"[..]));
    assert_eq!(user_1.header("source"), Some(&b"billing"[..]));

    let reader = Service::start(
        workspace_binary("kv-reader"),
        &service_env(&broker, &destination),
    );
    let http = reqwest::Client::new();
    wait_ready(&http, &reader).await;
    for (key, value) in [
        ("user-1", &b"Ada"[..]),
        ("user-2", b"Grace v2"),
        ("empty", b""),
        ("clé/ünïcode", b"ok"),
    ] {
        assert_eq!(
            get(&http, &reader, key).await,
            (StatusCode::OK, value.to_vec()),
            "{key}"
        );
    }
    assert_eq!(get(&http, &reader, "user-3").await.0, StatusCode::NOT_FOUND);

    let (code, output) = migrate(&env, &["--from", &source, "--to", &source]);
    assert_eq!(code, Some(2), "migrating a topic onto itself: {output}");
}

#[tokio::test]
async fn an_undecryptable_seed_record_is_reported_by_position_and_stops_the_migration_unless_skipped(
) {
    let broker = Broker::start();
    let source = broker.create_topic("seed-bad", 1).await;
    let destination = broker.create_topic("migrated-encrypted", 2).await;
    let t = now_ms() - 60_000;
    produce_seed_records(
        &broker,
        &source,
        SEED_KEY,
        json!([{"key": "good", "value": "kept", "partition": 0, "timestamp_ms": t}]),
    );
    let bad = produce_seed_records(
        &broker,
        &source,
        OTHER_KEY,
        json!([
            {"key": "sealed-with-another-key", "value": "x", "partition": 0, "timestamp_ms": t + 1},
            {"key": "never-sealed", "value": "y", "partition": 0, "timestamp_ms": t + 2,
             "plain": true},
        ]),
    );
    assert_eq!(bad, vec![(0, 1), (0, 2)]);

    // The source's key apart, and this project's topic encryption on the destination.
    let mut env = service_env(&broker, &destination);
    env.extend([
        ("KV_API_SEED_AES_KEY", SEED_KEY.to_owned()),
        ("KV_API_ENCRYPT_DATA_ON_KAFKA", "true".to_owned()),
        ("KV_API_AES_KEY", DESTINATION_KEY.to_owned()),
    ]);

    let (code, output) = migrate(&env, &["--from", &source]);
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains("undecryptable: partition 0 offset 1"),
        "{output}"
    );
    assert!(
        output.contains("undecryptable: partition 0 offset 2"),
        "{output}"
    );
    assert!(
        output.contains("read 3, migrated 0, deleted 0, undecryptable 2"),
        "{output}"
    );
    assert!(output.contains("nothing was produced"), "{output}");
    assert!(records(broker.bootstrap_servers(), &destination)
        .await
        .is_empty());

    let (code, output) = migrate(&env, &["--from", &source, "--skip-undecryptable"]);
    assert_eq!(code, Some(0), "{output}");
    assert!(
        output.contains("read 3, migrated 1, deleted 0, undecryptable 2"),
        "{output}"
    );
    let migrated = records(broker.bootstrap_servers(), &destination).await;
    assert_eq!(migrated.len(), 1);
    assert!(
        !migrated[0].key.windows(4).any(|w| w == b"good"),
        "the destination is encrypted in this project's format: {migrated:?}"
    );

    let mut reader_env = service_env(&broker, &destination);
    reader_env.extend([
        ("KV_API_ENCRYPT_DATA_ON_KAFKA", "true".to_owned()),
        ("KV_API_AES_KEY", DESTINATION_KEY.to_owned()),
    ]);
    let reader = Service::start(workspace_binary("kv-reader"), &reader_env);
    let http = reqwest::Client::new();
    wait_ready(&http, &reader).await;
    assert_eq!(
        get(&http, &reader, "good").await,
        (StatusCode::OK, b"kept".to_vec())
    );
}

#[test]
fn a_migration_without_the_seed_key_is_refused_naming_the_variable() {
    let env = [
        ("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9".to_owned()),
        ("KV_API_KAFKA_KEY_VALUE_TOPIC", "destination".to_owned()),
    ];
    let (code, output) = migrate(&env, &["--from", "seed"]);
    assert_eq!(code, Some(2), "{output}");
    assert!(output.contains("KV_API_SEED_AES_KEY"), "{output}");
    let (code, help) = run_command_to_exit(WRITER, &["--help"], &[], Duration::from_secs(10));
    assert_eq!(code, Some(0));
    assert!(help.contains("migrate-seed-topic"), "{help}");
}
