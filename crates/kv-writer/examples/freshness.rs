//! Freshness: the time from a write's `2xx` at kv-writer to the value being readable at a
//! kv-reader, under a moderate background write load. Both services must already run (as
//! `scripts/bench.sh` starts them); this only drives them over HTTP on loopback.
//!
//! ```text
//! cargo run --release -p kv-writer --example freshness -- WRITER_URL READER_URL [probes] [background-writes/s]
//! ```
//!
//! Each probe writes a unique key, takes the clock at the `2xx`, then polls the reader (no sleep
//! between polls) until it answers the new value. Probes run one at a time, 10 ms apart.
//!
//! The requests are kv-client's, built without read-your-writes (a read carrying the probe's
//! token would wait for it inside the reader instead of showing the lag) and without retries (a
//! failed request counts, or is polled again at once, as before).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// A broker that stopped answering makes every probe wait out its timeouts: give up after this
/// many failed probes, whether the write or the read failed.
const GIVE_UP_AFTER: usize = 10;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(writer), Some(reader)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: freshness WRITER_URL READER_URL [probes] [background-writes/s]");
        std::process::exit(2);
    };
    let probes: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(200);
    let rate: u64 = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(500);
    let client = kv_client::Client::builder()
        .writer(writer)
        .readers([reader])
        .read_your_writes(false)
        .max_retries(0)
        // Longer than the writer's own bound (its 10 s produce timeout plus a second), so a
        // write is answered by the writer rather than abandoned by the client.
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client");
    let run: u32 = rand::random();
    let value = Bytes::from(vec![b'v'; 100]);

    // Background writes at a fixed rate, each on its own task so a slow ack does not slow the rate.
    let stop = Arc::new(AtomicBool::new(false));
    let background_acked = Arc::new(AtomicUsize::new(0));
    let background = {
        let (client, value) = (client.clone(), value.clone());
        let (stop, acked) = (stop.clone(), background_acked.clone());
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
                let (client, value, acked) = (client.clone(), value.clone(), acked.clone());
                tokio::spawn(async move {
                    let key = format!("bg-{run:08x}-{}", i % 10_000);
                    if client.put(&key, value).await.is_ok() {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        })
    };
    // Let the background load settle before probing.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let started = Instant::now();
    let mut times = Vec::with_capacity(probes);
    let mut failed = 0usize;
    for i in 0..probes {
        let key = format!("fresh-{run:08x}-{i}");
        let expected = format!("probe {i} of run {run:08x}");
        if client.put(&key, expected.clone()).await.is_err() {
            failed += 1;
            if failed >= GIVE_UP_AFTER {
                eprintln!("giving up after {failed} failed probes");
                break;
            }
            continue;
        }
        let acked_at = Instant::now();
        let seen = loop {
            if let Ok(Some(entry)) = client.get(&key).await {
                if entry.value == expected.as_bytes() {
                    break Some(acked_at.elapsed());
                }
            }
            if acked_at.elapsed() > Duration::from_secs(5) {
                break None;
            }
        };
        match seen {
            Some(elapsed) => times.push(elapsed),
            None => failed += 1,
        }
        if failed >= GIVE_UP_AFTER {
            eprintln!("giving up after {failed} failed probes");
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    background.await.ok();
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (p50, p99, max) = (
        percentile(&times, 50.0),
        percentile(&times, 99.0),
        times.last().copied().unwrap_or_default(),
    );
    println!(
        "{} probes ({failed} failed) under {rate} background writes/s ({} acked in {elapsed:.1?})",
        times.len(),
        background_acked.load(Ordering::Relaxed)
    );
    println!(
        "write 2xx -> readable: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(p50),
        ms(p99),
        ms(max)
    );
    println!(
        "BENCH p50_ms={:.2} p99_ms={:.2} max_ms={:.2} failed={failed}",
        ms(p50),
        ms(p99),
        ms(max)
    );
}
