//! Drill 14 (docs/reliability.md): a soak. One writer and two readers with auth on (a real
//! OpenID provider, scopes per operation) take mixed load for `KV_SOAK_SECONDS` (180 by
//! default, for CI; 1200 for the long run): puts each followed by a read carrying the write's
//! consistency token on either reader, deletes each followed by such a read, batch gets and
//! listings. Every 10 s the resident memory and open file descriptors of each service are read
//! from /proc. Figures: RSS growth from minute 2 (the first third in a run shorter than six
//! minutes) to the end (goal ≤ 10 %), fds growth over the same span (goal 0), errors (goal 0),
//! and the diffs between the two readers' final states (goal 0).

use crate::READER;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use kv_testkit::procfs::Samples;
use kv_testkit::reader::{dump, key_path, wait_ready};
use kv_testkit::topic::diffs;
use kv_testkit::{eventually, workspace_binary, Broker, OidcProvider, Service, DEADLINE};
use rand::Rng;
use serde_json::json;

const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const SCOPES: &str = "kv:read kv:write kv:delete";
/// Keys per writing task.
const KEYS: usize = 500;

#[derive(Default)]
struct Tally {
    operations: AtomicU64,
    errors: AtomicU64,
    first_errors: Mutex<Vec<String>>,
}

impl Tally {
    fn check(&self, good: bool, what: impl FnOnce() -> String) {
        self.operations.fetch_add(1, Ordering::Relaxed);
        if !good {
            self.errors.fetch_add(1, Ordering::Relaxed);
            let mut first = self.first_errors.lock().expect("errors");
            if first.len() < 5 {
                first.push(what());
            }
        }
    }
}

struct Load {
    http: reqwest::Client,
    token: Arc<RwLock<String>>,
    writer: String,
    readers: [String; 2],
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
}

impl Load {
    fn bearer(&self) -> String {
        format!("Bearer {}", self.token.read().expect("token"))
    }

    fn reader(&self) -> &str {
        &self.readers[rand::rng().random_range(0..2)]
    }

    /// Puts and deletes on its own keys, each read back with its consistency token.
    async fn write_and_read(&self, task: usize) {
        let mut n = 0usize;
        while !self.stop.load(Ordering::Relaxed) {
            let key = format!("soak/{task}/{:04}", n % KEYS);
            let path = key_path(key.as_bytes());
            let delete = n % 10 == 9;
            let value = format!("{task} {n} {}", "s".repeat(n % 300));
            let request = if delete {
                self.http.delete(format!("{}{path}", self.writer))
            } else {
                self.http
                    .put(format!("{}{path}", self.writer))
                    .body(value.clone())
            };
            n += 1;
            let answer = request.header("authorization", self.bearer()).send().await;
            let token = match answer {
                Ok(response) if response.status() == 200 => response
                    .headers()
                    .get("x-consistency-token")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                Ok(response) => {
                    let status = response.status();
                    self.tally.check(false, || format!("write {key}: {status}"));
                    continue;
                }
                Err(error) => {
                    self.tally.check(false, || format!("write {key}: {error}"));
                    continue;
                }
            };
            self.tally
                .check(token.is_some(), || format!("write {key}: no token"));
            let Some(token) = token else { continue };
            let read = self
                .http
                .get(format!("{}{path}", self.reader()))
                .header("authorization", self.bearer())
                .header("x-consistency-token", token)
                .send()
                .await;
            match read {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let body = response.text().await.unwrap_or_default();
                    let good = if delete {
                        status == 404
                    } else {
                        status == 200 && body == value
                    };
                    self.tally
                        .check(good, || format!("read {key}: {status} {body:.100}"));
                }
                Err(error) => self.tally.check(false, || format!("read {key}: {error}")),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Batch gets of random keys and listings, on either reader.
    async fn batch_gets_and_scans(&self) {
        let mut n = 0usize;
        while !self.stop.load(Ordering::Relaxed) {
            n += 1;
            let request = if n.is_multiple_of(2) {
                let keys: Vec<String> = (0..50)
                    .map(|_| {
                        let mut rng = rand::rng();
                        format!(
                            "soak/{}/{:04}",
                            rng.random_range(0..2),
                            rng.random_range(0..KEYS)
                        )
                    })
                    .collect();
                self.http
                    .post(format!("{}/v1/kv:batchGet", self.reader()))
                    .json(&json!({ "keys": keys }))
            } else {
                self.http.get(format!(
                    "{}/v1/kv?prefix=soak%2F{}&limit=100",
                    self.reader(),
                    n % 2
                ))
            };
            let answer = request.header("authorization", self.bearer()).send().await;
            match answer {
                Ok(response) => {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    self.tally
                        .check(status == 200, || format!("read: {status} {body:.100}"));
                }
                Err(error) => self.tally.check(false, || format!("read: {error}")),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// `to / from - 1`, in percent.
fn growth(from: u64, to: u64) -> f64 {
    (to as f64 / from.max(1) as f64 - 1.0) * 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a drill: make drills runs it"]
async fn drill_a_soak_under_mixed_load_with_auth_on_grows_no_memory_or_fds_and_fails_nothing() {
    let seconds: u64 = std::env::var("KV_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(180);
    let duration = Duration::from_secs(seconds);
    let baseline_at = Duration::from_secs(120).min(duration / 3);

    let broker = Broker::start();
    let topic = broker.create_topic("drill-soak", 3).await;
    let idp = OidcProvider::start("soak-key");
    let mut env = kv_testkit::service_env(&broker, &topic);
    env.extend([
        ("KV_API_DISABLE_API_AUTH", "false".to_owned()),
        ("KV_API_AUTH_READ", "kv:read".to_owned()),
        ("KV_API_AUTH_WRITE", "kv:write".to_owned()),
        ("KV_API_AUTH_DELETE", "kv:delete".to_owned()),
    ]);
    env.extend(idp.service_env());
    let writer = Service::start(workspace_binary("kv-writer"), &env);
    let store = tempfile::tempdir().expect("store dir");
    let mut disk_env = env.clone();
    disk_env.extend([
        ("KAFKA_GROUP_ID", format!("{topic}-disk")),
        ("KV_API_STATE_STORAGE_TYPE", "disk".to_owned()),
        (
            "KV_API_STATE_STORAGE_DISK_LOCATION",
            store.path().display().to_string(),
        ),
    ]);
    let mut memory_env = env.clone();
    memory_env.push(("KAFKA_GROUP_ID", format!("{topic}-memory")));
    let readers = [
        Service::start(READER, &disk_env),
        Service::start(READER, &memory_env),
    ];
    let http = reqwest::Client::new();
    for reader in &readers {
        wait_ready(&http, reader).await;
    }

    let token = Arc::new(RwLock::new(idp.token("kv-full", SCOPES).await));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let load = Arc::new(Load {
        http: http.clone(),
        token: token.clone(),
        writer: writer.base_url.clone(),
        readers: [readers[0].base_url.clone(), readers[1].base_url.clone()],
        stop: stop.clone(),
        tally: tally.clone(),
    });
    let mut tasks = Vec::new();
    for task in 0..2 {
        let load = load.clone();
        tasks.push(tokio::spawn(async move { load.write_and_read(task).await }));
    }
    {
        let load = load.clone();
        tasks.push(tokio::spawn(
            async move { load.batch_gets_and_scans().await },
        ));
    }

    let mut samples = Samples::new(vec![
        ("writer".to_owned(), writer.pid()),
        ("disk reader".to_owned(), readers[0].pid()),
        ("memory reader".to_owned(), readers[1].pid()),
    ]);
    let started = Instant::now();
    let mut baseline = None;
    let mut next_token = started + Duration::from_secs(60);
    while started.elapsed() < duration {
        tokio::time::sleep(SAMPLE_EVERY.min(duration.saturating_sub(started.elapsed()))).await;
        samples.take();
        if baseline.is_none() && started.elapsed() >= baseline_at {
            baseline = Some(samples.taken.len() - 1);
        }
        if Instant::now() >= next_token {
            // Tokens live 5 minutes at the provider; a client renews them before.
            *token.write().expect("token") = idp.token("kv-full", SCOPES).await;
            next_token = Instant::now() + Duration::from_secs(60);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("load task");
    }

    // The two readers' final states, once both caught up with the last write.
    let authorized = reqwest::Client::builder()
        .default_headers(
            [(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {}", idp.token("kv-full", SCOPES).await)
                    .parse()
                    .expect("header"),
            )]
            .into_iter()
            .collect(),
        )
        .build()
        .expect("client");
    let final_diffs = eventually("the two readers to agree", DEADLINE, || async {
        let diff = diffs(
            &dump(&authorized, &readers[0]).await,
            &dump(&authorized, &readers[1]).await,
        );
        (diff == 0).then_some(diff)
    })
    .await;
    let keys = dump(&authorized, &readers[0]).await.len();

    let baseline = baseline.unwrap_or(0);
    let (first, last) = (
        &samples.taken[baseline].1,
        &samples.taken.last().expect("samples").1,
    );
    let mut figures = Vec::new();
    let (mut worst_rss, mut fd_growth) = (f64::MIN, 0i64);
    for (i, (name, _)) in samples.processes.iter().enumerate() {
        let rss = growth(first[i].rss_bytes, last[i].rss_bytes);
        let fds = last[i].fds as i64 - first[i].fds as i64;
        worst_rss = worst_rss.max(rss);
        fd_growth = fd_growth.max(fds);
        figures.push(format!(
            "{name} {} → {} MiB ({rss:+.1} %), fds {} → {}",
            first[i].rss_bytes >> 20,
            last[i].rss_bytes >> 20,
            first[i].fds,
            last[i].fds
        ));
    }
    let (operations, errors) = (
        tally.operations.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
    );
    println!(
        "drill soak ({seconds} s, auth on, 1 writer + 2 readers, {} samples, growth from {} s): \
         {operations} operations, errors = {errors}, RSS growth worst {worst_rss:+.1} % (goal \
         ≤ 10 %), fds growth {fd_growth} ({}), final diffs between the readers = {final_diffs} \
         over {keys} keys",
        samples.taken.len(),
        baseline_at.as_secs(),
        figures.join("; "),
    );
    let first_errors = tally.first_errors.lock().expect("errors").clone();
    assert_eq!(errors, 0, "first errors: {first_errors:#?}");
    assert!(worst_rss <= 10.0, "memory grew: {figures:?}");
    assert!(fd_growth <= 0, "file descriptors grew: {figures:?}");
    assert_eq!(final_diffs, 0);
    assert!(operations > 1000, "the load ran");
}
