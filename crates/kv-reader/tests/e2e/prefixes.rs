//! Per-prefix authorisation (KV_API_AUTH_PREFIXES) end to end: the real provider's tokens, the
//! real writer and reader, the real broker; every route and port, a granted and a refused
//! prefix each.
//!
//! The test provider issues only the kv:* scopes, so they stand for teams here: a token with
//! `kv:write` is team A (every action on `team-a/`), one with `kv:delete` team B (every action
//! on `team-b/`), and `kv:read` adds reading and watching `shared/`. The operation scopes
//! (KV_API_AUTH_READ/WRITE/DELETE) are left empty, so only the prefixes decide.

use crate::{writer, READER};
use std::pin::Pin;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use eventsource_stream::{Event, Eventsource};
use futures::{Stream, StreamExt};
use kv_core::kafka::kafka_partition;
use kv_testkit::computed::rules_file;
use kv_testkit::reader::{key_path, wait_ready};
use kv_testkit::{eventually, service_env, Broker, OidcProvider, Service, Shards, DEADLINE};
use redis::aio::MultiplexedConnection;
use reqwest::StatusCode;
use serde_json::{json, Value};

const RULES: &str = "kv:write * team-a/; kv:delete * team-b/; kv:read read,watch shared/";

fn env(broker: &Broker, topic: &str, idp: &OidcProvider) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_servers()),
        ("KV_API_KAFKA_KEY_VALUE_TOPIC", topic.to_owned()),
        ("KAFKA_GROUP_ID", format!("{topic}-reader")),
        ("KV_API_AUTH_PREFIXES", RULES.to_owned()),
        ("KV_API_RESP_LISTEN", "127.0.0.1:0".to_owned()),
    ];
    env.extend(idp.service_env());
    env
}

/// The status and the error code of an answer (the code empty when there is none).
async fn outcome(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (status, code)
}

fn forbidden() -> (StatusCode, String) {
    (StatusCode::FORBIDDEN, "forbidden".to_owned())
}

fn ok() -> (StatusCode, String) {
    (StatusCode::OK, String::new())
}

type Events = Pin<Box<dyn Stream<Item = Event>>>;

async fn watch(http: &reqwest::Client, reader: &Service, query: &str, token: &str) -> Events {
    let response = http
        .get(reader.url(&format!("/v1/kv:watch?{query}")))
        .header("accept", "text/event-stream")
        .bearer_auth(token)
        .send()
        .await
        .expect("watch");
    assert_eq!(response.status(), StatusCode::OK, "{}", reader.output());
    Box::pin(
        response
            .bytes_stream()
            .eventsource()
            .map(|event| event.expect("a well-formed event")),
    )
}

/// The key of the next `put` or `delete`, passing over `progress`.
async fn next_key(events: &mut Events) -> (String, String) {
    loop {
        let event = tokio::time::timeout(DEADLINE, events.next())
            .await
            .expect("an event within the deadline")
            .expect("the stream goes on");
        if event.event == "put" || event.event == "delete" {
            let data: Value = serde_json::from_str(&event.data).expect("json");
            return (event.event, data["key"].as_str().expect("key").to_owned());
        }
        if event.event != "progress" {
            panic!("unexpected event {event:?}");
        }
    }
}

/// The snapshot's keys (`put`s without an id), up to the `progress` that ends it.
async fn snapshot_keys(events: &mut Events) -> Vec<String> {
    let mut keys = Vec::new();
    loop {
        let event = tokio::time::timeout(DEADLINE, events.next())
            .await
            .expect("an event within the deadline")
            .expect("the stream goes on");
        match event.event.as_str() {
            "put" => {
                let data: Value = serde_json::from_str(&event.data).expect("json");
                keys.push(data["key"].as_str().expect("key").to_owned());
            }
            "progress" => return keys,
            other => panic!("unexpected event {other} in a snapshot"),
        }
    }
}

async fn resp(address: &str, token: &str) -> MultiplexedConnection {
    redis::Client::open(format!("redis://reader:{token}@{address}/"))
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("AUTH with the token")
}

/// The error a RESP command got, as `CODE message`.
async fn resp_error(connection: &mut MultiplexedConnection, command: &redis::Cmd) -> String {
    let error = command
        .query_async::<redis::Value>(connection)
        .await
        .expect_err("refused");
    format!(
        "{} {}",
        error.code().unwrap_or_default(),
        error.detail().unwrap_or_default()
    )
}

#[tokio::test]
async fn every_route_and_port_serves_a_granted_prefix_and_refuses_another() {
    let broker = Broker::start();
    let topic = broker.create_topic("prefixes", 1).await;
    let idp = OidcProvider::start("prefixes");
    let mut writer_env = env(&broker, &topic, &idp);
    let rules = rules_file("rules:\n- {prefix: 'team-a/state/', reducer: latest}\n- {prefix: 'team-b/state/', reducer: latest}\n");
    writer_env.push(("KV_API_STATE_RULES", rules.path().display().to_string()));
    let writer = Service::start(writer(), &writer_env);
    let reader = Service::start(READER, &env(&broker, &topic, &idp));
    let http = reqwest::Client::new();
    wait_ready(&http, &reader).await;
    let alice = idp.token("kv-full", "kv:write kv:read").await;
    let bob = idp.token("kv-full", "kv:delete").await;

    // The writer: PUT, DELETE, /store, /store/b64, /remove, a conditional PUT, a batch, a report.
    let put = |token: &str, key: &str| {
        http.put(writer.url(&format!("/v1/kv/{key}")))
            .bearer_auth(token)
            .body(format!("value of {key}"))
            .send()
    };
    for key in ["team-a/x", "team-a/y", "team-a/gone"] {
        assert_eq!(outcome(put(&alice, key).await.expect("put")).await, ok());
    }
    assert_eq!(
        outcome(put(&bob, "team-b/x").await.expect("put")).await,
        ok()
    );
    let refused = put(&alice, "team-b/x").await.expect("put");
    let body: Value = {
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        refused.json().await.expect("json")
    };
    assert_eq!(body["error"]["code"], "forbidden");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("write on key \"team-b/x\"") && message.contains("KV_API_AUTH_PREFIXES"),
        "{message}"
    );
    assert_eq!(
        outcome(put(&bob, "shared/x").await.expect("put")).await,
        forbidden()
    );
    let conditional = http
        .put(writer.url("/v1/kv/team-b/new"))
        .bearer_auth(&alice)
        .header("if-none-match", "*")
        .body("v")
        .send()
        .await
        .expect("put");
    assert_eq!(outcome(conditional).await, forbidden());
    let delete = |token: &str, key: &str| {
        http.delete(writer.url(&format!("/v1/kv/{key}")))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(
        outcome(delete(&alice, "team-b/x").await.expect("delete")).await,
        forbidden()
    );
    assert_eq!(
        outcome(delete(&alice, "team-a/gone").await.expect("delete")).await,
        ok()
    );
    let post = |path: &str, token: &str, body: Value| {
        http.post(writer.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    for (path, allowed, refused) in [
        (
            "/store",
            json!({"key": "team-a/stored", "value": "v"}),
            json!({"key": "team-b/stored", "value": "v"}),
        ),
        (
            "/store/b64",
            json!({"key": STANDARD.encode("team-a/b64"), "value": STANDARD.encode("v")}),
            json!({"key": STANDARD.encode("team-b/b64"), "value": STANDARD.encode("v")}),
        ),
        (
            "/remove",
            json!({"key": "team-a/stored"}),
            json!({"key": "team-b/x"}),
        ),
    ] {
        let answer = post(path, &alice, allowed).await.expect("post");
        assert_eq!(answer.status(), StatusCode::OK, "{path}");
        assert_eq!(
            outcome(post(path, &alice, refused).await.expect("post")).await,
            forbidden(),
            "{path}"
        );
    }
    let mixed = json!({"items": [
        {"key": "team-a/batched", "value": "v"},
        {"key": "team-b/batched", "value": "v"},
    ]});
    let answer = post("/v1/kv:batch", &alice, mixed).await.expect("batch");
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    let body: Value = answer.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("`items[1]`"),
        "{body}"
    );
    let deleting = json!({"items": [{"key": "team-a/y", "delete": true}]});
    assert_eq!(
        outcome(post("/v1/kv:batch", &bob, deleting).await.expect("batch")).await,
        forbidden()
    );
    let own = json!({"items": [{"key": "team-a/batched-alone", "value": "v"}]});
    assert_eq!(
        outcome(post("/v1/kv:batch", &alice, own).await.expect("batch")).await,
        ok()
    );

    // The reader, once it applied the last write.
    eventually("the last write on the reader", DEADLINE, || {
        let request = http
            .get(reader.url("/v1/kv/team-a/batched-alone"))
            .bearer_auth(&alice)
            .send();
        async move { (request.await.ok()?.status() == StatusCode::OK).then_some(()) }
    })
    .await;
    let get = |token: &str, key: &str| {
        http.get(reader.url(&format!("/v1/kv/{key}")))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(
        get(&alice, "team-a/x")
            .await
            .expect("get")
            .text()
            .await
            .expect("body"),
        "value of team-a/x"
    );
    assert_eq!(
        outcome(get(&alice, "team-b/x").await.expect("get")).await,
        forbidden()
    );
    assert_eq!(
        outcome(get(&bob, "team-a/x").await.expect("get")).await,
        forbidden()
    );
    assert_eq!(
        outcome(get(&bob, "team-b/x").await.expect("get")).await.0,
        StatusCode::OK
    );
    // Nothing of the refused batch was written.
    assert_eq!(
        outcome(get(&alice, "team-a/batched").await.expect("get"))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let read = |path: &str, token: &str, body: Value| {
        http.post(reader.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    assert_eq!(
        outcome(
            read("/retrieve", &alice, json!({"key": "team-a/x"}))
                .await
                .expect("retrieve")
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(
        outcome(
            read("/retrieve", &alice, json!({"key": "team-b/x"}))
                .await
                .expect("retrieve")
        )
        .await,
        forbidden()
    );
    assert_eq!(
        outcome(
            read(
                "/retrieve/b64",
                &alice,
                json!({"key": STANDARD.encode("team-b/x")})
            )
            .await
            .expect("retrieve")
        )
        .await,
        forbidden()
    );
    assert_eq!(
        outcome(
            read(
                "/retrieve/b64",
                &alice,
                json!({"key": STANDARD.encode("team-a/x")})
            )
            .await
            .expect("retrieve")
        )
        .await
        .0,
        StatusCode::OK
    );
    let both = json!({"keys": ["team-a/x", "team-b/x"]});
    let answer = read("/v1/kv:batchGet", &alice, both)
        .await
        .expect("batchGet");
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    let body: Value = answer.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("`keys[1]`"),
        "{body}"
    );
    let own = read("/v1/kv:batchGet", &alice, json!({"keys": ["team-a/x"]}))
        .await
        .expect("batchGet");
    let body: Value = own.json().await.expect("json");
    assert_eq!(body["results"][0]["value"], "value of team-a/x");
    let state = |token: &str, key: &str| {
        http.get(reader.url(&format!("/v1/state/{key}")))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(
        outcome(state(&alice, "team-b/state/k").await.expect("state")).await,
        forbidden()
    );
    // This reader has no rules: past the key's check, the answer is that no rule covers it.
    assert_eq!(
        outcome(state(&alice, "team-a/state/k").await.expect("state"))
            .await
            .1,
        "no_rule"
    );

    // Listings: a wider prefix lists only what may be read; a prefix with nothing readable is 403.
    let list = |token: &str, query: &str| {
        http.get(reader.url(&format!("/v1/kv?{query}")))
            .bearer_auth(token)
            .send()
    };
    let keys_of = |body: Value| -> Vec<String> {
        body["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| k["key"].as_str().expect("key").to_owned())
            .collect()
    };
    let everything: Value = list(&alice, "")
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(
        keys_of(everything),
        ["team-a/b64", "team-a/batched-alone", "team-a/x", "team-a/y"]
    );
    let paged: Value = list(&alice, "prefix=team-&limit=3")
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let cursor = paged["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    assert_eq!(
        keys_of(paged),
        ["team-a/b64", "team-a/batched-alone", "team-a/x"]
    );
    let rest: Value = list(&alice, &format!("prefix=team-&limit=3&cursor={cursor}"))
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(keys_of(rest), ["team-a/y"]);
    let bobs: Value = list(&bob, "prefix=team-")
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(keys_of(bobs), ["team-b/x"]);
    assert_eq!(
        outcome(list(&alice, "prefix=team-b/").await.expect("list")).await,
        forbidden()
    );

    // A watch: a prefix with nothing watchable is 403; a wider one sees only what it may.
    let refused = http
        .get(reader.url("/v1/kv:watch?prefix=team-b/"))
        .header("accept", "text/event-stream")
        .bearer_auth(&alice)
        .send()
        .await
        .expect("watch");
    assert_eq!(outcome(refused).await, forbidden());
    let mut events = watch(&http, &reader, "snapshot=true", &alice).await;
    assert_eq!(
        snapshot_keys(&mut events).await,
        ["team-a/b64", "team-a/batched-alone", "team-a/x", "team-a/y"]
    );
    assert_eq!(
        outcome(put(&bob, "team-b/later").await.expect("put")).await,
        ok()
    );
    assert_eq!(
        outcome(put(&alice, "team-a/later").await.expect("put")).await,
        ok()
    );
    assert_eq!(
        next_key(&mut events).await,
        ("put".to_owned(), "team-a/later".to_owned())
    );

    // The Redis-protocol port: keys checked per command, SCAN only what may be read.
    let address = reader
        .logged_address("redis")
        .unwrap_or_else(|| panic!("no Redis-protocol port:\n{}", reader.output()));
    let mut connection = resp(&address, &alice).await;
    let value: Option<String> = redis::cmd("GET")
        .arg("team-a/x")
        .query_async(&mut connection)
        .await
        .expect("GET");
    assert_eq!(value.as_deref(), Some("value of team-a/x"));
    for command in [
        redis::cmd("GET").arg("team-b/x").clone(),
        redis::cmd("MGET").arg("team-a/x").arg("team-b/x").clone(),
        redis::cmd("EXISTS").arg("team-b/x").clone(),
        redis::cmd("STRLEN").arg("team-b/x").clone(),
        redis::cmd("TYPE").arg("team-b/x").clone(),
        redis::cmd("PTTL").arg("team-b/x").clone(),
        redis::cmd("SCAN")
            .arg(0)
            .arg("MATCH")
            .arg("team-b/*")
            .clone(),
    ] {
        let error = resp_error(&mut connection, &command).await;
        assert!(error.starts_with("NOPERM "), "{command:?}: {error}");
    }
    let found: Vec<Option<String>> = redis::cmd("MGET")
        .arg("team-a/x")
        .arg("team-a/y")
        .query_async(&mut connection)
        .await
        .expect("MGET");
    assert_eq!(found.len(), 2);
    let (cursor, keys): (u64, Vec<String>) = redis::cmd("SCAN")
        .arg(0)
        .arg("COUNT")
        .arg(100)
        .query_async(&mut connection)
        .await
        .expect("SCAN");
    assert_eq!(cursor, 0);
    assert_eq!(
        keys,
        [
            "team-a/b64",
            "team-a/batched-alone",
            "team-a/later",
            "team-a/x",
            "team-a/y"
        ]
    );

    // Reports last: a report's record would be one more key in the listings above.
    let report = |token: &str, key: &str| {
        http.put(writer.url(&format!("/v1/reports/{key}")))
            .bearer_auth(token)
            .body("up")
            .send()
    };
    assert_eq!(
        outcome(report(&alice, "team-a/state/k").await.expect("report")).await,
        ok()
    );
    assert_eq!(
        outcome(report(&alice, "team-b/state/k").await.expect("report")).await,
        forbidden()
    );
}

/// `GET /v1/kv/{key}` through `shard` with `token`.
async fn get_through(
    http: &reqwest::Client,
    shard: &Service,
    token: &str,
    key: &str,
) -> reqwest::Result<reqwest::Response> {
    http.get(shard.url(&key_path(key.as_bytes())))
        .bearer_auth(token)
        .send()
        .await
}

#[tokio::test]
async fn a_shard_checks_the_key_before_forwarding_and_lists_only_readable_keys_across_owners() {
    const PARTITIONS: u32 = 6;
    let broker = Broker::start();
    let topic = broker
        .create_topic("prefixes-shards", PARTITIONS as i32)
        .await;
    let idp = OidcProvider::start("prefixes-shards");
    let open = service_env(&broker, &topic);
    let mut strict = open.clone();
    strict.extend(idp.service_env());
    strict.extend([
        ("KV_API_DISABLE_API_AUTH", "false".to_owned()),
        ("KV_API_AUTH_PREFIXES", "kv:read read team-a/".to_owned()),
    ]);
    let writer = Service::start(writer(), &open);
    let mut shards = Shards::start(READER, &strict, 2, 1);
    let http = reqwest::Client::new();
    let token = idp.token("kv-reader", "kv:read").await;
    let keys: Vec<String> = (0..10)
        .flat_map(|i| [format!("team-a/{i}"), format!("team-b/{i}")])
        .collect();
    for key in &keys {
        let put = http
            .put(writer.url(&key_path(key.as_bytes())))
            .body(format!("value of {key}"))
            .send()
            .await
            .expect("put");
        assert_eq!(put.status(), 200, "{}", writer.output());
    }
    let on_shard_1 = |team: &str| {
        keys.iter()
            .find(|k| k.starts_with(team) && kafka_partition(k.as_bytes(), PARTITIONS) % 2 == 1)
            .expect("a key of shard 1")
            .clone()
    };
    let (readable, refused) = (on_shard_1("team-a/"), on_shard_1("team-b/"));
    let team_a: Vec<String> = {
        let mut team_a: Vec<String> = keys
            .iter()
            .filter(|k| k.starts_with("team-a/"))
            .cloned()
            .collect();
        team_a.sort();
        team_a
    };
    // Every team-a key readable through shard 0, its own and shard 1's alike.
    eventually("every write on its owner", DEADLINE, || async {
        for key in &team_a {
            if get_through(&http, shards.get(0), &token, key)
                .await
                .ok()?
                .status()
                != StatusCode::OK
            {
                return None;
            }
        }
        Some(())
    })
    .await;
    let forwarded = get_through(&http, shards.get(0), &token, &readable)
        .await
        .expect("get");
    assert_eq!(forwarded.headers()["x-served-by"], "1");
    assert_eq!(
        forwarded.text().await.expect("body"),
        format!("value of {readable}")
    );
    assert_eq!(
        outcome(
            get_through(&http, shards.get(0), &token, &refused)
                .await
                .expect("get")
        )
        .await,
        forbidden()
    );

    // A listing across both owners lists exactly the readable keys, page after page.
    let mut listed = Vec::new();
    let mut cursor = String::new();
    loop {
        let page: Value = http
            .get(
                shards
                    .get(0)
                    .url(&format!("/v1/kv?limit=3&cursor={cursor}")),
            )
            .bearer_auth(&token)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("page");
        for key in page["keys"].as_array().expect("keys") {
            listed.push(key["key"].as_str().expect("key").to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(listed, team_a);
    let batch = |keys: Vec<&String>| {
        http.post(shards.get(0).url("/v1/kv:batchGet"))
            .bearer_auth(&token)
            .json(&json!({ "keys": keys }))
            .send()
    };
    let answer: Value = batch(team_a.iter().collect())
        .await
        .expect("batchGet")
        .json()
        .await
        .expect("json");
    assert_eq!(
        answer["results"].as_array().expect("results").len(),
        team_a.len()
    );
    assert_eq!(
        outcome(batch(vec![&readable, &refused]).await.expect("batchGet")).await,
        forbidden()
    );

    // A shard with looser rules forwards; the owner's own rules are the answer.
    shards.restart(0, &[("KV_API_AUTH_PREFIXES", "kv:read * *".to_owned())]);
    let answer = eventually("shard 0 to forward", DEADLINE, || async {
        let response = get_through(&http, shards.get(0), &token, &refused)
            .await
            .ok()?;
        (response.status() != StatusCode::SERVICE_UNAVAILABLE).then_some(response)
    })
    .await;
    assert_eq!(answer.headers()["x-served-by"], "1");
    assert_eq!(
        outcome(answer).await,
        forbidden(),
        "the owner refused the key"
    );
}
