//! Conditional writes through the real kv-writer binary against a real broker, with stub readers
//! (`kv_testkit::stub_reader`) telling scripted outcomes: the record carries the precondition and
//! the idempotency key, the answer follows the outcome (200 with the new ETag, 412 with the
//! current one, a repeat answered as the first), the readers are asked in turn with the client's
//! credentials, questions under way at once share a batch (`POST /v1/outcomes:batchGet`), a
//! reader without that route is asked one record at a time, and nothing is produced for a
//! request refused before (400, 501).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_core::conditional::{IDEMPOTENCY_KEY_HEADER, IF_MATCH_HEADER, IF_NONE_MATCH_HEADER};
use kv_testkit::services::service_env_with as writer_env;
use kv_testkit::stub_reader::{Reply, StubReader};
use kv_testkit::topic::{record_at, records};
use kv_testkit::{free_port, metric, Broker, Service};
use serde_json::{json, Value};

use crate::WRITER;

/// Status, ETag and JSON body of an answer.
async fn answer(
    response: reqwest::Response,
) -> (u16, Option<String>, reqwest::header::HeaderMap, Value) {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let etag = headers
        .get("etag")
        .map(|v| v.to_str().expect("ascii").to_owned());
    let body = response.json().await.expect("a JSON body");
    (status, etag, headers, body)
}

fn position(body: &Value) -> (i32, i64) {
    (
        i32::try_from(body["partition"].as_i64().expect("partition")).expect("i32"),
        body["offset"].as_i64().expect("offset"),
    )
}

#[tokio::test]
async fn a_conditional_write_carries_its_precondition_in_the_record_and_is_answered_from_its_outcome(
) {
    let broker = Broker::start();
    let topic = broker.create_topic("conditional", 2).await;
    let reader = StubReader::start();
    reader.answer_others(Reply::applied);
    let writer = Service::start(
        WRITER,
        &writer_env(&broker, &topic, &[("KV_API_READERS", reader.base_url())]),
    );
    let http = reqwest::Client::new();

    // Applied: 200 with the new version as ETag, the usual body and headers.
    let response = http
        .put(writer.url("/v1/kv/counter"))
        .header("If-Match", "\"0-7\", \"0-5\"")
        .header("Idempotency-Key", "retry-1")
        .header("Authorization", "Bearer not-checked-here")
        .header("X-Correlation-Id", "cond-1")
        .body("1")
        .send()
        .await
        .expect("put");
    let (status, etag, headers, body) = answer(response).await;
    assert_eq!(status, 200, "{body} {}", writer.output());
    let (p, first) = position(&body);
    assert_eq!(etag.as_deref(), Some(format!("\"{p}-{first}\"").as_str()));
    assert_eq!(body["consistency_token"], format!("{p}:{first}"));
    assert_eq!(headers["x-kafka-offset"], first.to_string().as_str());
    let all = records(broker.bootstrap_servers(), &topic).await;
    let record = record_at(&all, p.into(), first);
    assert_eq!(record.value.as_deref(), Some(&b"1"[..]));
    assert_eq!(record.header(IF_MATCH_HEADER), Some(&b"0-5,0-7"[..]));
    assert_eq!(record.header(IDEMPOTENCY_KEY_HEADER), Some(&b"retry-1"[..]));
    assert_eq!(record.header(IF_NONE_MATCH_HEADER), None);
    // The reader was asked about exactly that record, in a batch of its own (nothing else
    // waited), with the client's credentials.
    let asked = reader.requests();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(asked[0].is_batch(), "{asked:?}");
    assert_eq!(asked[0].records, vec![(p, first)]);
    assert_eq!(
        asked[0].header("authorization"),
        Some("Bearer not-checked-here")
    );
    assert_eq!(asked[0].header("x-correlation-id"), Some("cond-1"));

    // Not applied: 412 with the key's current version as ETag, saying which precondition.
    reader.answer_others(|p, o| Reply::failed(p, o, Some((p, 3))));
    let response = http
        .put(writer.url("/v1/kv/counter"))
        .header("If-None-Match", "*")
        .body("2")
        .send()
        .await
        .expect("put");
    let (status, etag, headers, body) = answer(response).await;
    assert_eq!(status, 412, "{body}");
    assert_eq!(etag.as_deref(), Some(format!("\"{p}-3\"").as_str()));
    assert_eq!(body["error"]["code"], "precondition_failed");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("If-None-Match"), "{message}");
    let token = headers["x-consistency-token"].to_str().expect("ascii");
    let (_, offset) = token.split_once(':').expect("p:o");
    let all = records(broker.bootstrap_servers(), &topic).await;
    let record = record_at(&all, p.into(), offset.parse().expect("offset"));
    assert_eq!(record.header(IF_NONE_MATCH_HEADER), Some(&b"*"[..]));
    assert_eq!(record.header(IDEMPOTENCY_KEY_HEADER), None);

    // A delete on an absent key: 412 without ETag.
    reader.answer_others(|p, o| Reply::failed(p, o, None));
    let response = http
        .delete(writer.url("/v1/kv/counter"))
        .header("If-Match", "*")
        .send()
        .await
        .expect("delete");
    let (status, etag, _, body) = answer(response).await;
    assert_eq!(status, 412, "{body}");
    assert_eq!(etag, None);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("does not exist")),
        "{body}"
    );

    // A retry whose idempotency key repeats the first write's: the first answer again.
    reader.answer_others(move |p, o| Reply::outcome(p, o, true, Some((p, first)), Some(first)));
    let response = http
        .put(writer.url("/v1/kv/counter"))
        .header("If-Match", "\"0-7\", \"0-5\"")
        .header("Idempotency-Key", "retry-1")
        .body("1")
        .send()
        .await
        .expect("retry");
    let (status, etag, headers, body) = answer(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(position(&body), (p, first));
    assert_eq!(etag.as_deref(), Some(format!("\"{p}-{first}\"").as_str()));
    assert_eq!(
        headers["x-consistency-token"],
        format!("{p}:{first}").as_str()
    );
    // The repeat of a write that did not take effect: 412 again.
    reader.answer_others(move |p, o| Reply::outcome(p, o, false, Some((p, 3)), Some(first)));
    let response = http
        .put(writer.url("/v1/kv/counter"))
        .header("If-Match", "\"0-7\"")
        .header("Idempotency-Key", "retry-2")
        .body("1")
        .send()
        .await
        .expect("retry");
    let (status, etag, _, body) = answer(response).await;
    assert_eq!(status, 412, "{body}");
    assert_eq!(etag.as_deref(), Some(format!("\"{p}-3\"").as_str()));

    let metrics = writer.metrics(&http).await;
    let count = |outcome| {
        metric(
            &metrics,
            "kv_writer_conditional_writes_total",
            &[("outcome", outcome)],
        )
    };
    assert_eq!(count("applied"), Some(1.0));
    assert_eq!(count("precondition_failed"), Some(2.0));
    assert_eq!(count("repeat"), Some(2.0));
    assert_eq!(count("unknown"), Some(0.0));
}

#[tokio::test]
async fn the_readers_are_asked_in_turn_until_one_tells_and_none_telling_in_time_is_503_outcome_unknown(
) {
    let broker = Broker::start();
    let topic = broker.create_topic("conditional-turns", 1).await;
    let elsewhere = StubReader::start();
    elsewhere.answer_others(|_, _| Reply::not_held());
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let holder = StubReader::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    holder.answer_others(move |p, o| {
        if counted.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::not_yet()
        } else {
            Reply::applied(p, o)
        }
    });
    let readers = format!("{},{nobody},{}", elsewhere.base_url(), holder.base_url());
    let writer = Service::start(
        WRITER,
        &writer_env(
            &broker,
            &topic,
            &[
                ("KV_API_READERS", &readers),
                ("KV_API_CONDITIONAL_TIMEOUT_MS", "2000"),
            ],
        ),
    );
    let http = reqwest::Client::new();

    let response = http
        .put(writer.url("/v1/kv/job-7"))
        .header("If-None-Match", "*")
        .body("claimed")
        .send()
        .await
        .expect("put");
    let (status, etag, _, body) = answer(response).await;
    assert_eq!(status, 200, "{body} {}", writer.output());
    let (p, o) = position(&body);
    assert_eq!(etag.as_deref(), Some(format!("\"{p}-{o}\"").as_str()));
    // The first reader does not hold the partition, the second is down, the third had not
    // applied the record yet the first time: asked again, it tells.
    assert_eq!(elsewhere.asked(), vec![(p, o)]);
    assert_eq!(holder.asked(), vec![(p, o), (p, o)]);

    // The reader that told is asked first from then on.
    let response = http
        .put(writer.url("/v1/kv/job-8"))
        .header("If-None-Match", "*")
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), 200);
    assert_eq!(elsewhere.asked().len(), 1);
    assert_eq!(holder.asked().len(), 3);

    // Nobody tells within KV_API_CONDITIONAL_TIMEOUT_MS: 503 outcome_unknown, retry advised.
    holder.answer_others(|_, _| Reply::not_yet());
    let started = Instant::now();
    let response = http
        .put(writer.url("/v1/kv/job-9"))
        .header("If-None-Match", "*")
        .header("Idempotency-Key", "job-9-claim")
        .send()
        .await
        .expect("put");
    let took = started.elapsed();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let (_, etag, headers, body) = answer(response).await;
    assert_eq!(etag, None);
    // Where the record is, for a read that must see the key after the write was decided.
    let offset = headers["x-kafka-offset"].to_str().expect("ascii");
    assert_eq!(
        headers["x-consistency-token"],
        format!("{p}:{offset}").as_str()
    );
    assert_eq!(body["error"]["code"], "outcome_unknown");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("may or may not") && message.contains("Idempotency-Key"),
        "{message}"
    );
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(8),
        "{took:?}"
    );

    // Every reader saying it will never know ends the wait at once.
    elsewhere.answer_others(|_, _| Reply::unknown());
    holder.answer_others(|_, _| Reply::unknown());
    let writer_one = Service::start(
        WRITER,
        &writer_env(
            &broker,
            &topic,
            &[(
                "KV_API_READERS",
                &format!("{},{}", elsewhere.base_url(), holder.base_url()),
            )],
        ),
    );
    let started = Instant::now();
    let response = http
        .put(writer_one.url("/v1/kv/job-10"))
        .header("If-Match", "*")
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // So does every reader refusing the client's credentials, and the answer says so.
    elsewhere.answer_others(|_, _| Reply::error(401, "unauthorized"));
    holder.answer_others(|_, _| Reply::error(403, "forbidden"));
    let started = Instant::now();
    let response = http
        .put(writer_one.url("/v1/kv/job-11"))
        .header("If-Match", "*")
        .send()
        .await
        .expect("put");
    let (status, _, _, body) = answer(response).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "outcome_unknown");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("credentials")),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let metrics = writer.metrics(&http).await;
    assert_eq!(
        metric(
            &metrics,
            "kv_writer_conditional_writes_total",
            &[("outcome", "unknown")]
        ),
        Some(1.0)
    );
    assert!(metric(
        &metrics,
        "kv_writer_outcome_requests_total",
        &[("reply", "not_held")]
    )
    .is_some_and(|n| n >= 1.0));
}

#[tokio::test]
async fn without_readers_a_conditional_write_is_501_bad_header_syntax_is_400_and_nothing_is_produced(
) {
    let broker = Broker::start();
    let topic = broker.create_topic("conditional-off", 1).await;
    let writer = Service::start(WRITER, &writer_env(&broker, &topic, &[]));
    let http = reqwest::Client::new();

    for (name, value) in [
        ("If-Match", "\"0-1\""),
        ("If-None-Match", "*"),
        ("Idempotency-Key", "k-1"),
    ] {
        let response = http
            .put(writer.url("/v1/kv/k"))
            .header(name, value)
            .body("v")
            .send()
            .await
            .expect("put");
        let (status, _, _, body) = answer(response).await;
        assert_eq!(status, 501, "{name}: {body}");
        assert_eq!(body["error"]["code"], "conditional_writes_not_configured");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("KV_API_READERS")),
            "{body}"
        );
    }
    let response = http
        .delete(writer.url("/v1/kv/k"))
        .header("If-Match", "*")
        .send()
        .await
        .expect("delete");
    assert_eq!(response.status(), 501);

    for (name, value) in [
        ("If-Match", "0-1"),
        ("If-None-Match", "\"0-1\""),
        ("Idempotency-Key", "two words"),
    ] {
        let response = http
            .put(writer.url("/v1/kv/k"))
            .header(name, value)
            .body("v")
            .send()
            .await
            .expect("put");
        let (status, _, _, body) = answer(response).await;
        assert_eq!(status, 400, "{name}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(name)),
            "{name}: {body}"
        );
    }

    // The original's routes ignore the headers; a batch refuses them rather than ignoring them.
    let stored = http
        .post(writer.url("/store"))
        .header("If-Match", "\"0-1\"")
        .json(&json!({"key": "seed", "value": "v"}))
        .send()
        .await
        .expect("store");
    assert_eq!(stored.status(), 200);
    let batch = http
        .post(writer.url("/v1/kv:batch"))
        .json(&json!({"items": [{"key": "a", "value": "1", "if_match": "\"0-1\""}]}))
        .send()
        .await
        .expect("batch");
    let (status, _, _, body) = answer(batch).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "conditional_batch_unsupported");
    let batch = http
        .post(writer.url("/v1/kv:batch"))
        .header("Idempotency-Key", "b-1")
        .json(&json!({"items": [{"key": "a", "value": "1"}]}))
        .send()
        .await
        .expect("batch");
    assert_eq!(batch.status(), 400);

    // Only the /store write reached the topic.
    let all = records(broker.bootstrap_servers(), &topic).await;
    let keys: Vec<&[u8]> = all.iter().map(|r| r.key.as_slice()).collect();
    assert_eq!(keys, vec![&b"seed"[..]]);
}

/// `count` conditional creates of distinct keys sent at once; every answer's status.
async fn concurrent_creates(http: &reqwest::Client, writer: &Service, count: usize) -> Vec<u16> {
    let creates = (0..count).map(|i| {
        http.put(writer.url(&format!("/v1/kv/claim-{i}")))
            .header("If-None-Match", "*")
            .header("Authorization", "Bearer shared")
            .body("mine")
            .send()
    });
    futures::future::join_all(creates)
        .await
        .into_iter()
        .map(|r| r.expect("answer").status().as_u16())
        .collect()
}

#[tokio::test]
async fn concurrent_conditional_writes_to_one_reader_share_batches_and_each_is_asked_once() {
    let broker = Broker::start();
    let topic = broker.create_topic("conditional-batches", 2).await;
    let reader = StubReader::start();
    // A reader slow to answer: the questions that arrive meanwhile queue for the next batch.
    reader.answer_others(|p, o| Reply::applied(p, o).after(Duration::from_millis(300)));
    let writer = Service::start(
        WRITER,
        &writer_env(&broker, &topic, &[("KV_API_READERS", reader.base_url())]),
    );
    let http = reqwest::Client::new();

    let statuses = concurrent_creates(&http, &writer, 40).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    // One question per write, none asked twice, all within batches.
    let mut asked = reader.asked();
    assert_eq!(asked.len(), 40, "{asked:?}");
    asked.sort_unstable();
    asked.dedup();
    assert_eq!(asked.len(), 40, "a record was asked twice");
    let requests = reader.requests();
    assert!(requests.iter().all(|r| r.is_batch()), "{requests:?}");
    let batches = reader.batches();
    assert!(
        batches.len() < 20 && batches.iter().any(|b| b.len() > 1),
        "the questions were not batched: {batches:?}"
    );
    assert!(requests
        .iter()
        .all(|r| r.header("authorization") == Some("Bearer shared")));

    let metrics = writer.metrics(&http).await;
    assert_eq!(
        metric(
            &metrics,
            "kv_writer_outcome_requests_total",
            &[("reply", "decided")]
        ),
        Some(40.0),
        "counted per question"
    );
    assert_eq!(
        metric(&metrics, "kv_writer_outcome_batch_records_count", &[]),
        Some(batches.len() as f64)
    );
    assert_eq!(
        metric(&metrics, "kv_writer_outcome_batch_records_sum", &[]),
        Some(40.0)
    );
}

#[tokio::test]
async fn a_reader_without_the_batch_route_still_gets_every_question_answered_through_the_single_route(
) {
    let broker = Broker::start();
    let topic = broker.create_topic("conditional-older-reader", 2).await;
    let reader = StubReader::start_without_batches();
    reader.answer_others(|p, o| Reply::applied(p, o).after(Duration::from_millis(100)));
    let writer = Service::start(
        WRITER,
        &writer_env(&broker, &topic, &[("KV_API_READERS", reader.base_url())]),
    );
    let http = reqwest::Client::new();

    let statuses = concurrent_creates(&http, &writer, 20).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let mut asked = reader.asked();
    assert_eq!(asked.len(), 20, "{asked:?}");
    asked.sort_unstable();
    asked.dedup();
    assert_eq!(asked.len(), 20, "a record was asked twice");
    // The batch route was tried by the first batches under way, then no more.
    let tried = reader.batches().len();
    assert!((1..=2).contains(&tried), "{tried} batches tried");
    let response = http
        .put(writer.url("/v1/kv/later"))
        .header("If-None-Match", "*")
        .body("x")
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), 200);
    assert_eq!(reader.batches().len(), tried, "the reader is remembered");
    let last = reader.requests().pop().expect("a request");
    assert_eq!(last.method, "GET");
    assert_eq!(reader.asked().len(), 21);
}
