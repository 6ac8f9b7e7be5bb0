//! Computed state end to end (docs/architecture.md, "Computed state"): agents report through
//! the real kv-writer, two owner-candidate readers compute keys by rules, against a real broker
//! process. Published values equal a reference the test computes; holds publish once, after
//! their time, and never for a shorter flap; a killed owner's pending holds fire once on the
//! survivor; a fresh replica fed the compacted topic ends on the same values.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kv_testkit::computed::{published, report, rules_file, Reports};
use kv_testkit::conditional::{owned, owners_settled};
use kv_testkit::reader::{dump, wait_ready};
use kv_testkit::services::{candidate_env, reader_env};
use kv_testkit::topic::{create_topic, last_per_key, produce_as_they_are, random_topic, records};
use kv_testkit::{eventually, service_env, Broker, Service, DEADLINE};
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::{writer, READER};

const OWNED: &[(&str, &str)] = &[
    ("cleanup.policy", "compact"),
    ("min.compaction.lag.ms", "900000"),
];
const PARTITIONS: i32 = 3;

struct Cluster {
    topic: String,
    readers: Vec<Service>,
    writer: Service,
    http: reqwest::Client,
    _rules: tempfile::NamedTempFile,
}

async fn cluster(broker: &Broker, prefix: &str, rules: &str, candidates: usize) -> Cluster {
    let topic = random_topic(prefix);
    create_topic(&broker.bootstrap_servers(), &topic, PARTITIONS, OWNED).await;
    let file = rules_file(rules);
    let path = file.path().display().to_string();
    let readers: Vec<Service> = (0..candidates)
        .map(|i| {
            let mut env = candidate_env(broker, &topic, &format!("{prefix}-{i}"));
            env.push(("KV_API_STATE_RULES", path.clone()));
            Service::start(READER, &env)
        })
        .collect();
    let mut env = service_env(broker, &topic);
    env.push(("KV_API_STATE_RULES", path.clone()));
    let writer = Service::start(writer(), &env);
    let http = reqwest::Client::new();
    for reader in &readers {
        wait_ready(&http, reader).await;
    }
    let refs: Vec<&Service> = readers.iter().collect();
    owners_settled(&http, &refs, PARTITIONS).await;
    Cluster {
        topic,
        readers,
        writer,
        http,
        _rules: file,
    }
}

impl Cluster {
    /// `GET /v1/state/{key}` on the first reader.
    async fn state(&self, key: &str) -> Value {
        let url = self.readers[0].url(&format!("/v1/state/{key}"));
        let answer = self.http.get(url).send().await.expect("state");
        answer.json().await.expect("state json")
    }

    /// Waits until every reader publishes `expected` for every key.
    async fn settles(&self, expected: &BTreeMap<String, Option<String>>) {
        eventually(
            "every reader to publish the reference",
            DEADLINE,
            || async {
                for reader in &self.readers {
                    for (key, value) in expected {
                        if published(&self.http, reader, key).await != *value {
                            return None;
                        }
                    }
                }
                Some(())
            },
        )
        .await;
    }
}

#[tokio::test]
async fn five_agents_reporting_on_two_hundred_objects_publish_what_a_reference_computes_for_each_reducer(
) {
    let broker = Broker::start();
    let c = cluster(
        &broker,
        "computed-rules",
        "rules:\n\
         - {prefix: 'site/', reducer: majority}\n\
         - {prefix: 'one/', reducer: at_least_one, value: down, otherwise: up}\n\
         - {prefix: 'all/', reducer: all, value: down, otherwise: up}\n\
         - {prefix: 'n/', reducer: count}\n",
        2,
    )
    .await;
    // A bad report is refused before anything is produced.
    let no_agent = c
        .http
        .put(c.writer.url("/v1/reports/site/1"))
        .body("up")
        .send()
        .await
        .unwrap();
    assert_eq!(no_agent.status(), 400);
    let text = no_agent.text().await.unwrap();
    assert!(text.contains("X-KV-Agent"), "{text}");
    assert_eq!(report(&c.http, &c.writer, "other/1", "a", "up").await, 422);
    let oversized = report(&c.http, &c.writer, "site/1", "a", &"x".repeat(4097)).await;
    assert_eq!(oversized, 413, "a report is a state, at most 4 KiB");

    let mut rng = rand::rngs::StdRng::seed_from_u64(32);
    let agents: Vec<String> = (0..5).map(|i| format!("agent-{i}")).collect();
    let mut plans: Vec<Vec<(String, String)>> = vec![Vec::new(); agents.len()];
    let mut reference = Reports::default();
    for (a, plan) in plans.iter_mut().enumerate() {
        for round in 0..2 {
            for object in 0..200 {
                // Every agent reports every majority object once, some twice: with five live
                // reports of two values there is always a winner.
                if round == 1 && rng.random_bool(0.5) {
                    continue;
                }
                let value = if rng.random_bool(0.5) { "up" } else { "down" };
                plan.push((format!("site/{object}"), value.to_owned()));
            }
            for object in 0..30 {
                let value = if rng.random_bool(0.2) { "down" } else { "up" };
                plan.push((format!("one/{object}"), value.to_owned()));
                let value = if rng.random_bool(0.8) { "down" } else { "up" };
                plan.push((format!("all/{object}"), value.to_owned()));
                if rng.random_bool(0.6) {
                    plan.push((format!("n/{object}"), "here".to_owned()));
                }
            }
        }
        for (key, value) in plan.iter() {
            reference.note(key, &agents[a], value);
        }
    }
    let started = Instant::now();
    // Each agent reports in order; the agents run at once.
    let runs = plans.into_iter().zip(&agents).map(|(plan, agent)| {
        let (http, writer) = (c.http.clone(), &c.writer);
        async move {
            futures::stream::iter(plan)
                .then(|(key, value)| {
                    let http = http.clone();
                    async move { report(&http, writer, &key, agent, &value).await }
                })
                .collect::<Vec<u16>>()
                .await
        }
    });
    let statuses: Vec<u16> = futures::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every report acknowledged"
    );
    println!(
        "{} reports in {:.1} s",
        statuses.len(),
        started.elapsed().as_secs_f64()
    );
    let mut expected = BTreeMap::new();
    for object in 0..200 {
        let key = format!("site/{object}");
        expected.insert(key.clone(), reference.majority(&key));
    }
    for object in 0..30 {
        let key = format!("one/{object}");
        expected.insert(
            key.clone(),
            Some(reference.at_least_one(&key, "down", "up")),
        );
        let key = format!("all/{object}");
        expected.insert(key.clone(), Some(reference.all(&key, "down", "up")));
        let key = format!("n/{object}");
        let count = reference.count(&key);
        expected.insert(key, (count != "0").then_some(count));
    }
    c.settles(&expected).await;

    // The explanation names every agent's last report; reports are never keys.
    let state = c.state("site/7").await;
    assert_eq!(state["reports"].as_array().unwrap().len(), 5, "{state}");
    assert_eq!(state["value"], expected["site/7"].clone().unwrap());
    let keys: BTreeSet<Vec<u8>> = dump(&c.http, &c.readers[0]).await.into_keys().collect();
    let wanted: BTreeSet<Vec<u8>> = expected
        .iter()
        .filter(|(_, v)| v.is_some())
        .map(|(k, _)| k.clone().into_bytes())
        .collect();
    assert_eq!(keys, wanted, "only the computed keys are keys");
}

#[tokio::test]
async fn a_hold_publishes_a_steady_change_once_after_its_time_and_a_shorter_flap_never() {
    let broker = Broker::start();
    let sink = random_topic("computed-hold-sink");
    create_topic(&broker.bootstrap_servers(), &sink, 1, &[]).await;
    let c = cluster(
        &broker,
        "computed-hold",
        &format!(
            "rules: [{{prefix: 'h/', reducer: latest, hold_seconds: 3, sink_topic: '{sink}'}}]\n"
        ),
        2,
    )
    .await;
    let reader = &c.readers[0];
    // A steady value: published once, not before its 3 s hold.
    assert_eq!(
        report(&c.http, &c.writer, "h/steady", "probe", "up").await,
        200
    );
    let reported = Instant::now();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        published(&c.http, reader, "h/steady").await,
        None,
        "not before the hold"
    );
    eventually("the steady value to publish", DEADLINE, || async {
        published(&c.http, reader, "h/steady")
            .await
            .filter(|v| v == "up")
    })
    .await;
    let after = reported.elapsed();
    println!("published {after:?} after the report");
    assert!(after >= Duration::from_secs(3), "{after:?}");

    // A flap shorter than the hold: down, then up again 1 s later. Nothing is published.
    assert_eq!(
        report(&c.http, &c.writer, "h/steady", "probe", "down").await,
        200
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        report(&c.http, &c.writer, "h/steady", "probe", "up").await,
        200
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        published(&c.http, reader, "h/steady").await.as_deref(),
        Some("up")
    );
    let sunk = records(broker.bootstrap_servers(), &sink).await;
    assert_eq!(sunk.len(), 1, "one change, one sink record: {sunk:?}");
    let change: Value = serde_json::from_slice(sunk[0].value.as_deref().unwrap()).unwrap();
    assert_eq!(change["key"], "h/steady");
    assert_eq!(change["value"], "up");
    assert_eq!(change["previous"], Value::Null);
    assert!(sunk[0].header("X-KV-Decided-At").is_some());
}

#[tokio::test]
async fn agents_that_stop_reporting_drop_out_after_their_report_lifetime() {
    let broker = Broker::start();
    let c = cluster(
        &broker,
        "computed-ttl",
        "rules: [{prefix: 't/', reducer: count, report_ttl_seconds: 2}]\n",
        2,
    )
    .await;
    let reader = &c.readers[1];
    for agent in ["a", "b", "c"] {
        assert_eq!(report(&c.http, &c.writer, "t/1", agent, "here").await, 200);
    }
    eventually("three agents counted", DEADLINE, || async {
        published(&c.http, reader, "t/1").await.filter(|v| v == "3")
    })
    .await;
    // Agent a keeps reporting; b and c fall silent and drop out.
    let keep_reporting = async {
        for _ in 0..10 {
            report(&c.http, &c.writer, "t/1", "a", "here").await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let seen_one = async {
        eventually("the silent agents to drop out", DEADLINE, || async {
            published(&c.http, reader, "t/1").await.filter(|v| v == "1")
        })
        .await
    };
    tokio::join!(keep_reporting, seen_one);
    eventually("the last agent to drop out", DEADLINE, || async {
        published(&c.http, reader, "t/1").await.filter(|v| v == "0")
    })
    .await;
}

#[tokio::test]
async fn an_owner_killed_with_a_hundred_holds_pending_has_each_fire_once_on_the_survivor() {
    let broker = Broker::start();
    let sink = random_topic("computed-kill-sink");
    create_topic(&broker.bootstrap_servers(), &sink, 1, &[]).await;
    let mut c = cluster(
        &broker,
        "computed-kill",
        &format!(
            "rules: [{{prefix: 'k/', reducer: latest, hold_seconds: 4, sink_topic: '{sink}'}}]\n"
        ),
        2,
    )
    .await;
    let keys: Vec<String> = (0..100).map(|i| format!("k/{i}")).collect();
    let reports = keys
        .iter()
        .map(|key| report(&c.http, &c.writer, key, "probe", "on"));
    let statuses = futures::future::join_all(reports).await;
    assert!(statuses.iter().all(|s| *s == 200));
    // Kill the candidate that owns partitions now, with every hold pending.
    let victim = if owned(&c.http, &c.readers[1]).await.is_empty() {
        0
    } else {
        1
    };
    c.readers[victim].kill();
    let killed = Instant::now();
    let survivor = &c.readers[1 - victim];
    let expected: BTreeMap<String, Option<String>> = keys
        .iter()
        .map(|k| (k.clone(), Some("on".to_owned())))
        .collect();
    eventually("every hold to fire on the survivor", DEADLINE, || async {
        for key in &keys {
            if published(&c.http, survivor, key).await.as_deref() != Some("on") {
                return None;
            }
        }
        Some(())
    })
    .await;
    println!("all 100 published {:?} after the kill", killed.elapsed());
    // The sink: every key once; a repeat after the failover is told apart by its position.
    eventually("every change on the sink", DEADLINE, || async {
        let sunk = records(broker.bootstrap_servers(), &sink).await;
        let mut decided: BTreeMap<String, BTreeSet<Vec<u8>>> = BTreeMap::new();
        for record in &sunk {
            let key = String::from_utf8(record.key.clone()).unwrap();
            decided
                .entry(key)
                .or_default()
                .insert(record.header("X-KV-Decided-At").unwrap().to_vec());
        }
        let complete = decided.len() == keys.len();
        assert!(
            decided.values().all(|positions| positions.len() == 1),
            "one publication took effect per key"
        );
        complete.then(|| {
            println!("sink: {} records for {} changes", sunk.len(), decided.len());
        })
    })
    .await;

    // What compaction keeps, replayed into a fresh replica, ends on the same values.
    let survivor_state = dump(&c.http, survivor).await;
    assert_eq!(survivor_state.len(), 100);
    let all = records(broker.bootstrap_servers(), &c.topic).await;
    let compacted = random_topic("computed-kill-compacted");
    create_topic(&broker.bootstrap_servers(), &compacted, PARTITIONS, OWNED).await;
    produce_as_they_are(&broker.bootstrap_servers(), &compacted, last_per_key(&all)).await;
    let fresh = Service::start(READER, &reader_env(&broker, &compacted, "computed-fresh"));
    wait_ready(&c.http, &fresh).await;
    assert_eq!(dump(&c.http, &fresh).await, survivor_state);
    let _ = expected;
}

#[tokio::test]
async fn reports_produced_by_kafka_python_count_like_reports_through_the_writer() {
    let broker = Broker::start();
    let c = cluster(
        &broker,
        "computed-python",
        "rules: [{prefix: 'py/', reducer: majority}]\n",
        1,
    )
    .await;
    let spec = serde_json::json!({
        "bootstrap": broker.bootstrap_servers(),
        "topic": c.topic,
        "reports": [
            ["py/1", "edge-a", "up"], ["py/1", "edge-b", "down"], ["py/1", "edge-c", "down"],
            ["py/2", "edge-a", "up"], ["py/2", "edge-b", "up"],
        ],
    });
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/e2e/kafka_python_reports.py"
    );
    let mut child = std::process::Command::new(kv_testkit::tools::seed_python())
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kafka-python");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(spec.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().expect("kafka-python ran");
    assert!(output.status.success(), "kafka-python failed");
    // One more agent through the writer: the same key, the same partition.
    assert_eq!(
        report(&c.http, &c.writer, "py/2", "edge-c", "down").await,
        200
    );
    let expected = BTreeMap::from([
        ("py/1".to_owned(), Some("down".to_owned())),
        ("py/2".to_owned(), Some("up".to_owned())),
    ]);
    c.settles(&expected).await;
    // The writer's report may be applied after the value already settled on two of three.
    eventually("the third report on py/2", DEADLINE, || async {
        let state = c.state("py/2").await;
        (state["reports"].as_array()?.len() == 3).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_owner_paused_past_its_failover_with_holds_due_publishes_nothing_twice_when_it_resumes()
{
    let broker = Broker::start();
    let sink = random_topic("computed-pause-sink");
    create_topic(&broker.bootstrap_servers(), &sink, 1, &[]).await;
    let mut c = cluster(
        &broker,
        "computed-pause",
        &format!(
            "rules: [{{prefix: 'p/', reducer: latest, hold_seconds: 3, sink_topic: '{sink}'}}]\n"
        ),
        2,
    )
    .await;
    let keys: Vec<String> = (0..60).map(|i| format!("p/{i}")).collect();
    let statuses = futures::future::join_all(
        keys.iter()
            .map(|key| report(&c.http, &c.writer, key, "probe", "on")),
    )
    .await;
    assert!(statuses.iter().all(|s| *s == 200));
    // Paused with its holds pending, it wakes long after they fell due: it still believes it
    // owns its partitions and acts on the same timers the other owner already fired.
    let victim = if owned(&c.http, &c.readers[1]).await.is_empty() {
        0
    } else {
        1
    };
    c.readers[victim].pause();
    let other = 1 - victim;
    eventually(
        "the other candidate to own everything",
        DEADLINE,
        || async {
            (owned(&c.http, &c.readers[other]).await.len() == PARTITIONS as usize).then_some(())
        },
    )
    .await;
    eventually("every hold to fire on the other", DEADLINE, || async {
        for key in &keys {
            if published(&c.http, &c.readers[other], key).await.as_deref() != Some("on") {
                return None;
            }
        }
        Some(())
    })
    .await;
    c.readers[victim].resume();
    let refs: Vec<&Service> = c.readers.iter().collect();
    owners_settled(&c.http, &refs, PARTITIONS).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Both replicas agree exactly, and the sink names one deciding position per key.
    let state = dump(&c.http, &c.readers[other]).await;
    assert_eq!(state.len(), keys.len());
    eventually("the resumed replica to agree", DEADLINE, || async {
        (dump(&c.http, &c.readers[victim]).await == state).then_some(())
    })
    .await;
    let sunk = records(broker.bootstrap_servers(), &sink).await;
    let mut decided: BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>> = BTreeMap::new();
    for record in &sunk {
        let position = record.header("X-KV-Decided-At").expect("position").to_vec();
        decided
            .entry(record.key.clone())
            .or_default()
            .insert(position);
    }
    assert_eq!(decided.len(), keys.len(), "every change on the sink");
    assert!(
        decided.values().all(|positions| positions.len() == 1),
        "one publication took effect per key: {decided:?}"
    );
    println!("sink: {} records for {} changes", sunk.len(), decided.len());
}

#[tokio::test]
async fn a_snapshot_bootstrap_carries_reports_candidates_and_timers() {
    let broker = Broker::start();
    let rules = "rules:\n\
                 - {prefix: 'c/', reducer: majority}\n\
                 - {prefix: 'b/', reducer: latest, hold_seconds: 600}\n";
    let c = cluster(&broker, "computed-snap", rules, 1).await;
    for (agent, value) in [("a", "up"), ("b", "up"), ("c", "down")] {
        assert_eq!(report(&c.http, &c.writer, "c/1", agent, value).await, 200);
    }
    assert_eq!(report(&c.http, &c.writer, "b/1", "a", "on").await, 200);
    let peer = &c.readers[0];
    eventually("the majority published", DEADLINE, || async {
        published(&c.http, peer, "c/1").await.filter(|v| v == "up")
    })
    .await;
    let pending = eventually("the held candidate", DEADLINE, || async {
        let state = c.state("b/1").await;
        state["candidate"].is_string().then_some(state)
    })
    .await;

    // A new replica (not a candidate) bootstrapped from the peer's snapshot.
    let mut env = reader_env(&broker, &c.topic, "computed-snap-new");
    env.push(("KV_API_BOOTSTRAP_PEERS", peer.base_url.clone()));
    env.push(("KV_API_STATE_RULES", c._rules.path().display().to_string()));
    let fresh = Service::start(READER, &env);
    wait_ready(&c.http, &fresh).await;
    let metrics = fresh.metrics(&c.http).await;
    assert_eq!(
        kv_testkit::metric(&metrics, "kv_reader_bootstrapped_from_snapshot", &[]),
        Some(1.0),
        "{}",
        fresh.output()
    );
    for key in ["c/1", "b/1"] {
        let theirs: Value = c
            .http
            .get(fresh.url(&format!("/v1/state/{key}")))
            .send()
            .await
            .expect("state")
            .json()
            .await
            .expect("state json");
        let ours = if key == "b/1" {
            pending.clone()
        } else {
            c.state(key).await
        };
        assert_eq!(theirs["reports"], ours["reports"], "{key}");
        assert_eq!(theirs["candidate"], ours["candidate"], "{key}");
        assert_eq!(theirs["publish_at"], ours["publish_at"], "{key}");
        assert_eq!(theirs["value"], ours["value"], "{key}");
    }
}
