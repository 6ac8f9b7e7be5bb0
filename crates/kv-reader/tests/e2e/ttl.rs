//! Keys that expire, end to end: the real writer and readers on a real broker. A key with a TTL
//! is served until its expiry and absent on every route of every replica from then on, also
//! after a restart; and the race of docs/architecture.md ("Keys that expire"): keys rewritten
//! around their expiry while the sweeper produces tombstones lose no write, neither on the live
//! replicas nor on a fresh replica fed only what compaction keeps of the topic.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use kv_core::crypto::TopicCipher;
use kv_core::record::{EXPIRED_OFFSET_HEADER, EXPIRES_AT_HEADER, REPAIR_OF_HEADER};
use kv_testkit::reader::{all_keys, dump, wait_ready};
use kv_testkit::services::{reader_env, service_env_with};
use kv_testkit::topic::{create_topic, last_per_key, produce_as_they_are, random_topic, records};
use kv_testkit::{eventually, metric, run_to_exit, Broker, Service, DEADLINE};
use rand::Rng;
use serde_json::{json, Value};

use crate::{writer, READER};

/// The topic settings the sweeper relies on (docs/operations.md, "Topic settings").
const SWEEPABLE: &[(&str, &str)] = &[
    ("cleanup.policy", "compact"),
    ("min.compaction.lag.ms", "900000"),
];

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms")
}

async fn sweepable_topic(broker: &Broker, prefix: &str, partitions: i32) -> String {
    let topic = random_topic(prefix);
    create_topic(&broker.bootstrap_servers(), &topic, partitions, SWEEPABLE).await;
    topic
}

fn sweeper_env(broker: &Broker, topic: &str, group: &str) -> Vec<(&'static str, String)> {
    let mut env = reader_env(broker, topic, group);
    env.push(("KV_API_TTL_SWEEPER", "true".to_owned()));
    env
}

async fn metrics_of(http: &reqwest::Client, service: &Service) -> String {
    service.metrics(http).await
}

/// One read route's answer about a key, and when it was asked and answered (this host's clock,
/// which the replicas share).
#[derive(Debug)]
struct Answer {
    route: &'static str,
    asked: u64,
    answered: u64,
    value: Option<Vec<u8>>,
}

/// What each read route of `reader` says of `key`, one after the other.
async fn route_answers(http: &reqwest::Client, reader: &Service, key: &str) -> Vec<Answer> {
    let mut answers = Vec::new();
    let asked = now_ms();
    let get = http
        .get(reader.url(&format!("/v1/kv/{key}")))
        .send()
        .await
        .expect("get");
    let value = match get.status().as_u16() {
        200 => Some(get.bytes().await.expect("body").to_vec()),
        404 => {
            let body: Value = get.json().await.expect("json error");
            assert_eq!(body["error"]["code"], "key_not_found");
            None
        }
        status => panic!("GET answered {status}"),
    };
    answers.push(Answer {
        route: "GET /v1/kv/{key}",
        asked,
        answered: now_ms(),
        value,
    });
    let asked = now_ms();
    let retrieve = http
        .post(reader.url("/retrieve/b64"))
        .json(&json!({"key": BASE64.encode(key)}))
        .send()
        .await
        .expect("retrieve");
    let value = match retrieve.status().as_u16() {
        200 => Some(
            BASE64
                .decode(retrieve.json::<String>().await.expect("json string"))
                .expect("base64"),
        ),
        404 => None,
        status => panic!("/retrieve/b64 answered {status}"),
    };
    answers.push(Answer {
        route: "/retrieve/b64",
        asked,
        answered: now_ms(),
        value,
    });
    let asked = now_ms();
    let batch: Value = http
        .post(reader.url("/v1/kv:batchGet"))
        .json(&json!({"keys": [key]}))
        .send()
        .await
        .expect("batchGet")
        .json()
        .await
        .expect("batchGet json");
    let result = &batch["results"][0];
    let value = (result["found"] == true).then(|| {
        result["value"]
            .as_str()
            .expect("text value")
            .as_bytes()
            .to_vec()
    });
    answers.push(Answer {
        route: "/v1/kv:batchGet",
        asked,
        answered: now_ms(),
        value,
    });
    let asked = now_ms();
    let value = all_keys(http, reader)
        .await
        .iter()
        .any(|k| k == key.as_bytes())
        .then(|| b"(listed)".to_vec());
    answers.push(Answer {
        route: "GET /v1/kv",
        asked,
        answered: now_ms(),
        value,
    });
    answers
}

/// What every read route of `reader` says of a key that is not about to expire: `Some(value)`
/// when all of them find it, `None` when all of them answer that it is absent.
async fn on_every_route(http: &reqwest::Client, reader: &Service, key: &str) -> Option<Vec<u8>> {
    let answers = route_answers(http, reader, key).await;
    if answers.iter().all(|a| a.value.is_some()) {
        return answers[0].value.clone();
    }
    assert!(
        answers.iter().all(|a| a.value.is_none()),
        "the routes disagree on {key}: {answers:?}"
    );
    None
}

#[tokio::test]
async fn a_key_with_a_ttl_of_two_seconds_is_served_until_its_expiry_and_absent_on_every_route_of_two_replicas_after(
) {
    let broker = Broker::start();
    let topic = sweepable_topic(&broker, "ttl-two-seconds", 2).await;
    let writer = Service::start(writer(), &service_env_with(&broker, &topic, &[]));
    let sweeper = Service::start(READER, &sweeper_env(&broker, &topic, "sweeper"));
    let replica = Service::start(READER, &reader_env(&broker, &topic, "replica"));
    let http = reqwest::Client::new();
    for reader in [&sweeper, &replica] {
        wait_ready(&http, reader).await;
    }

    let written_at = now_ms();
    let ack: Value = http
        .put(writer.url("/v1/kv/session"))
        .header("X-KV-TTL-Seconds", "2")
        .body("token")
        .send()
        .await
        .expect("put")
        .json()
        .await
        .expect("ack");
    let token = ack["consistency_token"].as_str().expect("token").to_owned();
    let lasting = http
        .put(writer.url("/v1/kv/lasting"))
        .body("stays")
        .send()
        .await
        .expect("put");
    assert_eq!(lasting.status(), 200);

    let mut expires_at = 0;
    for reader in [&sweeper, &replica] {
        let read = http
            .get(reader.url("/v1/kv/session"))
            .header("X-Consistency-Token", &token)
            .send()
            .await
            .expect("read");
        assert_eq!(read.status(), 200, "{}", reader.output());
        expires_at = read.headers()["x-kv-expires-at"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("milliseconds");
        assert!(
            (written_at + 2_000..=now_ms() + 2_000).contains(&expires_at),
            "the expiry the writer stamped: {expires_at}"
        );
        let batch: Value = http
            .post(reader.url("/v1/kv:batchGet"))
            .json(&json!({"keys": ["session", "lasting"]}))
            .send()
            .await
            .expect("batchGet")
            .json()
            .await
            .expect("json");
        assert_eq!(batch["results"][0]["expires_at"], expires_at);
        assert!(batch["results"][1].get("expires_at").is_none(), "{batch}");
    }

    // The replicas share this host's clock with the test, so there is no skew to allow for:
    // every answer asked before the expiry finds the key, every answer from the expiry on does
    // not, on every route.
    for reader in [&sweeper, &replica] {
        loop {
            let answers = route_answers(&http, reader, "session").await;
            for answer in &answers {
                match &answer.value {
                    Some(_) => assert!(
                        answer.asked < expires_at,
                        "{} served it after its expiry: {answer:?}",
                        answer.route
                    ),
                    None => assert!(
                        answer.answered >= expires_at,
                        "{} lost it before its expiry ({expires_at}): {answer:?}",
                        answer.route
                    ),
                }
            }
            if answers.iter().all(|a| a.value.is_none()) {
                let first = answers[0].asked;
                assert!(
                    first <= expires_at + 1_000,
                    "absent on every route only {} ms after its expiry",
                    first - expires_at
                );
                break;
            }
            assert!(
                now_ms() < expires_at + 10_000,
                "still served long after its expiry"
            );
        }
        assert_eq!(
            on_every_route(&http, reader, "lasting").await.as_deref(),
            Some(&b"stays"[..])
        );
    }

    // The sweeper's tombstone lands on the topic, names the put it expires, and both replicas
    // count the key gone.
    let tombstone = eventually("the sweeper's tombstone on the topic", DEADLINE, || async {
        let all = records(broker.bootstrap_servers(), &topic).await;
        all.into_iter()
            .find(|r| r.key == b"session" && r.value.is_none())
    })
    .await;
    let put = records(broker.bootstrap_servers(), &topic)
        .await
        .into_iter()
        .find(|r| r.key == b"session" && r.value.is_some())
        .expect("the put");
    assert_eq!(tombstone.partition, put.partition);
    assert_eq!(
        tombstone.header(EXPIRED_OFFSET_HEADER),
        Some(put.offset.to_string().as_bytes())
    );
    eventually("the sweeper's metrics", DEADLINE, || async {
        let text = metrics_of(&http, &sweeper).await;
        let produced = metric(&text, "kv_reader_ttl_tombstones_produced_total", &[])?;
        let tombstoned = metric(
            &text,
            "kv_reader_ttl_expired_total",
            &[("how", "tombstoned")],
        )?;
        let lag = metric(&text, "kv_reader_ttl_sweep_lag_seconds", &[])?;
        let sweeps = metric(&text, "kv_reader_ttl_sweeper", &[])?;
        (produced >= 1.0 && tombstoned >= 1.0 && lag == 0.0 && sweeps == 1.0).then_some(())
    })
    .await;
    let text = metrics_of(&http, &replica).await;
    assert_eq!(metric(&text, "kv_reader_ttl_sweeper", &[]), Some(0.0));
    assert_eq!(
        metric(&text, "kv_reader_ttl_tombstones_produced_total", &[]),
        Some(0.0),
        "only the sweeper produces"
    );
    eventually(
        "the replica's store without the dead key",
        DEADLINE,
        || async {
            let text = metrics_of(&http, &replica).await;
            // Its own purge or the sweeper's tombstone, whichever came first (on a loaded
            // machine the tombstone can arrive before the purge's next turn).
            let gone = ["purged", "tombstoned"]
                .into_iter()
                .filter_map(|how| metric(&text, "kv_reader_ttl_expired_total", &[("how", how)]))
                .sum::<f64>();
            (gone >= 1.0 && metric(&text, "kv_reader_store_keys", &[])? == 1.0).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_restart_after_expiry_never_brings_the_key_back() {
    let broker = Broker::start();
    let topic = broker.create_topic("ttl-restart", 1).await;
    let writer = Service::start(writer(), &service_env_with(&broker, &topic, &[]));
    let store = tempfile::tempdir().expect("store dir");
    let disk_env = {
        let mut env = reader_env(&broker, &topic, "disk");
        env.push((
            "KV_API_STATE_STORAGE_DISK_LOCATION",
            store.path().display().to_string(),
        ));
        env
    };
    let memory_env = reader_env(&broker, &topic, "memory");
    let mut disk = Service::start(READER, &disk_env);
    let mut memory = Service::start(READER, &memory_env);
    let http = reqwest::Client::new();
    for (key, ttl) in [("brief", Some("1")), ("lasting", None)] {
        let mut request = http.put(writer.url(&format!("/v1/kv/{key}"))).body(key);
        if let Some(ttl) = ttl {
            request = request.header("X-KV-TTL-Seconds", ttl);
        }
        assert_eq!(request.send().await.expect("put").status(), 200);
    }
    for reader in [&disk, &memory] {
        eventually("the lasting key on the reader", DEADLINE, || async {
            let status = http
                .get(reader.url("/v1/kv/lasting"))
                .send()
                .await
                .ok()?
                .status();
            (status == 200).then_some(())
        })
        .await;
        eventually("the brief key to expire", DEADLINE, || async {
            let status = http
                .get(reader.url("/v1/kv/brief"))
                .send()
                .await
                .ok()?
                .status();
            (status == 404).then_some(())
        })
        .await;
    }

    // No sweeper runs: the expired put is still the key's last record on the topic.
    for (reader, env) in [(&mut disk, &disk_env), (&mut memory, &memory_env)] {
        reader.terminate();
        assert_eq!(reader.wait_for_exit(DEADLINE).await, Some(0));
        *reader = Service::start(READER, env);
        wait_ready(&http, reader).await;
        assert_eq!(on_every_route(&http, reader, "brief").await, None);
        assert_eq!(
            on_every_route(&http, reader, "lasting").await.as_deref(),
            Some(&b"lasting"[..])
        );
    }
    let text = metrics_of(&http, &memory).await;
    assert_eq!(
        metric(&text, "kv_reader_ttl_expired_total", &[("how", "replayed")]),
        Some(1.0),
        "replayed already expired, the put applied as a delete"
    );
    assert_eq!(metric(&text, "kv_reader_store_keys", &[]), Some(1.0));
}

/// One write of the race and what it was answered.
#[derive(Debug, Clone)]
struct Acked {
    key: String,
    value: String,
    ttl: bool,
    acked_at: Instant,
}

#[tokio::test]
async fn keys_rewritten_around_their_expiry_while_the_sweeper_runs_lose_no_write_live_or_after_compaction(
) {
    const KEYS: usize = 1000;
    const PARTITIONS: i32 = 3;
    let broker = Broker::start();
    let topic = sweepable_topic(&broker, "ttl-race", PARTITIONS).await;
    let writer = Service::start(writer(), &service_env_with(&broker, &topic, &[]));
    let sweeper = Service::start(READER, &sweeper_env(&broker, &topic, "sweeper"));
    let replica = Service::start(READER, &reader_env(&broker, &topic, "replica"));
    let http = reqwest::Client::new();
    for reader in [&sweeper, &replica] {
        wait_ready(&http, reader).await;
    }

    let key = |i: usize| format!("race-{i:04}");
    let items: Vec<Value> = (0..KEYS)
        .map(|i| json!({"key": key(i), "value": format!("{}-first", key(i)), "ttl_seconds": 1}))
        .collect();
    let first_sent = Instant::now();
    let batch = http
        .post(writer.url("/v1/kv:batch"))
        .json(&json!({ "items": items }))
        .send()
        .await
        .expect("batch");
    assert_eq!(batch.status(), 200, "{}", writer.output());
    let mut acked: Vec<Acked> = (0..KEYS)
        .map(|i| Acked {
            key: key(i),
            value: format!("{}-first", key(i)),
            ttl: true,
            acked_at: first_sent,
        })
        .collect();

    // Each key is written again once, at a random moment from 300 ms before its expiry to
    // 400 ms after it, half of them with a TTL again. The moments are the test's input, so the
    // writes are scheduled for them rather than polled for.
    let expiry = first_sent + Duration::from_secs(1);
    let mut rng = rand::rng();
    let rewrites: Vec<(Instant, usize, bool)> = (0..KEYS)
        .map(|i| {
            let at = expiry - Duration::from_millis(300)
                + Duration::from_millis(rng.random_range(0..700));
            (at, i, rng.random_bool(0.5))
        })
        .collect();
    let tasks: Vec<_> = rewrites
        .into_iter()
        .map(|(at, i, ttl)| {
            let http = http.clone();
            let url = writer.url(&format!("/v1/kv/{}", key(i)));
            tokio::spawn(async move {
                tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
                let value = format!("race-{i:04}-second-{}", if ttl { "ttl" } else { "lasting" });
                let mut request = http.put(url).body(value.clone());
                if ttl {
                    request = request.header("X-KV-TTL-Seconds", "1");
                }
                let status = request.send().await.expect("rewrite").status();
                (i, value, ttl, status, Instant::now())
            })
        })
        .collect();
    let mut refused = 0;
    for task in tasks {
        let (i, value, ttl, status, acked_at) = task.await.expect("rewrite task");
        if status == 200 {
            acked[i] = Acked {
                key: key(i),
                value,
                ttl,
                acked_at,
            };
        } else {
            refused += 1;
        }
    }
    assert_eq!(
        refused,
        0,
        "every rewrite is acknowledged: {}",
        writer.output()
    );
    let last_write = acked.iter().map(|a| a.acked_at).max().expect("writes");

    // The model: a key lives on when its last acknowledged write had no TTL, with that value;
    // every TTL of the run has passed once the last write is a second old.
    let model: BTreeMap<Vec<u8>, Vec<u8>> = acked
        .iter()
        .filter(|a| !a.ttl)
        .map(|a| (a.key.clone().into_bytes(), a.value.clone().into_bytes()))
        .collect();
    let expiring = KEYS - model.len();
    let settled = last_write + Duration::from_millis(1_100);
    eventually("every TTL of the run to pass", DEADLINE, || async {
        (Instant::now() >= settled).then_some(())
    })
    .await;
    let mut lost = Vec::new();
    for (name, reader) in [("the sweeper", &sweeper), ("a replica", &replica)] {
        let state = eventually("the live replica to hold the model", DEADLINE, || async {
            let state = dump(&http, reader).await;
            (state == model).then_some(state)
        })
        .await;
        lost.push((name, kv_testkit::topic::diffs(&state, &model)));
    }

    // Every expired key tombstoned, every stale tombstone repaired: the sweeper has nothing left
    // to produce, and the topic is what compaction works on.
    let text = eventually(
        "the sweeper to have produced everything",
        DEADLINE,
        || async {
            let text = metrics_of(&http, &sweeper).await;
            let lag = metric(&text, "kv_reader_ttl_sweep_lag_seconds", &[])?;
            let pending = metric(&text, "kv_reader_ttl_pending_repairs", &[])?;
            let produced = metric(&text, "kv_reader_ttl_tombstones_produced_total", &[])?;
            (lag == 0.0 && pending == 0.0 && produced >= expiring as f64).then_some(text)
        },
    )
    .await;
    let stale = metric(&text, "kv_reader_ttl_stale_records_total", &[]).unwrap_or(0.0);
    let repairs = metric(&text, "kv_reader_ttl_repairs_produced_total", &[]).unwrap_or(0.0);

    // What compaction keeps: the last record of every key. The local broker does not compact,
    // so the test builds that view and replays it into a fresh replica on a topic of its own.
    let all = records(broker.bootstrap_servers(), &topic).await;
    let compacted_topic = sweepable_topic(&broker, "ttl-race-compacted", PARTITIONS).await;
    produce_as_they_are(
        &broker.bootstrap_servers(),
        &compacted_topic,
        last_per_key(&all),
    )
    .await;
    let fresh = Service::start(READER, &reader_env(&broker, &compacted_topic, "fresh"));
    wait_ready(&http, &fresh).await;
    let state = dump(&http, &fresh).await;
    lost.push((
        "a fresh replica of the compacted topic",
        kv_testkit::topic::diffs(&state, &model),
    ));

    let tombstones = all
        .iter()
        .filter(|r| r.header(EXPIRED_OFFSET_HEADER).is_some())
        .count();
    let repair_records = all
        .iter()
        .filter(|r| r.header(REPAIR_OF_HEADER).is_some())
        .count();
    println!(
        "ttl race: {KEYS} keys with a TTL of 1 s rewritten around their expiry ({} without a TTL), \
         {tombstones} expiry tombstones, {stale} stale sweeper records seen by the sweeper, \
         {repair_records} repairs on the topic ({repairs} acknowledged); writes lost = {} \
         (the sweeper), {} (a replica), {} (a fresh replica of the compacted topic)",
        model.len(),
        lost[0].1,
        lost[1].1,
        lost[2].1
    );
    for (name, diffs) in lost {
        assert_eq!(diffs, 0, "{name} lost writes");
    }
    assert!(
        all.iter()
            .filter(|r| r.header(EXPIRES_AT_HEADER).is_some())
            .count()
            >= KEYS,
        "every first write, and half the rewrites, expire"
    );
}

#[tokio::test]
async fn a_sweeper_refuses_a_topic_that_may_compact_a_write_before_its_repair() {
    let broker = Broker::start();
    let topic = random_topic("ttl-unsafe");
    create_topic(
        &broker.bootstrap_servers(),
        &topic,
        1,
        &[
            ("cleanup.policy", "compact"),
            ("min.compaction.lag.ms", "0"),
        ],
    )
    .await;
    let mut env = sweeper_env(&broker, &topic, "sweeper");
    env.push(("KV_API_LISTEN", "127.0.0.1:0".to_owned()));
    let (code, output) = run_to_exit(READER, &env, DEADLINE);
    assert!(matches!(code, Some(c) if c != 0), "{code:?}: {output}");
    assert!(
        output.contains("KV_API_TTL_SWEEPER") && output.contains("min.compaction.lag.ms is 0 ms"),
        "{output}"
    );
    let plain = Service::start(READER, &reader_env(&broker, &topic, "plain"));
    wait_ready(&reqwest::Client::new(), &plain).await;
}

#[tokio::test]
async fn under_topic_encryption_tombstones_name_the_mac_key_and_a_forged_expiry_is_refused() {
    const AES_KEY: &str = "8f2c6a1e9b7d4c3a5e0f1b2d3c4a5b6c7d8e9f0a1b2c3d4e5f60718293a4b5c6";
    let broker = Broker::start();
    let topic = sweepable_topic(&broker, "ttl-sealed", 1).await;
    let encrypted = |mut env: Vec<(&'static str, String)>| {
        env.push(("KV_API_ENCRYPT_DATA_ON_KAFKA", "true".to_owned()));
        env.push(("KV_API_AES_KEY", AES_KEY.to_owned()));
        env
    };
    let writer = Service::start(writer(), &encrypted(service_env_with(&broker, &topic, &[])));
    let sweeper = Service::start(READER, &encrypted(sweeper_env(&broker, &topic, "sweeper")));
    let http = reqwest::Client::new();
    wait_ready(&http, &sweeper).await;
    for (key, ttl) in [("brief", "1"), ("forged", "600")] {
        let put = http
            .put(writer.url(&format!("/v1/kv/{key}")))
            .header("X-KV-TTL-Seconds", ttl)
            .body("sealed")
            .send()
            .await
            .expect("put");
        assert_eq!(put.status(), 200);
    }

    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&AES_KEY[2 * i..2 * i + 2], 16).expect("hex");
    }
    let mac = TopicCipher::new(&key).record_key(b"brief");
    let tombstone = eventually("the sweeper's tombstone", DEADLINE, || async {
        records(broker.bootstrap_servers(), &topic)
            .await
            .into_iter()
            .find(|r| r.value.is_none())
    })
    .await;
    assert_eq!(
        tombstone.key, mac,
        "the tombstone goes to the key the writer wrote"
    );

    // Someone without the key copies the long-lived record with its expiry moved a year on:
    // the envelope authenticates the expiry, so the copy is refused and the key keeps its own.
    let original = records(broker.bootstrap_servers(), &topic)
        .await
        .into_iter()
        .find(|r| r.key == TopicCipher::new(&key).record_key(b"forged"))
        .expect("the forged key's record");
    let mut forged = original.clone();
    for (name, value) in &mut forged.headers {
        if name == EXPIRES_AT_HEADER {
            let at: u64 = std::str::from_utf8(value)
                .expect("ascii")
                .parse()
                .expect("ms");
            *value = (at + 365 * 86_400_000).to_string().into_bytes();
        }
    }
    produce_as_they_are(
        &broker.bootstrap_servers(),
        &topic,
        std::iter::once(&forged),
    )
    .await;
    eventually("the forged record refused", DEADLINE, || async {
        let text = metrics_of(&http, &sweeper).await;
        let refused = metric(
            &text,
            "kv_reader_records_skipped_total",
            &[("reason", "undecryptable")],
        )?;
        (refused >= 1.0).then_some(())
    })
    .await;
    let read = http
        .get(sweeper.url("/v1/kv/forged"))
        .send()
        .await
        .expect("read");
    assert_eq!(read.status(), 200);
    assert_eq!(
        read.headers()["x-kv-expires-at"].as_bytes(),
        original.header(EXPIRES_AT_HEADER).expect("expiry"),
        "the expiry the writer stamped, not the forged one"
    );
}
