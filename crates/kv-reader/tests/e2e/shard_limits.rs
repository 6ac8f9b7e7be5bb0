//! A sharded batchGet's byte limit holds across its owners' parts: the parts are read against
//! one budget and the answer is refused as soon as the parts read exceed it, never after every
//! owner's part was read whole.

use crate::{writer, READER};
use std::time::{Duration, Instant};

use kv_core::kafka::kafka_partition;
use kv_testkit::reader::{key_path, wait_ready};
use kv_testkit::{eventually, service_env, Broker, Service, Shards, DEADLINE};
use serde_json::{json, Value};

const PARTITIONS: u32 = 6;
const SHARDS: usize = 3;
const LIMIT: usize = 64 * 1024;

fn owner(key: &str) -> usize {
    (kafka_partition(key.as_bytes(), PARTITIONS) as u32 % SHARDS as u32) as usize
}

fn key_of(shard: usize) -> String {
    (0..)
        .map(|i| format!("big/{i}"))
        .find(|k| owner(k) == shard)
        .expect("a key")
}

#[tokio::test]
async fn a_sharded_batch_get_past_the_limit_is_refused_without_waiting_for_every_owner() {
    let broker = Broker::start();
    let topic = broker
        .create_topic("shards-batch-limit", PARTITIONS as i32)
        .await;
    let mut env = service_env(&broker, &topic);
    env.extend([
        ("KV_API_MAX_BATCH_GET_BYTES", LIMIT.to_string()),
        ("KV_API_SHARD_FORWARD_TIMEOUT_MS", "20000".to_owned()),
    ]);
    let writer = Service::start(writer(), &env);
    let mut shards = Shards::start(READER, &env, SHARDS, 1);
    let http = reqwest::Client::new();
    let keys: Vec<String> = (0..SHARDS).map(key_of).collect();
    // Shard 0's and shard 1's values are each within the limit, together past it.
    let values = [
        vec![b'a'; LIMIT * 5 / 8],
        vec![b'b'; LIMIT * 5 / 8],
        b"c".to_vec(),
    ];
    for (key, value) in keys.iter().zip(&values) {
        let put = http
            .put(writer.url(&key_path(key.as_bytes())))
            .body(value.clone())
            .send()
            .await
            .expect("put");
        assert_eq!(put.status(), 200);
    }
    for (i, shard) in shards.running() {
        wait_ready(&http, shard).await;
        eventually("the shard's own key applied", DEADLINE, || async {
            let read = http
                .get(shard.url(&key_path(keys[i].as_bytes())))
                .send()
                .await
                .ok()?;
            (read.status() == 200).then_some(())
        })
        .await;
    }
    let within = http
        .post(shards.get(0).url("/v1/kv:batchGet"))
        .json(&json!({ "keys": [keys[0], keys[2]] }))
        .send()
        .await
        .expect("batchGet");
    assert_eq!(
        within.status(),
        200,
        "the parts within the limit are answered"
    );

    // Shard 2 stops answering: its part would come only at the forward timeout.
    shards.get_mut(2).pause();
    let started = Instant::now();
    let refused = http
        .post(shards.get(0).url("/v1/kv:batchGet"))
        .json(&json!({ "keys": keys }))
        .send()
        .await
        .expect("batchGet");
    let took = started.elapsed();
    shards.get_mut(2).resume();
    assert_eq!(refused.status(), 413);
    let body: Value = refused.json().await.expect("error");
    assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("KV_API_MAX_BATCH_GET_BYTES")),
        "the same error as a batch over the limit on one replica: {body}"
    );
    assert!(
        took < Duration::from_secs(5),
        "refused once the parts read were past the limit, not after every owner: {took:?}"
    );
}
