//! Three shards holding every partition twice (KV_API_SHARD_REPLICAS=2), one of them killed
//! with SIGKILL every few seconds and started again on its disk store, under read load through
//! the others and a trickle of writes. Figure: reads answered anything but 2xx with the right
//! value (goal 0), and diffs once it settles, each shard's own partitions read on that shard
//! (goal 0).

use crate::READER;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kv_core::kafka::kafka_partition;
use kv_testkit::reader::{key_path, wait_ready};
use kv_testkit::{service_env, workspace_binary, Broker, Service, Shards, DEADLINE};
use rand::Rng;

const PARTITIONS: u32 = 6;
const SHARDS: usize = 3;
const REPLICAS: usize = 2;
const KEYS: usize = 3000;
const READERS: usize = 8;
const KILLS: usize = 6;
/// How long a killed shard stays down, under load.
const DOWN: Duration = Duration::from_secs(3);

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    non_2xx: AtomicU64,
    wrong_value: AtomicU64,
    /// The connection to the shard the read was sent to broke: that shard was being killed.
    cut: AtomicU64,
    first_failures: Mutex<Vec<String>>,
}

impl Tally {
    fn failure(&self, what: String) {
        let mut first = self.first_failures.lock().expect("lock");
        if first.len() < 5 {
            first.push(what);
        }
    }
}

#[tokio::test]
#[ignore = "a drill: make drills runs it"]
async fn drill_a_shard_killed_every_few_seconds_costs_no_read_and_no_write() {
    let broker = Broker::start();
    let topic = broker.create_topic("drill-shards", PARTITIONS as i32).await;
    let env = service_env(&broker, &topic);
    let writer = Service::start(workspace_binary("kv-writer"), &env);
    let dirs: Vec<tempfile::TempDir> = (0..SHARDS)
        .map(|_| tempfile::tempdir().expect("store dir"))
        .collect();
    // Every shard gets its own disk store: a restart resumes from it, as a StatefulSet's would.
    let mut shard_env = env.clone();
    shard_env.push(("KV_API_STATE_STORAGE_TYPE", "disk".to_owned()));
    let mut shards = Shards::start_each(READER, &shard_env, SHARDS, REPLICAS, |i| {
        vec![(
            "KV_API_STATE_STORAGE_DISK_LOCATION",
            dirs[i].path().display().to_string(),
        )]
    });
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(READERS)
        .build()
        .expect("client");

    let values: BTreeMap<String, String> = (0..KEYS)
        .map(|i| {
            (
                format!("r/{i:05}"),
                format!("value {i} {}", "x".repeat(i % 200)),
            )
        })
        .collect();
    let acked: Vec<bool> = futures::stream::iter(&values)
        .map(|(key, value)| {
            let request = http
                .put(writer.url(&key_path(key.as_bytes())))
                .body(value.clone())
                .send();
            async move { request.await.is_ok_and(|r| r.status() == 200) }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(acked.iter().all(|ok| *ok), "every seed write acknowledged");
    for (_, shard) in shards.running() {
        wait_ready(&http, shard).await;
    }
    settle(&http, &shards, &values).await;
    let model = Arc::new(Mutex::new(values.clone()));

    let up: Arc<Vec<AtomicBool>> = Arc::new((0..SHARDS).map(|_| AtomicBool::new(true)).collect());
    let urls: Arc<Vec<String>> = Arc::new(
        (0..SHARDS)
            .map(|i| shards.get(i).base_url.clone())
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let keys: Arc<Vec<(String, String)>> = Arc::new(values.into_iter().collect());
    let mut load = Vec::new();
    for _ in 0..READERS {
        let (http, up, urls, stop, tally, keys) = (
            http.clone(),
            up.clone(),
            urls.clone(),
            stop.clone(),
            tally.clone(),
            keys.clone(),
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (shard, (key, value)) = {
                    let mut rng = rand::rng();
                    let running: Vec<usize> = (0..SHARDS)
                        .filter(|&i| up[i].load(Ordering::Relaxed))
                        .collect();
                    let shard = running[rng.random_range(0..running.len())];
                    (shard, keys[rng.random_range(0..keys.len())].clone())
                };
                let url = format!("{}{}", urls[shard], key_path(key.as_bytes()));
                match http.get(url).send().await {
                    Err(_) => {
                        tally.cut.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(response) => {
                        let status = response.status();
                        match response.text().await {
                            Ok(body) if status == 200 && body == value => {
                                tally.ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(body) if status.is_success() => {
                                tally.wrong_value.fetch_add(1, Ordering::Relaxed);
                                tally.failure(format!("{key} via {shard}: {body:.60}"));
                            }
                            Ok(body) => {
                                tally.non_2xx.fetch_add(1, Ordering::Relaxed);
                                tally.failure(format!("{key} via {shard}: {status} {body:.200}"));
                            }
                            Err(_) => {
                                tally.cut.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }
        }));
    }
    let writes = {
        let (http, stop, model, url) = (
            http.clone(),
            stop.clone(),
            model.clone(),
            writer.base_url.clone(),
        );
        tokio::spawn(async move {
            let mut n = 0u64;
            let mut ticks = tokio::time::interval(Duration::from_millis(20));
            while !stop.load(Ordering::Relaxed) {
                ticks.tick().await;
                let key = format!("w/{:04}", n % 500);
                let value = format!("write {n}");
                n += 1;
                let put = http
                    .put(format!("{url}{}", key_path(key.as_bytes())))
                    .body(value.clone())
                    .send()
                    .await;
                if put.is_ok_and(|r| r.status() == 200) {
                    model.lock().expect("model").insert(key, value);
                }
            }
            n
        })
    };

    let started = Instant::now();
    for kill in 0..KILLS {
        let victim = kill % SHARDS;
        up[victim].store(false, Ordering::Relaxed);
        shards.kill(victim);
        tokio::time::sleep(DOWN).await;
        shards.restart(victim, &[]);
        wait_ready(&http, shards.get(victim)).await;
        // Back into the clients' rotation once its peers have seen it ready.
        kv_testkit::reader::wait_seen_ready(&http, shards.get((victim + 1) % SHARDS), victim).await;
        up[victim].store(true, Ordering::Relaxed);
        println!(
            "kill {} of shard {victim} at {:.1?}",
            kill + 1,
            started.elapsed()
        );
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.expect("reader task");
    }
    let written = writes.await.expect("writer task");
    let model = model.lock().expect("model").clone();
    let diffs = settle(&http, &shards, &model).await;

    let (ok, non_2xx, wrong, cut) = (
        tally.ok.load(Ordering::Relaxed),
        tally.non_2xx.load(Ordering::Relaxed),
        tally.wrong_value.load(Ordering::Relaxed),
        tally.cut.load(Ordering::Relaxed),
    );
    println!(
        "drill shard kills: {KILLS} kill -9 of {SHARDS} shards (R={REPLICAS}, {PARTITIONS} \
         partitions) in {:.0?}, {} reads: non-2xx = {non_2xx}, wrong values = {wrong} (cut by \
         the kill of the shard asked: {cut}), {written} writes alongside, diffs after settling \
         = {diffs}",
        started.elapsed(),
        ok + non_2xx + wrong + cut,
    );
    let failures = tally.first_failures.lock().expect("lock").clone();
    assert_eq!(non_2xx + wrong, 0, "first failures: {failures:#?}");
    assert_eq!(diffs, 0);
    assert!(ok > 1000, "the load ran: {ok} reads");
}

/// Waits until every shard holds exactly the model's entries of its own partitions, each read
/// on that shard itself (the loop guard keeps it from forwarding); returns the diffs left if
/// the deadline passes first.
async fn settle(
    http: &reqwest::Client,
    shards: &Shards,
    model: &BTreeMap<String, String>,
) -> usize {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut diffs = 0;
        for (i, shard) in shards.running() {
            for (key, value) in model {
                let partition = kafka_partition(key.as_bytes(), PARTITIONS) as u32;
                let holds =
                    (0..REPLICAS as u32).any(|k| (partition + k) % SHARDS as u32 == i as u32);
                if !holds {
                    continue;
                }
                let response = http
                    .get(shard.url(&key_path(key.as_bytes())))
                    .header("x-kv-forwarded-by", "drill")
                    .send()
                    .await;
                let same = match response {
                    Ok(response) if response.status() == 200 => {
                        response.text().await.is_ok_and(|body| body == *value)
                    }
                    _ => false,
                };
                diffs += usize::from(!same);
            }
        }
        if diffs == 0 || Instant::now() >= deadline {
            return diffs;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
