//! HTTP routes of the write gateway. Every write answers 2xx only after Kafka acknowledged it.

use std::collections::HashMap;

use actix_web::http::header::HeaderName;
use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use kv_core::settings::prefixes::KeyAction;
use kv_core::web::auth::{operation, Authorized};
use kv_core::web::error::{ApiError, ErrorCode};
use kv_core::web::http::{key_from_path, parse_query, started, JsonBody, JsonLimit};
use kv_core::web::metrics::metrics_endpoint;
use kv_core::web::routing::{openapi_document, openapi_json_document, Endpoint};

use crate::answer::Answer;
use crate::batch;
use crate::input::{check_key, Encoding, MaxTtl, RawWrite, WriteInput};
use crate::state::WriterState;

pub const NATIVE_PREFIX: &str = "/v1/kv/";

/// The request header giving `PUT /v1/kv/{key}` a TTL in seconds.
pub const TTL_SECONDS: HeaderName = HeaderName::from_static("x-kv-ttl-seconds");
/// The query parameter doing the same, for clients that cannot set headers.
pub const TTL_SECONDS_PARAM: &str = "ttl_seconds";

/// The writer's OpenAPI document, served at `GET /openapi.yaml`.
pub const OPENAPI: &str = include_str!("../../../docs/openapi-writer.yaml");

/// Every route the writer serves. The app registers exactly these, and the OpenAPI test checks
/// the document against them.
pub fn endpoints(batch_limit: usize) -> Vec<Endpoint> {
    vec![
        Endpoint::key_tail("/v1/kv/{key}")
            .on(Method::PUT, web::to(put_value))
            .on(Method::DELETE, web::to(delete_value)),
        Endpoint::key_tail("/v1/reports/{key}")
            .on(Method::PUT, web::to(crate::reports::put_report)),
        Endpoint::new("/v1/kv:batch")
            // A batch carries many values, so its body limit is its own.
            .app_data(JsonLimit(batch_limit))
            .on(Method::POST, web::to(batch::batch)),
        Endpoint::new("/store").on(Method::POST, web::to(store)),
        Endpoint::new("/store/b64").on(Method::POST, web::to(store_base64)),
        Endpoint::new("/remove").on(Method::POST, web::to(remove)),
        Endpoint::new("/healthz").on(Method::GET, web::to(started)),
        Endpoint::new("/healthz/live").on(Method::GET, web::to(live)),
        Endpoint::new("/healthz/ready").on(Method::GET, web::to(ready)),
        Endpoint::new("/metrics").on(Method::GET, web::to(metrics_endpoint)),
        Endpoint::new("/openapi.yaml").on(Method::GET, openapi_document(OPENAPI)),
        Endpoint::new("/openapi.json").on(Method::GET, openapi_json_document(OPENAPI)),
    ]
}

/// `PUT /v1/kv/{key}`: the body, whatever its content type, is the value.
pub async fn put_value(
    auth: Authorized<operation::Write>,
    request: HttpRequest,
    body: web::Payload,
    state: web::Data<WriterState>,
) -> Result<HttpResponse, ApiError> {
    let key = key_from_path(&request, NATIVE_PREFIX)?;
    // Checked before the body is read, so an oversized key or a bad TTL costs no body buffering.
    check_key(&key, state.max_key_bytes, || "the key in the path".into())?;
    auth.check_key(KeyAction::Write, &key)?;
    let ttl_seconds = ttl_of(&request, state.max_ttl)?;
    let conditional = state.conditional_of(&request)?;
    let (value, _permit) = state
        .bodies
        .read(&request, body, state.max_value_bytes)
        .await?;
    let write = WriteInput {
        key: key.into(),
        value: Some((&value[..]).into()),
        headers: Vec::new(),
        ttl_seconds,
    };
    match &conditional {
        None => state.write_one(&request, &write, Answer::Position).await,
        Some(conditional) => state.write_conditional(&request, write, conditional).await,
    }
}

/// `DELETE /v1/kv/{key}`: writes a tombstone.
pub async fn delete_value(
    auth: Authorized<operation::Delete>,
    request: HttpRequest,
    state: web::Data<WriterState>,
) -> Result<HttpResponse, ApiError> {
    let key = key_from_path(&request, NATIVE_PREFIX)?;
    check_key(&key, state.max_key_bytes, || "the key in the path".into())?;
    auth.check_key(KeyAction::Delete, &key)?;
    if ttl_of(&request, state.max_ttl)?.is_some() {
        return Err(ApiError::invalid_request(
            "a delete takes no TTL (header X-KV-TTL-Seconds or parameter ttl_seconds): it has \
             nothing to expire",
        ));
    }
    let conditional = state.conditional_of(&request)?;
    let write = WriteInput {
        key: key.into(),
        value: None,
        headers: Vec::new(),
        ttl_seconds: None,
    };
    match &conditional {
        None => state.write_one(&request, &write, Answer::Position).await,
        Some(conditional) => state.write_conditional(&request, write, conditional).await,
    }
}

/// The TTL of a native write: header `X-KV-TTL-Seconds` or query parameter `ttl_seconds` (both
/// only when they agree). Other query parameters are ignored, as they always were.
fn ttl_of(request: &HttpRequest, max_ttl: MaxTtl) -> Result<Option<u64>, ApiError> {
    let header = match request.headers().get(TTL_SECONDS) {
        None => None,
        Some(raw) => {
            let text = raw.to_str().map_err(|_| {
                ApiError::invalid_request("header X-KV-TTL-Seconds must be a whole number")
            })?;
            Some(max_ttl.parse(text, || "header X-KV-TTL-Seconds".to_owned())?)
        }
    };
    let parameter = if request.query_string().is_empty() {
        None
    } else {
        match parse_query::<HashMap<String, String>>(request)?.remove(TTL_SECONDS_PARAM) {
            None => None,
            Some(text) => Some(max_ttl.parse(&text, || "parameter `ttl_seconds`".to_owned())?),
        }
    };
    match (header, parameter) {
        (Some(header), Some(parameter)) if header != parameter => {
            Err(ApiError::invalid_request(format!(
                "header X-KV-TTL-Seconds ({header}) and parameter `ttl_seconds` ({parameter}) \
                 name different TTLs; give one of them"
            )))
        }
        (header, parameter) => Ok(header.or(parameter)),
    }
}

/// `POST /store` `{"key","value","headers"?,"ttlSeconds"?}`, the original service's write route.
pub async fn store(
    auth: Authorized<operation::Write>,
    request: HttpRequest,
    body: JsonBody<()>,
    state: web::Data<WriterState>,
) -> Result<HttpResponse, ApiError> {
    let (bytes, _permit) = state.bodies.read_json(&request, body).await?;
    let write = RawWrite::parse(&bytes)?.put(Encoding::Utf8, state.max_ttl)?;
    state.check(&write, "")?;
    auth.check_key(KeyAction::Write, &write.key)?;
    state
        .write_one(&request, &write, Answer::Original("Stored"))
        .await
}

/// `POST /store/b64`: as `/store`, with key, value and header values in base64.
pub async fn store_base64(
    auth: Authorized<operation::Write>,
    request: HttpRequest,
    body: JsonBody<()>,
    state: web::Data<WriterState>,
) -> Result<HttpResponse, ApiError> {
    let (bytes, _permit) = state.bodies.read_json(&request, body).await?;
    let write = RawWrite::parse(&bytes)?.put(Encoding::Base64, state.max_ttl)?;
    state.check(&write, "")?;
    auth.check_key(KeyAction::Write, &write.key)?;
    state
        .write_one(&request, &write, Answer::Original("Stored"))
        .await
}

/// `POST /remove` `{"key"}`: writes a tombstone.
pub async fn remove(
    auth: Authorized<operation::Delete>,
    request: HttpRequest,
    body: JsonBody<()>,
    state: web::Data<WriterState>,
) -> Result<HttpResponse, ApiError> {
    let (bytes, _permit) = state.bodies.read_json(&request, body).await?;
    let write = RawWrite::parse(&bytes)?.delete(Encoding::Utf8)?;
    state.check(&write, "")?;
    auth.check_key(KeyAction::Delete, &write.key)?;
    state
        .write_one(&request, &write, Answer::Original("Removed"))
        .await
}

/// `/healthz/live`: the process is not wedged.
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "live"}))
}

/// `/healthz/ready`: the broker answers metadata for the topic, so writes can be acknowledged.
pub async fn ready(state: web::Data<WriterState>) -> Result<HttpResponse, ApiError> {
    match state.readiness().await? {
        Ok(()) => Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ready"}))),
        Err(reason) => Err(ApiError::new(ErrorCode::NotReady, reason)),
    }
}
