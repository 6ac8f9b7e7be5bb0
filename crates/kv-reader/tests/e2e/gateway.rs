//! The gateway (nginx with deploy/helm/kafka-kv/files/gateway-routes.conf, as compose and the
//! chart run it) in front of the real kv-writer and kv-reader on the real broker: the original
//! service's flow, docs/usage.http, replayed through one address, every request reaching the
//! service that answers it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kv_testkit::gateway::Gateway;
use kv_testkit::{eventually, service_env, Broker, Service, DEADLINE};

use crate::{writer, READER};

/// One request of docs/usage.http.
#[derive(Debug)]
struct Request {
    /// `# @name`: later requests use its answer.
    name: Option<String>,
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: String,
}

/// The requests of a file in the REST Client format: blocks between `###` lines, comments and
/// `@variable = …` lines skipped, a request line, headers, a blank line, the body.
fn requests(text: &str) -> Vec<Request> {
    let mut all = Vec::new();
    for block in text.split("\n###") {
        let mut name = None;
        let mut lines = block.lines().skip(1).peekable();
        let request_line = loop {
            let Some(line) = lines.next() else { break None };
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("# @name ") {
                name = Some(rest.trim().to_owned());
            } else if line.is_empty() || line.starts_with('#') || line.starts_with('@') {
                continue;
            } else {
                break Some(line.to_owned());
            }
        };
        let Some(request_line) = request_line else {
            continue;
        };
        let (method, target) = request_line.split_once(' ').expect("METHOD target");
        let mut headers = Vec::new();
        for line in lines.by_ref() {
            let Some((header, value)) = line.split_once(':') else {
                break;
            };
            headers.push((header.trim().to_owned(), value.trim().to_owned()));
        }
        let body: Vec<&str> = lines.collect();
        all.push(Request {
            name,
            method: method.to_owned(),
            target: target.to_owned(),
            headers,
            body: body.join("\n").trim().to_owned(),
        });
    }
    all
}

/// `{{…}}` of the file: the two services are the gateway, the token is unused (auth is off),
/// `{{put.response.body.consistency_token}}` is a field of an earlier named answer.
fn substitute(text: &str, base: &str, answers: &HashMap<String, serde_json::Value>) -> String {
    let mut text = text
        .replace("{{writer}}", base)
        .replace("{{reader}}", base)
        .replace("{{token}}", "unused-auth-is-off");
    while let Some(start) = text.find("{{") {
        let end = start + text[start..].find("}}").expect("a closed {{…}}");
        let reference = &text[start + 2..end];
        let mut parts = reference.split('.');
        let (name, field) = (parts.next().unwrap_or_default(), parts.next_back());
        let value = answers
            .get(name)
            .and_then(|answer| answer.get(field.unwrap_or_default()))
            .and_then(|value| match value {
                serde_json::Value::String(text) => Some(text.clone()),
                serde_json::Value::Number(number) => Some(number.to_string()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no earlier answer has {reference}"));
        text.replace_range(start..end + 2, &value);
    }
    text
}

/// What the gateway must answer, by method and path: `(status, served by)`, where "writer" and
/// "reader" are told by the headers only that service sets, and "gateway" is its own 404.
fn expected(method: &str, path: &str) -> (u16, &'static str) {
    match (method, path) {
        // Deleted by the DELETE before it in the file.
        ("GET", "/v1/kv/users%2Fada") => (404, "reader"),
        (_, "/metrics" | "/admin/v1/snapshot" | "/openapi.yaml" | "/openapi.json") => {
            (404, "gateway")
        }
        // The writer's question to a reader: between the services, never through the gateway.
        (_, p) if p.starts_with("/v1/outcomes/") || p == "/v1/outcomes:batchGet" => {
            (404, "gateway")
        }
        ("PUT" | "DELETE", _) | (_, "/store" | "/store/b64" | "/remove") => (200, "writer"),
        (_, "/v1/kv:batch") => (200, "writer"),
        (_, p)
            if p.starts_with("/v1/kv")
                || p.starts_with("/v1/state/")
                || p.starts_with("/retrieve") =>
        {
            (200, "reader")
        }
        _ => (200, "any"),
    }
}

#[tokio::test]
async fn the_originals_usage_flow_replays_through_the_gateway_to_the_right_service() {
    let broker = Broker::start();
    let topic = broker.create_topic("gateway", 3).await;
    // The rule usage.http's report and state requests name.
    let rules = kv_testkit::computed::rules_file("rules: [{prefix: 'sites/', reducer: majority}]");
    let mut env = service_env(&broker, &topic);
    env.push(("KV_API_STATE_RULES", rules.path().display().to_string()));
    let writer = Service::start(writer(), &env);
    let reader = Service::start(READER, &env);
    let gateway = Gateway::start(&writer, &reader);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let file = include_str!("../../../../docs/usage.http");
    let mut answers: HashMap<String, serde_json::Value> = HashMap::new();
    let mut replayed = 0;
    let mut originals: HashMap<String, String> = HashMap::new();
    for request in requests(file) {
        if request.target.contains("{{keycloak}}") {
            continue; // the token request: auth is off here
        }
        let url = substitute(&request.target, &gateway.base_url, &answers);
        let path = url[gateway.base_url.len()..]
            .split('?')
            .next()
            .unwrap_or_default()
            .to_owned();
        let (status, served_by) = expected(&request.method, &path);
        let what = format!("{} {}", request.method, url);
        let send = || {
            let mut builder = http.request(request.method.parse().expect("method"), &url);
            for (header, value) in &request.headers {
                builder = builder.header(header, substitute(value, &gateway.base_url, &answers));
            }
            if !request.body.is_empty() {
                builder = builder.body(request.body.clone());
            }
            builder.send()
        };
        if path == "/v1/kv:watch" {
            // An endless stream: its head, then it is dropped.
            let answer = send().await.expect(&what);
            assert_eq!(answer.status(), 200, "{what}");
            assert_eq!(
                answer.headers()["content-type"],
                "text/event-stream",
                "{what}"
            );
            replayed += 1;
            continue;
        }
        // A read may come before the replica applied the writes above it: asked again until
        // it answers as expected.
        let deadline = Instant::now() + DEADLINE;
        let (headers, body) = loop {
            let answer = send()
                .await
                .unwrap_or_else(|error| panic!("{what}: {error}"));
            let got = answer.status().as_u16();
            let headers = answer.headers().clone();
            let body = answer.bytes().await.expect("body");
            if got == status {
                break (headers, body);
            }
            assert!(
                Instant::now() < deadline,
                "{what}: answered {got}, expected {status}: {}",
                String::from_utf8_lossy(&body)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let text = String::from_utf8_lossy(&body);
        let from_service = headers.contains_key("x-correlation-id");
        let from_reader = headers.contains_key("x-replica-lag");
        let from_writer = !from_reader
            && (headers.contains_key("x-consistency-token") || text.contains("consistency_token"));
        match served_by {
            "writer" => assert!(from_writer, "{what} was not answered by kv-writer: {text}"),
            "reader" => assert!(from_reader, "{what} was not answered by kv-reader: {text}"),
            "gateway" => {
                assert!(!from_service, "{what} reached a service: {text}");
                assert!(text.contains(r#""code":"not_found""#), "{what}: {text}");
            }
            _ => assert!(from_service, "{what}: {text}"),
        }
        if let Some(name) = &request.name {
            let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            answers.insert(name.clone(), json);
        }
        originals.insert(path, text.into_owned());
        replayed += 1;
    }
    // The original's routes answered as the original did, through the one address.
    assert_eq!(originals["/store"], r#""Stored""#);
    assert_eq!(originals["/remove"], r#""Removed""#);
    // The reads above may have come before the replica applied the last write of their key.
    for (path, key, value) in [
        ("/retrieve", "greeting", r#""hello, world""#),
        ("/retrieve/b64", "AP8=", r#""aGVsbG8=""#),
    ] {
        assert!(
            originals.contains_key(path),
            "docs/usage.http has no {path}"
        );
        eventually(
            &format!("{path} {key} through the gateway"),
            DEADLINE,
            || {
                let request = http
                    .post(gateway.url(path))
                    .header("Content-Type", "application/json")
                    .body(format!(r#"{{"key":"{key}"}}"#));
                async move {
                    let text = request.send().await.ok()?.text().await.ok()?;
                    (text == value).then_some(())
                }
            },
        )
        .await;
    }
    // Each service's own documents and health, by name.
    for (path, service) in [
        ("/kv-writer/openapi.yaml", "kv-writer"),
        ("/kv-reader/openapi.yaml", "kv-reader"),
        ("/kv-writer/healthz/ready", ""),
        ("/kv-reader/healthz/cluster", ""),
    ] {
        let answer = http.get(gateway.url(path)).send().await.expect(path);
        assert_eq!(answer.status(), 200, "{path}");
        let text = answer.text().await.expect("body");
        assert!(text.contains(service), "{path}: {text}");
    }
    assert!(
        replayed >= 30,
        "only {replayed} requests of docs/usage.http replayed"
    );
}
