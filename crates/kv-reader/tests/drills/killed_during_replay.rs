//! Drill 1 (docs/reliability.md): a disk replica is killed with SIGKILL at random moments while
//! it replays 200 000 records, five times, and restarted on the same store and group each time.
//! Once it caught up, its whole state must equal both the state the log defines (last write per
//! key wins, a tombstone deletes) and the state of a replica that replayed without interruption.

use crate::READER;
use std::cell::Cell;
use std::time::{Duration, Instant};

use kv_testkit::{eventually, Broker, Service};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use kv_testkit::reader::{dump, ready_report};
use kv_testkit::services::reader_env;
use kv_testkit::topic::expected_state;
use kv_testkit::topic::{self, RawRecord};
use kv_testkit::DEADLINE;

const RECORDS: usize = 200_000;
const KEYS: usize = 40_000;
/// A tenth of the writes go to these few keys, so some keys have hundreds of versions.
const HOT_KEYS: usize = 100;
const PARTITIONS: i32 = 4;
const KILLS: usize = 5;
/// Generous: a debug-build reader replaying on a loaded two-core machine.
const REPLAY_DEADLINE: Duration = Duration::from_secs(120);
/// After progress passed a kill's target, the kill waits a random part of this, so it lands at
/// any phase of the batch in flight (polling, applying, committing), not only just after a
/// commit became visible. About one batch of 10 000 records at a debug build's replay speed:
/// longer, and a late kill overshoots the end of the log.
const KILL_JITTER: Duration = Duration::from_millis(150);

/// Plain, unicode and binary keys (binary ones are listed as base64).
fn key(index: usize) -> Vec<u8> {
    match index % 20 {
        0 => [b"\xff\x00bin-".as_slice(), &(index as u32).to_be_bytes()].concat(),
        1 => format!("clé/ünï/{index}").into_bytes(),
        _ => format!("user/{index:05}").into_bytes(),
    }
}

/// Puts, overwrites and deletes; every value names its record, so applying two versions of a
/// key in the wrong order cannot go unnoticed.
fn records(rng: &mut StdRng) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    (0..RECORDS)
        .map(|i| {
            let index = if rng.random_bool(0.1) {
                rng.random_range(0..HOT_KEYS)
            } else {
                rng.random_range(0..KEYS)
            };
            let value = match rng.random_range(0..100) {
                0..15 => None,
                15..17 => Some(Vec::new()),
                17..27 => {
                    let mut bytes = (i as u32).to_be_bytes().to_vec();
                    bytes.extend((0..rng.random_range(0..200)).map(|_| rng.random::<u8>()));
                    Some(bytes)
                }
                _ => {
                    let filler: String = (0..rng.random_range(0..200))
                        .map(|_| rng.random_range(b'a'..=b'z') as char)
                        .collect();
                    Some(format!("record {i}: {filler}").into_bytes())
                }
            };
            (key(index), value)
        })
        .collect()
}

/// Sum over partitions of the next offset to apply: records durably in the store, since the
/// reader reports progress only after the transaction holding it committed.
fn applied(report: &Value) -> i64 {
    report["partitions"]
        .as_object()
        .map(|partitions| {
            partitions
                .values()
                .filter_map(|p| p["next_offset"].as_i64())
                .sum()
        })
        .unwrap_or(0)
}

/// Where a restarted reader found its store, from its log line
/// `resuming from the stored offsets stored={0: 1234, 1: 987}`: records stored in all.
fn resumed_from(output: &str) -> Option<i64> {
    let line = output
        .lines()
        .find(|line| line.contains("resuming from the stored offsets"))?;
    let map = line.split("stored={").nth(1)?.split('}').next()?;
    map.split(", ")
        .map(|pair| pair.split(": ").nth(1)?.trim().parse::<i64>().ok())
        .sum()
}

/// Where a run is killed, in records applied: a random point in the first 20 % of what its
/// store lacked when it started. Relative to each run's own start, so that every run, the last
/// included, is killed with log left to replay (progress moves a batch of up to 10 000 records at
/// a time, and the jitter adds up to one more, so a kill lands past its target).
fn kill_target(rng: &mut StdRng, stored_at_start: i64, total: i64) -> f64 {
    stored_at_start as f64 + (total - stored_at_start) as f64 * rng.random_range(0.0..0.2)
}

async fn wait_caught_up(http: &reqwest::Client, reader: &Service) -> Value {
    eventually("the reader to catch up", REPLAY_DEADLINE, || async {
        let (status, report) = ready_report(http, reader).await;
        (status == 200).then_some(report)
    })
    .await
}

#[tokio::test]
#[ignore = "a drill: make drills runs it"]
async fn drill_reader_killed_during_replay_five_times_ends_with_exactly_the_state_of_the_log() {
    let broker = Broker::start();
    let topic = broker.create_topic("drill-kill", PARTITIONS).await;
    let seed: u64 = rand::rng().random();
    println!("records and kill points from seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let records = records(&mut rng);
    let raw: Vec<RawRecord> = records
        .iter()
        .map(|(key, value)| RawRecord {
            key: Some(key.clone()),
            value: value.clone(),
            correlation_id: None,
        })
        .collect();
    let started = Instant::now();
    let positions = topic::produce_raw(&broker.bootstrap_servers(), &topic, &raw).await;
    println!("produced {RECORDS} records in {:.1?}", started.elapsed());
    let ends = topic::end_offsets(&positions);
    let total: i64 = ends.values().sum();
    assert_eq!(total, RECORDS as i64, "every record is on the topic once");
    let expected = expected_state(&topic::log_order(positions.into_iter().zip(records)));

    let dir = tempfile::tempdir().expect("store dir");
    let mut env = reader_env(&broker, &topic, "drill-killed");
    env.push((
        "KV_API_STATE_STORAGE_DISK_LOCATION",
        dir.path().display().to_string(),
    ));
    let http = reqwest::Client::new();
    // The second reference replays the same log alongside, never interrupted.
    let mut reference_env = reader_env(&broker, &topic, "drill-uninterrupted");
    reference_env.push(("KV_API_STATE_STORAGE_TYPE", "memory".to_owned()));
    let reference = Service::start(READER, &reference_env);

    // Each run is killed once progress passed its target and a random jitter elapsed; the
    // next run's own log says how much of the log the store held at the kill.
    let mut landed_at = Vec::new();
    for run in 0..KILLS {
        let mut reader = Service::start(READER, &env);
        let stored = if run > 0 {
            let stored = stored_at_start(&reader).await;
            landed_at.push(stored);
            stored
        } else {
            0
        };
        let target = kill_target(&mut rng, stored, total);
        let jitter = KILL_JITTER.mul_f64(rng.random_range(0.0..1.0));
        let passed_target: Cell<Option<Instant>> = Cell::new(None);
        eventually(
            "the replay to pass the kill target",
            REPLAY_DEADLINE,
            || async {
                let (status, report) = ready_report(&http, &reader).await;
                if status == 200 {
                    return Some(());
                }
                // Only once this run itself committed a batch: every kill interrupts real work.
                let working = report["records_applied"].as_u64().unwrap_or(0) > 0;
                if working && applied(&report) as f64 >= target {
                    let since = passed_target.get().unwrap_or_else(Instant::now);
                    passed_target.set(Some(since));
                    return (since.elapsed() >= jitter).then_some(());
                }
                None
            },
        )
        .await;
        reader.kill();
        println!("kill {} at {:.1?}", run + 1, started.elapsed());
        assert_no_rebuild(&reader);
    }

    let last = Service::start(READER, &env);
    let stored_at_last_start = stored_at_start(&last).await;
    landed_at.push(stored_at_last_start);

    let report = wait_caught_up(&http, &last).await;
    assert_no_rebuild(&last);
    assert_eq!(applied(&report), total, "{report}");
    assert_eq!(
        report["records_applied"].as_i64(),
        Some(total - stored_at_last_start),
        "the last run applied exactly what the store lacked, nothing twice: {report}"
    );
    assert_eq!(report["skipped_records"]["total"], 0, "{report}");
    println!("caught up at {:.1?}", started.elapsed());
    let state = dump(&http, &last).await;
    println!("dumped at {:.1?}", started.elapsed());
    wait_caught_up(&http, &reference).await;
    let uninterrupted = dump(&http, &reference).await;
    println!("reference dumped at {:.1?}", started.elapsed());

    let mid_replay = landed_at.iter().filter(|&&stored| stored < total).count();
    let percents: Vec<String> = landed_at
        .iter()
        .map(|&stored| format!("{}", stored * 100 / total))
        .collect();
    let diffs = topic::diffs(&state, &expected);
    let reference_diffs = topic::diffs(&uninterrupted, &expected);
    println!(
        "drill reader killed during replay: {KILLS} kills ({mid_replay} mid-replay, at {} % of \
         the log), {RECORDS} records, {PARTITIONS} partitions, {} keys, diffs = {diffs} \
         (uninterrupted replica: {reference_diffs}), digest {}",
        percents.join("/"),
        expected.len(),
        topic::digest(&state),
    );
    assert_eq!(diffs, 0, "the killed replica differs from the log");
    assert_eq!(
        topic::digest(&state),
        topic::digest(&expected),
        "same digest as the log's state"
    );
    assert_eq!(
        reference_diffs, 0,
        "the uninterrupted replica differs from the log"
    );
    assert_eq!(topic::digest(&uninterrupted), topic::digest(&state));
    assert!(
        mid_replay * 2 > KILLS,
        "most kills must land mid-replay: {mid_replay} of {KILLS} did"
    );
}

/// Records the store held when `reader` started, from its log.
async fn stored_at_start(reader: &Service) -> i64 {
    eventually(
        "the restarted reader to resume from its store",
        DEADLINE,
        || async { resumed_from(&reader.output()) },
    )
    .await
}

fn assert_no_rebuild(reader: &Service) {
    let output = reader.output();
    assert!(
        !output.contains("rebuilding"),
        "a restart after kill -9 must resume, not rebuild:\n{output}"
    );
}
