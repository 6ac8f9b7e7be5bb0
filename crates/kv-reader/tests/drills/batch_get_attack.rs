//! Issue 15's batchGet figure (docs/reliability.md, "Hardening"): one key with a large value
//! asked for a thousand times in each of many concurrent requests.

use futures::stream::{self, StreamExt};
use kv_testkit::reader::wait_ready;
use kv_testkit::services::reader_env;
use kv_testkit::{Broker, Service};
use serde_json::json;

use crate::READER;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a drill: make drills runs it"]
async fn drill_a_thousand_copies_of_a_large_key_per_batch_get_leave_memory_flat() {
    const REQUESTS: usize = 64;
    let broker = Broker::start();
    let topic = broker.create_topic("drill-batch-get", 1).await;
    let producer = broker.producer();
    let big = vec![b'v'; 900 * 1024];
    broker.produce(&producer, &topic, b"big", Some(&big)).await;
    let reader = Service::start(READER, &reader_env(&broker, &topic, "g"));
    let http = reqwest::Client::new();
    wait_ready(&http, &reader).await;
    let (_, peak_before) = reader.rss_bytes();
    let body = json!({ "keys": vec!["big"; 1000] });
    let statuses: Vec<u16> = stream::iter(0..REQUESTS)
        .map(|_| http.post(reader.url("/v1/kv:batchGet")).json(&body).send())
        .buffer_unordered(16)
        .map(|response| response.map_or(0, |r| r.status().as_u16()))
        .collect()
        .await;
    let (_, peak_after) = reader.rss_bytes();
    let refused = statuses.iter().filter(|s| **s == 413).count();
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    println!(
        "drill batchGet attack: {REQUESTS} requests x 1000 copies of a 900 KiB value (880 MiB \
         each if built), refused with 413 {refused}, reader peak RSS {:.0} MiB before, {:.0} MiB \
         after (goal: grows by less than 64 MiB)",
        mib(peak_before),
        mib(peak_after)
    );
    assert_eq!(refused, REQUESTS);
    assert!(peak_after < peak_before + 64 * 1024 * 1024);
}
