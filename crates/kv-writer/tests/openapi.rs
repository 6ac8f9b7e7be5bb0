//! The writer's OpenAPI document (docs/openapi-writer.yaml, served at `/openapi.yaml`) and the
//! routes the real binary serves agree: same operations, same security, nothing else routed.

use std::collections::BTreeSet;

use kv_core::testkit::openapi::{call, instance_of, other_methods, usage_requests, Document};
use kv_core::testkit::{Broker, OidcProvider, Service};
use kv_writer::routes::{endpoints, OPENAPI};

#[test]
fn the_document_lists_exactly_the_routes_the_writer_registers() {
    let registered: BTreeSet<(String, String)> = endpoints(1)
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
fn a_reference_to_nothing_is_reported() {
    let document = Document::parse(
        "components: {schemas: {A: {type: string}}}\npaths: {/a: {get: {responses: {'200': \
         {content: {x: {schema: {$ref: '#/components/schemas/A'}}}}, '404': {$ref: '#/nowhere'}}}}}",
    );
    assert_eq!(document.unresolved_references(), vec!["#/nowhere"]);
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
    let requests = usage_requests(include_str!("../../../docs/usage.http"), "writer");
    for (method, template) in Document::parse(OPENAPI).operations().into_keys() {
        assert!(
            requests
                .iter()
                .any(|(m, path)| *m == method && instance_of(path, &template)),
            "docs/usage.http has no {method} {template} for the writer"
        );
    }
    for (method, path) in &requests {
        assert!(
            Document::parse(OPENAPI)
                .operations()
                .into_keys()
                .any(|(m, template)| m == *method && instance_of(path, &template)),
            "docs/usage.http sends {method} {path} to the writer, which the document does not list"
        );
    }
}

#[tokio::test]
async fn every_documented_operation_is_served_with_its_documented_security_and_other_methods_are_refused(
) {
    let broker = Broker::start();
    let topic = broker.create_topic("openapi", 1).await;
    let idp = OidcProvider::start("openapi-writer");
    let mut env = vec![
        ("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_servers()),
        ("KV_API_KAFKA_KEY_VALUE_TOPIC", topic),
        ("KV_API_AUTH_WRITE", "kv:write".to_owned()),
        ("KV_API_AUTH_DELETE", "kv:delete".to_owned()),
    ];
    env.extend(idp.service_env());
    let writer = Service::start("kv-writer", &env);
    let http = reqwest::Client::new();
    let token = idp.token("kv-full", "kv:read kv:write kv:delete").await;
    let document = Document::parse(OPENAPI);
    let operations = document.operations();

    for ((method, path), anonymous) in &operations {
        let anonymous_answer = call(&http, &writer, &document, method, path, None).await;
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
            let answer = call(&http, &writer, &document, method, path, Some(&token)).await;
            assert!(
                !answer.is_unrouted() && answer.status != 401 && answer.status != 403,
                "{method} {path} is documented: {answer:?}\n{}",
                writer.output()
            );
        }
    }
    for path in document.paths() {
        for method in other_methods(&operations, &path) {
            let answer = call(&http, &writer, &document, &method, &path, Some(&token)).await;
            assert_eq!(
                (answer.status, answer.code.as_deref()),
                (405, Some("method_not_allowed")),
                "{method} {path} is not documented"
            );
        }
    }

    let served = http
        .get(writer.url("/openapi.yaml"))
        .send()
        .await
        .expect("the document");
    assert_eq!(served.status(), 200);
    assert!(served.headers()["content-type"]
        .to_str()
        .is_ok_and(|t| t.starts_with("application/yaml")));
    assert_eq!(served.text().await.expect("text"), OPENAPI);
}
