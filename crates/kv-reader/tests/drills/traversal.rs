//! Issue 33's traversal figure (docs/reliability.md, "Traversal through a shard's forward"):
//! every spelling of `..` and `/` a URL parser might fold, sent byte for byte through the
//! shards that do not hold the key, must read that key and nothing else.

use std::collections::BTreeMap;

use kv_core::kafka::kafka_partition;
use kv_testkit::reader::{key_path, raw_get, wait_ready};
use kv_testkit::{service_env, workspace_binary, Broker, Service, Shards};
use serde_json::Value;

use crate::READER;

const PARTITIONS: u32 = 6;
const SHARDS: usize = 3;

fn owner(key: &[u8]) -> usize {
    (kafka_partition(key, PARTITIONS) as u32 % SHARDS as u32) as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a drill: make drills runs it"]
async fn drill_encoded_traversal_paths_through_a_non_owner_reach_no_other_key_or_route() {
    let broker = Broker::start();
    let topic = broker
        .create_topic("drill-traversal", PARTITIONS as i32)
        .await;
    let env = service_env(&broker, &topic);
    let writer = Service::start(workspace_binary("kv-writer"), &env);
    let shards = Shards::start(READER, &env, SHARDS, 1);
    let http = reqwest::Client::new();
    // What a folded path would land on: keys, and the routes of a peer.
    let targets = [
        "target",
        "v1/kv/target",
        "admin/v1/snapshot",
        "healthz/ready",
        "metrics",
        "openapi.yaml",
        "",
    ];
    let mut written = BTreeMap::new();
    let mut token = None;
    for key in targets.iter().filter(|k| !k.is_empty()) {
        let value = format!("the value of {key}");
        let put = http
            .put(writer.url(&key_path(key.as_bytes())))
            .body(value.clone())
            .send()
            .await
            .expect("put");
        assert_eq!(put.status(), 200);
        token = Some(put.headers()["x-consistency-token"].clone());
        written.insert(key.as_bytes().to_vec(), value.into_bytes());
    }
    for (_, shard) in shards.running() {
        wait_ready(&http, shard).await;
        let read = http
            .get(shard.url("/v1/kv/target"))
            .header("x-consistency-token", token.clone().expect("a token"))
            .send()
            .await
            .expect("get");
        assert_eq!(read.status(), 200);
    }

    let dots = [
        "..",
        "%2e%2e",
        "%2E%2E",
        ".%2e",
        "%2e.",
        "%2E.",
        "%252e%252e",
    ];
    let slashes = ["/", "%2f", "%2F", "%5c"];
    let (mut sent, mut forwarded, mut not_found, mut refused, mut own_value) = (0, 0, 0, 0, 0);
    let mut strays: Vec<String> = Vec::new();
    for n in 0..3 {
        for target in targets {
            for dot in dots {
                for slash in slashes {
                    for depth in 1..=3 {
                        let climb = format!("{dot}{slash}").repeat(depth);
                        let tail = format!("x{n}{slash}{climb}{}", target.replace('/', slash));
                        let key: Vec<u8> = percent_encoding::percent_decode_str(&tail).collect();
                        let asked = (owner(&key) + 1) % SHARDS;
                        let path = format!("/v1/kv/{tail}");
                        let answer = raw_get(shards.get(asked), &path).await;
                        sent += 1;
                        if answer
                            .headers
                            .get("x-served-by")
                            .is_some_and(|by| by != &asked.to_string())
                        {
                            forwarded += 1;
                        }
                        let code = serde_json::from_slice::<Value>(&answer.body)
                            .ok()
                            .and_then(|b| b["error"]["code"].as_str().map(str::to_owned));
                        match (answer.status, code.as_deref()) {
                            (404, Some("key_not_found")) if !written.contains_key(&key) => {
                                not_found += 1;
                            }
                            (400, Some("invalid_key")) => refused += 1,
                            (200, _) if written.get(&key) == Some(&answer.body) => own_value += 1,
                            _ => strays.push(format!(
                                "{path} via shard {asked}: {} {}",
                                answer.status,
                                String::from_utf8_lossy(&answer.body)
                                    .chars()
                                    .take(80)
                                    .collect::<String>()
                            )),
                        }
                    }
                }
            }
        }
    }
    println!(
        "drill traversal through a non-owner shard: {sent} encoded paths ({} spellings of `..`, \
         {} of `/`, depth 1-3, {} targets incl. /admin, /healthz, /metrics), forwarded {forwarded}, \
         answered 404 key_not_found for the decoded key {not_found}, 400 invalid_key {refused}, \
         the key's own value {own_value}, reached another key or a non-key path = {} (goal 0)",
        dots.len(),
        slashes.len(),
        targets.len(),
        strays.len()
    );
    assert!(strays.is_empty(), "{:#?}", &strays[..strays.len().min(20)]);
}
