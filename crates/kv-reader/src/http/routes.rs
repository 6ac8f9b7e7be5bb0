//! The route table: every path the reader serves, and the OpenAPI document that describes them.

use actix_web::http::Method;
use actix_web::web;
use kv_core::web::http::{started, JsonLimit};
use kv_core::web::metrics::metrics_endpoint;
use kv_core::web::routing::{openapi_document, openapi_json_document, Endpoint};

use crate::http::{batch_get, explain, get, health, list, outcome, status_page, transfer, watch};

/// The reader's OpenAPI document, served at `GET /openapi.yaml`.
pub const OPENAPI: &str = include_str!("../../../../docs/openapi-reader.yaml");

/// Every route the reader serves. The app registers exactly these, and the OpenAPI test checks
/// the document against them.
pub fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::key_tail("/v1/kv/{key}").on(Method::GET, web::to(get::get_value)),
        Endpoint::new("/v1/kv").on(Method::GET, web::to(list::list_keys)),
        Endpoint::new("/v1/kv:batchGet").on(Method::POST, web::to(batch_get::batch_get)),
        Endpoint::new("/v1/kv:watch").on(Method::GET, web::to(watch::watch)),
        Endpoint::key_tail("/v1/state/{key}").on(Method::GET, web::to(explain::explain)),
        Endpoint::new("/v1/outcomes/{partition}/{offset}")
            .on(Method::GET, web::to(outcome::outcome)),
        Endpoint::new("/v1/outcomes:batchGet")
            // Its body lists at most 256 records: a small limit of its own.
            .app_data(JsonLimit(outcome::MAX_BATCH_BODY))
            .on(Method::POST, web::to(outcome::batch_outcomes)),
        Endpoint::new("/retrieve").on(Method::POST, web::to(get::retrieve)),
        Endpoint::new("/retrieve/b64").on(Method::POST, web::to(get::retrieve_b64)),
        Endpoint::new("/healthz").on(Method::GET, web::to(started)),
        Endpoint::new("/healthz/live").on(Method::GET, web::to(health::live)),
        Endpoint::new("/healthz/ready").on(Method::GET, web::to(health::ready)),
        Endpoint::new("/healthz/cluster").on(Method::GET, web::to(health::cluster_health)),
        Endpoint::new("/status").on(Method::GET, web::to(status_page::status_page)),
        Endpoint::new("/admin/v1/snapshot").on(Method::GET, web::to(transfer::snapshot)),
        Endpoint::new("/metrics").on(Method::GET, web::to(metrics_endpoint)),
        Endpoint::new("/openapi.yaml").on(Method::GET, openapi_document(OPENAPI)),
        Endpoint::new("/openapi.json").on(Method::GET, openapi_json_document(OPENAPI)),
    ]
}
