//! The reader's OpenAPI document (docs/openapi-reader.yaml, served at `/openapi.yaml`) and the
//! routes the real binary serves agree: same operations, same security, nothing else routed.

use crate::READER;
use std::collections::BTreeSet;

use kv_reader::http::{endpoints, OPENAPI};
use kv_testkit::openapi::{assert_served_as_documented, assert_usage_matches_document, Document};
use kv_testkit::{Broker, OidcProvider, Service};

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
    assert_usage_matches_document(
        include_str!("../../../../docs/usage.http"),
        "reader",
        OPENAPI,
    );
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
    let reader = Service::start(READER, &env);
    let token = idp
        .token("kv-full", "kv:read kv:write kv:delete kv:admin")
        .await;
    assert_served_as_documented(&reader, OPENAPI, &token).await;
}
