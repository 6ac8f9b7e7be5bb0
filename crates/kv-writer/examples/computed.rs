//! Computed state against a raw consume → produce loop, through a running kv-writer and one
//! owner-candidate kv-reader sharing a rules file (`make bench` starts them; the rules: `site/`
//! by majority, `held/` the latest report held 1 s).
//!
//! ```text
//! cargo run --release -p kv-writer --example computed -- \
//!     WRITER READER BOOTSTRAP RAW_IN RAW_OUT REPORTS CONCURRENCY PROBES
//! ```
//!
//! - `reports_rps`: `REPORTS` reports from 5 agents on `REPORTS / 5` objects (two values, so
//!   every object has a winner) from `CONCURRENCY` connections, from the first sent to every
//!   object's published value readable. The peer, `raw_rps`: the same record count produced to
//!   `RAW_IN` by a raw rdkafka producer while a raw consumer re-produces each record to
//!   `RAW_OUT`, from the first produced to the last re-produced acknowledged.
//! - `computed_p50/p99_ms`: a report acknowledged → its computed value readable (no hold), one
//!   probe at a time; beside it `fresh_p50/p99_ms`, a plain write acknowledged → readable, the
//!   same way in the same run.
//! - `hold_late_p50/p99_ms`: `PROBES` reports under the 1 s hold, at once on distinct keys: when
//!   each value became readable (one batchGet of them every 5 ms), less the report's
//!   acknowledgement and the hold.
//!
//! Writes and point reads are kv-client's, without retries and without read-your-writes (a
//! probe's read must show when the value became readable, not wait for it in the reader);
//! reports, `batchGet` and `/healthz/cluster`, which kv-client has no call for, are sent by hand.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_client::Client;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

const AGENTS: usize = 5;
const HOLD: Duration = Duration::from_secs(1);
const DEADLINE: Duration = Duration::from_secs(300);
/// One probe at a time polls every millisecond; the holds are read in one batchGet every 5 ms,
/// so polling does not take the two cores the services run on.
const PROBE_POLL: Duration = Duration::from_millis(1);
const HOLD_POLL: Duration = Duration::from_millis(5);

fn arg(index: usize) -> String {
    std::env::args()
        .nth(index)
        .unwrap_or_else(|| panic!("argument {index} is missing; see the example's header"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Hand-rolled: kv-client has no call for `/v1/reports`.
async fn report(http: &reqwest::Client, writer: &str, key: &str, agent: &str, value: &str) {
    let answer = http
        .put(format!("{writer}/v1/reports/{key}"))
        .header("X-KV-Agent", agent)
        .body(value.to_owned())
        .send()
        .await
        .expect("report sent");
    assert_eq!(answer.status(), 200, "report {key} by {agent}");
}

/// Polls `key` on the reader every [`PROBE_POLL`] until it reads `value`; when it did.
async fn readable(client: &Client, key: &str, value: &str) -> Instant {
    let started = Instant::now();
    loop {
        let entry = client.get(key).await.ok().flatten();
        if entry.is_some_and(|entry| entry.value == value.as_bytes()) {
            return Instant::now();
        }
        assert!(started.elapsed() < DEADLINE, "{key} never read {value}");
        tokio::time::sleep(PROBE_POLL).await;
    }
}

/// Waits until the reader acts as owner of every partition it holds (a candidate listens one
/// lease session before it owns anything). Hand-rolled: kv-client has no call for
/// `/healthz/cluster`.
async fn owner_ready(http: &reqwest::Client, reader: &str) {
    let started = Instant::now();
    loop {
        let view: serde_json::Value =
            match http.get(format!("{reader}/healthz/cluster")).send().await {
                Ok(answer) => answer.json().await.unwrap_or_default(),
                Err(_) => serde_json::Value::Null,
            };
        let owned = view["owner"]["partitions"]
            .as_object()
            .map_or(0, |p| p.len());
        if owned > 0 && view["owner"]["mode"] != "off" {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the reader never owned a partition"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `REPORTS` reports through the writer until every object's computed value is readable.
async fn reports_rate(
    http: &reqwest::Client,
    writer: &str,
    reader: &str,
    reports: usize,
    concurrency: usize,
) -> f64 {
    let objects = (reports / AGENTS).max(1);
    // Report i: object i % objects by agent i / objects; values from a fixed mix.
    let value = |i: usize| if (i * 7919) % 11 < 5 { "down" } else { "up" };
    let mut expected: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for i in 0..objects * AGENTS {
        let counts = expected.entry(format!("site/{}", i % objects)).or_default();
        if value(i) == "down" {
            counts.0 += 1;
        } else {
            counts.1 += 1;
        }
    }
    let next = Arc::new(AtomicUsize::new(0));
    let total = objects * AGENTS;
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (http, writer, next) = (http.clone(), writer.to_owned(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return;
                    }
                    let agent = format!("agent-{}", i / objects);
                    report(
                        &http,
                        &writer,
                        &format!("site/{}", i % objects),
                        &agent,
                        value(i),
                    )
                    .await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("report task");
    }
    let keys: Vec<&String> = expected.keys().collect();
    // Hand-rolled: kv-client has no call for `batchGet`.
    loop {
        let mut published = 0;
        for chunk in keys.chunks(500) {
            let answer: serde_json::Value = http
                .post(format!("{reader}/v1/kv:batchGet"))
                .json(&serde_json::json!({ "keys": chunk }))
                .send()
                .await
                .expect("batchGet")
                .json()
                .await
                .expect("batchGet json");
            for (key, item) in chunk
                .iter()
                .zip(answer["results"].as_array().expect("results"))
            {
                let (down, up) = expected[*key];
                let winner = if down > up { "down" } else { "up" };
                if item["value"].as_str() == Some(winner) {
                    published += 1;
                }
            }
        }
        if published == keys.len() {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{published} of {} published",
            keys.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// The peer: `records` produced to `raw_in` while a consumer re-produces each to `raw_out`.
async fn raw_rate(bootstrap: &str, raw_in: &str, raw_out: &str, records: usize) -> f64 {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("raw producer");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("bench-raw-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50")
        .create()
        .expect("raw consumer");
    let metadata = consumer
        .fetch_metadata(Some(raw_in), Duration::from_secs(10))
        .expect("metadata");
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        assignment
            .add_partition_offset(raw_in, partition.id(), Offset::Beginning)
            .expect("assignment");
    }
    consumer.assign(&assignment).expect("assign");
    let started = Instant::now();
    let loop_producer = producer.clone();
    let (raw_out, deadline) = (raw_out.to_owned(), started + DEADLINE);
    let relay = tokio::task::spawn_blocking(move || {
        let mut acks = Vec::with_capacity(records);
        while acks.len() < records {
            assert!(Instant::now() < deadline, "the raw loop stalled");
            let Some(message) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let message = message.expect("raw consume");
            let record = FutureRecord::to(&raw_out)
                .key(message.key().unwrap_or_default())
                .payload(message.payload().unwrap_or_default());
            acks.push(loop_producer.send_result(record).expect("raw relay queued"));
        }
        acks
    });
    let sends: Vec<_> = (0..records)
        .map(|i| {
            let key = format!("site/{}", i % (records / AGENTS).max(1));
            let producer = producer.clone();
            let topic = raw_in.to_owned();
            async move {
                producer
                    .send(
                        FutureRecord::to(&topic).key(&key).payload("down"),
                        Duration::from_secs(30),
                    )
                    .await
                    .expect("raw produce");
            }
        })
        .collect();
    futures::future::join_all(sends).await;
    for ack in relay.await.expect("raw relay") {
        ack.await.expect("relay ack").expect("relay produced");
    }
    records as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let (writer, reader, bootstrap) = (arg(1), arg(2), arg(3));
    let (raw_in, raw_out) = (arg(4), arg(5));
    let reports: usize = arg(6).parse().expect("REPORTS");
    let concurrency: usize = arg(7).parse().expect("CONCURRENCY");
    let probes: usize = arg(8).parse().expect("PROBES");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .expect("client");
    let client = Client::builder()
        .writer(&writer)
        .readers([&reader])
        .read_your_writes(false)
        .max_retries(0)
        .build()
        .expect("client");
    owner_ready(&http, &reader).await;

    let reports_rps = reports_rate(&http, &writer, &reader, reports, concurrency).await;
    let raw_rps = raw_rate(&bootstrap, &raw_in, &raw_out, reports).await;

    // One probe at a time: a report's computed value, then a plain write, alternately.
    let (mut computed, mut fresh) = (Vec::new(), Vec::new());
    for i in 0..probes {
        let value = format!("v{i}");
        report(&http, &writer, "site/probe", "probe", &value).await;
        let acked = Instant::now();
        computed.push(ms(readable(&client, "site/probe", &value).await - acked));
        client
            .put("fresh-probe", value.clone())
            .await
            .expect("write");
        let acked = Instant::now();
        fresh.push(ms(readable(&client, "fresh-probe", &value).await - acked));
    }

    // Holds: all at once, each on its own key; one batchGet of the keys not yet seen every
    // HOLD_POLL tells when each became readable, without polling load on the reader.
    let keys: Vec<String> = (0..probes).map(|i| format!("held/{i}")).collect();
    let acks = keys.iter().map(|key| {
        let (http, writer) = (http.clone(), writer.clone());
        async move {
            report(&http, &writer, key, "probe", "on").await;
            Instant::now()
        }
    });
    let acked: Vec<Instant> = futures::future::join_all(acks).await;
    let mut seen: Vec<Option<Instant>> = vec![None; keys.len()];
    let started = Instant::now();
    // Hand-rolled: kv-client has no call for `batchGet`.
    while seen.iter().any(Option::is_none) {
        assert!(started.elapsed() < DEADLINE, "a hold never published");
        let waiting: Vec<usize> = (0..keys.len()).filter(|&i| seen[i].is_none()).collect();
        let names: Vec<&String> = waiting.iter().map(|&i| &keys[i]).collect();
        let answer: serde_json::Value = http
            .post(format!("{reader}/v1/kv:batchGet"))
            .json(&serde_json::json!({ "keys": names }))
            .send()
            .await
            .expect("batchGet")
            .json()
            .await
            .expect("batchGet json");
        let now = Instant::now();
        for (&i, item) in waiting
            .iter()
            .zip(answer["results"].as_array().expect("results"))
        {
            if item["value"].as_str() == Some("on") {
                seen[i] = Some(now);
            }
        }
        tokio::time::sleep(HOLD_POLL).await;
    }
    let mut late: Vec<f64> = seen
        .iter()
        .zip(&acked)
        .map(|(seen, acked)| ms(seen.expect("seen") - *acked) - ms(HOLD))
        .collect();

    for list in [&mut computed, &mut fresh, &mut late] {
        list.sort_by(f64::total_cmp);
    }
    println!(
        "BENCH reports_rps={:.0} raw_rps={:.0} computed_p50_ms={:.1} computed_p99_ms={:.1} \
         fresh_p50_ms={:.1} fresh_p99_ms={:.1} hold_late_p50_ms={:.1} hold_late_p99_ms={:.1} \
         reports={} probes={probes}",
        reports_rps,
        raw_rps,
        percentile(&computed, 50.0),
        percentile(&computed, 99.0),
        percentile(&fresh, 50.0),
        percentile(&fresh, 99.0),
        percentile(&late, 50.0),
        percentile(&late, 99.0),
        (reports / AGENTS).max(1) * AGENTS,
    );
}
