//! Watch figures: the time from a write's `2xx` at kv-writer to its `put` event at every one of
//! many watchers on a kv-reader, under a moderate background write load; and how many events a
//! second one watcher takes when they are there to be sent. Both services must already run (as
//! `scripts/bench.sh` starts them, the reader with a buffer of changes larger than `changes`).
//!
//! ```text
//! cargo run --release -p kv-reader --example watch_latency -- WRITER_URL READER_URL [watchers] [probes] [changes] [background-writes/s]
//! ```
//!
//! Latency: the watchers all watch one prefix; each probe writes a unique key under it, takes
//! the clock at the `2xx`, and waits until every watcher received it (an event before the `2xx`
//! counts 0). Probes run one at a time, 10 ms apart, with background writes outside the prefix
//! going on. Throughput: `changes` puts under a second prefix are written and applied, then one
//! watcher asks for them from the replica's buffer (`from=start`) and is timed from its request
//! to the last of them.
//!
//! The writes and the watches are kv-client's (the writes without retries, so a failed one
//! counts); the bulk batches and the read waiting for their token, which kv-client has no call
//! for, are sent by hand.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kv_client::{Client, Watch, WatchEvent};
use kv_testkit::scrape;
use tokio::sync::mpsc;

/// A probe not seen by every watcher within this long counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

fn arg<T: std::str::FromStr>(index: usize, default: T) -> T {
    std::env::args()
        .nth(index)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Follows `watch` and hands every `put`'s key, with the time it arrived, to `seen`; `opened` is
/// told once the watch's first event came.
async fn watcher(
    mut watch: Watch,
    opened: mpsc::Sender<()>,
    seen: mpsc::UnboundedSender<(Bytes, Instant)>,
) {
    let mut first = true;
    while let Ok(event) = watch.next().await {
        if first {
            first = false;
            let _ = opened.send(()).await;
        }
        if let WatchEvent::Put { key, .. } = event {
            if seen.send((key, Instant::now())).is_err() {
                return;
            }
        }
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(writer), Some(reader)) = (args.get(1), args.get(2)) else {
        eprintln!(
            "usage: watch_latency WRITER_URL READER_URL [watchers] [probes] [changes] \
             [background-writes/s]"
        );
        std::process::exit(2);
    };
    let watchers: usize = arg(3, 100);
    let probes: usize = arg(4, 200);
    let changes: usize = arg(5, 20_000);
    let rate: u64 = arg(6, 500);
    let writes = Client::builder()
        .writer(writer)
        .max_retries(0)
        .build()
        .expect("client");
    let watches = Client::builder().readers([reader]).build().expect("client");
    let run: u32 = rand::random();

    let (opened_tx, mut opened) = mpsc::channel(watchers);
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let prefix = format!("lat-{run:08x}/");
    let watcher_tasks: Vec<_> = (0..watchers)
        .map(|_| {
            tokio::spawn(watcher(
                watches.watch(&prefix),
                opened_tx.clone(),
                seen_tx.clone(),
            ))
        })
        .collect();
    for _ in 0..watchers {
        opened.recv().await.expect("every watcher opens");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let background_acked = Arc::new(AtomicUsize::new(0));
    let background = {
        let (writes, stop, acked) = (writes.clone(), stop.clone(), background_acked.clone());
        let value = Bytes::from(vec![b'v'; 100]);
        tokio::spawn(async move {
            if rate == 0 {
                return;
            }
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                i += 1;
                let (writes, value, acked) = (writes.clone(), value.clone(), acked.clone());
                tokio::spawn(async move {
                    let key = format!("bg-{run:08x}-{}", i % 10_000);
                    if writes.put(&key, value).await.is_ok() {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        })
    };
    // Let the background load settle before probing.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut times = Vec::with_capacity(probes * watchers);
    let mut failed = 0usize;
    for i in 0..probes {
        let key = format!("{prefix}{i}");
        let put = writes.put(&key, format!("probe {i}")).await;
        let acked_at = Instant::now();
        if put.is_err() {
            failed += 1;
            continue;
        }
        let mut pending = watchers;
        let deadline = tokio::time::Instant::now() + PROBE_TIMEOUT;
        while pending > 0 {
            match tokio::time::timeout_at(deadline, seen.recv()).await {
                Ok(Some((seen_key, at))) if seen_key == key.as_bytes() => {
                    times.push(at.saturating_duration_since(acked_at));
                    pending -= 1;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        if pending > 0 {
            failed += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    background.await.ok();

    // Throughput: `changes` puts written and applied before one watcher asks for them. Batches,
    // the read with their token and `/metrics` by hand: kv-client has no call for them.
    let http = reqwest::Client::new();
    let (writer, reader) = (writer.trim_end_matches('/'), reader.trim_end_matches('/'));
    // The latency watchers close first and the reader lets them go: they hold the caller's
    // KV_API_MAX_WATCHES_PER_CALLER (100), past which the throughput watch would be refused.
    for task in watcher_tasks {
        task.abort();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if scrape(&http, reader, "kv_reader_watches_open").await == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "the latency watches stay open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let bulk = format!("tp-{run:08x}/");
    let value = "v".repeat(100);
    let mut last_token = String::new();
    for chunk in (0..changes).collect::<Vec<_>>().chunks(100) {
        let items: Vec<serde_json::Value> = chunk
            .iter()
            .map(|i| serde_json::json!({"key": format!("{bulk}{i}"), "value": value}))
            .collect();
        let answer = http
            .post(format!("{writer}/v1/kv:batch"))
            .json(&serde_json::json!({ "items": items }))
            .send()
            .await
            .expect("batch");
        // A broker that stopped acknowledging fails the run now, so the bench replaces it,
        // instead of waiting out a produce timeout for each of the remaining batches.
        let status = answer.status();
        let answer: serde_json::Value = answer.json().await.expect("batch answer");
        assert!(
            status.is_success(),
            "the writer did not acknowledge a batch: {status} {answer}"
        );
        if let Some(token) = answer["consistency_token"].as_str() {
            last_token = token.to_owned();
        }
    }
    let applied = http
        .get(format!("{reader}/v1/kv/{}0", bulk.replace('/', "%2F")))
        .header("x-consistency-token", &last_token)
        .send()
        .await
        .expect("read");
    assert!(applied.status().is_success(), "the reader applied the bulk");
    let started = Instant::now();
    // `start`, the id of the position before any change, resumes from the oldest change in the
    // replica's buffer, as `from=start` does.
    let mut watch = watches.watch(&bulk).resume_from("start");
    let mut received = 0usize;
    let mut reset = false;
    while received < changes {
        match tokio::time::timeout(Duration::from_secs(30), watch.next()).await {
            Ok(Ok(WatchEvent::Put { .. })) => received += 1,
            Ok(Ok(WatchEvent::Reset)) => reset = true,
            Ok(Ok(_)) => {}
            _ => break,
        }
    }
    let took = started.elapsed();
    let events_per_s = received as f64 / took.as_secs_f64();

    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (p50, p99, max) = (
        percentile(&times, 50.0),
        percentile(&times, 99.0),
        times.last().copied().unwrap_or_default(),
    );
    println!(
        "{} deliveries to {watchers} watchers of {probes} probes ({failed} failed) under {rate} \
         background writes/s ({} acked)",
        times.len(),
        background_acked.load(Ordering::Relaxed)
    );
    println!(
        "write 2xx -> event: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(p50),
        ms(p99),
        ms(max)
    );
    println!(
        "one watcher took {received} of {changes} events in {took:.2?}: {events_per_s:.0} events/s{}",
        if reset { " (from a reset snapshot)" } else { "" }
    );
    println!(
        "BENCH p50_ms={:.2} p99_ms={:.2} max_ms={:.2} failed={failed} events_per_s={events_per_s:.0} received={received}",
        ms(p50),
        ms(p99),
        ms(max)
    );
}
