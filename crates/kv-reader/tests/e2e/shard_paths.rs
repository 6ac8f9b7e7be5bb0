//! What a shard forwards to an owner is the key the caller asked for, never the caller's raw
//! path: a peer's URL parser folds `..` and `%2e%2e` away, which once turned a read of
//! `x3/../target` into a read of `target`, or of any other route of the owner.

use crate::{writer, READER};

use kv_core::kafka::kafka_partition;
use kv_testkit::reader::{key_path, raw_get, wait_ready, RawAnswer};
use kv_testkit::{service_env, Broker, Service, Shards};
use serde_json::Value;

const PARTITIONS: u32 = 6;
const SHARDS: usize = 3;

fn owner(key: &str) -> usize {
    (kafka_partition(key.as_bytes(), PARTITIONS) as u32 % SHARDS as u32) as usize
}

/// A key `x{n}{tail}` for the first `n` whose owner `wanted` accepts.
fn key_like(tail: &str, wanted: impl Fn(usize) -> bool) -> String {
    (0..)
        .map(|n| format!("x{n}{tail}"))
        .find(|key| wanted(owner(key)))
        .expect("a key")
}

fn error_code(answer: &RawAnswer) -> String {
    serde_json::from_slice::<Value>(&answer.body)
        .ok()
        .and_then(|body| body["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("no error body: {}", String::from_utf8_lossy(&answer.body)))
}

#[tokio::test]
async fn a_dot_dot_key_read_through_a_non_owner_reaches_that_key_and_never_another_path() {
    let broker = Broker::start();
    let topic = broker.create_topic("shards-paths", PARTITIONS as i32).await;
    let env = service_env(&broker, &topic);
    let writer = Service::start(writer(), &env);
    let shards = Shards::start(READER, &env, SHARDS, 1);
    let http = reqwest::Client::new();
    let put = http
        .put(writer.url(&key_path(b"target")))
        .body("the target's value")
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 200);
    let token = put.headers()["x-consistency-token"].clone();
    for (_, shard) in shards.running() {
        wait_ready(&http, shard).await;
    }
    // The target is readable through every shard: what follows is not a matter of lag.
    for (i, shard) in shards.running() {
        let read = http
            .get(shard.url("/v1/kv/target"))
            .header("x-consistency-token", token.clone())
            .send()
            .await
            .expect("get");
        assert_eq!(read.status(), 200, "target through shard {i}");
    }

    // The owner of `xN/../target` also holds `target`: a folded path would answer its value.
    let sibling = key_like("/../target", |o| o == owner("target"));
    let through_admin = key_like("/../../admin/v1/snapshot", |_| true);
    let through_health = key_like("/../../healthz/ready", |_| true);
    let cases = [
        (sibling.replace("..", "%2e%2e"), sibling.clone()),
        (sibling.replace("..", "%2E%2e"), sibling.clone()),
        (sibling.replace("..", ".%2e"), sibling.clone()),
        (sibling.replace('/', "%2F"), sibling.clone()),
        (through_admin.replace("..", "%2e%2e"), through_admin.clone()),
        (
            through_health.replace("..", "%2e%2e"),
            through_health.clone(),
        ),
    ];
    for (raw_tail, key) in cases {
        let non_owner = (owner(&key) + 1) % SHARDS;
        let path = format!("/v1/kv/{raw_tail}");
        let answer = raw_get(shards.get(non_owner), &path).await;
        let shown = String::from_utf8_lossy(&answer.body).into_owned();
        assert_eq!(
            (answer.status, error_code(&answer).as_str()),
            (404, "key_not_found"),
            "{path} through shard {non_owner} (key {key:?}, owner {}): {shown}",
            owner(&key)
        );
        assert_eq!(
            answer.headers.get("x-served-by").map(String::as_str),
            Some(owner(&key).to_string().as_str()),
            "{path}: answered by the owner of {key:?}"
        );
    }

    // A key of dots only has no path a URL parser leaves alone: refused, never folded.
    for (raw, key) in [("%2e%2e", ".."), ("%2e", ".")] {
        let non_owner = (owner(key) + 1) % SHARDS;
        let answer = raw_get(shards.get(non_owner), &format!("/v1/kv/{raw}")).await;
        assert_eq!(
            (answer.status, error_code(&answer).as_str()),
            (400, "invalid_key"),
            "{raw} through shard {non_owner}: {}",
            String::from_utf8_lossy(&answer.body)
        );
    }
}
