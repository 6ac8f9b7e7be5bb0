//! kv-client end to end: the real kv-writer and kv-reader binaries against a real broker process.
//! One test binary.

use std::time::Duration;

use bytes::Bytes;
use kv_client::{Client, Error, Precondition, WatchEvent, WriteOptions};
use kv_testkit::reader::wait_ready;
use kv_testkit::services::reader_env;
use kv_testkit::services::service_env_with;
use kv_testkit::{metric, service_env, Broker, Service, Shards, DEADLINE};

fn writer() -> &'static str {
    kv_testkit::workspace_binary("kv-writer")
}

fn reader() -> &'static str {
    kv_testkit::workspace_binary("kv-reader")
}

/// A writer that decides conditional writes through `readers`.
fn conditional_writer(broker: &Broker, topic: &str, readers: &[&Service]) -> Service {
    let urls = readers
        .iter()
        .map(|r| r.url(""))
        .collect::<Vec<_>>()
        .join(",");
    Service::start(
        writer(),
        &service_env_with(broker, topic, &[("KV_API_READERS", &urls)]),
    )
}

#[tokio::test]
async fn every_read_sees_every_write_the_client_made_before_it_without_polling() {
    let broker = Broker::start();
    let topic = broker.create_topic("client-ryw", 3).await;
    let reader = Service::start(reader(), &service_env(&broker, &topic));
    let writer = Service::start(writer(), &service_env(&broker, &topic));
    wait_ready(&reqwest::Client::new(), &reader).await;
    let client = Client::builder()
        .writer(writer.url(""))
        .readers([reader.url("")])
        .build()
        .expect("client");

    for i in 0..40 {
        let key = format!("ryw/{i}/../x y");
        let written = client.put(&key, format!("v{i}")).await.expect("put");
        let version = written.version.expect("a version");
        // No waiting of our own: the read carries the token of every write made so far.
        let entry = client.get(&key).await.expect("get").expect("present");
        assert_eq!(entry.value, Bytes::from(format!("v{i}")));
        assert_eq!(entry.version, Some(version));
    }
    client.delete("ryw/0/../x y").await.expect("delete");
    assert_eq!(client.get("ryw/0/../x y").await.expect("get"), None);
    let token = client.token().expect("a token").to_string();
    assert!(token.contains(':'), "{token}");
}

#[tokio::test]
async fn concurrent_increments_from_many_clients_lose_no_update() {
    let broker = Broker::start();
    let topic = broker.create_topic("client-counter", 2).await;
    let reader = Service::start(reader(), &service_env(&broker, &topic));
    wait_ready(&reqwest::Client::new(), &reader).await;
    let writer = conditional_writer(&broker, &topic, &[&reader]);
    let build = || {
        Client::builder()
            .writer(writer.url(""))
            .readers([reader.url("")])
            .build()
            .expect("client")
    };

    let clients = 6;
    let each = 10;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let client = build();
        tasks.push(tokio::spawn(async move {
            for _ in 0..each {
                client.increment("counter", 1).await.expect("increment");
            }
        }));
    }
    for task in tasks {
        task.await.expect("a client");
    }
    let client = build();
    let entry = client.get("counter").await.expect("get").expect("counter");
    assert_eq!(entry.value, Bytes::from((clients * each).to_string()));

    // A stale version is refused with the current one, and nothing is written.
    let stale = kv_client::Version {
        partition: entry.version.expect("version").partition,
        offset: 0,
    };
    let refused = client
        .put_with(
            "counter",
            "0",
            &WriteOptions {
                precondition: Precondition::IfMatch(stale),
                ..WriteOptions::default()
            },
        )
        .await;
    match refused {
        Err(Error::PreconditionFailed { current }) => assert_eq!(current, entry.version),
        other => panic!("expected a failed precondition, got {other:?}"),
    }
    client.put("text", "not a number").await.expect("put");
    assert!(matches!(
        client.increment("text", 1).await,
        Err(Error::NotACounter { .. })
    ));
}

#[tokio::test]
async fn reads_go_straight_to_a_shard_holding_the_key_and_are_never_forwarded() {
    let broker = Broker::start();
    let topic = broker.create_topic("client-shards", 6).await;
    let shards = Shards::start(reader(), &service_env(&broker, &topic), 3, 1);
    let http = reqwest::Client::new();
    for (_, shard) in shards.running() {
        wait_ready(&http, shard).await;
    }
    let writer = Service::start(writer(), &service_env(&broker, &topic));
    let client = Client::builder()
        .writer(writer.url(""))
        .readers(shards.running().map(|(_, shard)| shard.url("")))
        .build()
        .expect("client");

    for i in 0..30 {
        let key = format!("routed/{i}");
        client.put(&key, format!("{i}")).await.expect("put");
        let entry = client.get(&key).await.expect("get").expect("present");
        assert_eq!(entry.value, Bytes::from(i.to_string()));
    }
    for (i, shard) in shards.running() {
        let text = shard.metrics(&http).await;
        let forwarded: f64 = text
            .lines()
            .filter(|l| l.starts_with("kv_reader_forwarded_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(forwarded, 0.0, "shard {i} forwarded reads:\n{text}");
        assert!(metric(&text, "kv_reader_store_keys", &[]).is_some());
    }
}

#[tokio::test]
async fn a_watch_delivers_changes_and_resumes_on_another_replica_when_its_reader_dies() {
    let broker = Broker::start();
    let topic = broker.create_topic("client-watch", 2).await;
    let http = reqwest::Client::new();
    let mut first = Service::start(reader(), &reader_env(&broker, &topic, "watch-a"));
    let second = Service::start(reader(), &reader_env(&broker, &topic, "watch-b"));
    wait_ready(&http, &first).await;
    wait_ready(&http, &second).await;
    let writer = Service::start(writer(), &service_env(&broker, &topic));
    let client = Client::builder()
        .writer(writer.url(""))
        .readers([first.url(""), second.url("")])
        .max_retries(8)
        .build()
        .expect("client");
    client.put("w/a", "1").await.expect("put");

    let mut watch = client.watch("w/");
    let mut seen = Vec::new();
    // The current entry first, then live changes.
    loop {
        let event = tokio::time::timeout(DEADLINE, watch.next())
            .await
            .expect("an event in time")
            .expect("an event");
        match event {
            WatchEvent::Put { key, value, .. } => {
                seen.push((key, value));
                break;
            }
            WatchEvent::Progress { .. } | WatchEvent::Reset => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, [(Bytes::from("w/a"), Bytes::from("1"))]);

    // Whichever replica the watch is on, kill it: the watch resumes on the other.
    first.kill();
    client.put("w/b", "2").await.expect("put");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut got_b = false;
    while !got_b {
        assert!(tokio::time::Instant::now() < deadline, "no w/b");
        match tokio::time::timeout(Duration::from_secs(30), watch.next())
            .await
            .expect("an event in time")
            .expect("an event")
        {
            WatchEvent::Put { key, value, .. } if key == "w/b" => {
                assert_eq!(value, Bytes::from("2"));
                got_b = true;
            }
            WatchEvent::Put { key, .. } => assert_eq!(key, "w/a", "only w/a again after a reset"),
            _ => {}
        }
    }
    assert!(watch.last_id().is_some());
}
