//! Reads through `kv-client` for `make bench`: `read_load READERS KEYS SECONDS TASKS` sends GETs
//! of uniformly random keys `key-000000000` .. `key-(KEYS-1)` from TASKS concurrent tasks for
//! SECONDS (after a one-second warm-up) to the readers, a comma list (sharded readers in shard
//! order: each GET goes to a shard holding its key), and prints
//! `BENCH rps=<GETs/s> p50=<ms> p99=<ms> errors=<count>`.

use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [readers, keys, seconds, tasks] = args.as_slice() else {
        eprintln!("usage: read_load READERS KEYS SECONDS TASKS");
        std::process::exit(2);
    };
    let readers: Vec<String> = readers.split(',').map(str::to_owned).collect();
    let keys: u64 = keys.parse().expect("KEYS: a number");
    let seconds: u64 = seconds.parse().expect("SECONDS: a number");
    let tasks: usize = tasks.parse().expect("TASKS: a number");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let client = kv_client::Client::builder()
            .readers(readers)
            .build()
            .expect("client");
        // The warm-up also learns the shards' layout.
        run(&client, keys, Duration::from_secs(1), tasks).await;
        let started = Instant::now();
        let (mut latencies, errors) = run(&client, keys, Duration::from_secs(seconds), tasks).await;
        let elapsed = started.elapsed().as_secs_f64();
        latencies.sort_unstable();
        let at = |q: f64| {
            latencies
                .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
                .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
        };
        println!(
            "BENCH rps={:.0} p50={:.3} p99={:.3} errors={errors}",
            latencies.len() as f64 / elapsed,
            at(0.5),
            at(0.99)
        );
    });
}

/// Every task's GET latencies, and the GETs that failed or found no value.
async fn run(
    client: &kv_client::Client,
    keys: u64,
    duration: Duration,
    tasks: usize,
) -> (Vec<Duration>, u64) {
    let until = Instant::now() + duration;
    let mut handles = Vec::with_capacity(tasks);
    for task in 0..tasks {
        let client = client.clone();
        handles.push(tokio::spawn(async move {
            // xorshift: a different sequence per task, no shared generator.
            let mut state =
                0x9E37_79B9_7F4A_7C15u64 ^ (task as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut key = String::with_capacity(16);
            while Instant::now() < until {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                key.clear();
                use std::fmt::Write;
                let _ = write!(key, "key-{:09}", state % keys.max(1));
                let sent = Instant::now();
                match client.get(&key).await {
                    Ok(Some(_)) => latencies.push(sent.elapsed()),
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for handle in handles {
        let (latencies, failed) = handle.await.expect("a task");
        all.extend(latencies);
        errors += failed;
    }
    (all, errors)
}
