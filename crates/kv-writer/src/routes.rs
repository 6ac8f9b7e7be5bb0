//! HTTP routes of the write gateway. Every write answers 2xx only after Kafka acknowledged it.

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder};
use kv_core::auth::{operation, Authorized};
use kv_core::consistency::{ConsistencyToken, RecordPosition};
use kv_core::error::{ApiError, ErrorCode};
use kv_core::http::{key_from_path, read_body, CorrelationId, JsonBody, JsonLimit};
use kv_core::metrics::metrics_endpoint;
use kv_core::routing::{openapi_document, Endpoint};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::batch;
use crate::input::{check_key, check_value, Encoding, Fields, WriteInput};
use crate::producer::{KvProducer, Write};
use crate::settings::Settings;

pub const NATIVE_PREFIX: &str = "/v1/kv/";

/// Response header with the consistency token (`kv_core::consistency::CONSISTENCY_TOKEN_HEADER`).
pub const CONSISTENCY_TOKEN: HeaderName = HeaderName::from_static("x-consistency-token");
pub const KAFKA_PARTITION: HeaderName = HeaderName::from_static("x-kafka-partition");
pub const KAFKA_OFFSET: HeaderName = HeaderName::from_static("x-kafka-offset");

/// The writer's OpenAPI document, served at `GET /openapi.yaml`.
pub const OPENAPI: &str = include_str!("../../../docs/openapi-writer.yaml");

/// Every route the writer serves. The app registers exactly these, and the OpenAPI test checks
/// the document against them.
pub fn endpoints(batch_limit: usize) -> Vec<Endpoint> {
    vec![
        Endpoint::key_tail("/v1/kv/{key}")
            .on(Method::PUT, web::to(put_value))
            .on(Method::DELETE, web::to(delete_value)),
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
    ]
}

/// What the handlers share.
#[derive(Debug)]
pub struct WriterState {
    pub producer: KvProducer,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_batch_items: usize,
}

impl WriterState {
    pub fn new(settings: &Settings, producer: KvProducer) -> Self {
        Self {
            producer,
            max_key_bytes: settings.max_key_bytes,
            max_value_bytes: settings.max_value_bytes,
            max_batch_items: settings.max_batch_items,
        }
    }

    /// Refuses a write from a JSON body whose key or value is over the limits.
    pub fn check(&self, write: &WriteInput<'_>, path: &str) -> Result<(), ApiError> {
        check_key(&write.key, self.max_key_bytes, || {
            format!("field `{path}key`")
        })?;
        if let Some(value) = &write.value {
            check_value(value, self.max_value_bytes, || {
                format!("field `{path}value`")
            })?;
        }
        Ok(())
    }

    async fn write_one(
        &self,
        request: &HttpRequest,
        write: &WriteInput<'_>,
    ) -> Result<HttpResponse, ApiError> {
        let correlation = CorrelationId::of(request);
        let position = self
            .producer
            .write(Write {
                key: &write.key,
                value: write.value.as_deref(),
                correlation_id: &correlation.0,
                headers: &write.headers,
            })
            .await?;
        Ok(acknowledged(position))
    }
}

#[derive(Serialize)]
struct Acknowledged {
    partition: i32,
    /// `null` with KAFKA_ACKS=none: the broker reports no offset for unacknowledged writes.
    offset: Option<i64>,
    consistency_token: Option<String>,
}

/// Sets the consistency token header, which a reader takes to serve read-your-writes.
pub fn with_token(response: &mut HttpResponseBuilder, token: &str) {
    if let Ok(value) = HeaderValue::from_str(token) {
        response.insert_header((CONSISTENCY_TOKEN, value));
    }
}

/// The token for acknowledged positions; `None` when no offset is known (KAFKA_ACKS=none), as a
/// token with a negative offset would be refused by every reader.
pub fn token_for(positions: impl IntoIterator<Item = RecordPosition>) -> Option<String> {
    let mut known = positions.into_iter().filter(|p| p.offset >= 0).peekable();
    known.peek()?;
    Some(ConsistencyToken::from_positions(known).to_string())
}

fn acknowledged(position: RecordPosition) -> HttpResponse {
    let token = token_for([position]);
    let offset = (position.offset >= 0).then_some(position.offset);
    let mut response = HttpResponse::Ok();
    response.insert_header((KAFKA_PARTITION, position.partition));
    if let Some(offset) = offset {
        response.insert_header((KAFKA_OFFSET, offset));
    }
    if let Some(token) = &token {
        with_token(&mut response, token);
    }
    response.json(Acknowledged {
        partition: position.partition,
        offset,
        consistency_token: token,
    })
}

/// `PUT /v1/kv/{key}`: the body, whatever its content type, is the value.
pub async fn put_value(
    _auth: Authorized<operation::Write>,
    request: HttpRequest,
    body: web::Payload,
    state: web::Data<WriterState>,
) -> Result<HttpResponse, ApiError> {
    let key = key_from_path(&request, NATIVE_PREFIX)?;
    // Checked before the body is read, so an oversized key costs no body buffering.
    check_key(&key, state.max_key_bytes, || "the key in the path".into())?;
    let value = read_body(body, &request, state.max_value_bytes).await?;
    let write = WriteInput {
        key: key.into(),
        value: Some((&value[..]).into()),
        headers: Vec::new(),
    };
    state.write_one(&request, &write).await
}

/// `DELETE /v1/kv/{key}`: writes a tombstone.
pub async fn delete_value(
    _auth: Authorized<operation::Delete>,
    request: HttpRequest,
    state: web::Data<WriterState>,
) -> Result<HttpResponse, ApiError> {
    let key = key_from_path(&request, NATIVE_PREFIX)?;
    check_key(&key, state.max_key_bytes, || "the key in the path".into())?;
    let write = WriteInput {
        key: key.into(),
        value: None,
        headers: Vec::new(),
    };
    state.write_one(&request, &write).await
}

/// `POST /store` `{"key","value","headers"?}`, the original service's write route.
pub async fn store(
    _auth: Authorized<operation::Write>,
    request: HttpRequest,
    body: JsonBody<Map<String, Value>>,
    state: web::Data<WriterState>,
) -> Result<HttpResponse, ApiError> {
    let body = body.read().await?;
    let write = Fields::new(&body, Encoding::Utf8).put()?;
    state.check(&write, "")?;
    state.write_one(&request, &write).await
}

/// `POST /store/b64`: as `/store`, with key, value and header values in base64.
pub async fn store_base64(
    _auth: Authorized<operation::Write>,
    request: HttpRequest,
    body: JsonBody<Map<String, Value>>,
    state: web::Data<WriterState>,
) -> Result<HttpResponse, ApiError> {
    let body = body.read().await?;
    let write = Fields::new(&body, Encoding::Base64).put()?;
    state.check(&write, "")?;
    state.write_one(&request, &write).await
}

/// `POST /remove` `{"key"}`: writes a tombstone.
pub async fn remove(
    _auth: Authorized<operation::Delete>,
    request: HttpRequest,
    body: JsonBody<Map<String, Value>>,
    state: web::Data<WriterState>,
) -> Result<HttpResponse, ApiError> {
    let body = body.read().await?;
    let write = Fields::new(&body, Encoding::Utf8).delete()?;
    state.check(&write, "")?;
    state.write_one(&request, &write).await
}

/// `/healthz`: the process started and serves HTTP.
pub async fn started() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "started"}))
}

/// `/healthz/live`: the process is not wedged.
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "live"}))
}

/// `/healthz/ready`: the broker answers metadata for the topic, so writes can be acknowledged.
pub async fn ready(state: web::Data<WriterState>) -> Result<HttpResponse, ApiError> {
    let producer = state.producer.clone();
    // librdkafka's metadata call blocks; it must not run on an actix worker thread.
    let reachable = web::block(move || producer.topic_reachable(std::time::Duration::from_secs(2)))
        .await
        .map_err(|e| ApiError::internal(format!("readiness check failed: {e}")))?;
    match reachable {
        Ok(()) => Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ready"}))),
        Err(reason) => Err(ApiError::new(ErrorCode::NotReady, reason)),
    }
}
