//! Drill 11 (docs/reliability.md): a disk replica whose file system fills up. The store lives on
//! a 64 MiB tmpfs of the drill's own; once it holds a first set of keys, a filler file takes the
//! space down below the reader's reserve while writes go on. The reader must stop applying and
//! say so (readiness `503 store_full` naming the path, `kv_reader_store_writable 0`, an error
//! line naming the path), keep answering reads with what it holds, and, once the filler is
//! deleted, resume by itself and hold exactly what was written. A restart on the same store
//! afterwards must open it as it is: no rebuild, the same state.

use crate::READER;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kv_testkit::reader::{dump, key_path, ready_report, wait_ready};
use kv_testkit::services::service_env_with;
use kv_testkit::tmpfs::Tmpfs;
use kv_testkit::topic::diffs;
use kv_testkit::{eventually, metric, workspace_binary, Broker, Service, DEADLINE};

const TMPFS_MIB: u64 = 64;
/// The reader's KV_API_STATE_STORAGE_MIN_FREE_MB.
const RESERVE_MIB: u64 = 8;
/// Free space the filler leaves: under the reserve.
const LEFT_BYTES: u64 = 4 << 20;
const KEYS: usize = 2000;
const VALUE_BYTES: usize = 1024;

fn value(round: usize, key: usize) -> String {
    let head = format!("round {round} key {key} ");
    format!("{head}{}", "v".repeat(VALUE_BYTES - head.len()))
}

async fn write_round(
    http: &reqwest::Client,
    writer: &Service,
    round: usize,
    model: &mut BTreeMap<Vec<u8>, Vec<u8>>,
) {
    for key in 0..KEYS {
        let name = format!("disk/{key:05}");
        let value = value(round, key);
        let response = http
            .put(writer.url(&key_path(name.as_bytes())))
            .body(value.clone())
            .send()
            .await
            .expect("write");
        assert_eq!(response.status(), 200, "write {name}");
        model.insert(name.into_bytes(), value.into_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a drill: make drills runs it"]
async fn drill_a_full_disk_stops_the_replica_applying_and_it_resumes_alone_once_space_is_freed() {
    let tmpfs = match Tmpfs::mount(TMPFS_MIB) {
        Ok(tmpfs) => tmpfs,
        Err(why) => {
            println!("drill disk full: skipped: {why}");
            return;
        }
    };
    let broker = Broker::start();
    let topic = broker.create_topic("drill-disk", 3).await;
    let writer = Service::start(
        workspace_binary("kv-writer"),
        &service_env_with(&broker, &topic, &[]),
    );
    let store = tmpfs.path().join("store");
    let reserve = RESERVE_MIB.to_string();
    let reader_env = service_env_with(
        &broker,
        &topic,
        &[
            ("KV_API_STATE_STORAGE_TYPE", "disk"),
            (
                "KV_API_STATE_STORAGE_DISK_LOCATION",
                &store.display().to_string(),
            ),
            ("KV_API_STATE_STORAGE_MIN_FREE_MB", &reserve),
        ],
    );
    let mut reader = Service::start(READER, &reader_env);
    let http = reqwest::Client::new();
    wait_ready(&http, &reader).await;

    let mut model = BTreeMap::new();
    write_round(&http, &writer, 0, &mut model).await;
    eventually("the first round on the replica", DEADLINE, || async {
        (diffs(&dump(&http, &reader).await, &model) == 0).then_some(())
    })
    .await;
    let before = model.clone();

    tmpfs.fill_leaving(LEFT_BYTES);
    let filled_at = Instant::now();
    write_round(&http, &writer, 1, &mut model).await;
    let (stopped_after, report) =
        eventually("the replica to say its store is full", DEADLINE, || async {
            let (status, body) = ready_report(&http, &reader).await;
            (status == 503 && body["status"] == "store_full").then(|| (filled_at.elapsed(), body))
        })
        .await;
    let message = report["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let names_path = message.contains(&store.display().to_string());
    let metrics = reader.metrics(&http).await;
    let writable = metric(&metrics, "kv_reader_store_writable", &[]);
    let logged = reader
        .output()
        .lines()
        .any(|line| line.contains("ERROR") && line.contains(&store.display().to_string()));
    // Reads go on from what the store holds, the lag they report shows what is not applied.
    let (mut reads, mut failed, mut lag) = (0, 0, 0u64);
    for (key, held) in before.iter().step_by(10) {
        let response = http
            .get(reader.url(&key_path(key)))
            .send()
            .await
            .expect("read");
        lag = lag.max(
            response
                .headers()
                .get("x-replica-lag")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(0),
        );
        let ok = response.status() == 200;
        let body = response.bytes().await.unwrap_or_default();
        reads += 1;
        // A key of the second round may have landed before the space ran out: either value.
        if !ok || (body != *held && model.get(key).map(Vec::as_slice) != Some(&body[..])) {
            failed += 1;
        }
    }
    if lag == 0 {
        // The end offsets a replica knows are refreshed on their own schedule, also while it
        // applies nothing: under load the first reads may come before the refresh.
        let (key, _) = before.iter().next().expect("a key");
        lag = eventually("reads to show the lag", DEADLINE, || async {
            let response = http.get(reader.url(&key_path(key))).send().await.ok()?;
            let lag: u64 = response
                .headers()
                .get("x-replica-lag")?
                .to_str()
                .ok()?
                .parse()
                .ok()?;
            (lag > 0).then_some(lag)
        })
        .await;
    }
    let stopped_records = ready_report(&http, &reader).await.1["records_applied"].clone();

    tmpfs.free_filler();
    let freed_at = Instant::now();
    wait_ready(&http, &reader).await;
    let resumed_after = freed_at.elapsed();
    let diffs_after = eventually("the replica to hold every write", DEADLINE, || async {
        let diff = diffs(&dump(&http, &reader).await, &model);
        (diff == 0).then_some(diff)
    })
    .await;
    let writable_after = metric(
        &reader.metrics(&http).await,
        "kv_reader_store_writable",
        &[],
    );
    let stops = metric(
        &reader.metrics(&http).await,
        "kv_reader_store_full_stops_total",
        &[],
    );

    reader.terminate();
    reader.wait_for_exit(Duration::from_secs(20)).await;
    let reader = Service::start(READER, &reader_env);
    let after_restart = wait_ready(&http, &reader).await;
    let diffs_restart = diffs(&dump(&http, &reader).await, &model);
    let rebuilds = after_restart["rebuilds"].as_u64().unwrap_or(u64::MAX);

    println!(
        "drill disk full: store on a {TMPFS_MIB} MiB tmpfs filled to {} MiB free (reserve \
         {RESERVE_MIB} MiB) under {KEYS} writes of {VALUE_BYTES} B: stopped applying after \
         {:.1} s (ready 503 store_full naming the path {names_path}, kv_reader_store_writable \
         {writable:?}, error log naming the path {logged}, records applied then \
         {stopped_records}), reads while full {reads} failed {failed}, lag they reported {lag}, \
         resumed {:.1} s after the filler was deleted (stops counted {stops:?}, writable \
         {writable_after:?}), diffs after resume = {diffs_after}, after a restart on the same \
         store = {diffs_restart}, rebuilds {rebuilds}",
        LEFT_BYTES >> 20,
        stopped_after.as_secs_f64(),
        resumed_after.as_secs_f64(),
    );
    assert!(names_path, "readiness names the store: {report}");
    assert_eq!(writable, Some(0.0));
    assert!(
        logged,
        "an error line names the store:\n{}",
        reader.output()
    );
    assert_eq!(failed, 0);
    assert!(lag > 0, "reads show the lag while the replica is stopped");
    assert_eq!(writable_after, Some(1.0));
    assert_eq!((diffs_after, diffs_restart, rebuilds), (0, 0, 0));
}
