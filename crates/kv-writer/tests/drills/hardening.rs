//! Issue 15's figures (docs/reliability.md, "Hardening"): what an anonymous caller or a forged
//! token can make the services do. Each drill prints one `drill …` line.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures::stream::{self, StreamExt};
use kv_testkit::{metric, service_env, Broker, OidcProvider, Service};
use reqwest::Method;

use crate::{reader, WRITER};

/// Series of `kv_http_requests_total` on a service's `/metrics`.
async fn request_series(http: &reqwest::Client, service: &Service) -> usize {
    service
        .metrics(http)
        .await
        .lines()
        .filter(|line| line.starts_with("kv_http_requests_total{"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a drill: make drills runs it"]
async fn drill_ten_thousand_made_up_methods_add_no_label_set_to_either_service() {
    const REQUESTS: usize = 10_000;
    let http = reqwest::Client::new();
    let broker = Broker::start();
    let topic = broker.create_topic("drill-methods", 1).await;
    let env = service_env(&broker, &topic);
    let writer = Service::start(WRITER, &env);
    let reader = Service::start(reader(), &env);
    let mut added = Vec::new();
    for service in [&writer, &reader] {
        // One made-up method first, so the `other` series exists before the count.
        let first = Method::from_bytes(b"WARMUP").expect("method");
        http.request(first, service.url("/healthz"))
            .send()
            .await
            .expect("warm-up");
        // A scrape is itself counted: the first one adds the `/metrics` series.
        request_series(&http, service).await;
        let before = request_series(&http, service).await;
        let answered = stream::iter(0..REQUESTS)
            .map(|i| {
                let method = Method::from_bytes(format!("M{i}").as_bytes()).expect("method");
                http.request(method, service.url("/healthz")).send()
            })
            .buffer_unordered(32)
            .filter(|response| std::future::ready(response.is_ok()))
            .count()
            .await;
        assert_eq!(answered, REQUESTS, "every request is answered");
        let after = request_series(&http, service).await;
        added.push(after.saturating_sub(before));
    }
    println!(
        "drill made-up HTTP methods: {REQUESTS} requests to each service, label sets added: \
         writer {}, reader {} (goal 0)",
        added[0], added[1]
    );
    assert_eq!(added, [0, 0]);
}

/// A real token with its `kid` replaced: well-formed, so it reaches the key lookup.
fn with_kid(token: &str, kid: &str) -> String {
    let mut parts = token.splitn(2, '.');
    let header = parts.next().expect("header");
    let rest = parts.next().expect("payload and signature");
    let mut header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("base64url"))
            .expect("JSON header");
    header["kid"] = serde_json::json!(kid);
    format!("{}.{rest}", URL_SAFE_NO_PAD.encode(header.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a drill: make drills runs it"]
async fn drill_a_flood_of_forged_kids_costs_the_provider_a_bounded_number_of_fetches() {
    const FORGED: usize = 5_000;
    let http = reqwest::Client::new();
    let broker = Broker::start();
    let topic = broker.create_topic("drill-kids", 1).await;
    let idp = OidcProvider::start("drill-kid");
    let mut env = service_env(&broker, &topic);
    env.push(("KV_API_DISABLE_API_AUTH", "false".to_owned()));
    env.extend(idp.service_env());
    let writer = Service::start(WRITER, &env);
    let reader = Service::start(reader(), &env);
    let real = idp.token("kv-full", "kv:read kv:write kv:delete").await;
    let fetches = |text: String| metric(&text, "kv_auth_jwks_fetches_total", &[]).unwrap_or(0.0);
    let before = [
        fetches(writer.metrics(&http).await),
        fetches(reader.metrics(&http).await),
    ];
    let started = Instant::now();
    let forged: Vec<(Method, String, String)> = (0..FORGED)
        .map(|i| {
            let (method, url) = if i % 2 == 0 {
                (Method::PUT, writer.url("/v1/kv/k"))
            } else {
                (Method::GET, reader.url("/v1/kv/k"))
            };
            (method, url, with_kid(&real, &format!("made-up-{i}")))
        })
        .collect();
    let refused = stream::iter(&forged)
        .map(|(method, url, token)| {
            http.request(method.clone(), url)
                .bearer_auth(token)
                .body("x")
                .timeout(Duration::from_secs(10))
                .send()
        })
        .buffer_unordered(64)
        .filter(|response| std::future::ready(response.as_ref().is_ok_and(|r| r.status() == 401)))
        .count()
        .await;
    let took = started.elapsed();
    let after = [
        fetches(writer.metrics(&http).await),
        fetches(reader.metrics(&http).await),
    ];
    let added: Vec<f64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    println!(
        "drill forged-kid flood: {FORGED} tokens with made-up kids in {:.1} s, refused with 401 \
         {refused}, provider fetches added: writer \
         {}, reader {} (goal at most 1 per 10 s each)",
        took.as_secs_f64(),
        added[0],
        added[1]
    );
    let budget = 1.0 + (took.as_secs_f64() / 10.0).ceil();
    assert!(
        added.iter().all(|a| *a <= budget),
        "{added:?} fetches over a budget of {budget}"
    );
    assert_eq!(refused, FORGED, "every forged token is refused");
}
