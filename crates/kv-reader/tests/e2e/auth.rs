//! OpenID Connect on both services, end to end: a real provider process issuing tokens over
//! HTTP, the real binaries, the real broker.

use crate::{writer, READER};
use std::time::Duration;

use kv_testkit::{eventually, free_port, run_to_exit, Broker, OidcProvider, Service, DEADLINE};
use reqwest::StatusCode;

fn env_with_auth(broker: &Broker, topic: &str, idp: &OidcProvider) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_servers()),
        ("KV_API_KAFKA_KEY_VALUE_TOPIC", topic.to_owned()),
        ("KAFKA_GROUP_ID", format!("{topic}-reader")),
        ("KV_API_AUTH_READ", "kv:read".to_owned()),
        ("KV_API_AUTH_WRITE", "kv:write".to_owned()),
        ("KV_API_AUTH_DELETE", "kv:delete".to_owned()),
    ];
    env.extend(idp.service_env());
    env
}

fn challenge(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn both_services_require_tokens_with_the_right_scopes_and_follow_a_key_rotation() {
    let broker = Broker::start();
    let topic = broker.create_topic("auth", 1).await;
    let mut idp = OidcProvider::start("key-a");
    let env = env_with_auth(&broker, &topic, &idp);
    let writer = Service::start(writer(), &env);
    let reader = Service::start(READER, &env);
    let http = reqwest::Client::new();
    let full = idp.token("kv-full", "kv:read kv:write").await;
    let read_only = idp.token("kv-reader", "kv:read").await;

    let anonymous = http
        .put(writer.url("/v1/kv/k"))
        .body("v")
        .send()
        .await
        .expect("put");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert!(
        challenge(&anonymous).starts_with("Bearer"),
        "{}",
        challenge(&anonymous)
    );

    let garbage = http
        .put(writer.url("/v1/kv/k"))
        .bearer_auth("not.a.token")
        .body("v")
        .send()
        .await
        .expect("put");
    assert_eq!(garbage.status(), StatusCode::UNAUTHORIZED);
    assert!(challenge(&garbage).contains("invalid_token"));

    let lacking = http
        .put(writer.url("/v1/kv/k"))
        .bearer_auth(&read_only)
        .body("v")
        .send()
        .await
        .expect("put");
    assert_eq!(lacking.status(), StatusCode::FORBIDDEN);
    assert!(challenge(&lacking).contains("insufficient_scope"));

    let written = http
        .put(writer.url("/v1/kv/k"))
        .bearer_auth(&full)
        .body("v")
        .send()
        .await
        .expect("put");
    assert_eq!(written.status(), StatusCode::OK, "{}", writer.output());

    let no_delete_scope = http
        .delete(writer.url("/v1/kv/k"))
        .bearer_auth(&full)
        .send()
        .await
        .expect("delete");
    assert_eq!(no_delete_scope.status(), StatusCode::FORBIDDEN);

    let anonymous_read = http.get(reader.url("/v1/kv/k")).send().await.expect("get");
    assert_eq!(anonymous_read.status(), StatusCode::UNAUTHORIZED);
    let value = eventually(
        "the value through the reader",
        Duration::from_secs(20),
        || {
            let request = http
                .get(reader.url("/v1/kv/k"))
                .bearer_auth(&read_only)
                .send();
            async move {
                let response = request.await.ok()?;
                (response.status() == StatusCode::OK).then_some(response)
            }
        },
    )
    .await;
    assert_eq!(value.text().await.expect("body"), "v");

    for service in [&writer, &reader] {
        let health = http
            .get(service.url("/healthz/ready"))
            .send()
            .await
            .expect("health");
        assert_ne!(
            health.status(),
            StatusCode::UNAUTHORIZED,
            "health stays anonymous"
        );
    }

    idp.rotate("key-b", None);
    let rotated = idp.token("kv-full", "kv:read kv:write kv:delete").await;
    let read = http
        .get(reader.url("/v1/kv/k"))
        .bearer_auth(&rotated)
        .send()
        .await
        .expect("get");
    assert_eq!(read.status(), StatusCode::OK, "{}", reader.output());
    let deleted = http
        .delete(writer.url("/v1/kv/k"))
        .bearer_auth(&rotated)
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), StatusCode::OK, "{}", writer.output());
    let retired = http
        .get(reader.url("/v1/kv/k"))
        .bearer_auth(&read_only)
        .send()
        .await
        .expect("get");
    assert_eq!(
        retired.status(),
        StatusCode::UNAUTHORIZED,
        "the retired key must not verify"
    );
}

/// `token` with its header swapped for one naming a key the provider never had: the service
/// must fetch the provider's keys again before it can refuse it, so its check is still waiting
/// when anything else about the request is already known to be wrong.
fn under_an_unknown_kid(token: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    let (_, rest) = token.split_once('.').expect("a JWT");
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT","kid":"never-issued"}"#);
    format!("{header}.{rest}")
}

#[tokio::test]
async fn a_bad_token_is_refused_with_401_before_the_body_is_looked_at() {
    let broker = Broker::start();
    let topic = broker.create_topic("auth-first", 1).await;
    let idp = OidcProvider::start("key-a");
    let env = env_with_auth(&broker, &topic, &idp);
    let writer = Service::start(writer(), &env);
    let reader = Service::start(READER, &env);
    let http = reqwest::Client::new();
    let forged = under_an_unknown_kid(&idp.token("kv-full", "kv:read kv:write").await);

    let routes = [
        (&writer, "/store"),
        (&writer, "/v1/kv:batch"),
        (&reader, "/retrieve"),
        (&reader, "/v1/kv:batchGet"),
    ];
    for (service, path) in routes {
        // Neither JSON nor declared as JSON: refused with 415 once a token is accepted.
        let response = http
            .post(service.url(path))
            .bearer_auth(&forged)
            .header("content-type", "text/plain")
            .body("not json")
            .send()
            .await
            .expect("post");
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "POST {path}: {body}");
    }
    // A query no route accepts: 400 once a token is accepted, 401 before.
    for query in ["limit=lots", "unknown=1", "consistency_token=garbage"] {
        for token in [None, Some(forged.as_str())] {
            let mut request = http.get(reader.url(&format!("/v1/kv?{query}")));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.expect("list");
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "GET /v1/kv?{query} with {token:?}"
            );
        }
    }
}

#[test]
fn a_service_with_auth_on_refuses_to_start_when_the_provider_cannot_be_reached() {
    let unreachable = format!("http://127.0.0.1:{}/realms/none", free_port());
    for binary in [writer(), READER] {
        let (code, output) = run_to_exit(
            binary,
            &[
                ("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9".to_owned()),
                ("KV_API_KAFKA_KEY_VALUE_TOPIC", "t".to_owned()),
                ("KAFKA_GROUP_ID", "g".to_owned()),
                ("KV_API_LISTEN", "127.0.0.1:0".to_owned()),
                ("OIDC_IDP_ADDRESS_FOR_SERVER", unreachable.clone()),
                ("OIDC_AUDIENCE", "kv".to_owned()),
                ("OIDC_REQUIRE_HTTPS_METADATA", "false".to_owned()),
                ("KV_API_AUTH_DISCOVERY_TIMEOUT_SECONDS", "1".to_owned()),
            ],
            Duration::from_secs(30),
        );
        assert!(
            matches!(code, Some(c) if c != 0),
            "{binary} exited with {code:?}: {output}"
        );
        assert!(
            output.contains(&unreachable),
            "{binary} must name the provider: {output}"
        );
    }
}

#[test]
fn a_service_with_auth_on_and_no_provider_configured_names_the_missing_variable() {
    for binary in [writer(), READER] {
        let (code, output) = run_to_exit(
            binary,
            &[
                ("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9".to_owned()),
                ("KV_API_KAFKA_KEY_VALUE_TOPIC", "t".to_owned()),
                ("KAFKA_GROUP_ID", "g".to_owned()),
            ],
            Duration::from_secs(30),
        );
        assert_eq!(code, Some(2), "{binary}: {output}");
        assert!(
            output.contains("OIDC_IDP_ADDRESS_FOR_SERVER"),
            "{binary}: {output}"
        );
    }
}

#[tokio::test]
async fn the_seed_routes_answer_a_dotnet_client_exactly_the_originals_bodies() {
    let broker = Broker::start();
    let topic = broker.create_topic("seed-bodies", 2).await;
    let idp = OidcProvider::start("key-seed");
    let env = env_with_auth(&broker, &topic, &idp);
    let writer = Service::start(writer(), &env);
    let reader = Service::start(READER, &env);
    let token = idp.token("kv-full", "kv:read kv:write kv:delete").await;
    let http = reqwest::Client::new();
    // What Results.Ok(...) wrote: a JSON string, application/json.
    async fn original(response: reqwest::Response, what: &str) -> String {
        assert_eq!(response.status(), StatusCode::OK, "{what}");
        assert_eq!(
            response.headers()["content-type"],
            "application/json",
            "{what}"
        );
        response.json::<String>().await.expect("a JSON string")
    }

    let stored = http
        .post(writer.url("/store"))
        .bearer_auth(&token)
        .header("X-Correlation-Id", "dotnet-client-1")
        .json(&serde_json::json!({"Key": "greeting", "Value": "one", "Headers": {"Source": "billing"}}))
        .send()
        .await
        .expect("store");
    assert!(stored.headers().contains_key("x-consistency-token"));
    let consistency = stored.headers()["x-consistency-token"].clone();
    assert_eq!(original(stored, "/store").await, "Stored");
    let stored_b64 = http
        .post(writer.url("/store/b64"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"Key": "Ymlu", "Value": "AAEC"}))
        .send()
        .await
        .expect("store b64");
    assert_eq!(original(stored_b64, "/store/b64").await, "Stored");

    let retrieved = http
        .post(reader.url("/retrieve"))
        .bearer_auth(&token)
        .header("X-Consistency-Token", consistency)
        .json(&serde_json::json!({"Key": "greeting"}))
        .send()
        .await
        .expect("retrieve");
    assert_eq!(retrieved.headers()["x-correlation-id"], "dotnet-client-1");
    assert_eq!(original(retrieved, "/retrieve").await, "one");
    let retrieved_b64 = eventually("the binary value", DEADLINE, || async {
        let response = http
            .post(reader.url("/retrieve/b64"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"Key": "Ymlu"}))
            .send()
            .await
            .ok()?;
        (response.status() == StatusCode::OK).then_some(response)
    })
    .await;
    assert_eq!(original(retrieved_b64, "/retrieve/b64").await, "AAEC");

    let removed = http
        .post(writer.url("/remove"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"Key": "greeting"}))
        .send()
        .await
        .expect("remove");
    assert_eq!(original(removed, "/remove").await, "Removed");
    eventually("the key removed", DEADLINE, || async {
        let response = http
            .post(reader.url("/retrieve"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"Key": "greeting"}))
            .send()
            .await
            .ok()?;
        (response.status() == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_report_counts_as_the_token_subject_whatever_agent_header_it_sends() {
    use base64::Engine as _;
    let broker = Broker::start();
    let topic = broker.create_topic("auth-reports", 1).await;
    let idp = OidcProvider::start("key-a");
    let rules = kv_testkit::computed::rules_file("rules: [{prefix: 'site/', reducer: latest}]");
    let mut env = env_with_auth(&broker, &topic, &idp);
    env.push(("KV_API_STATE_RULES", rules.path().display().to_string()));
    let writer = Service::start(writer(), &env);
    let reader = Service::start(READER, &env);
    let http = reqwest::Client::new();
    let token = idp.token("kv-full", "kv:read kv:write").await;
    let payload = token.split('.').nth(1).expect("a JWT");
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .expect("base64url"),
    )
    .expect("claims");
    let subject = claims["sub"]
        .as_str()
        .or(claims["client_id"].as_str())
        .expect("a subject")
        .to_owned();
    let answer = http
        .put(writer.url("/v1/reports/site/1"))
        .bearer_auth(&token)
        .header("X-KV-Agent", "somebody-else")
        .body("down")
        .send()
        .await
        .expect("report");
    assert_eq!(answer.status(), StatusCode::OK);
    let state = eventually("the report on the reader", DEADLINE, || async {
        let state: serde_json::Value = http
            .get(reader.url("/v1/state/site/1"))
            .bearer_auth(&token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (state["reports"].as_array()?.len() == 1).then_some(state)
    })
    .await;
    assert_eq!(state["reports"][0]["agent"], subject.as_str(), "{state}");
}
