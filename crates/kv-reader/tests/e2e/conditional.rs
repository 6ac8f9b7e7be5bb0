//! Conditional writes end to end (docs/architecture.md, "Conditional writes"): the real
//! kv-writer asking two owner-candidate readers, against a real broker process. Counters
//! incremented by many clients end exact, also while an owner is killed or paused past its
//! failover, and a fresh replica fed only the last record of every key ends on the same values.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_testkit::conditional::{owned, owners_settled, spawn_increments, Tally};
use kv_testkit::reader::{dump, wait_ready};
use kv_testkit::services::{candidate_env, reader_env};
use kv_testkit::topic::{create_topic, last_per_key, produce_as_they_are, random_topic, records};
use kv_testkit::{eventually, service_env, Broker, Service, DEADLINE};
use serde_json::Value;

use crate::{writer, READER};

/// The topic settings owners rely on (docs/operations.md, "Topic settings").
const OWNED: &[(&str, &str)] = &[
    ("cleanup.policy", "compact"),
    ("min.compaction.lag.ms", "900000"),
];
const PARTITIONS: i32 = 3;

async fn owned_topic(broker: &Broker, prefix: &str) -> String {
    let topic = random_topic(prefix);
    create_topic(&broker.bootstrap_servers(), &topic, PARTITIONS, OWNED).await;
    topic
}

fn candidate(broker: &Broker, topic: &str, group: &str) -> Service {
    Service::start(READER, &candidate_env(broker, topic, group))
}

fn writer_for(broker: &Broker, topic: &str, readers: &[&Service]) -> Service {
    let mut env = service_env(broker, topic);
    let urls: Vec<String> = readers.iter().map(|r| r.base_url.clone()).collect();
    env.push(("KV_API_READERS", urls.join(",")));
    Service::start(writer(), &env)
}

async fn value_on(http: &reqwest::Client, reader: &Service, key: &str) -> Option<u64> {
    kv_testkit::computed::published(http, reader, key)
        .await?
        .parse()
        .ok()
}

async fn settles_at(http: &reqwest::Client, readers: &[&Service], key: &str, expected: u64) {
    eventually(
        "every replica to hold the final count",
        DEADLINE,
        || async {
            for reader in readers {
                if value_on(http, reader, key).await != Some(expected) {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}

#[tokio::test]
async fn twenty_clients_incrementing_one_counter_fifty_times_each_end_at_exactly_one_thousand() {
    let broker = Broker::start();
    let topic = owned_topic(&broker, "cas-counter").await;
    let (a, b) = (
        candidate(&broker, &topic, "cas-a"),
        candidate(&broker, &topic, "cas-b"),
    );
    let writer = writer_for(&broker, &topic, &[&a, &b]);
    let http = reqwest::Client::new();
    wait_ready(&http, &a).await;
    wait_ready(&http, &b).await;
    let started = Instant::now();
    let tally = Arc::new(Tally::default());
    for task in spawn_increments(&writer, &[&a, &b], "counter", 20, 50, &tally) {
        task.await.expect("client");
    }
    settles_at(&http, &[&a, &b], "counter", 1000).await;
    tally.check(1000, "20 clients x 50 increments");
    println!("in {:.1} s", started.elapsed().as_secs_f64());
}

#[tokio::test]
async fn ten_concurrent_creates_of_one_key_give_exactly_one_200_and_nine_412() {
    let broker = Broker::start();
    let topic = owned_topic(&broker, "cas-create").await;
    let reader = candidate(&broker, &topic, "cas-create");
    let writer = writer_for(&broker, &topic, &[&reader]);
    let http = reqwest::Client::new();
    wait_ready(&http, &reader).await;
    let creates = (0..10).map(|i| {
        http.put(writer.url("/v1/kv/claim"))
            .header("If-None-Match", "*")
            .body(format!("worker-{i}"))
            .send()
    });
    let mut statuses: Vec<u16> = futures::future::join_all(creates)
        .await
        .into_iter()
        .map(|r| r.expect("answer").status().as_u16())
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 412, 412, 412, 412, 412, 412, 412, 412, 412]);
}

#[tokio::test]
async fn stale_versions_absent_keys_retries_and_bad_headers_get_their_documented_answers() {
    let broker = Broker::start();
    let topic = owned_topic(&broker, "cas-edges").await;
    let reader = candidate(&broker, &topic, "cas-edges");
    let writer = writer_for(&broker, &topic, &[&reader]);
    let http = reqwest::Client::new();
    wait_ready(&http, &reader).await;

    let first = http
        .put(writer.url("/v1/kv/k"))
        .body("1")
        .send()
        .await
        .expect("put");
    assert_eq!(first.status(), 200);
    let old = first
        .headers()
        .get("etag")
        .map(|v| v.to_str().expect("etag").to_owned());
    let ack: Value = first.json().await.expect("ack");
    let old = old.unwrap_or_else(|| format!("\"{}-{}\"", ack["partition"], ack["offset"]));
    let second = http
        .put(writer.url("/v1/kv/k"))
        .header("If-Match", &old)
        .body("2")
        .send()
        .await
        .expect("put");
    assert_eq!(second.status(), 200, "the version just written matches");
    let current = second.headers()["etag"].to_str().expect("etag").to_owned();
    assert_ne!(current, old);

    // A stale If-Match on DELETE: 412 with the current version.
    let stale = http
        .delete(writer.url("/v1/kv/k"))
        .header("If-Match", &old)
        .send()
        .await
        .expect("delete");
    assert_eq!(stale.status(), 412);
    assert_eq!(stale.headers()["etag"].to_str().expect("etag"), current);
    let body: Value = stale.json().await.expect("error body");
    assert_eq!(body["error"]["code"], "precondition_failed");

    // If-Match on a key that does not exist: 412 without an ETag.
    let absent = http
        .put(writer.url("/v1/kv/never-written"))
        .header("If-Match", "*")
        .body("x")
        .send()
        .await
        .expect("put");
    assert_eq!(absent.status(), 412);
    assert!(absent.headers().get("etag").is_none());

    // A retry of a success with the same Idempotency-Key answers 200 again, changing nothing.
    let retried = || {
        http.put(writer.url("/v1/kv/k"))
            .header("If-Match", &current)
            .header("Idempotency-Key", "retry-1")
            .body("3")
            .send()
    };
    let once = retried().await.expect("put");
    assert_eq!(once.status(), 200);
    let once_tag = once.headers()["etag"].to_str().expect("etag").to_owned();
    let again = retried().await.expect("put");
    assert_eq!(again.status(), 200, "the first answer again, not a 412");
    assert_eq!(again.headers()["etag"].to_str().expect("etag"), once_tag);
    eventually("the value to be 3", DEADLINE, || async {
        (value_on(&http, &reader, "k").await == Some(3)).then_some(())
    })
    .await;

    // Bad syntax is a 400 naming the header.
    for (name, value) in [
        ("If-Match", "not-a-tag"),
        ("If-None-Match", "\"0-1\""),
        ("Idempotency-Key", ""),
    ] {
        let bad = http
            .put(writer.url("/v1/kv/k"))
            .header(name, value)
            .body("4")
            .send()
            .await
            .expect("put");
        assert_eq!(bad.status(), 400, "{name}: {value}");
        let body: Value = bad.json().await.expect("error body");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(name)),
            "the message names {name}: {body}"
        );
    }
    assert_eq!(value_on(&http, &reader, "k").await, Some(3));
}

#[tokio::test]
async fn increments_stay_exact_while_an_owner_is_killed_and_the_other_takes_its_partitions() {
    let broker = Broker::start();
    let topic = owned_topic(&broker, "cas-kill").await;
    let (a, mut b) = (
        candidate(&broker, &topic, "cas-kill-a"),
        candidate(&broker, &topic, "cas-kill-b"),
    );
    let writer = writer_for(&broker, &topic, &[&a, &b]);
    let http = reqwest::Client::new();
    wait_ready(&http, &a).await;
    wait_ready(&http, &b).await;
    let owners = owners_settled(&http, &[&a, &b], PARTITIONS).await;
    assert!(
        owners.iter().all(|o| !o.is_empty()),
        "both own some: {owners:?}"
    );
    let tally = Arc::new(Tally::default());
    let tasks = spawn_increments(&writer, &[&a, &b], "counter", 10, 30, &tally);
    tokio::time::sleep(Duration::from_secs(2)).await;
    b.kill();
    let killed = Instant::now();
    let owners = owners_settled(&http, &[&a], PARTITIONS).await;
    let failover = killed.elapsed();
    println!("owner killed: the other owned every partition after {failover:?}: {owners:?}");
    assert!(
        failover < Duration::from_secs(15),
        "failover took {failover:?}"
    );
    for task in tasks {
        task.await.expect("client");
    }
    settles_at(&http, &[&a], "counter", 300).await;
    tally.check(300, "10 clients x 30 increments, an owner killed");

    // Every repair the survivor owes is produced (the killed owner's included): then what
    // compaction keeps, replayed into a fresh replica, ends on the same values.
    eventually("the survivor to owe no repair", DEADLINE, || async {
        let text = a.metrics(&http).await;
        (kv_testkit::metric(&text, "kv_reader_ttl_pending_repairs", &[]) == Some(0.0)).then_some(())
    })
    .await;
    let all = records(broker.bootstrap_servers(), &topic).await;
    let compacted = owned_topic(&broker, "cas-kill-compacted").await;
    produce_as_they_are(&broker.bootstrap_servers(), &compacted, last_per_key(&all)).await;
    let fresh = Service::start(READER, &reader_env(&broker, &compacted, "cas-fresh"));
    wait_ready(&http, &fresh).await;
    assert_eq!(dump(&http, &fresh).await, dump(&http, &a).await);
}

#[tokio::test]
async fn an_owner_paused_past_its_failover_changes_nothing_when_it_resumes() {
    let broker = Broker::start();
    let topic = owned_topic(&broker, "cas-pause").await;
    let (a, mut b) = (
        candidate(&broker, &topic, "cas-pause-a"),
        candidate(&broker, &topic, "cas-pause-b"),
    );
    let writer = writer_for(&broker, &topic, &[&a, &b]);
    let http = reqwest::Client::new();
    wait_ready(&http, &a).await;
    wait_ready(&http, &b).await;
    owners_settled(&http, &[&a, &b], PARTITIONS).await;
    let tally = Arc::new(Tally::default());
    let tasks = spawn_increments(&writer, &[&a, &b], "counter", 10, 30, &tally);
    tokio::time::sleep(Duration::from_secs(2)).await;
    b.pause();
    let paused = Instant::now();
    // The broker hands the paused owner's partitions to the other after its session timeout.
    eventually(
        "the other candidate to own everything",
        DEADLINE,
        || async { (owned(&http, &a).await.len() == PARTITIONS as usize).then_some(()) },
    )
    .await;
    println!(
        "owner paused: the other owned every partition after {:?}",
        paused.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    b.resume();
    for task in tasks {
        task.await.expect("client");
    }
    settles_at(&http, &[&a, &b], "counter", 300).await;
    tally.check(
        300,
        "10 clients x 30 increments, an owner paused and resumed",
    );
    owners_settled(&http, &[&a, &b], PARTITIONS).await;
    // Whatever the resumed owner did on waking, both replicas still agree, exactly.
    let before = dump(&http, &a).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(dump(&http, &b).await, before);
    assert_eq!(dump(&http, &a).await, before);
}

/// Where a write's record is, from the writer's answer: the body of a `200`, the consistency
/// token of a `412`.
async fn record_of(response: reqwest::Response) -> (u16, i32, i64) {
    let status = response.status().as_u16();
    if status == 412 {
        let token = response.headers()["x-consistency-token"]
            .to_str()
            .expect("ascii")
            .to_owned();
        let (p, o) = token.split_once(':').expect("p:o");
        return (status, p.parse().expect("p"), o.parse().expect("o"));
    }
    let body: Value = response.json().await.expect("ack");
    let partition = i32::try_from(body["partition"].as_i64().expect("partition")).expect("i32");
    (status, partition, body["offset"].as_i64().expect("offset"))
}

#[tokio::test]
async fn the_batch_outcome_route_answers_each_record_in_request_order_and_refuses_over_256() {
    let broker = Broker::start();
    let topic = owned_topic(&broker, "cas-batch").await;
    let reader = candidate(&broker, &topic, "cas-batch");
    let writer = writer_for(&broker, &topic, &[&reader]);
    let http = reqwest::Client::new();
    wait_ready(&http, &reader).await;

    let put = |key: &'static str, condition: Option<(&'static str, &'static str)>| {
        let mut request = http.put(writer.url(&format!("/v1/kv/{key}"))).body("v");
        if let Some((name, value)) = condition {
            request = request.header(name, value);
        }
        request.send()
    };
    let plain = record_of(put("taken", None).await.expect("put")).await;
    assert_eq!(plain.0, 200);
    let refused = record_of(
        put("taken", Some(("If-None-Match", "*")))
            .await
            .expect("put"),
    )
    .await;
    assert_eq!(refused.0, 412);
    let applied = record_of(
        put("fresh", Some(("If-None-Match", "*")))
            .await
            .expect("put"),
    )
    .await;
    assert_eq!(applied.0, 200);

    let records = serde_json::json!({"records": [
        {"partition": applied.1, "offset": applied.2},
        {"partition": refused.1, "offset": refused.2},
        {"partition": plain.1, "offset": plain.2},
        {"partition": 0, "offset": 1_000_000_000i64},
        {"partition": 99, "offset": 0},
    ]});
    let started = Instant::now();
    let response = http
        .post(reader.url("/v1/outcomes:batchGet?wait_ms=300"))
        .json(&records)
        .send()
        .await
        .expect("batch");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the wait is bounded by wait_ms"
    );
    let items = body["outcomes"].as_array().expect("outcomes");
    assert_eq!(items.len(), 5, "{body}");
    for (item, record) in items
        .iter()
        .zip(records["records"].as_array().expect("records"))
    {
        assert_eq!(item["partition"], record["partition"], "{body}");
        assert_eq!(item["offset"], record["offset"], "{body}");
    }
    assert_eq!(items[0]["outcome"]["applied"], true, "{body}");
    assert_eq!(items[0]["outcome"]["offset"], applied.2, "{body}");
    assert_eq!(items[1]["outcome"]["applied"], false, "{body}");
    assert_eq!(
        items[1]["outcome"]["version"],
        serde_json::json!({"partition": plain.1, "offset": plain.2}),
        "the key's version when it was decided: {body}"
    );
    assert_eq!(items[2]["error"]["code"], "outcome_not_found", "{body}");
    assert_eq!(items[3]["error"]["code"], "not_ready", "{body}");
    assert_eq!(items[4]["error"]["code"], "invalid_request", "{body}");

    // The single route, which older writers use, answers as before.
    let single = http
        .get(reader.url(&format!("/v1/outcomes/{}/{}", applied.1, applied.2)))
        .send()
        .await
        .expect("single");
    assert_eq!(single.status(), 200);
    let outcome: Value = single.json().await.expect("json");
    assert_eq!(outcome, items[0]["outcome"]);

    let too_many: Vec<Value> = (0..257)
        .map(|offset| serde_json::json!({"partition": 0, "offset": offset}))
        .collect();
    let response = http
        .post(reader.url("/v1/outcomes:batchGet"))
        .json(&serde_json::json!({ "records": too_many }))
        .send()
        .await
        .expect("batch");
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "invalid_request");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("256")),
        "{body}"
    );

    // Outside the documented bounds is the whole request's fault, said with the bound.
    for (path, body, named) in [
        (
            "/v1/outcomes:batchGet",
            serde_json::json!({"records": [{"partition": 0, "offset": 1}, {"partition": 0, "offset": -1}]}),
            "at least 0",
        ),
        (
            "/v1/outcomes:batchGet?wait_ms=5001",
            serde_json::json!({"records": [{"partition": 0, "offset": 1}]}),
            "wait_ms",
        ),
    ] {
        let response = http
            .post(reader.url(path))
            .json(&body)
            .send()
            .await
            .expect("batch");
        assert_eq!(response.status(), 400, "{path} {body}");
        let answer: Value = response.json().await.expect("json");
        assert_eq!(answer["error"]["code"], "invalid_request", "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(named)),
            "{answer}"
        );
    }
    let response = http
        .get(reader.url("/v1/outcomes/0/1?wait_ms=99999999999999999999"))
        .send()
        .await
        .expect("single");
    assert_eq!(response.status(), 400);
}
