//! Scaffolding for conditional writes: clients incrementing counters through kv-writer with
//! `If-Match`, the tally of what they were answered, and the owners the readers report.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::{eventually, Service, DEADLINE};

/// The partitions a reader acts on as owner, from `/healthz/cluster`.
pub async fn owned(http: &reqwest::Client, reader: &Service) -> Vec<i32> {
    let Ok(response) = http.get(reader.url("/healthz/cluster")).send().await else {
        return Vec::new();
    };
    let view: Value = response.json().await.unwrap_or_default();
    view["owner"]["partitions"]
        .as_object()
        .map(|partitions| partitions.keys().filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

/// Waits until `readers` together own every partition, each exactly once, and each reader owns
/// some while there are partitions enough.
pub async fn owners_settled(
    http: &reqwest::Client,
    readers: &[&Service],
    partitions: i32,
) -> Vec<Vec<i32>> {
    eventually("every partition to have one owner", DEADLINE, || async {
        let mut each = Vec::new();
        for reader in readers {
            each.push(owned(http, reader).await);
        }
        let mut all: Vec<i32> = each.iter().flatten().copied().collect();
        all.sort_unstable();
        let everyone = readers.len() > partitions as usize || each.iter().all(|o| !o.is_empty());
        (all == (0..partitions).collect::<Vec<_>>() && everyone).then_some(each)
    })
    .await
}

/// What a run of increments saw.
#[derive(Debug, Default)]
pub struct Tally {
    pub applied: AtomicU64,
    pub refused: AtomicU64,
    pub unknown: AtomicU64,
    /// Any other status: each is a failure of the test.
    pub unexpected: Mutex<Vec<String>>,
}

/// One client's increments of `key`: read the value and its ETag from any reader that answers,
/// write value + 1 with `If-Match` (or `If-None-Match: *` while absent) and an idempotency key
/// of its own; on `412` read again, on `503` send the same request again.
async fn increment(
    http: reqwest::Client,
    writer: String,
    readers: Vec<String>,
    key: String,
    client: usize,
    times: usize,
    tally: Arc<Tally>,
) {
    for n in 0..times {
        let mut attempt = 0;
        // After a 412, the next read waits for the record that was refused: it then sees at
        // least the version that refused it.
        let mut after: Option<String> = None;
        'read: loop {
            let mut seen = None;
            for reader in &readers {
                let mut request = http.get(format!("{reader}/v1/kv/{key}"));
                if let Some(token) = &after {
                    request = request.header("X-Consistency-Token", token);
                }
                let Ok(response) = request.send().await else {
                    continue;
                };
                match response.status().as_u16() {
                    200 => {
                        let etag = response.headers()["etag"]
                            .to_str()
                            .expect("etag")
                            .to_owned();
                        let value: u64 = response.text().await.expect("body").parse().expect("n");
                        seen = Some(Some((etag, value)));
                    }
                    404 => seen = Some(None),
                    _ => continue,
                }
                break;
            }
            let Some(seen) = seen else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            // One key per request: a retry of the same request (no answer, or 503) reuses it; a
            // new attempt after a 412 is another request, with another key.
            attempt += 1;
            let idempotency_key = format!("client-{client}-increment-{n}-attempt-{attempt}");
            let (condition, next) = match &seen {
                Some((etag, value)) => (("If-Match", etag.clone()), value + 1),
                None => (("If-None-Match", "*".to_owned()), 1),
            };
            loop {
                let answer = http
                    .put(format!("{writer}/v1/kv/{key}"))
                    .header(condition.0, &condition.1)
                    .header("Idempotency-Key", &idempotency_key)
                    .body(next.to_string())
                    .send()
                    .await;
                let status = match answer {
                    Ok(answer) => {
                        after = answer
                            .headers()
                            .get("x-consistency-token")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        answer.status().as_u16()
                    }
                    Err(_) => 0,
                };
                match status {
                    200 => {
                        tally.applied.fetch_add(1, Ordering::Relaxed);
                        break 'read;
                    }
                    412 => {
                        tally.refused.fetch_add(1, Ordering::Relaxed);
                        continue 'read;
                    }
                    503 | 0 => {
                        // The outcome is unknown: the same request, same idempotency key.
                        tally.unknown.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    other => {
                        tally
                            .unexpected
                            .lock()
                            .expect("tally")
                            .push(format!("{other} for {key} from client {client}"));
                        break 'read;
                    }
                }
            }
        }
    }
}

/// `clients` × `times` increments of `key`, concurrently.
pub fn spawn_increments(
    writer: &Service,
    readers: &[&Service],
    key: &str,
    clients: usize,
    times: usize,
    tally: &Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let readers: Vec<String> = readers.iter().map(|r| r.base_url.clone()).collect();
    (0..clients)
        .map(|client| {
            tokio::spawn(increment(
                http.clone(),
                writer.base_url.clone(),
                readers.clone(),
                key.to_owned(),
                client,
                times,
                tally.clone(),
            ))
        })
        .collect()
}

impl Tally {
    /// Fails unless exactly `expected` increments were answered `200` and nothing unexpected
    /// was answered; prints the counts.
    pub fn check(&self, expected: u64, what: &str) {
        let unexpected = self.unexpected.lock().expect("tally");
        assert!(
            unexpected.is_empty(),
            "{what}: unexpected answers {unexpected:?}"
        );
        assert_eq!(
            self.applied.load(Ordering::Relaxed),
            expected,
            "{what}: every 200 is exactly one increment"
        );
        println!(
            "{what}: {} increments applied, {} refused with 412, {} answered 503 and retried",
            self.applied.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            self.unknown.load(Ordering::Relaxed)
        );
    }
}
