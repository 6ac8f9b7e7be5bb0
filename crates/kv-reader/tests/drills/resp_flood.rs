//! Issue 33's RESP flood figure (docs/reliability.md, "A flood of connections on the RESP
//! port"): a thousand connections that never authenticate and a hundred that send a request a
//! byte a second, all reconnecting as soon as they are closed, against a port of 200 slots
//! with auth on; meanwhile authenticated clients read.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_testkit::resp::{
    ask, auth_then_get, replies, resp_address, resp_env_with_auth, until_closed,
};
use kv_testkit::DEADLINE;
use kv_testkit::{eventually, metric, workspace_binary, Broker, OidcProvider, Service};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::READER;

const SLOTS: usize = 200;
const IDLE: usize = 1000;
const SLOW: usize = 100;
const FLOOD: Duration = Duration::from_secs(20);
/// A closed flooder connects again after this long: a flood, not a busy loop on a shared box.
const RECONNECT: Duration = Duration::from_millis(100);
const READERS: usize = 8;

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at].as_secs_f64() * 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a drill: make drills runs it"]
async fn drill_a_flood_of_idle_and_slow_connections_leaves_authenticated_clients_served() {
    let broker = Broker::start();
    let topic = broker.create_topic("drill-resp-flood", 1).await;
    let idp = OidcProvider::start("key-a");
    let mut env = resp_env_with_auth(&broker, &topic, &idp);
    env.push(("KV_API_RESP_MAX_CONNECTIONS", SLOTS.to_string()));
    let writer = Service::start(workspace_binary("kv-writer"), &env);
    let reader = Service::start(READER, &env);
    let address = resp_address(&reader);
    let token = idp.token("kv-reader", "kv:read").await;
    let http = reqwest::Client::new();
    let put = http
        .put(writer.url("/v1/kv/k"))
        .bearer_auth(idp.token("kv-full", "kv:read kv:write").await)
        .body("v")
        .send()
        .await
        .expect("write");
    assert_eq!(put.status(), 200);
    let request = auth_then_get(&token, "k");
    eventually("the value on the RESP port", DEADLINE, || {
        let (address, request) = (address.clone(), request.clone());
        async move {
            let mut probe = TcpStream::connect(&address).await.ok()?;
            let heard = ask(
                &mut probe,
                &request,
                |b| replies(b, 2),
                Duration::from_secs(5),
            )
            .await;
            (heard.text() == "+OK\r\n$1\r\nv\r\n").then_some(())
        }
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..READERS {
        let mut client = TcpStream::connect(&address).await.expect("connect");
        let heard = ask(
            &mut client,
            &request,
            |b| replies(b, 2),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(heard.text(), "+OK\r\n$1\r\nv\r\n");
        clients.push(client);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let flood_connections = Arc::new(AtomicU64::new(0));
    let mut flood = Vec::new();
    for i in 0..IDLE + SLOW {
        let (address, stop, count) = (address.clone(), stop.clone(), flood_connections.clone());
        flood.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(mut stream) = TcpStream::connect(&address).await {
                    count.fetch_add(1, Ordering::Relaxed);
                    if i < IDLE {
                        until_closed(&mut stream, FLOOD * 2).await;
                    } else {
                        for byte in b"*2\r\n$3\r\nGET\r\n$1\r\nk".repeat(10) {
                            if stream.write_all(&[byte]).await.is_err() {
                                break;
                            }
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
                tokio::time::sleep(RECONNECT).await;
            }
        }));
    }

    let started = Instant::now();
    let mut readers = Vec::new();
    for mut client in clients {
        readers.push(tokio::spawn(async move {
            let (mut latencies, mut failed) = (Vec::new(), 0u64);
            while started.elapsed() < FLOOD {
                let heard = ask(
                    &mut client,
                    b"GET k\r\n",
                    |b| replies(b, 1),
                    Duration::from_secs(5),
                )
                .await;
                if heard.text() == "$1\r\nv\r\n" {
                    latencies.push(heard.elapsed);
                } else {
                    failed += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (latencies, failed)
        }));
    }
    let (address_fresh, request_fresh) = (address.clone(), request.clone());
    let fresh = tokio::spawn(async move {
        let (mut latencies, mut failed) = (Vec::new(), Vec::new());
        while started.elapsed() < FLOOD {
            let attempt = Instant::now();
            let answer = match TcpStream::connect(&address_fresh).await {
                Ok(mut client) => ask(
                    &mut client,
                    &request_fresh,
                    |b| replies(b, 2),
                    Duration::from_secs(5),
                )
                .await
                .text(),
                Err(error) => error.to_string(),
            };
            if answer == "+OK\r\n$1\r\nv\r\n" {
                latencies.push(attempt.elapsed());
            } else {
                failed.push(answer);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (latencies, failed)
    });
    let (mut held, mut held_failed) = (Vec::new(), 0);
    for reader in readers {
        let (latencies, failed) = reader.await.expect("a reading client");
        held.extend(latencies);
        held_failed += failed;
    }
    let (mut fresh_ok, fresh_failed) = fresh.await.expect("the fresh client");
    stop.store(true, Ordering::Relaxed);
    for task in &flood {
        task.abort();
    }
    let metrics = reader.metrics(&http).await;
    let closed = |reason| {
        metric(
            &metrics,
            "kv_reader_resp_unauthenticated_closed_total",
            &[("reason", reason)],
        )
        .unwrap_or(0.0)
    };
    held.sort();
    fresh_ok.sort();
    let fresh_total = fresh_ok.len() + fresh_failed.len();
    println!(
        "drill RESP flood ({IDLE} idle + {SLOW} byte-a-second connections reconnecting after \
         {} ms, {SLOTS} slots, auth on, {} s): flood connections {}, closed unauthenticated \
         {} evicted + {} timed out; {READERS} authenticated clients: GETs {} failed {held_failed}, \
         p50 {:.1} ms p99 {:.1} ms; fresh connect+AUTH+GET: {} of {fresh_total} served, p50 {:.1} \
         ms p99 {:.1} ms (goal: every authenticated GET served; fresh clients at least 75 %)",
        RECONNECT.as_millis(),
        FLOOD.as_secs(),
        flood_connections.load(Ordering::Relaxed),
        closed("evicted"),
        closed("auth_timeout"),
        held.len() + held_failed as usize,
        percentile(&held, 0.5),
        percentile(&held, 0.99),
        fresh_ok.len(),
        percentile(&fresh_ok, 0.5),
        percentile(&fresh_ok, 0.99),
    );
    assert_eq!(held_failed, 0);
    assert!(
        fresh_failed.len() * 4 <= fresh_total,
        "fresh clients refused: {:?}",
        &fresh_failed[..fresh_failed.len().min(5)]
    );
}
