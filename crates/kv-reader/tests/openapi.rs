//! The reader's OpenAPI document (docs/openapi-reader.yaml, served at `/openapi.yaml`) and the
//! routes the real binary serves agree: same operations, same security, nothing else routed.

use std::collections::BTreeSet;

use kv_core::testkit::openapi::{call, instance_of, other_methods, usage_requests, Document};
use kv_core::testkit::{Broker, OidcProvider, Service};
use kv_reader::routes::{endpoints, OPENAPI};

#[test]
fn the_document_lists_exactly_the_routes_the_reader_registers() {
    let registered: BTreeSet<(String, String)> = endpoints()
        .iter()
        .flat_map(|endpoint| {
            endpoint
                .methods()
                .iter()
                .map(|method| (method.to_string(), endpoint.openapi_path()))
        })
        .collect();
    let documented: BTreeSet<(String, String)> =
        Document::parse(OPENAPI).operations().into_keys().collect();
    assert_eq!(documented, registered);
}

#[test]
fn every_reference_in_the_document_resolves() {
    assert_eq!(
        Document::parse(OPENAPI).unresolved_references(),
        Vec::<String>::new()
    );
}

#[test]
fn usage_http_has_a_request_for_every_documented_operation() {
    let requests = usage_requests(include_str!("../../../docs/usage.http"), "reader");
    for (method, template) in Document::parse(OPENAPI).operations().into_keys() {
        assert!(
            requests
                .iter()
                .any(|(m, path)| *m == method && instance_of(path, &template)),
            "docs/usage.http has no {method} {template} for the reader"
        );
    }
    for (method, path) in &requests {
        assert!(
            Document::parse(OPENAPI)
                .operations()
                .into_keys()
                .any(|(m, template)| m == *method && instance_of(path, &template)),
            "docs/usage.http sends {method} {path} to the reader, which the document does not list"
        );
    }
}

#[tokio::test]
async fn every_documented_operation_is_served_with_its_documented_security_and_other_methods_are_refused(
) {
    let broker = Broker::start();
    let topic = broker.create_topic("openapi", 1).await;
    let idp = OidcProvider::start("openapi-reader");
    let mut env = vec![
        ("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_servers()),
        ("KV_API_KAFKA_KEY_VALUE_TOPIC", topic.clone()),
        ("KAFKA_GROUP_ID", format!("{topic}-reader")),
        ("KV_API_AUTH_READ", "kv:read".to_owned()),
    ];
    env.extend(idp.service_env());
    let reader = Service::start("kv-reader", &env);
    let http = reqwest::Client::new();
    let token = idp.token("kv-full", "kv:read kv:write kv:delete").await;
    let document = Document::parse(OPENAPI);
    let operations = document.operations();

    for ((method, path), anonymous) in &operations {
        let anonymous_answer = call(&http, &reader, &document, method, path, None).await;
        if *anonymous {
            assert!(
                !anonymous_answer.is_unrouted() && anonymous_answer.status != 401,
                "{method} {path} is documented as anonymous: {anonymous_answer:?}"
            );
        } else {
            assert_eq!(
                anonymous_answer.status, 401,
                "{method} {path} is documented as needing a token"
            );
            let answer = call(&http, &reader, &document, method, path, Some(&token)).await;
            assert!(
                !answer.is_unrouted() && answer.status != 401 && answer.status != 403,
                "{method} {path} is documented: {answer:?}\n{}",
                reader.output()
            );
        }
    }
    for path in document.paths() {
        for method in other_methods(&operations, &path) {
            let answer = call(&http, &reader, &document, &method, &path, Some(&token)).await;
            assert_eq!(
                (answer.status, answer.code.as_deref()),
                (405, Some("method_not_allowed")),
                "{method} {path} is not documented"
            );
        }
    }

    let served = http
        .get(reader.url("/openapi.yaml"))
        .send()
        .await
        .expect("the document");
    assert_eq!(served.status(), 200);
    assert!(served.headers()["content-type"]
        .to_str()
        .is_ok_and(|t| t.starts_with("application/yaml")));
    assert_eq!(served.text().await.expect("text"), OPENAPI);
}
