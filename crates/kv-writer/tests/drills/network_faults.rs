//! Drills 12 and 13 (docs/reliability.md): the network between the services and the broker
//! fails while clients write and read. A writer and a reader run against the broker; write
//! clients `PUT` their own keys one after the other (a write not answered `2xx` is retried on
//! the same key with a new value), read clients read keys written before the fault. Then:
//!
//! - a partition: the broker runs in a network namespace of the drill's own, and its end of the
//!   veth pair goes down for 15 s, then up again;
//! - a slow and lossy network: the broker is reached through the kit's proxy, which adds 200 ms
//!   each way for 20 s and, inside that, stalls every connection and then refuses them all.
//!
//! Figures: writes answered `2xx` and lost (goal 0), writes answered anything but `2xx` or `503`
//! with `Retry-After` (goal 0), reads failed (goal 0), the lag reads reported, how long the
//! reader took to hold every acknowledged write after the heal, processes restarted (goal 0);
//! through the proxy also the writer's p99 acknowledgement latency during the fault and the
//! records per write on the topic (goal: at most 1).

use crate::{reader, WRITER};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kv_testkit::broker::Placement;
use kv_testkit::netns::NetNamespace;
use kv_testkit::proxy::{Conditions, Fault, FaultyProxy, Passage};
use kv_testkit::reader::{key_path, read_back};
use kv_testkit::services::service_env_with;
use kv_testkit::topic::TopicTail;
use kv_testkit::{eventually, free_port, Broker, Service};

const WRITERS: usize = 8;
const READERS: usize = 4;
const SEED_KEYS: usize = 200;
const STEADY: Duration = Duration::from_secs(3);
const DEADLINE: Duration = Duration::from_secs(90);

/// One write as answered.
struct Attempt {
    key: String,
    value: String,
    sent: Instant,
    latency: Duration,
    status: Option<u16>,
    retry_after: bool,
}

#[derive(Default)]
struct Reads {
    ok: AtomicU64,
    failed: AtomicU64,
    max_lag: AtomicU64,
    /// The largest `X-Replica-Silence-Ms`: how long the reader had not heard from a broker.
    max_silence_ms: AtomicU64,
    first_failures: Mutex<Vec<String>>,
}

/// What the load saw, and the services it ran against.
struct Outcome {
    attempts: Vec<Attempt>,
    reads: Arc<Reads>,
    lost: usize,
    lost_examples: Vec<String>,
    caught_up_after: Duration,
    restarts: usize,
}

fn ok(attempt: &Attempt) -> bool {
    attempt.status.is_some_and(|s| (200..300).contains(&s))
}

async fn write_client(
    http: reqwest::Client,
    url: String,
    id: usize,
    stop: Arc<AtomicBool>,
) -> Vec<Attempt> {
    let mut attempts = Vec::new();
    let (mut index, mut retry) = (0usize, 0usize);
    while !stop.load(Ordering::Relaxed) {
        let key = format!("net-{id:02}-{index:06}");
        let value = format!("{id}/{index}/{retry}");
        let sent = Instant::now();
        let answer = http
            .put(format!("{url}{}", key_path(key.as_bytes())))
            .body(value.clone())
            .send()
            .await;
        let (status, retry_after) = match answer {
            Ok(response) => (
                Some(response.status().as_u16()),
                response.headers().contains_key("retry-after"),
            ),
            Err(_) => (None, false),
        };
        let attempt = Attempt {
            key,
            value,
            sent,
            latency: sent.elapsed(),
            status,
            retry_after,
        };
        if ok(&attempt) {
            index += 1;
            retry = 0;
        } else {
            retry += 1;
            // As a client honouring Retry-After would, if briefly.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        attempts.push(attempt);
    }
    attempts
}

async fn read_client(
    http: reqwest::Client,
    url: String,
    seeds: Arc<Vec<(String, String)>>,
    stop: Arc<AtomicBool>,
    reads: Arc<Reads>,
) {
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let (key, value) = &seeds[n % seeds.len()];
        n += 7;
        let answer = http
            .get(format!("{url}{}", key_path(key.as_bytes())))
            .send()
            .await;
        let good = match answer {
            Ok(response) => {
                let lag = response
                    .headers()
                    .get("x-replica-lag")
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .unwrap_or(0);
                reads.max_lag.fetch_max(lag, Ordering::Relaxed);
                let silence = response
                    .headers()
                    .get("x-replica-silence-ms")
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .unwrap_or(0);
                reads.max_silence_ms.fetch_max(silence, Ordering::Relaxed);
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                let good = status == 200 && body == *value;
                if !good {
                    let mut first = reads.first_failures.lock().expect("failures");
                    if first.len() < 5 {
                        first.push(format!("{key}: {status} {body:.200}"));
                    }
                }
                good
            }
            Err(_) => false,
        };
        let tally = if good { &reads.ok } else { &reads.failed };
        tally.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The keys of `expected` the reader does not hold with that value.
async fn missing(
    http: &reqwest::Client,
    reader: &Service,
    expected: &BTreeMap<String, String>,
) -> Vec<String> {
    let keys: Vec<&String> = expected.keys().collect();
    let held = read_back(http, reader, &keys).await;
    expected
        .iter()
        .filter(|(key, value)| held.get(*key) != Some(&Some((*value).clone())))
        .map(|(key, value)| format!("{key}: acknowledged {value:?}, held {:?}", held.get(key)))
        .collect()
}

fn last_acked(attempts: &[Attempt]) -> BTreeMap<String, String> {
    attempts
        .iter()
        .filter(|a| ok(a))
        .map(|a| (a.key.clone(), a.value.clone()))
        .collect()
}

/// Runs the load against a writer and a reader on `broker`, applies `fault` (which returns
/// once the network is healed), and gathers what the clients and the reader saw.
async fn under_fault<F, Fut>(broker: &Broker, topic: &str, fault: F) -> Outcome
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let env = service_env_with(broker, topic, &[("KV_API_PRODUCE_TIMEOUT_MS", "2000")]);
    let mut writer = Service::start(WRITER, &env);
    let mut reader = Service::start(reader(), &env);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client");
    for service in [&writer, &reader] {
        eventually("both services ready", DEADLINE, || async {
            let response = http.get(service.url("/healthz/ready")).send().await.ok()?;
            (response.status() == 200).then_some(())
        })
        .await;
    }
    let seeds: Vec<(String, String)> = (0..SEED_KEYS)
        .map(|i| (format!("seed-{i:04}"), format!("seed value {i}")))
        .collect();
    for (key, value) in &seeds {
        let response = http
            .put(writer.url(&key_path(key.as_bytes())))
            .body(value.clone())
            .send()
            .await
            .expect("seed write");
        assert_eq!(response.status(), 200);
    }
    let seeded: BTreeMap<String, String> = seeds.iter().cloned().collect();
    eventually("the seeds on the reader", DEADLINE, || async {
        missing(&http, &reader, &seeded)
            .await
            .is_empty()
            .then_some(())
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(Reads::default());
    let seeds = Arc::new(seeds);
    let writers: Vec<_> = (0..WRITERS)
        .map(|id| {
            tokio::spawn(write_client(
                http.clone(),
                writer.base_url.clone(),
                id,
                stop.clone(),
            ))
        })
        .collect();
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            tokio::spawn(read_client(
                http.clone(),
                reader.base_url.clone(),
                seeds.clone(),
                stop.clone(),
                reads.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(STEADY).await;
    fault().await;
    let healed_at = Instant::now();
    tokio::time::sleep(STEADY).await;
    stop.store(true, Ordering::Relaxed);
    let mut attempts = Vec::new();
    for task in writers {
        attempts.extend(task.await.expect("write client"));
    }
    for task in readers {
        task.await.expect("read client");
    }
    let expected = last_acked(&attempts);
    let mut lost_examples = missing(&http, &reader, &expected).await;
    while !lost_examples.is_empty() && healed_at.elapsed() < DEADLINE {
        tokio::time::sleep(Duration::from_millis(100)).await;
        lost_examples = missing(&http, &reader, &expected).await;
    }
    let caught_up_after = healed_at.elapsed();
    let restarts = usize::from(!writer.is_running()) + usize::from(!reader.is_running());
    Outcome {
        attempts,
        reads,
        lost: lost_examples.len(),
        lost_examples: lost_examples.into_iter().take(5).collect(),
        caught_up_after,
        restarts,
    }
}

/// The figures both drills print, and their goals checked.
fn report(name: &str, outcome: &Outcome, window: (Instant, Instant), extra: &str) {
    let acked = outcome.attempts.iter().filter(|a| ok(a)).count();
    let refused = outcome
        .attempts
        .iter()
        .filter(|a| a.status == Some(503) && a.retry_after)
        .count();
    let mut other: BTreeMap<String, usize> = BTreeMap::new();
    for attempt in outcome
        .attempts
        .iter()
        .filter(|a| !(ok(a) || a.status == Some(503) && a.retry_after))
    {
        let class = attempt
            .status
            .map_or("no answer".to_owned(), |s| s.to_string());
        *other.entry(class).or_default() += 1;
    }
    let other_total: usize = other.values().sum();
    let acked_during = outcome
        .attempts
        .iter()
        .filter(|a| ok(a) && a.sent >= window.0 && a.sent < window.1)
        .count();
    let (reads_ok, reads_failed) = (
        outcome.reads.ok.load(Ordering::Relaxed),
        outcome.reads.failed.load(Ordering::Relaxed),
    );
    println!(
        "drill {name}: writes acked {acked} ({acked_during} sent during the fault), \
         acked-but-lost = {}, 503 with Retry-After {refused}, other answers {other_total} \
         {other:?}, reads {} failed {reads_failed}, largest X-Replica-Lag {} and \
         X-Replica-Silence-Ms {}, every acked write on the reader {:.1} s after the heal, restarts {}{extra}",
        outcome.lost,
        reads_ok + reads_failed,
        outcome.reads.max_lag.load(Ordering::Relaxed),
        outcome.reads.max_silence_ms.load(Ordering::Relaxed),
        outcome.caught_up_after.as_secs_f64(),
        outcome.restarts,
    );
    let failures = outcome
        .reads
        .first_failures
        .lock()
        .expect("failures")
        .clone();
    assert_eq!(outcome.lost, 0, "lost: {:#?}", outcome.lost_examples);
    assert_eq!(other_total, 0, "other answers: {other:?}");
    assert_eq!(reads_failed, 0, "failed reads: {failures:#?}");
    assert_eq!(outcome.restarts, 0);
    assert!(acked > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a drill: make drills runs it"]
async fn drill_a_15_s_partition_from_the_broker_loses_no_acknowledged_write_and_fails_no_read() {
    const CUT: Duration = Duration::from_secs(15);
    let namespace = match NetNamespace::create(0) {
        Ok(namespace) => namespace,
        Err(why) => {
            println!("drill network partition: skipped: {why}");
            return;
        }
    };
    let port = free_port();
    let address = (namespace.ip().to_owned(), port);
    let broker = Broker::start_at(Placement {
        listen: address.clone(),
        advertised: address,
        netns: Some(namespace.name().to_owned()),
    });
    let topic = broker.create_topic("drill-partition", 3).await;
    let window = Arc::new(Mutex::new((Instant::now(), Instant::now())));
    let outcome = under_fault(&broker, &topic, || {
        let window = window.clone();
        let namespace = &namespace;
        async move {
            let cut_at = Instant::now();
            tokio::task::block_in_place(|| namespace.cut());
            tokio::time::sleep(CUT).await;
            tokio::task::block_in_place(|| namespace.heal());
            *window.lock().expect("window") = (cut_at, Instant::now());
        }
    })
    .await;
    let window = *window.lock().expect("window");
    report(
        &format!("network partition ({} s, veth down)", CUT.as_secs()),
        &outcome,
        window,
        "",
    );
    // The lag cannot grow while the reader hears no end offsets; its silence must.
    let silence = outcome.reads.max_silence_ms.load(Ordering::Relaxed);
    assert!(
        silence >= (CUT.as_millis() as u64) * 2 / 3,
        "reads during a {} s cut said the broker was silent for at most {silence} ms",
        CUT.as_secs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a drill: make drills runs it"]
async fn drill_a_slow_and_lossy_network_for_20_s_loses_and_duplicates_no_acknowledged_write() {
    const DELAY: Duration = Duration::from_millis(200);
    let listen = free_port();
    let proxy = FaultyProxy::start(&format!("127.0.0.1:{listen}"), Fault::None);
    let broker = Broker::start_at(Placement {
        listen: ("127.0.0.1".to_owned(), listen),
        advertised: ("127.0.0.1".to_owned(), proxy.port),
        netns: None,
    });
    let topic = broker.create_topic("drill-lossy", 3).await;
    let tail = TopicTail::start(&broker.bootstrap_servers(), &topic);
    let window = Arc::new(Mutex::new((Instant::now(), Instant::now())));
    let outcome = under_fault(&broker, &topic, || {
        let window = window.clone();
        let proxy = &proxy;
        async move {
            let set = |passage| {
                proxy.set(Conditions {
                    delay: DELAY,
                    passage,
                })
            };
            let start = Instant::now();
            // 20 s in all: delayed throughout, a stall, delayed, every connection refused.
            for (passage, length) in [
                (Passage::Open, 5),
                (Passage::Stalled, 5),
                (Passage::Open, 4),
                (Passage::Refused, 3),
                (Passage::Open, 3),
            ] {
                set(passage);
                tokio::time::sleep(Duration::from_secs(length)).await;
            }
            proxy.set(Conditions::default());
            *window.lock().expect("window") = (start, Instant::now());
        }
    })
    .await;
    let window = *window.lock().expect("window");
    let mut latencies: Vec<Duration> = outcome
        .attempts
        .iter()
        .filter(|a| ok(a) && a.sent >= window.0 && a.sent < window.1)
        .map(|a| a.latency)
        .collect();
    latencies.sort();
    let p99 = latencies
        .get((latencies.len() * 99 / 100).min(latencies.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default();
    let records = tail.records(DEADLINE).await;
    let mut per_value: HashMap<&[u8], usize> = HashMap::new();
    for record in &records {
        if let Some(value) = &record.value {
            *per_value.entry(value.as_slice()).or_default() += 1;
        }
    }
    let duplicated = per_value.values().filter(|n| **n > 1).count();
    report(
        "slow and lossy network (20 s of 200 ms each way, 5 s stalled, 3 s refused)",
        &outcome,
        window,
        &format!(
            ", writer p99 ack latency during it {} ms, writes on the topic more than once = \
             {duplicated}",
            p99.as_millis()
        ),
    );
    assert_eq!(duplicated, 0, "the idempotent producer allows no duplicate");
}
