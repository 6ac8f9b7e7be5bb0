//! Issue 33's watch-token figure (docs/reliability.md, "Hardening"): watches opened with tokens
//! that live two seconds, under a steady stream of writes. Each must end with an `error` event
//! soon after its token expires, and none may receive a change written after that.

use std::time::{Duration, SystemTime};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use kv_testkit::reader::wait_ready;
use kv_testkit::services::{keep_writing, service_env};
use kv_testkit::{token_expiry, workspace_binary, Broker, OidcProvider, Service};
use serde_json::Value;

use crate::READER;

const WATCHES: usize = 8;

/// How one watch ended: when its token expired and its stream was closed, whether by an
/// `error` event, and the keys it received.
struct Ended {
    expires: SystemTime,
    closed: SystemTime,
    by_error: bool,
    keys: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a drill: make drills runs it"]
async fn drill_watches_opened_with_short_tokens_end_at_their_expiry_and_get_nothing_written_after()
{
    let broker = Broker::start();
    let topic = broker.create_topic("drill-watch-expiry", 2).await;
    let idp = OidcProvider::start("drill-watch-expiry");
    let writer = Service::start(workspace_binary("kv-writer"), &service_env(&broker, &topic));
    let mut env = vec![
        ("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_servers()),
        ("KV_API_KAFKA_KEY_VALUE_TOPIC", topic.clone()),
        ("KAFKA_GROUP_ID", format!("{topic}-reader")),
        ("KV_API_AUTH_READ", "kv:read".to_owned()),
        ("KV_API_AUTH_LEEWAY_SECONDS", "0".to_owned()),
    ];
    env.extend(idp.service_env());
    let reader = Service::start(READER, &env);
    let http = reqwest::Client::new();
    wait_ready(&http, &reader).await;

    let mut watches = Vec::new();
    let mut last_expiry = SystemTime::UNIX_EPOCH;
    for i in 0..WATCHES {
        // Tokens minted a quarter second apart expire at different moments.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let token = idp.token("kv-short", "kv:read").await;
        let expires = token_expiry(&token);
        last_expiry = last_expiry.max(expires);
        let response = http
            .get(reader.url("/v1/kv:watch?prefix=d%2F"))
            .header("accept", "text/event-stream")
            .bearer_auth(&token)
            .send()
            .await
            .expect("the reader answers");
        assert_eq!(response.status(), 200, "watch {i}");
        watches.push(tokio::spawn(async move {
            let mut events = response.bytes_stream().eventsource();
            let mut ended = Ended {
                expires,
                closed: SystemTime::now(),
                by_error: false,
                keys: Vec::new(),
            };
            let give_up = expires + Duration::from_secs(30);
            loop {
                let next = tokio::time::timeout(Duration::from_secs(5), events.next()).await;
                match next {
                    Ok(Some(Ok(event))) => {
                        if event.event == "put" {
                            let data: Value = serde_json::from_str(&event.data).expect("json");
                            ended
                                .keys
                                .push(data["key"].as_str().expect("key").to_owned());
                        }
                        if event.event == "error" {
                            ended.by_error = true;
                        }
                    }
                    Ok(_) => break,
                    Err(_) => {}
                }
                if SystemTime::now() > give_up {
                    break;
                }
            }
            ended.closed = SystemTime::now();
            ended
        }));
    }
    let writes = keep_writing(
        http.clone(),
        writer.url(""),
        "d/",
        last_expiry + Duration::from_secs(2),
    );
    let mut ended = Vec::new();
    for watch in watches {
        ended.push(watch.await.expect("a watch task"));
    }
    let sent = writes.await.expect("the writes");

    let mut late_ms: Vec<u128> = ended
        .iter()
        .map(|e| {
            e.closed
                .duration_since(e.expires)
                .map_or(0, |d| d.as_millis())
        })
        .collect();
    late_ms.sort_unstable();
    let early = ended.iter().filter(|e| e.closed < e.expires).count();
    let by_error = ended.iter().filter(|e| e.by_error).count();
    let leaked: usize = ended
        .iter()
        .map(|e| {
            e.keys
                .iter()
                .filter(|key| {
                    sent.iter()
                        .any(|(sent_key, at)| sent_key == *key && *at > e.expires)
                })
                .count()
        })
        .sum();
    let received: usize = ended.iter().map(|e| e.keys.len()).sum();
    println!(
        "drill watch token expiry: {WATCHES} watches with 2-s tokens under {} writes, closed \
         after expiry in {} / {} / {} ms (min / median / max; goal under 1000), closed before \
         it {early}, ended by an error event {by_error}/{WATCHES}, changes received {received}, \
         changes written after a watch's expiry that reached it = {leaked} (goal 0)",
        sent.len(),
        late_ms[0],
        late_ms[late_ms.len() / 2],
        late_ms[late_ms.len() - 1],
    );
    assert_eq!(early, 0);
    assert_eq!(by_error, WATCHES);
    assert_eq!(leaked, 0);
    assert!(
        received > 0,
        "the watches received changes before their expiry"
    );
    assert!(late_ms[late_ms.len() - 1] < 1000);
}
