//! `GET /v1/kv:watch` end to end: a real SSE client on the real binaries and broker.

use crate::{writer, READER};
use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use eventsource_stream::{Event, Eventsource};
use futures::{Stream, StreamExt};
use kv_testkit::reader::{dump, query_value, wait_ready};
use kv_testkit::services::{keep_writing, reader_env, service_env_with};
use kv_testkit::{
    eventually, metric, service_env, token_expiry, Broker, OidcProvider, Service, DEADLINE,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

pub(crate) type Events = Pin<Box<dyn Stream<Item = Event>>>;

/// Opens a watch; `query` is the query string, `last_event_id` a resume position.
async fn request(
    http: &reqwest::Client,
    reader: &Service,
    query: &str,
    last_event_id: Option<&str>,
    token: Option<&str>,
) -> reqwest::Response {
    let mut request = http
        .get(reader.url(&format!("/v1/kv:watch?{query}")))
        .header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("the reader answers")
}

/// A watch's events; fails the test unless the watch was accepted.
pub(crate) async fn watch(
    http: &reqwest::Client,
    reader: &Service,
    query: &str,
    last_event_id: Option<&str>,
) -> Events {
    let response = request(http, reader, query, last_event_id, None).await;
    assert_eq!(response.status(), StatusCode::OK, "{}", reader.output());
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    Box::pin(
        response
            .bytes_stream()
            .eventsource()
            .map(|event| event.expect("a well-formed event")),
    )
}

/// The next event, failing the test after the deadline; `None` once the stream ended.
async fn next(events: &mut Events) -> Option<Event> {
    tokio::time::timeout(DEADLINE, events.next())
        .await
        .expect("an event within the deadline")
}

/// The next `put` or `delete`, passing over `progress`.
pub(crate) async fn next_change(events: &mut Events) -> Event {
    loop {
        let event = next(events).await.expect("the stream goes on");
        if event.event != "progress" {
            return event;
        }
    }
}

/// A change as the test compares it: kind, key, value, partition, offset.
type Change = (String, String, Option<String>, i64, i64);

fn change_of(event: &Event) -> Change {
    assert!(
        event.event == "put" || event.event == "delete",
        "not a change: {event:?}"
    );
    let data: Value = serde_json::from_str(&event.data).expect("json data");
    (
        event.event.clone(),
        data["key"].as_str().expect("a text key").to_owned(),
        data["value"].as_str().map(str::to_owned),
        data["partition"].as_i64().expect("partition"),
        data["offset"].as_i64().expect("offset"),
    )
}

/// Writes `items` (batch items) in batches of 100; the changes they make, in order, with the
/// positions the writer returned.
async fn write(http: &reqwest::Client, writer: &Service, items: &[Value]) -> Vec<Change> {
    let mut changes = Vec::new();
    for chunk in items.chunks(100) {
        let answer: Value = http
            .post(writer.url("/v1/kv:batch"))
            .json(&json!({ "items": chunk }))
            .send()
            .await
            .expect("batch")
            .json()
            .await
            .expect("batch json");
        let results = answer["items"].as_array().expect("items");
        for (item, result) in chunk.iter().zip(results) {
            assert_eq!(result["status"], 200, "{answer}");
            let kind = if item["delete"] == true {
                "delete"
            } else {
                "put"
            };
            changes.push((
                kind.to_owned(),
                item["key"].as_str().expect("key").to_owned(),
                item["value"].as_str().map(str::to_owned),
                result["partition"].as_i64().expect("partition"),
                result["offset"].as_i64().expect("offset"),
            ));
        }
    }
    changes
}

/// 700 writes: 500 puts and 100 deletes under `w/` (some keys written again, each delete of a
/// key that holds a value), interleaved with 100 puts under `x/`.
fn interleaved_writes() -> Vec<Value> {
    let mut live = std::collections::VecDeque::new();
    let mut items = Vec::new();
    for step in 0..700 {
        match step % 7 {
            3 => items.push(json!({"key": format!("x/{step}"), "value": "other"})),
            6 => {
                let key: String = live.pop_front().expect("a live key");
                items.push(json!({"key": key, "delete": true}));
            }
            _ => {
                let key = format!("w/{}", step % 350);
                if !live.contains(&key) {
                    live.push_back(key.clone());
                }
                items.push(json!({"key": key, "value": format!("v{step}")}));
            }
        }
    }
    items
}

fn assert_offsets_rise_per_partition(changes: &[Change]) {
    let mut last: BTreeMap<i64, i64> = BTreeMap::new();
    for (.., partition, offset) in changes {
        if let Some(previous) = last.insert(*partition, *offset) {
            assert!(
                *offset > previous,
                "partition {partition}: {offset} after {previous}"
            );
        }
    }
}

#[tokio::test]
async fn a_watch_gets_exactly_the_changes_under_its_prefix_and_resumes_on_another_replica_without_a_gap(
) {
    let broker = Broker::start();
    let topic = broker.create_topic("watch", 3).await;
    let writer = Service::start(writer(), &service_env(&broker, &topic));
    let first = Service::start(READER, &reader_env(&broker, &topic, "watch-a"));
    let second = Service::start(READER, &reader_env(&broker, &topic, "watch-b"));
    let http = reqwest::Client::new();
    wait_ready(&http, &first).await;
    wait_ready(&http, &second).await;
    let mut whole = watch(&http, &first, "prefix=w%2F", None).await;
    let mut cut = watch(&http, &first, "prefix=w%2F", None).await;
    for events in [&mut whole, &mut cut] {
        let opened = next(events).await.expect("an event");
        assert_eq!(opened.event, "progress", "a watch begins with its position");
    }

    let written = write(&http, &writer, &interleaved_writes()).await;
    let expected: Vec<Change> = written
        .into_iter()
        .filter(|(_, key, ..)| key.starts_with("w/"))
        .collect();
    assert_eq!(expected.len(), 600);

    let mut got = Vec::new();
    while got.len() < expected.len() {
        got.push(change_of(&next_change(&mut whole).await));
    }
    assert_offsets_rise_per_partition(&got);
    let as_set = |changes: &[Change]| changes.iter().cloned().collect::<BTreeSet<_>>();
    assert_eq!(
        as_set(&got),
        as_set(&expected),
        "the w/ changes at the writer's positions"
    );
    for per_partition in 0..3 {
        let order = |changes: &[Change]| -> Vec<Change> {
            changes
                .iter()
                .filter(|c| c.3 == per_partition)
                .cloned()
                .collect()
        };
        assert_eq!(order(&got), order(&expected));
    }

    let mut before_cut = Vec::new();
    let mut last_id = String::new();
    while before_cut.len() < 300 {
        let event = next_change(&mut cut).await;
        last_id = event.id.clone();
        before_cut.push(change_of(&event));
    }
    drop(cut);
    let mut resumed = watch(&http, &second, "prefix=w%2F", Some(&last_id)).await;
    let mut after_cut = Vec::new();
    while before_cut.len() + after_cut.len() < expected.len() {
        after_cut.push(change_of(&next_change(&mut resumed).await));
    }
    // Caught up: a progress event comes before any further change.
    let idle = next(&mut resumed).await.expect("an event");
    assert_eq!(idle.event, "progress", "nothing sent twice: {idle:?}");
    let all: Vec<Change> = before_cut.iter().chain(&after_cut).cloned().collect();
    assert_eq!(all.len(), as_set(&all).len(), "no change twice");
    assert_eq!(as_set(&all), as_set(&expected), "no change missing");
    assert_offsets_rise_per_partition(&all);
}

#[tokio::test]
async fn a_resume_older_than_the_buffer_gets_a_reset_and_the_stores_state_and_a_snapshot_has_no_gap(
) {
    let broker = Broker::start();
    let topic = broker.create_topic("watch-reset", 2).await;
    let writer = Service::start(writer(), &service_env(&broker, &topic));
    let reader = Service::start(
        READER,
        &service_env_with(&broker, &topic, &[("KV_API_WATCH_BUFFER_EVENTS", "20")]),
    );
    let http = reqwest::Client::new();
    wait_ready(&http, &reader).await;
    let early = write(&http, &writer, &[json!({"key": "s/0", "value": "first"})]).await;
    let early_id = format!("{}:{}", early[0].3, early[0].4);
    let items: Vec<Value> = (0..60)
        .map(|i| match i % 6 {
            5 => json!({"key": format!("s/{}", i - 3), "delete": true}),
            4 => json!({"key": format!("t/{i}"), "value": "not watched"}),
            _ => json!({"key": format!("s/{i}"), "value": format!("v{i}")}),
        })
        .collect();
    let written = write(&http, &writer, &items).await;
    // Every partition's last write: the dump below must see all of them, not only the last
    // write's partition.
    let mut last_of: BTreeMap<i64, i64> = BTreeMap::new();
    for change in &written {
        let offset = last_of.entry(change.3).or_default();
        *offset = (*offset).max(change.4);
    }
    let last_token = last_of
        .iter()
        .map(|(partition, offset)| format!("{partition}:{offset}"))
        .collect::<Vec<_>>()
        .join(",");
    eventually("the reader applied the writes", DEADLINE, || {
        let read = http
            .get(reader.url("/v1/kv/s/0"))
            .header("x-consistency-token", &last_token)
            .send();
        async move { (read.await.ok()?.status() == StatusCode::OK).then_some(()) }
    })
    .await;
    let mut state: BTreeMap<Vec<u8>, Vec<u8>> = dump(&http, &reader)
        .await
        .into_iter()
        .filter(|(key, _)| key.starts_with(b"s/"))
        .collect();

    let from = format!("prefix=s%2F&from={}", query_value(&early_id));
    let snapshot_query = "prefix=s%2F&snapshot=true";
    for (query, reset) in [(from.as_str(), true), (snapshot_query, false)] {
        let mut events = watch(&http, &reader, query, None).await;
        if reset {
            let first = next(&mut events).await.expect("an event");
            assert_eq!(first.event, "reset", "{first:?}");
            assert!(first.id.is_empty(), "a reset moves no position");
        }
        let mut seen = BTreeMap::new();
        let position = loop {
            let event = next(&mut events).await.expect("an event");
            if event.event == "progress" {
                break event.id;
            }
            assert_eq!(event.event, "put", "{event:?}");
            assert!(event.id.is_empty(), "snapshot entries carry no position");
            let data: Value = serde_json::from_str(&event.data).expect("json");
            seen.insert(
                data["key"].as_str().expect("key").as_bytes().to_vec(),
                data["value"].as_str().expect("value").as_bytes().to_vec(),
            );
        };
        assert_eq!(seen, state, "{query}: the snapshot is the store's state");
        assert!(position.contains(':'), "{position}");

        let key = format!("s/live-{reset}");
        let live = write(&http, &writer, &[json!({"key": key, "value": "now"})]).await;
        let event = next_change(&mut events).await;
        assert_eq!(change_of(&event), live[0].clone(), "then live, from there");
        let read = http
            .get(reader.url(&format!("/v1/kv/{key}")))
            .send()
            .await
            .expect("read");
        assert_eq!(
            read.status(),
            StatusCode::OK,
            "an event is sent only once its change is readable"
        );
        assert_eq!(read.text().await.expect("body"), "now");
        state.insert(key.into_bytes(), b"now".to_vec());
    }
    let metrics = reader.metrics(&http).await;
    assert_eq!(
        metric(&metrics, "kv_reader_watch_resets_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics, "kv_reader_watch_buffer_changes", &[]),
        Some(20.0),
        "the buffer holds KV_API_WATCH_BUFFER_EVENTS changes"
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_gets_overflow_and_the_readers_memory_stays_bounded() {
    let broker = Broker::start();
    let topic = broker.create_topic("watch-slow", 1).await;
    let writer = Service::start(writer(), &service_env(&broker, &topic));
    // The same replica twice, one with a watch that is not read: what the replica itself
    // holds (consumer buffers, the store) grows alike on both, what the watch would, only there.
    let small_ring = [("KV_API_WATCH_BUFFER_BYTES", "1048576")];
    let mut watched_env = service_env_with(&broker, &topic, &small_ring);
    watched_env.push(("KAFKA_GROUP_ID", "watched".to_owned()));
    let mut unwatched_env = service_env_with(&broker, &topic, &small_ring);
    unwatched_env.push(("KAFKA_GROUP_ID", "unwatched".to_owned()));
    let reader = Service::start(READER, &watched_env);
    let unwatched = Service::start(READER, &unwatched_env);
    let http = reqwest::Client::new();
    wait_ready(&http, &reader).await;
    wait_ready(&http, &unwatched).await;
    let mut events = watch(&http, &reader, "prefix=big%2F", None).await;
    assert_eq!(next(&mut events).await.expect("an event").event, "progress");
    let before = [reader.rss_bytes().0, unwatched.rss_bytes().0];

    // 64 MiB through the watch while its client reads nothing: far more than the socket
    // buffers between them and the reader's ring of 1 MiB hold.
    let value = STANDARD.encode(vec![7u8; 96 * 1024]);
    let writes = 512;
    let mut token = String::new();
    for round in 0..writes / 8 {
        let puts = (0..8).map(|i| {
            let request = http
                .put(writer.url(&format!("/v1/kv/big/{i}")))
                .body(value.clone())
                .send();
            async move {
                let response = request.await.expect("put");
                assert_eq!(response.status(), StatusCode::OK);
                response.headers()["x-consistency-token"]
                    .to_str()
                    .expect("token")
                    .to_owned()
            }
        });
        let tokens = futures::future::join_all(puts).await;
        if round == writes / 8 - 1 {
            token = tokens.join(",");
        }
    }
    for replica in [&reader, &unwatched] {
        eventually("the replica applied every write", DEADLINE, || {
            let read = http
                .get(replica.url("/v1/kv/big/0"))
                .header("x-consistency-token", &token)
                .send();
            async move { (read.await.ok()?.status() == StatusCode::OK).then_some(()) }
        })
        .await;
    }
    let after = [reader.rss_bytes().0, unwatched.rss_bytes().0];
    let grown = [
        after[0].saturating_sub(before[0]),
        after[1].saturating_sub(before[1]),
    ];
    println!(
        "{} MiB through a watch that was not read: the reader's RSS grew by {} MiB ({} -> {} \
         MiB), the same replica's without a watch by {} MiB",
        (writes * value.len()) >> 20,
        grown[0] >> 20,
        before[0] >> 20,
        after[0] >> 20,
        grown[1] >> 20
    );
    assert!(
        grown[0] < grown[1] + (12 << 20),
        "a watch that was not read grew the reader by {} MiB, {} MiB more than without it",
        grown[0] >> 20,
        grown[0].saturating_sub(grown[1]) >> 20
    );

    let mut changes = 0;
    let ended = loop {
        match next(&mut events).await {
            Some(event) if event.event == "put" => changes += 1,
            Some(event) if event.event == "progress" => {}
            Some(event) => break event,
            None => panic!("the stream ended without a word after {changes} changes"),
        }
    };
    assert_eq!(ended.event, "overflow", "{ended:?}");
    assert!(
        changes < writes,
        "{changes} of {writes} changes reached the client"
    );
    assert!(
        next(&mut events).await.is_none(),
        "an overflowed watch ends"
    );
    let metrics = reader.metrics(&http).await;
    assert_eq!(
        metric(&metrics, "kv_reader_watch_overflows_total", &[]),
        Some(1.0)
    );
    assert_eq!(metric(&metrics, "kv_reader_watches_open", &[]), Some(0.0));
}

#[tokio::test]
async fn a_watch_needs_the_read_scope_and_an_idle_one_receives_progress_every_second() {
    let broker = Broker::start();
    let topic = broker.create_topic("watch-auth", 1).await;
    let idp = OidcProvider::start("watch");
    let mut env = vec![
        ("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_servers()),
        ("KV_API_KAFKA_KEY_VALUE_TOPIC", topic.clone()),
        ("KAFKA_GROUP_ID", format!("{topic}-reader")),
        ("KV_API_AUTH_READ", "kv:read".to_owned()),
    ];
    env.extend(idp.service_env());
    let reader = Service::start(READER, &env);
    let http = reqwest::Client::new();
    wait_ready(&http, &reader).await;

    let anonymous = request(&http, &reader, "prefix=a", None, None).await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let writer_only = idp.token("kv-full", "kv:write").await;
    let lacking = request(&http, &reader, "prefix=a", None, Some(&writer_only)).await;
    assert_eq!(lacking.status(), StatusCode::FORBIDDEN);
    let body: Value = lacking.json().await.expect("json error");
    assert_eq!(body["error"]["code"], "forbidden");

    let reading = idp.token("kv-reader", "kv:read").await;
    let response = request(&http, &reader, "prefix=a", None, Some(&reading)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut events: Events = Box::pin(
        response
            .bytes_stream()
            .eventsource()
            .map(|event| event.expect("an event")),
    );
    let started = std::time::Instant::now();
    for _ in 0..3 {
        let event = next(&mut events).await.expect("an event");
        assert_eq!(event.event, "progress");
        assert_eq!(event.id, "start", "nothing applied on an empty topic");
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(4),
        "three progress events took {elapsed:?}"
    );
}

#[tokio::test]
async fn bad_watch_requests_get_clear_errors_watches_past_the_limit_503_and_none_holds_up_a_shutdown(
) {
    let broker = Broker::start();
    let topic = broker.create_topic("watch-limits", 1).await;
    let mut reader = Service::start(
        READER,
        &service_env_with(&broker, &topic, &[("KV_API_MAX_WATCHES", "2")]),
    );
    let http = reqwest::Client::new();
    wait_ready(&http, &reader).await;

    let no_accept = http
        .get(reader.url("/v1/kv:watch"))
        .send()
        .await
        .expect("answer");
    assert_eq!(no_accept.status(), StatusCode::BAD_REQUEST);
    let body: Value = no_accept.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("text/event-stream")),
        "{body}"
    );
    for (query, names) in [
        ("prefix=a&prefix_b64=YQ", "prefix_b64"),
        ("prefix_b64=%25%25", "prefix_b64"),
        ("from=yesterday", "resume from"),
        ("snapshot=yes", "snapshot"),
        ("limit=3", "limit"),
    ] {
        let answer = request(&http, &reader, query, None, None).await;
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST, "{query}");
        let body: Value = answer.json().await.expect("json");
        assert_eq!(body["error"]["code"], "invalid_request", "{query}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(names)),
            "{query}: {body}"
        );
    }
    let bad_id = request(&http, &reader, "", Some("0:x"), None).await;
    assert_eq!(bad_id.status(), StatusCode::BAD_REQUEST);

    let open = [
        watch(&http, &reader, "", None).await,
        watch(&http, &reader, "prefix=b", None).await,
    ];
    let refused = request(&http, &reader, "", None, None).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["code"], "overloaded");
    let metrics = reader.metrics(&http).await;
    assert_eq!(metric(&metrics, "kv_reader_watches_open", &[]), Some(2.0));
    drop(open);
    let mut last = eventually("a closed watch frees its slot", DEADLINE, || {
        let answer = request(&http, &reader, "", None, None);
        async move {
            let answer = answer.await;
            (answer.status() == StatusCode::OK).then_some(answer)
        }
    })
    .await
    .bytes_stream()
    .eventsource();

    // An open watch does not hold up a shutdown: the stream ends, then the process.
    assert!(matches!(last.next().await, Some(Ok(event)) if event.event == "progress"));
    reader.terminate();
    loop {
        match tokio::time::timeout(DEADLINE, last.next()).await {
            Ok(Some(Ok(event))) if event.event == "progress" => {}
            Ok(None) => break,
            other => panic!("the watch did not end at shutdown: {other:?}"),
        }
    }
    assert_eq!(
        reader.wait_for_exit(Duration::from_secs(15)).await,
        Some(0),
        "{}",
        reader.output()
    );
}

#[tokio::test]
async fn on_an_encrypted_topic_and_store_a_watch_names_user_keys_and_plaintext_values_never_macs() {
    const AES_KEY: &str = "8f2c6a1e9b7d4c3a5e0f1b2d3c4a5b6c7d8e9f0a1b2c3d4e5f60718293a4b5c6";
    let broker = Broker::start();
    let topic = broker.create_topic("watch-sealed", 2).await;
    let encrypted = [
        ("KV_API_ENCRYPT_DATA_ON_KAFKA", "true"),
        ("KV_API_AES_KEY", AES_KEY),
    ];
    let writer = Service::start(writer(), &service_env_with(&broker, &topic, &encrypted));
    let store = tempfile::tempdir().expect("store folder");
    let location = store.path().to_string_lossy().into_owned();
    let mut reader_vars = encrypted.to_vec();
    reader_vars.extend([
        ("KV_API_STATE_STORAGE_DISK_LOCATION", location.as_str()),
        ("KV_API_STATE_STORAGE_PASSWORD", "correct horse"),
    ]);
    let reader = Service::start(READER, &service_env_with(&broker, &topic, &reader_vars));
    let http = reqwest::Client::new();
    wait_ready(&http, &reader).await;
    write(
        &http,
        &writer,
        &[json!({"key": "users/ada", "value": "before"})],
    )
    .await;
    eventually("the first write on the reader", DEADLINE, || {
        let read = http.get(reader.url("/v1/kv/users%2Fada")).send();
        async move { (read.await.ok()?.status() == StatusCode::OK).then_some(()) }
    })
    .await;

    let mut events = watch(&http, &reader, "prefix=users%2F&snapshot=true", None).await;
    let snapshot = next(&mut events).await.expect("an event");
    assert_eq!(snapshot.event, "put");
    let data: Value = serde_json::from_str(&snapshot.data).expect("json");
    assert_eq!(
        (&data["key"], &data["value"]),
        (&json!("users/ada"), &json!("before"))
    );
    assert_eq!(next(&mut events).await.expect("an event").event, "progress");

    let written = write(
        &http,
        &writer,
        &[
            json!({"key": "users/ada", "value": "Ada Lovelace"}),
            json!({"key": "users/ada", "delete": true}),
        ],
    )
    .await;
    let put = change_of(&next_change(&mut events).await);
    assert_eq!(put, written[0]);
    let delete = next_change(&mut events).await;
    assert_eq!(change_of(&delete), written[1]);
    let data: Value = serde_json::from_str(&delete.data).expect("json");
    assert!(
        data.get("key_b64").is_none(),
        "a MAC is never a key: {data}"
    );
    assert!(data.get("value").is_none(), "{data}");
}

/// A reader with auth on and no leeway, and a writer with auth off.
fn reader_with_auth(broker: &Broker, topic: &str, idp: &OidcProvider) -> Service {
    let mut env = vec![
        ("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_servers()),
        ("KV_API_KAFKA_KEY_VALUE_TOPIC", topic.to_owned()),
        ("KAFKA_GROUP_ID", format!("{topic}-reader")),
        ("KV_API_AUTH_READ", "kv:read".to_owned()),
        ("KV_API_AUTH_LEEWAY_SECONDS", "0".to_owned()),
    ];
    env.extend(idp.service_env());
    Service::start(READER, &env)
}

#[tokio::test]
async fn a_watch_closes_when_its_token_expires_and_resumes_with_a_new_token_from_its_last_id() {
    let broker = Broker::start();
    let topic = broker.create_topic("watch-expiry", 2).await;
    let idp = OidcProvider::start("watch-expiry");
    let writer = Service::start(writer(), &service_env(&broker, &topic));
    let reader = reader_with_auth(&broker, &topic, &idp);
    let http = reqwest::Client::new();
    let long = idp.token("kv-reader", "kv:read").await;
    wait_ready(&http, &reader).await;

    // The provider's kv-short tokens live 2 s.
    let short = idp.token("kv-short", "kv:read").await;
    let expires = token_expiry(&short);
    let response = request(&http, &reader, "prefix=e%2F", None, Some(&short)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut events: Events = Box::pin(
        response
            .bytes_stream()
            .eventsource()
            .map(|event| event.expect("a well-formed event")),
    );
    let writes = keep_writing(
        http.clone(),
        writer.url(""),
        "e/",
        expires + Duration::from_secs(1),
    );

    let mut received = Vec::new();
    let mut last_id = None;
    let last = loop {
        let waited = tokio::time::timeout(Duration::from_secs(15), events.next()).await;
        let Ok(Some(event)) = waited else {
            panic!(
                "the watch still ran {:?} after its token expired",
                SystemTime::now()
                    .duration_since(expires)
                    .unwrap_or_default()
            );
        };
        match event.event.as_str() {
            "put" => {
                received.push(change_of(&event).1);
                last_id = Some(event.id.clone());
            }
            "progress" => last_id = Some(event.id.clone()),
            _ => break event,
        }
        assert!(
            SystemTime::now() < expires + Duration::from_secs(10),
            "the watch still runs 10 s after its token expired"
        );
    };
    let closed_at = SystemTime::now();
    assert_eq!(last.event, "error", "{last:?}");
    let data: Value = serde_json::from_str(&last.data).expect("json");
    assert_eq!(data["error"]["code"], "unauthorized", "{data}");
    assert!(
        data["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("expired") && m.contains("Last-Event-ID")),
        "{data}"
    );
    assert!(
        next(&mut events).await.is_none(),
        "the stream ends after the error"
    );
    assert!(closed_at >= expires, "closed before the token expired");
    let late = closed_at.duration_since(expires).expect("after");
    assert!(
        late < Duration::from_secs(2),
        "closed {late:?} after expiry"
    );

    // Resumed with a new token from the last id: every write, none twice.
    let response = request(
        &http,
        &reader,
        "prefix=e%2F",
        last_id.as_deref(),
        Some(&long),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut resumed: Events = Box::pin(
        response
            .bytes_stream()
            .eventsource()
            .map(|event| event.expect("a well-formed event")),
    );
    let sent = writes.await.expect("the writes");
    let after_expiry: Vec<&String> = sent
        .iter()
        .filter(|(_, at)| *at > expires)
        .map(|(key, _)| key)
        .collect();
    assert!(!after_expiry.is_empty(), "writes went on past the expiry");
    for key in &after_expiry {
        assert!(
            !received.contains(key),
            "{key}, written after the token expired, reached its watch"
        );
    }
    while received.len() < sent.len() {
        received.push(change_of(&next_change(&mut resumed).await).1);
    }
    let expected: BTreeSet<&String> = sent.iter().map(|(key, _)| key).collect();
    assert_eq!(received.iter().collect::<BTreeSet<_>>(), expected);
    assert_eq!(received.len(), expected.len(), "no write twice");
}

/// What a client keeps from a watch: the entries its events leave.
#[derive(Debug, Default)]
struct Cache {
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The keys `delete` events said expired, and the `expires_at` puts carried.
    expired: BTreeSet<String>,
    expires_at: BTreeMap<String, u64>,
}

impl Cache {
    /// Takes one event into the cache; `true` for `progress`, after which it is worth comparing.
    fn take(&mut self, event: &Event) -> bool {
        match event.event.as_str() {
            "progress" => return true,
            "reset" => self.entries.clear(),
            "put" | "delete" => {
                let data: Value = serde_json::from_str(&event.data).expect("json data");
                let key = data["key"].as_str().expect("a text key").to_owned();
                if event.event == "put" {
                    let value = data["value"].as_str().expect("a text value");
                    self.entries
                        .insert(key.clone().into_bytes(), value.as_bytes().to_vec());
                    if let Some(at) = data["expires_at"].as_u64() {
                        self.expires_at.insert(key, at);
                    }
                } else {
                    self.entries.remove(key.as_bytes());
                    if data["reason"] == "expired" {
                        self.expired.insert(key);
                    }
                }
            }
            other => panic!("unexpected event {other}: {event:?}"),
        }
        false
    }
}

/// Reads `events` into `cache` until, at a `progress`, it holds what `reader` does and
/// `done` holds of it.
async fn follow_until_equal(
    http: &reqwest::Client,
    reader: &Service,
    events: &mut Events,
    cache: &mut Cache,
    what: &str,
    done: impl Fn(&Cache) -> bool,
) {
    let started = std::time::Instant::now();
    loop {
        let event = next(events).await.expect("the stream goes on");
        if cache.take(&event) && done(cache) && cache.entries == dump(http, reader).await {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{what}: the cache built from the watch never equalled the store: {cache:?} \
             against {:?}",
            dump(http, reader).await
        );
    }
}

#[tokio::test]
async fn a_cache_built_from_a_watch_ends_equal_to_the_store_as_keys_expire_on_every_replica() {
    let broker = Broker::start();
    // Apart, so that a replica that is not the sweeper never gets a sweeper's tombstone: its
    // deletes at expiry come from its own purge.
    for sweeper in [false, true] {
        cache_follows_expiries(&broker, sweeper).await;
    }
}

async fn cache_follows_expiries(broker: &Broker, sweeper: bool) {
    let topic = broker.create_topic("watch-ttl", 2).await;
    let writer = Service::start(writer(), &service_env(broker, &topic));
    let mut env = reader_env(broker, &topic, "watch-ttl-first");
    env.push(("KV_API_TTL_SWEEPER", sweeper.to_string()));
    let reader = Service::start(READER, &env);
    let http = reqwest::Client::new();
    wait_ready(&http, &reader).await;
    let mut events = watch(&http, &reader, "prefix=t%2F&snapshot=true", None).await;
    let mut cache = Cache::default();

    let put = |key: &'static str, ttl: Option<&'static str>| {
        let mut request = http.put(writer.url(&format!("/v1/kv/t%2F{key}"))).body(key);
        if let Some(ttl) = ttl {
            request = request.header("X-KV-TTL-Seconds", ttl);
        }
        async move { assert_eq!(request.send().await.expect("put").status(), 200) }
    };
    put("keep", None).await;
    put("brief", Some("1")).await;
    put("renewed", Some("1")).await;
    put("renewed", None).await;
    put("lasting", Some("600")).await;
    // Done once the brief key came and went and the other three are there.
    let all_expired = |cache: &Cache| {
        cache.expires_at.contains_key("t/brief")
            && !cache.entries.contains_key(&b"t/brief"[..])
            && cache.entries.len() == 3
    };
    let what = format!("live, sweeper {sweeper}");
    follow_until_equal(&http, &reader, &mut events, &mut cache, &what, all_expired).await;
    assert!(cache.expired.contains("t/brief"), "{cache:?}");
    assert!(!cache.expired.contains("t/renewed"), "{cache:?}");
    assert!(cache.expires_at.contains_key("t/lasting"), "{cache:?}");

    // A first listing after the expiry, with nothing written since, lists what the store holds.
    let mut events = watch(&http, &reader, "prefix=t%2F&snapshot=true", None).await;
    let mut listed = Cache::default();
    while !listed.take(&next(&mut events).await.expect("an event")) {}
    assert_eq!(
        listed.entries,
        dump(&http, &reader).await,
        "sweeper {sweeper}"
    );
    assert!(listed.expires_at.contains_key("t/lasting"), "{listed:?}");

    // A replica that starts after the expiry replays the expired put: a watch from the start
    // sees it deleted, not put.
    let mut env = reader_env(broker, &topic, "watch-ttl-late");
    env.push(("KV_API_TTL_SWEEPER", sweeper.to_string()));
    let late = Service::start(READER, &env);
    wait_ready(&http, &late).await;
    let mut events = watch(&http, &late, "prefix=t%2F", Some("start")).await;
    let mut replayed = Cache::default();
    let what = format!("replayed, sweeper {sweeper}");
    follow_until_equal(&http, &late, &mut events, &mut replayed, &what, |cache| {
        cache.entries.len() == 3 && cache.expired.contains("t/brief")
    })
    .await;
}

#[tokio::test]
async fn a_watch_id_never_passes_records_the_store_refused_so_a_resume_after_the_key_fix_gets_them()
{
    const RIGHT_KEY: &str = "8f2c6a1e9b7d4c3a5e0f1b2d3c4a5b6c7d8e9f0a1b2c3d4e5f60718293a4b5c6";
    const WRONG_KEY: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const KEYS: usize = 20;
    let broker = Broker::start();
    let topic = broker.create_topic("watch-refused", 1).await;
    let encrypted = |key: &'static str| {
        [
            ("KV_API_ENCRYPT_DATA_ON_KAFKA", "true"),
            ("KV_API_AES_KEY", key),
        ]
    };
    let writer = Service::start(
        writer(),
        &service_env_with(&broker, &topic, &encrypted(RIGHT_KEY)),
    );
    let http = reqwest::Client::new();
    let items: Vec<Value> = (0..KEYS)
        .map(|i| json!({"key": format!("r/{i}"), "value": "v"}))
        .collect();
    write(&http, &writer, &items).await;
    let dir = tempfile::tempdir().expect("store folder");
    let location = dir.path().display().to_string();
    let reader_env = |key: &'static str| {
        let mut env = encrypted(key).to_vec();
        env.push(("KV_API_STATE_STORAGE_DISK_LOCATION", location.as_str()));
        service_env_with(&broker, &topic, &env)
    };

    let mut wrong = Service::start(READER, &reader_env(WRONG_KEY));
    let mut events = eventually("a watch on the misconfigured reader", DEADLINE, || {
        let answer = request(&http, &wrong, "", None, None);
        async move {
            let answer = answer.await;
            (answer.status() == StatusCode::OK).then_some(answer)
        }
    })
    .await
    .bytes_stream()
    .eventsource();
    eventually("the reader to read every record", DEADLINE, || async {
        let (_, report) = kv_testkit::reader::ready_report(&http, &wrong).await;
        (report["status"] == "misconfigured"
            && report["partitions"]["0"]["next_offset"].as_i64() == Some(KEYS as i64))
        .then_some(())
    })
    .await;
    // A progress sent after every record was read: the id a client would resume from.
    let mut last_id = String::new();
    for _ in 0..2 {
        let event = tokio::time::timeout(DEADLINE, events.next())
            .await
            .expect("an event")
            .expect("the stream goes on")
            .expect("an event");
        assert_eq!(event.event, "progress", "{event:?}");
        last_id = event.id;
    }
    drop(events);
    wrong.terminate();
    assert_eq!(wrong.wait_for_exit(DEADLINE).await, Some(0));

    let right = Service::start(READER, &reader_env(RIGHT_KEY));
    wait_ready(&http, &right).await;
    let mut resumed = watch(&http, &right, "", Some(&last_id)).await;
    let mut got = BTreeSet::new();
    let started = std::time::Instant::now();
    while got.len() < KEYS {
        assert!(
            started.elapsed() < DEADLINE,
            "resumed from {last_id}, the watch got only {got:?}"
        );
        let event = next(&mut resumed).await.expect("the stream goes on");
        if event.event != "progress" {
            got.insert(change_of(&event).1);
        }
    }
    let expected: BTreeSet<String> = (0..KEYS).map(|i| format!("r/{i}")).collect();
    assert_eq!(got, expected, "resumed from {last_id}");
}

#[tokio::test]
async fn one_caller_holds_at_most_its_share_of_watches_and_other_callers_are_still_served() {
    let broker = Broker::start();
    let topic = broker.create_topic("watch-callers", 1).await;
    let reader = Service::start(
        READER,
        &service_env_with(&broker, &topic, &[("KV_API_MAX_WATCHES_PER_CALLER", "2")]),
    );
    let http = reqwest::Client::new();
    // With auth off a caller is its address: another loopback address is another caller.
    let other = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .expect("a client on 127.0.0.2");
    wait_ready(&http, &reader).await;
    let open = [
        watch(&http, &reader, "", None).await,
        watch(&http, &reader, "prefix=a", None).await,
    ];
    let refused = request(&http, &reader, "", None, None).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["code"], "too_many_requests", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("KV_API_MAX_WATCHES_PER_CALLER")),
        "{body}"
    );
    let _elsewhere = watch(&other, &reader, "", None).await;
    drop(open);
    eventually("a closed watch frees its caller's slot", DEADLINE, || {
        let answer = request(&http, &reader, "", None, None);
        async move { (answer.await.status() == StatusCode::OK).then_some(()) }
    })
    .await;

    // With auth on a caller is its token's subject, wherever it connects from.
    let idp = OidcProvider::start("watch-callers");
    let mut env = vec![
        ("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_servers()),
        ("KV_API_KAFKA_KEY_VALUE_TOPIC", topic.clone()),
        ("KAFKA_GROUP_ID", format!("{topic}-auth")),
        ("KV_API_AUTH_READ", "kv:read".to_owned()),
        ("KV_API_MAX_WATCHES_PER_CALLER", "1".to_owned()),
    ];
    env.extend(idp.service_env());
    let guarded = Service::start(READER, &env);
    wait_ready(&http, &guarded).await;
    let reading = idp.token("kv-reader", "kv:read").await;
    let first = request(&http, &guarded, "", None, Some(&reading)).await;
    assert_eq!(first.status(), StatusCode::OK);
    let again = request(&other, &guarded, "", None, Some(&reading)).await;
    assert_eq!(again.status(), StatusCode::TOO_MANY_REQUESTS);
    let someone_else = idp.token("kv-full", "kv:read").await;
    let second = request(&http, &guarded, "", None, Some(&someone_else)).await;
    assert_eq!(second.status(), StatusCode::OK);
}

#[tokio::test]
async fn first_listings_of_an_encrypted_store_never_crowd_out_listings() {
    const WATCHES: usize = 6;
    let broker = Broker::start();
    let topic = broker.create_topic("watch-sealed-listing", 2).await;
    let producer = broker.producer();
    let records: Vec<kv_testkit::topic::KeyValue> = (0..20_000)
        .map(|i| (format!("key-{i:05}").into_bytes(), Some(b"v".to_vec())))
        .collect();
    kv_testkit::topic::produce_all(&producer, &topic, &records).await;
    let dir = tempfile::tempdir().expect("store dir");
    let location = dir.path().display().to_string();
    let reader = Service::start(
        READER,
        &service_env_with(
            &broker,
            &topic,
            &[
                ("KV_API_STATE_STORAGE_DISK_LOCATION", location.as_str()),
                ("KV_API_STATE_STORAGE_PASSWORD", "pw"),
            ],
        ),
    );
    let http = reqwest::Client::new();
    wait_ready(&http, &reader).await;

    let mut watches = Vec::new();
    for _ in 0..WATCHES {
        watches.push(watch(&http, &reader, "prefix=key-&snapshot=true", None).await);
    }
    let listed = std::cell::Cell::new(0);
    let first_listings = futures::future::join_all(watches.iter_mut().map(|events| async {
        let mut entries = 0;
        loop {
            let event = next(events).await.expect("the stream goes on");
            match event.event.as_str() {
                "put" => entries += 1,
                "progress" => break,
                other => panic!("{other}: {event:?}"),
            }
        }
        listed.set(listed.get() + 1);
        entries
    }));
    // One listing at a time while the watches list: each finds a slot of the listings' own.
    let listings = async {
        let mut statuses = BTreeMap::new();
        while listed.get() < WATCHES {
            let status = http
                .get(reader.url("/v1/kv?prefix=key-&limit=3"))
                .send()
                .await
                .expect("list")
                .status();
            *statuses.entry(status.as_u16()).or_insert(0) += 1;
        }
        statuses
    };
    let (entries, statuses) = tokio::join!(first_listings, listings);
    assert_eq!(entries, vec![20_000; WATCHES]);
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        vec![200],
        "listings while {WATCHES} watches listed: {statuses:?}"
    );
}
