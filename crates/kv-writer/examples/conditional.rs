//! Conditional writes against unconditional ones, through a running kv-writer whose
//! `KV_API_READERS` names running readers (`make bench` starts them); and, given the pid of an
//! owner candidate among those readers and the URL of another, the failover figures.
//!
//! ```text
//! cargo run --release -p kv-writer --example conditional -- rates WRITER WRITES CONCURRENCY
//! cargo run --release -p kv-writer --example conditional -- failover WRITER OWNER_PID SURVIVOR
//! ```
//!
//! `rates`: `WRITES` unconditional puts from `CONCURRENCY` connections, then as many conditional
//! ones: each connection keeps a counter of its own, created with `If-None-Match: *` and then
//! written with `If-Match` set to the `ETag` its previous write answered, so no write conflicts
//! and the figure is the cost of deciding, not of contention. Prints one `BENCH` line.
//!
//! `failover`: conditional increments of one key, one after the other; after 2 s `OWNER_PID` is
//! killed with SIGKILL. Prints the time from the kill to the next applied conditional write,
//! and to the survivor owning every partition (`/healthz/cluster`). The writes are kv-client's
//! `put_with`, without its retries, so the next one goes out as soon as one is answered.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_client::{Client, Error, Precondition, Version, WriteOptions};

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

/// `writes` writes from `concurrency` tasks, each task calling `write(task, n)` for its n-th
/// write; writes/s and the latencies in milliseconds, sorted.
async fn measure<F, Fut>(writes: usize, concurrency: usize, write: F) -> (f64, Vec<f64>)
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let write = Arc::new(write);
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|task| {
            let (next, write) = (next.clone(), write.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = 0;
                while next.fetch_add(1, Ordering::Relaxed) < writes {
                    let began = Instant::now();
                    write(task, n).await;
                    latencies.push(began.elapsed().as_secs_f64() * 1000.0);
                    n += 1;
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(writes);
    for task in tasks {
        latencies.extend(task.await.expect("load task"));
    }
    let rate = latencies.len() as f64 / start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    (rate, latencies)
}

async fn rates(writer: String, writes: usize, concurrency: usize) {
    // Hand-rolled, both sides, so that they differ by the precondition alone: kv-client sends
    // every conditional write with an `Idempotency-Key`, which the readers record as well.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .expect("client");
    let run = format!("{}", std::process::id());
    let (plain_rate, plain) = {
        let (http, writer, run) = (http.clone(), writer.clone(), run.clone());
        measure(writes, concurrency, move |task, n| {
            let request = http
                .put(format!("{writer}/v1/kv/plain-{run}-{task}-{n}"))
                .body(vec![b'v'; 100])
                .send();
            async move {
                let answer = request.await.expect("write");
                assert_eq!(answer.status(), 200, "an unconditional write failed");
            }
        })
        .await
    };
    let etags: Arc<Vec<std::sync::Mutex<Option<String>>>> =
        Arc::new((0..concurrency).map(|_| Default::default()).collect());
    let refused = Arc::new(AtomicUsize::new(0));
    let (conditional_rate, conditional) = {
        let (http, writer, refused) = (http.clone(), writer.clone(), refused.clone());
        measure(writes, concurrency, move |task, _| {
            let (http, writer, etags, refused) =
                (http.clone(), writer.clone(), etags.clone(), refused.clone());
            let run = run.clone();
            async move {
                let previous = etags[task].lock().expect("etag").clone();
                let request = http
                    .put(format!("{writer}/v1/kv/counter-{run}-{task}"))
                    .body(vec![b'v'; 100]);
                let request = match &previous {
                    None => request.header("If-None-Match", "*"),
                    Some(etag) => request.header("If-Match", etag),
                };
                let answer = request.send().await.expect("write");
                match answer.status().as_u16() {
                    200 => {
                        let etag = answer.headers()["etag"].to_str().expect("etag").to_owned();
                        *etags[task].lock().expect("etag") = Some(etag);
                    }
                    412 => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        let etag = answer
                            .headers()
                            .get("etag")
                            .map(|v| v.to_str().expect("etag").to_owned());
                        *etags[task].lock().expect("etag") = etag;
                    }
                    other => panic!("a conditional write answered {other}"),
                }
            }
        })
        .await
    };
    println!(
        "BENCH plain_wps={plain_rate:.0} plain_p50_ms={:.2} plain_p99_ms={:.2} \
         conditional_wps={conditional_rate:.0} conditional_p50_ms={:.2} \
         conditional_p99_ms={:.2} refused={}",
        percentile(&plain, 50.0),
        percentile(&plain, 99.0),
        percentile(&conditional, 50.0),
        percentile(&conditional, 99.0),
        refused.load(Ordering::Relaxed)
    );
}

/// Hand-rolled: kv-client has no call for `/healthz/cluster`.
async fn owned_everything(http: &reqwest::Client, survivor: &str) -> bool {
    let Ok(answer) = http.get(format!("{survivor}/healthz/cluster")).send().await else {
        return false;
    };
    let view: serde_json::Value = answer.json().await.unwrap_or_default();
    let owned = view["owner"]["partitions"]
        .as_object()
        .map_or(0, |p| p.len());
    owned > 0 && owned as u64 == view["partitions"].as_u64().unwrap_or(u64::MAX)
}

async fn failover(writer: String, owner_pid: String, survivor: String) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client");
    let client = Client::builder()
        .writer(writer)
        .max_retries(0)
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client");
    let key = format!("failover-{}", std::process::id());
    let mut version: Option<Version> = None;
    let started = Instant::now();
    let mut killed: Option<Instant> = None;
    let mut write_after = None;
    let mut owner_after = None;
    while write_after.is_none() || owner_after.is_none() {
        if killed.is_none() && started.elapsed() > Duration::from_secs(2) {
            let status = std::process::Command::new("kill")
                .args(["-KILL", &owner_pid])
                .status()
                .expect("kill");
            assert!(status.success(), "cannot kill {owner_pid}");
            killed = Some(Instant::now());
        }
        if let Some(at) = killed {
            assert!(
                at.elapsed() < Duration::from_secs(120),
                "no failover in 2 minutes"
            );
            if owner_after.is_none() && owned_everything(&http, &survivor).await {
                owner_after = Some(at.elapsed());
            }
        }
        let options = WriteOptions {
            precondition: match version {
                None => Precondition::IfAbsent,
                Some(version) => Precondition::IfMatch(version),
            },
            ..WriteOptions::default()
        };
        let sent = Instant::now();
        match client.put_with(&key, "v", &options).await {
            Ok(written) => {
                version = written.version;
                if let Some(at) = killed {
                    if sent >= at && write_after.is_none() {
                        write_after = Some(at.elapsed());
                    }
                }
            }
            Err(Error::PreconditionFailed { current }) => version = current,
            // Not decided (the owner gone, `503`), or no answer: the same write again.
            Err(_) => {}
        }
    }
    println!(
        "BENCH failover_write_ms={:.0} failover_owner_ms={:.0}",
        write_after.expect("measured").as_secs_f64() * 1000.0,
        owner_after.expect("measured").as_secs_f64() * 1000.0
    );
}

#[tokio::main]
async fn main() {
    match arg(1).as_str() {
        "rates" => {
            let writes = arg(3).parse().expect("WRITES");
            let concurrency = arg(4).parse().expect("CONCURRENCY");
            rates(arg(2), writes, concurrency).await;
        }
        "failover" => failover(arg(2), arg(3), arg(4)).await,
        other => panic!("unknown mode {other:?}: rates or failover"),
    }
}
