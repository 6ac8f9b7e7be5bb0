//! Keys expiring all at once: N keys written with TTLs that end in the same second, then the time
//! until every one of them is 404 on a replica, the time until the sweeper has produced all
//! their tombstones, and the sweeper's read throughput while it sweeps against the same load
//! after. The services must already run (as `scripts/bench.sh` starts them): a kv-writer, a
//! kv-reader with `KV_API_TTL_SWEEPER=true` and a plain kv-reader, on one topic.
//!
//! ```text
//! cargo run --release -p kv-reader --example ttl_sweep -- WRITER_URL SWEEPER_URL READER_URL [keys] [lasting-keys]
//! ```
//!
//! Prints one `BENCH` line; all times are in milliseconds from the start of the expiry second.
//!
//! The read load is kv-client's `get`, without retries (a failed read stops the run, as before);
//! the batch writes with TTLs, `batchGet` and `/metrics`, which kv-client has no call for, are
//! sent by hand.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kv_client::Client;
use kv_testkit::scrape;
use serde_json::{json, Value};

/// Keys per batch write and per batchGet.
const CHUNK: usize = 1000;
/// Batch writes in flight at once.
const WRITERS: usize = 4;
/// Concurrent readers of the throughput load.
const READERS: usize = 32;

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms")
}

async fn write_batches(http: &reqwest::Client, writer: &str, items: Vec<Value>) -> Vec<Value> {
    let mut tokens = Vec::new();
    let mut chunks = items.chunks(CHUNK).map(<[Value]>::to_vec);
    loop {
        let round: Vec<_> = chunks.by_ref().take(WRITERS).collect();
        if round.is_empty() {
            return tokens;
        }
        let sends = round.into_iter().map(|chunk| {
            let request = http
                .post(format!("{writer}/v1/kv:batch"))
                .json(&json!({ "items": chunk }));
            async move {
                let answer = request.send().await.expect("batch");
                assert_eq!(answer.status(), 200, "a batch was not acknowledged");
                answer.json::<Value>().await.expect("batch json")
            }
        });
        tokens.extend(futures::future::join_all(sends).await);
    }
}

/// How many of `keys` `reader` still finds.
async fn still_found(http: &reqwest::Client, reader: &str, keys: &[String]) -> usize {
    let mut found = 0;
    for chunk in keys.chunks(CHUNK) {
        let answer: Value = http
            .post(format!("{reader}/v1/kv:batchGet"))
            .json(&json!({ "keys": chunk }))
            .send()
            .await
            .expect("batchGet")
            .json()
            .await
            .expect("batchGet json");
        found += answer["results"]
            .as_array()
            .expect("results")
            .iter()
            .filter(|r| r["found"] == true)
            .count();
    }
    found
}

/// `READERS` tasks reading random lasting keys from `reader` until `stop`; counts answers.
fn read_load(
    reader: &str,
    lasting: usize,
    stop: Arc<AtomicBool>,
) -> (Arc<AtomicU64>, Vec<tokio::task::JoinHandle<()>>) {
    // It writes nothing, so its reads carry no token.
    let client = Client::builder()
        .readers([reader])
        .max_retries(0)
        .build()
        .expect("client");
    let done = Arc::new(AtomicU64::new(0));
    let tasks = (0..READERS)
        .map(|_| {
            let client = client.clone();
            let (stop, done) = (stop.clone(), done.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let i = rand::random_range(0..lasting);
                    let entry = client.get(&format!("lasting-{i:06}")).await.expect("read");
                    assert!(entry.is_some(), "a lasting key is missing");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    (done, tasks)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(writer), Some(sweeper), Some(reader)) = (args.get(1), args.get(2), args.get(3))
    else {
        eprintln!("usage: ttl_sweep WRITER_URL SWEEPER_URL READER_URL [keys] [lasting-keys]");
        std::process::exit(2);
    };
    let (writer, sweeper, reader) = (
        writer.trim_end_matches('/'),
        sweeper.trim_end_matches('/'),
        reader.trim_end_matches('/'),
    );
    let keys: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let lasting: usize = args.get(5).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let value = "v".repeat(100);

    // The lasting keys first: they also tell how fast this broker takes writes.
    let started = Instant::now();
    let items = (0..lasting)
        .map(|i| json!({"key": format!("lasting-{i:06}"), "value": value}))
        .collect();
    write_batches(&http, writer, items).await;
    let rate = lasting as f64 / started.elapsed().as_secs_f64();

    // Every expiring key's TTL ends in the same second: later batches get shorter TTLs. The
    // second is chosen with room for the writes at a quarter of the rate just seen (a broker
    // may slow as its log grows).
    let expiry_second = (now_ms() + (keys as f64 / rate * 4_000.0) as u64) / 1000 + 10;
    let expiring: Vec<String> = (0..keys).map(|i| format!("expiring-{i:06}")).collect();
    let mut late = 0;
    for round in expiring.chunks(CHUNK * WRITERS) {
        let ttl = (expiry_second * 1000)
            .saturating_sub(now_ms())
            .div_ceil(1000);
        if ttl < 1 {
            late += round.len();
        }
        let items = round
            .iter()
            .map(|key| json!({"key": key, "value": value, "ttl_seconds": ttl.max(1)}))
            .collect();
        write_batches(&http, writer, items).await;
    }
    let expires_from = expiry_second * 1000;
    assert!(
        now_ms() < expires_from,
        "the writes took longer than planned ({late} keys late)"
    );
    // Both replicas hold every key before the second begins, or the figures measure replay.
    for replica in [sweeper, reader] {
        let deadline = Instant::now() + Duration::from_secs(120);
        while still_found(&http, replica, &expiring).await < keys {
            assert!(
                Instant::now() < deadline,
                "{replica} does not hold every key after 2 minutes"
            );
        }
    }
    let produced_before = scrape(&http, sweeper, "kv_reader_ttl_tombstones_produced_total")
        .await
        .unwrap_or(0.0);
    tokio::time::sleep(Duration::from_millis(expires_from.saturating_sub(now_ms()))).await;

    // The sweep: reads on the sweeper meanwhile; the 404s on the other replica.
    let stop = Arc::new(AtomicBool::new(false));
    let sweep_started = Instant::now();
    let (reads, load) = read_load(sweeper, lasting, stop.clone());
    let mut all_404_ms = None;
    let mut tombstones_ms = None;
    while all_404_ms.is_none() || tombstones_ms.is_none() {
        if all_404_ms.is_none() && still_found(&http, reader, &expiring).await == 0 {
            all_404_ms = Some(now_ms() - expires_from);
        }
        if tombstones_ms.is_none() {
            let produced = scrape(&http, sweeper, "kv_reader_ttl_tombstones_produced_total")
                .await
                .unwrap_or(0.0);
            if produced - produced_before >= keys as f64 {
                tombstones_ms = Some(now_ms() - expires_from);
            }
        }
        assert!(
            sweep_started.elapsed() < Duration::from_secs(600),
            "the sweep did not end within 10 minutes"
        );
    }
    let sweep_window = sweep_started.elapsed();
    let during = reads.swap(0, Ordering::Relaxed) as f64 / sweep_window.as_secs_f64();

    // The same load once the sweep is over, for as long, the same 404 polling beside it.
    let quiet_started = Instant::now();
    let window = sweep_window.max(Duration::from_secs(3));
    while quiet_started.elapsed() < window {
        still_found(&http, reader, &expiring).await;
    }
    let after = reads.swap(0, Ordering::Relaxed) as f64 / quiet_started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.expect("reader task");
    }
    let lag = scrape(&http, sweeper, "kv_reader_ttl_sweep_lag_seconds")
        .await
        .unwrap_or(0.0);
    println!(
        "BENCH keys={keys} lasting={lasting} late={late} all_404_ms={} tombstones_ms={} \
         rps_during={during:.0} rps_after={after:.0} sweep_window_ms={} sweep_lag_after_s={lag}",
        all_404_ms.unwrap_or_default(),
        tombstones_ms.unwrap_or_default(),
        sweep_window.as_millis()
    );
}
