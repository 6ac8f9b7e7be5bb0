//! Sharded readers (KV_API_SHARD): three reader processes over six partitions, each holding its
//! own, any of them answering any key by forwarding it one hop to an owner.

use crate::{writer, READER};
use std::collections::BTreeMap;
use std::time::Duration;

use kv_core::kafka::kafka_partition;
use kv_testkit::reader::{dump, key_path, wait_ready};
use kv_testkit::{
    eventually, metric, service_env, Broker, OidcProvider, Service, Shards, DEADLINE,
};
use reqwest::StatusCode;
use serde_json::Value;

const PARTITIONS: u32 = 6;
const SHARDS: usize = 3;

fn key(i: usize) -> String {
    format!("user/{i:04}")
}

fn owner(key: &str) -> usize {
    (kafka_partition(key.as_bytes(), PARTITIONS) as u32 % SHARDS as u32) as usize
}

/// Writes `count` keys through the writer; returns key → (value, consistency token).
async fn write_keys(
    http: &reqwest::Client,
    writer: &Service,
    count: usize,
) -> BTreeMap<String, (String, String)> {
    let mut written = BTreeMap::new();
    for i in 0..count {
        let (key, value) = (key(i), format!("value of {i}"));
        let response = http
            .put(writer.url(&key_path(key.as_bytes())))
            .body(value.clone())
            .send()
            .await
            .expect("put");
        assert_eq!(response.status(), 200, "{}", writer.output());
        let token = response.headers()["x-consistency-token"]
            .to_str()
            .expect("token")
            .to_owned();
        written.insert(key, (value, token));
    }
    written
}

async fn wait_all_ready(http: &reqwest::Client, shards: &Shards) {
    for (_, shard) in shards.running() {
        wait_ready(http, shard).await;
    }
}

/// Waits until the state read through `reader` is exactly what was written.
async fn settled(
    http: &reqwest::Client,
    reader: &Service,
    written: &BTreeMap<String, (String, String)>,
) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let expected: BTreeMap<Vec<u8>, Vec<u8>> = written
        .iter()
        .map(|(k, (v, _))| (k.clone().into_bytes(), v.clone().into_bytes()))
        .collect();
    eventually("every write applied", DEADLINE, || async {
        let state = dump(http, reader).await;
        (state == expected).then_some(state)
    })
    .await
}

/// Every page of a listing with `limit`, as the service gave them.
async fn pages(http: &reqwest::Client, reader: &Service, limit: usize) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = reader.url(&format!("/v1/kv?prefix=user%2F&limit={limit}"));
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let response = http.get(url).send().await.expect("list");
        assert_eq!(response.status(), 200);
        let page: Value = response.json().await.expect("page");
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        pages.push(page);
        if cursor.is_none() {
            return pages;
        }
    }
}

#[tokio::test]
async fn every_key_written_is_read_through_every_shard_and_listings_match_a_full_replica() {
    let broker = Broker::start();
    let topic = broker.create_topic("shards", PARTITIONS as i32).await;
    let env = service_env(&broker, &topic);
    let writer = Service::start(writer(), &env);
    let shards = Shards::start(READER, &env, SHARDS, 1);
    let full = Service::start(
        READER,
        &kv_testkit::services::reader_env(&broker, &topic, "full"),
    );
    let http = reqwest::Client::new();
    let written = write_keys(&http, &writer, 120).await;
    wait_all_ready(&http, &shards).await;
    wait_ready(&http, &full).await;
    settled(&http, &full, &written).await;
    for (_, shard) in shards.running() {
        settled(&http, shard, &written).await;
    }

    for (i, shard) in shards.running() {
        for (key, (value, token)) in &written {
            let response = http
                .get(shard.url(&key_path(key.as_bytes())))
                .header("x-consistency-token", token)
                .send()
                .await
                .expect("get");
            assert_eq!(response.status(), 200, "{key} through shard {i}");
            assert_eq!(
                response.headers()["x-served-by"],
                owner(key).to_string().as_str(),
                "{key} through shard {i}"
            );
            assert_eq!(response.text().await.expect("body"), *value);
        }
    }

    let original = http
        .post(shards.get(0).url("/retrieve"))
        .json(&serde_json::json!({"key": key(7)}))
        .send()
        .await
        .expect("retrieve");
    assert_eq!(original.status(), 200);
    assert_eq!(original.json::<String>().await.expect("text"), "value of 7");

    let mut asked: Vec<String> = (0..60).rev().map(key).collect();
    asked.insert(5, "user/missing".to_owned());
    asked.push(key(3));
    let batch: Value = http
        .post(shards.get(1).url("/v1/kv:batchGet"))
        .json(&serde_json::json!({ "keys": asked }))
        .send()
        .await
        .expect("batchGet")
        .json()
        .await
        .expect("json");
    let results = batch["results"].as_array().expect("results");
    assert_eq!(results.len(), asked.len());
    for (asked, item) in asked.iter().zip(results) {
        assert_eq!(item["key"], asked.as_str(), "in request order");
        match written.get(asked) {
            Some((value, _)) => assert_eq!(item["value"], value.as_str(), "{item}"),
            None => assert_eq!(item["error"]["code"], "key_not_found", "{item}"),
        }
    }

    let reference = pages(&http, &full, 7).await;
    assert!(reference.len() > 10, "many pages");
    for (i, shard) in shards.running() {
        assert_eq!(
            pages(&http, shard, 7).await,
            reference,
            "pages through shard {i}"
        );
    }

    let mut held = Vec::new();
    for (_, shard) in shards.running() {
        let metrics = shard.metrics(&http).await;
        assert_eq!(
            metric(&metrics, "kv_reader_owned_partitions", &[]),
            Some(2.0)
        );
        held.push(metric(&metrics, "kv_reader_store_keys", &[]).expect("keys"));
        assert!(
            metric(
                &metrics,
                "kv_reader_forwarded_requests_total",
                &[("outcome", "answered")]
            )
            .is_some(),
            "forwards are counted"
        );
    }
    assert_eq!(held.iter().sum::<f64>(), written.len() as f64, "{held:?}");
    assert!(
        held.iter().all(|&n| n < written.len() as f64 * 0.6),
        "{held:?}"
    );
}

#[tokio::test]
async fn a_write_is_read_back_at_once_through_a_shard_that_does_not_hold_it() {
    let broker = Broker::start();
    let topic = broker.create_topic("shards-ryw", PARTITIONS as i32).await;
    let env = service_env(&broker, &topic);
    let writer = Service::start(writer(), &env);
    let shards = Shards::start(READER, &env, SHARDS, 1);
    let http = reqwest::Client::new();
    wait_all_ready(&http, &shards).await;
    for i in 0..30 {
        let key = key(i);
        let put = http
            .put(writer.url(&key_path(key.as_bytes())))
            .body(format!("fresh {i}"))
            .send()
            .await
            .expect("put");
        let token = put.headers()["x-consistency-token"]
            .to_str()
            .expect("token")
            .to_owned();
        let other = (owner(&key) + 1) % SHARDS;
        let read = http
            .get(shards.get(other).url(&key_path(key.as_bytes())))
            .header("x-consistency-token", &token)
            .send()
            .await
            .expect("get");
        assert_eq!(read.status(), 200, "{key} with token {token}");
        assert_eq!(read.text().await.expect("body"), format!("fresh {i}"));
    }
}

#[tokio::test]
async fn with_one_replica_a_killed_shard_fails_exactly_its_own_keys() {
    let broker = Broker::start();
    let topic = broker.create_topic("shards-r1", PARTITIONS as i32).await;
    let env = service_env(&broker, &topic);
    let writer = Service::start(writer(), &env);
    let mut shards = Shards::start(READER, &env, SHARDS, 1);
    let http = reqwest::Client::new();
    let written = write_keys(&http, &writer, 60).await;
    wait_all_ready(&http, &shards).await;
    settled(&http, shards.get(0), &written).await;
    shards.kill(2);

    for (key, (value, _)) in &written {
        let response = http
            .get(shards.get(0).url(&key_path(key.as_bytes())))
            .send()
            .await
            .expect("get");
        if owner(key) == 2 {
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{key}");
            assert!(response.headers().contains_key("retry-after"));
            let body: Value = response.json().await.expect("error");
            assert_eq!(body["error"]["code"], "shard_unavailable", "{body}");
        } else {
            assert_eq!(response.status(), 200, "{key}");
            assert_eq!(response.text().await.expect("body"), *value);
        }
    }
    let asked: Vec<&String> = written.keys().collect();
    let batch: Value = http
        .post(shards.get(1).url("/v1/kv:batchGet"))
        .json(&serde_json::json!({ "keys": asked }))
        .send()
        .await
        .expect("batchGet")
        .json()
        .await
        .expect("json");
    for (key, item) in asked
        .iter()
        .zip(batch["results"].as_array().expect("results"))
    {
        if owner(key) == 2 {
            assert_eq!(item["error"]["code"], "shard_unavailable", "{item}");
        } else {
            assert_eq!(item["found"], true, "{item}");
        }
    }
    let listing = http
        .get(shards.get(1).url("/v1/kv"))
        .send()
        .await
        .expect("list");
    assert_eq!(
        listing.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "a listing needs every partition"
    );
    // Shard 0 polls its peers once a second: its view of shard 1 may still be older than ready.
    let cluster = kv_testkit::reader::wait_seen_ready(&http, shards.get(0), 1).await;
    assert_eq!(cluster["shards"], 3);
    assert_eq!(cluster["cluster"][2]["reachable"], false, "{cluster}");
    let without: Vec<i64> = cluster["partitions_without_ready_owner"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(Value::as_i64)
        .collect();
    assert_eq!(without, [2, 5], "{cluster}");
    assert!(
        !cluster.to_string().contains("127.0.0.1"),
        "no peer address: {cluster}"
    );
}

#[tokio::test]
async fn with_two_replicas_a_killed_shard_costs_no_read_at_all() {
    let broker = Broker::start();
    let topic = broker.create_topic("shards-r2", PARTITIONS as i32).await;
    let env = service_env(&broker, &topic);
    let writer = Service::start(writer(), &env);
    let mut shards = Shards::start(READER, &env, SHARDS, 2);
    let http = reqwest::Client::new();
    let written = write_keys(&http, &writer, 60).await;
    wait_all_ready(&http, &shards).await;
    // Each partition's two owners: reads through shard 0 and shard 2 cover both of each.
    let before = settled(&http, shards.get(0), &written).await;
    settled(&http, shards.get(2), &written).await;
    shards.kill(1);

    for through in [0, 2] {
        for (key, (value, _)) in &written {
            let response = http
                .get(shards.get(through).url(&key_path(key.as_bytes())))
                .send()
                .await
                .expect("get");
            assert_eq!(response.status(), 200, "{key} through {through}");
            assert_eq!(response.text().await.expect("body"), *value);
        }
        assert_eq!(dump(&http, shards.get(through)).await, before);
    }
}

#[tokio::test]
async fn a_forwarded_read_is_judged_by_the_owner_and_never_forwarded_again() {
    let broker = Broker::start();
    let topic = broker.create_topic("shards-auth", PARTITIONS as i32).await;
    let idp = OidcProvider::start("key-a");
    let mut env = service_env(&broker, &topic);
    env.extend(idp.service_env());
    env.extend([
        ("KV_API_DISABLE_API_AUTH", "false".to_owned()),
        ("KV_API_AUTH_READ", "kv:read".to_owned()),
        ("KV_API_AUTH_WRITE", "kv:write".to_owned()),
    ]);
    let writer = Service::start(writer(), &env);
    let shards = Shards::start(READER, &env, SHARDS, 1);
    let http = reqwest::Client::new();
    let token = idp.token("kv-full", "kv:read kv:write").await;
    let write_only = idp.token("kv-full", "kv:write").await;
    for (_, shard) in shards.running() {
        eventually("the shard to be ready", DEADLINE, || async {
            let response = http.get(shard.url("/healthz/ready")).send().await.ok()?;
            (response.status() == 200).then_some(())
        })
        .await;
    }
    let key = key(1);
    let put = http
        .put(writer.url(&key_path(key.as_bytes())))
        .bearer_auth(&token)
        .body("secret")
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 200);
    let ryw = put.headers()["x-consistency-token"]
        .to_str()
        .expect("token")
        .to_owned();
    let (home, other) = (owner(&key), (owner(&key) + 1) % SHARDS);

    let read = http
        .get(shards.get(other).url(&key_path(key.as_bytes())))
        .bearer_auth(&token)
        .header("x-consistency-token", &ryw)
        .send()
        .await
        .expect("get");
    assert_eq!(read.status(), 200);
    assert_eq!(read.headers()["x-served-by"], home.to_string().as_str());

    for (bearer, status) in [
        (None, 401),
        (Some("not.a.token"), 401),
        (Some(write_only.as_str()), 403),
    ] {
        let mut request = http.get(shards.get(other).url(&key_path(key.as_bytes())));
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        assert_eq!(
            request.send().await.expect("get").status(),
            status,
            "{bearer:?}"
        );
    }
    // The loop guard is no way around the owner's own check.
    let guarded = http
        .get(shards.get(home).url(&key_path(key.as_bytes())))
        .header("x-kv-forwarded-by", other.to_string())
        .send()
        .await
        .expect("get");
    assert_eq!(guarded.status(), 401);

    // A forwarded read that lands on a shard without the partition is not sent on.
    let misrouted = http
        .get(shards.get(other).url(&key_path(key.as_bytes())))
        .bearer_auth(&token)
        .header("x-kv-forwarded-by", home.to_string())
        .send()
        .await
        .expect("get");
    assert_eq!(misrouted.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = misrouted.json().await.expect("error");
    assert_eq!(body["error"]["code"], "shard_unavailable");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("disagree"),
        "{body}"
    );
    let metrics = shards.get(other).metrics(&http).await;
    assert_eq!(
        metric(
            &metrics,
            "kv_reader_forwarded_requests_total",
            &[("peer", &home.to_string())]
        )
        .unwrap_or(0.0),
        1.0,
        "one forward for the good read; refused callers were never forwarded:\n{metrics}"
    );
}

#[tokio::test]
async fn the_owner_checks_the_callers_token_itself() {
    // A shard that lets anyone in forwards to an owner that does not: the owner's verdict is
    // the answer, so no shard trusts another's check.
    let broker = Broker::start();
    let topic = broker.create_topic("shards-trust", PARTITIONS as i32).await;
    let idp = OidcProvider::start("key-b");
    let open = service_env(&broker, &topic);
    let mut strict = open.clone();
    strict.extend(idp.service_env());
    strict.extend([
        ("KV_API_DISABLE_API_AUTH", "false".to_owned()),
        ("KV_API_AUTH_READ", "kv:read".to_owned()),
    ]);
    let writer = Service::start(writer(), &open);
    let mut shards = Shards::start(READER, &strict, 2, 1);
    let http = reqwest::Client::new();
    let key = (0..)
        .map(key)
        .find(|k| kafka_partition(k.as_bytes(), PARTITIONS) % 2 == 1)
        .expect("a key of shard 1");
    let put = http
        .put(writer.url(&key_path(key.as_bytes())))
        .body("v")
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 200);
    shards.restart(0, &[("KV_API_DISABLE_API_AUTH", "true".to_owned())]);
    let answer = eventually("shard 0 to forward", DEADLINE, || async {
        let response = http
            .get(shards.get(0).url(&key_path(key.as_bytes())))
            .send()
            .await
            .ok()?;
        (response.status() != StatusCode::SERVICE_UNAVAILABLE).then_some(response)
    })
    .await;
    assert_eq!(answer.status(), 401, "the owner refused the anonymous read");
    assert_eq!(answer.headers()["x-served-by"], "1");
}

#[tokio::test]
async fn max_lag_bounds_a_read_and_a_bad_bound_is_refused() {
    let broker = Broker::start();
    let topic = broker.create_topic("shards-lag", PARTITIONS as i32).await;
    let env = service_env(&broker, &topic);
    let writer = Service::start(writer(), &env);
    let shards = Shards::start(READER, &env, SHARDS, 1);
    let http = reqwest::Client::new();
    write_keys(&http, &writer, 5).await;
    wait_all_ready(&http, &shards).await;
    let path = key_path(key(1).as_bytes());
    let within = eventually("a caught-up read", Duration::from_secs(20), || async {
        let response = http
            .get(shards.get(0).url(&format!("{path}?max_lag=0")))
            .send()
            .await
            .ok()?;
        (response.status() == 200).then_some(response)
    })
    .await;
    assert_eq!(within.text().await.expect("body"), "value of 1");
    for bad in ["?max_lag=-1", "?max_lag=many"] {
        let response = http
            .get(shards.get(0).url(&format!("{path}{bad}")))
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), 400, "{bad}");
        let body: Value = response.json().await.expect("error");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("max_lag"));
    }
    let header = http
        .get(shards.get(1).url(&path))
        .header("x-max-replica-lag", "x")
        .send()
        .await
        .expect("get");
    assert_eq!(header.status(), 400);
    // A plain watch on a shard merges every shard's; `shard_local` asks for its own only.
    let watch = |query: &'static str| {
        http.get(shards.get(0).url(&format!("/v1/kv:watch{query}")))
            .header("accept", "text/event-stream")
            .send()
    };
    for query in ["", "?shard_local=true", "?shard_local=false"] {
        assert_eq!(watch(query).await.expect("watch").status(), 200, "{query}");
    }
    assert_eq!(
        watch("?shard_local=maybe").await.expect("watch").status(),
        400
    );
}

type Events = std::pin::Pin<Box<dyn futures::Stream<Item = eventsource_stream::Event>>>;

/// A watch's events; the test fails if the answer is not a stream.
async fn open_watch(
    http: &reqwest::Client,
    shard: &Service,
    query: &str,
    last_event_id: Option<&str>,
) -> Events {
    use eventsource_stream::Eventsource;
    use futures::StreamExt;
    let mut request = http
        .get(shard.url(&format!("/v1/kv:watch{query}")))
        .header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = request.send().await.expect("watch");
    assert_eq!(response.status(), 200, "{}", shard.output());
    Box::pin(
        response
            .bytes_stream()
            .eventsource()
            .map(|event| event.expect("an event")),
    )
}

/// Events up to and including the first that `stop` accepts: (type, key, id).
async fn events_until(
    events: &mut Events,
    mut stop: impl FnMut(&eventsource_stream::Event) -> bool,
) -> Vec<(String, String, String)> {
    use futures::StreamExt;
    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout(DEADLINE, events.next())
            .await
            .expect("an event in time")
            .expect("the stream goes on");
        let data: Value = serde_json::from_str(&event.data).unwrap_or_default();
        let key = data["key"].as_str().unwrap_or_default().to_owned();
        seen.push((event.event.clone(), key, event.id.clone()));
        if stop(&event) {
            return seen;
        }
    }
}

#[tokio::test]
async fn a_plain_watch_on_any_shard_covers_every_partition_and_resumes_on_another_shard() {
    let broker = Broker::start();
    let topic = broker.create_topic("shards-watch", PARTITIONS as i32).await;
    let env = service_env(&broker, &topic);
    let writer = Service::start(writer(), &env);
    let shards = Shards::start(READER, &env, SHARDS, 2);
    let http = reqwest::Client::new();
    let first = write_keys(&http, &writer, 12).await;
    wait_all_ready(&http, &shards).await;
    for (key, (_, token)) in &first {
        // Every shard applied what was written before the watch lists it.
        eventually("the write applied", DEADLINE, || async {
            let response = http
                .get(shards.get(0).url(&key_path(key.as_bytes())))
                .header("x-consistency-token", token)
                .send()
                .await
                .ok()?;
            (response.status() == 200).then_some(())
        })
        .await;
    }
    assert!(
        first
            .keys()
            .map(|k| owner(k))
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            > 1,
        "the keys span shards"
    );

    // The entries of every shard, then a progress whose id names every partition.
    let mut events = open_watch(&http, shards.get(0), "?prefix=user%2F&snapshot=true", None).await;
    let listed = events_until(&mut events, |e| e.event == "progress").await;
    let keys: std::collections::BTreeSet<&str> = listed
        .iter()
        .filter(|(kind, _, _)| kind == "put")
        .map(|(_, key, _)| key.as_str())
        .collect();
    assert_eq!(keys, first.keys().map(String::as_str).collect());
    assert!(
        listed[..listed.len() - 1]
            .iter()
            .all(|(_, _, id)| id.is_empty()),
        "no id while listing: {listed:?}"
    );
    let progress = &listed.last().expect("progress").2;
    assert_eq!(
        progress.split(',').count(),
        PARTITIONS as usize,
        "{progress}"
    );

    // Live changes of every partition, each once, with ids.
    let mut written = 0;
    for i in 100..106 {
        let response = http
            .put(writer.url(&key_path(key(i).as_bytes())))
            .body("live")
            .send()
            .await
            .expect("put");
        assert_eq!(response.status(), 200);
        written += 1;
    }
    let mut live = Vec::new();
    while live.len() < written {
        let got = events_until(&mut events, |e| e.event == "put").await;
        live.push(got.last().expect("a put").clone());
    }
    let live_keys: Vec<&str> = live.iter().map(|(_, k, _)| k.as_str()).collect();
    let mut sorted = live_keys.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), written, "each change once: {live_keys:?}");
    let last_id = live.last().expect("a put").2.clone();
    assert!(!last_id.is_empty());
    drop(events);

    // Resumed on another shard with the same id: what was written since, nothing before.
    for i in 200..203 {
        let response = http
            .put(writer.url(&key_path(key(i).as_bytes())))
            .body("after")
            .send()
            .await
            .expect("put");
        assert_eq!(response.status(), 200);
    }
    let mut resumed = open_watch(&http, shards.get(2), "?prefix=user%2F", Some(&last_id)).await;
    let mut after = std::collections::BTreeSet::new();
    while after.len() < 3 {
        let got = events_until(&mut resumed, |e| e.event == "put").await;
        let (_, key, _) = got.last().expect("a put");
        assert!(
            key.starts_with("user/02"),
            "only what came after the id: {key}"
        );
        after.insert(key.clone());
    }
}

/// What of a read's answer a client can see, but the headers that differ between any two
/// answers (the request's own span and the clock's `X-Replica-Silence-Ms`).
async fn seen(response: reqwest::Response) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let status = response.status().as_u16();
    let mut headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .filter(|(name, _)| {
            !matches!(
                name.as_str(),
                "traceparent" | "x-replica-silence-ms" | "date" | "content-length"
            )
        })
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    headers.sort();
    (
        status,
        headers,
        response.bytes().await.expect("body").to_vec(),
    )
}

#[tokio::test]
async fn concurrent_forwarded_reads_share_batches_and_each_answers_as_the_owner_would() {
    let broker = Broker::start();
    let topic = broker
        .create_topic("shards-coalesce", PARTITIONS as i32)
        .await;
    let env = service_env(&broker, &topic);
    let writer = Service::start(writer(), &env);
    let shards = Shards::start(READER, &env, SHARDS, 1);
    let http = reqwest::Client::new();
    wait_all_ready(&http, &shards).await;
    // Text, bytes that are not UTF-8, a TTL and a correlation id: each is answered through
    // another field of the owner's batch.
    let mut keys = Vec::new();
    for i in 0..60 {
        let key = key(i);
        let mut put = http.put(writer.url(&key_path(key.as_bytes())));
        put = match i % 3 {
            0 => put.body(format!("text {i}")),
            1 => put.body(vec![0xff, 0xfe, i as u8]),
            _ => put
                .body(format!("expiring {i}"))
                .header("x-kv-ttl-seconds", "3600")
                .header("x-correlation-id", format!("writer-{i}")),
        };
        assert_eq!(put.send().await.expect("put").status(), 200);
        keys.push(key);
    }
    keys.extend((0..20).map(|i| format!("absent/{i}")));
    let foreign: Vec<&String> = keys.iter().filter(|k| owner(k) != 0).collect();
    let through = shards.get(0);
    eventually("every write applied", DEADLINE, || async {
        let response = http
            .get(through.url(&key_path(key(59).as_bytes())))
            .send()
            .await
            .ok()?;
        (response.status() == 200).then_some(())
    })
    .await;

    for round in 0..3 {
        let asked = futures::future::join_all(foreign.iter().map(|key| {
            let url = through.url(&key_path(key.as_bytes()));
            let http = http.clone();
            async move {
                let get = http.get(url).header("x-correlation-id", "one-reader");
                seen(get.send().await.expect("forwarded get")).await
            }
        }))
        .await;
        for (key, forwarded) in foreign.iter().zip(asked) {
            let owner_shard = shards.get(owner(key));
            let direct = seen(
                http.get(owner_shard.url(&key_path(key.as_bytes())))
                    .header("x-correlation-id", "one-reader")
                    .send()
                    .await
                    .expect("direct get"),
            )
            .await;
            // X-Replica-Applied names the partitions each read settled on: one for a read of
            // its own, the batch's for a coalesced one; the rest is the same.
            let without_applied =
                |(status, headers, body): (u16, Vec<(String, String)>, Vec<u8>)| {
                    let headers: Vec<_> = headers
                        .into_iter()
                        .filter(|(name, _)| name != "x-replica-applied")
                        .collect();
                    (status, headers, body)
                };
            let (forwarded, direct) = (without_applied(forwarded), without_applied(direct));
            assert_eq!(forwarded, direct, "{key}, round {round}");
        }
    }

    let metrics = through.metrics(&http).await;
    // Shard 0 forwards to shards 1 and 2.
    let over_peers = |name: &str, labels: &[(&str, &str)]| -> f64 {
        ["1", "2"]
            .iter()
            .filter_map(|peer| {
                let mut labels = labels.to_vec();
                labels.push(("peer", peer));
                metric(&metrics, name, &labels)
            })
            .sum()
    };
    let batches = over_peers("kv_reader_forward_batch_keys_count", &[]);
    let reads = over_peers("kv_reader_forward_batch_keys_sum", &[]);
    let forwards = over_peers(
        "kv_reader_forwarded_requests_total",
        &[("outcome", "answered")],
    );
    assert_eq!(forwards, batches, "every read was answered by its batch");
    // The rounds' reads, and the polls of the wait for the writes before them.
    assert!(reads >= 3.0 * foreign.len() as f64, "{reads} reads counted");
    assert!(
        batches < reads,
        "no two reads shared a batch: {batches} batches for {reads} reads"
    );
}

#[tokio::test]
async fn a_shard_that_does_not_hold_a_key_passes_back_the_trace_of_the_write_that_stored_it() {
    let broker = Broker::start();
    let topic = broker.create_topic("shards-trace", PARTITIONS as i32).await;
    let env = service_env(&broker, &topic);
    let writer = Service::start(writer(), &env);
    let shards = Shards::start(READER, &env, SHARDS, 1);
    let http = reqwest::Client::new();
    wait_all_ready(&http, &shards).await;
    let key = key(7);
    let put = http
        .put(writer.url(&key_path(key.as_bytes())))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body("traced")
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 200, "{}", writer.output());
    let write_span = put.headers()["traceparent"].clone();
    let token = put.headers()["x-consistency-token"].clone();
    let other = shards.get((owner(&key) + 1) % SHARDS);

    let read = http
        .get(other.url(&key_path(key.as_bytes())))
        .header("x-consistency-token", token)
        .send()
        .await
        .expect("get");
    assert_eq!(read.status(), 200, "{}", other.output());
    assert_eq!(
        read.headers()["x-served-by"],
        owner(&key).to_string().as_str()
    );
    assert_eq!(read.headers()["x-kv-write-traceparent"], write_span);

    let batch: Value = http
        .post(other.url("/v1/kv:batchGet"))
        .json(&serde_json::json!({ "keys": [key] }))
        .send()
        .await
        .expect("batchGet")
        .json()
        .await
        .expect("json");
    assert_eq!(
        batch["results"][0]["traceparent"],
        write_span.to_str().expect("text")
    );

    // A merged watch passes each source's events on as they are.
    let mut events = open_watch(&http, other, "?prefix=user%2F&snapshot=true", None).await;
    let listed = loop {
        let event = tokio::time::timeout(DEADLINE, futures::StreamExt::next(&mut events))
            .await
            .expect("an event in time")
            .expect("the stream goes on");
        if event.event == "put" {
            break event;
        }
    };
    let data: Value = serde_json::from_str(&listed.data).expect("json");
    assert_eq!(data["key"], key.as_str());
    assert_eq!(data["traceparent"], write_span.to_str().expect("text"));
}
