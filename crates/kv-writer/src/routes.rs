//! HTTP routes of the write gateway. Every write answers 2xx only after Kafka acknowledged it.

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use kv_core::consistency::{ConsistencyToken, RecordPosition, CONSISTENCY_TOKEN_HEADER};
use kv_core::error::{ApiError, ErrorCode};
use kv_core::http::{key_from_path, read_body, CorrelationId};
use serde::Serialize;
use serde_json::Value;

use crate::producer::{KvProducer, Write};
use crate::settings::Settings;

pub const NATIVE_PREFIX: &str = "/v1/kv/";

/// What the handlers share.
#[derive(Debug)]
pub struct WriterState {
    pub producer: KvProducer,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
}

impl WriterState {
    pub fn new(settings: &Settings, producer: KvProducer) -> Self {
        Self {
            producer,
            max_key_bytes: settings.max_key_bytes,
            max_value_bytes: settings.max_value_bytes,
        }
    }

    fn check_key(&self, key: &[u8]) -> Result<(), ApiError> {
        if key.is_empty() {
            return Err(ApiError::new(ErrorCode::InvalidKey, "field `key` is empty"));
        }
        if key.len() > self.max_key_bytes {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "field `key` is {} bytes, over the limit of {} bytes",
                    key.len(),
                    self.max_key_bytes
                ),
            ));
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), ApiError> {
        if value.len() > self.max_value_bytes {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "field `value` is {} bytes, over the limit of {} bytes",
                    value.len(),
                    self.max_value_bytes
                ),
            ));
        }
        Ok(())
    }

    async fn write(&self, write: Write<'_>) -> Result<HttpResponse, ApiError> {
        self.check_key(write.key)?;
        if let Some(value) = write.value {
            self.check_value(value)?;
        }
        let position = self.producer.write(write).await?;
        Ok(acknowledged(position))
    }
}

#[derive(Serialize)]
struct Acknowledged {
    partition: i32,
    offset: i64,
    consistency_token: String,
}

fn acknowledged(position: RecordPosition) -> HttpResponse {
    let token = ConsistencyToken::from_positions([position]).to_string();
    let mut response = HttpResponse::Ok();
    response
        .insert_header(("X-Kafka-Partition", position.partition))
        .insert_header(("X-Kafka-Offset", position.offset));
    if let Ok(value) = HeaderValue::from_str(&token) {
        response.insert_header((HeaderName::from_static("x-consistency-token"), value));
    }
    debug_assert_eq!(
        CONSISTENCY_TOKEN_HEADER.to_ascii_lowercase(),
        "x-consistency-token"
    );
    response.json(Acknowledged {
        partition: position.partition,
        offset: position.offset,
        consistency_token: token,
    })
}

/// `PUT /v1/kv/{key}`: the body, whatever its content type, is the value.
pub async fn put_value(
    request: HttpRequest,
    body: web::Payload,
    state: web::Data<WriterState>,
) -> Result<HttpResponse, ApiError> {
    let key = key_from_path(&request, NATIVE_PREFIX)?;
    state.check_key(&key)?;
    let value = read_body(body, &request, state.max_value_bytes).await?;
    let correlation = CorrelationId::of(&request);
    state
        .write(Write {
            key: &key,
            value: Some(&value),
            correlation_id: &correlation.0,
            headers: &[],
        })
        .await
}

/// `DELETE /v1/kv/{key}`: writes a tombstone.
pub async fn delete_value(
    request: HttpRequest,
    state: web::Data<WriterState>,
) -> Result<HttpResponse, ApiError> {
    let key = key_from_path(&request, NATIVE_PREFIX)?;
    let correlation = CorrelationId::of(&request);
    state
        .write(Write {
            key: &key,
            value: None,
            correlation_id: &correlation.0,
            headers: &[],
        })
        .await
}

/// Looks a field up ignoring case, as the original accepted `Key` and `key` alike.
fn field<'a>(body: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    body.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

fn string_field<'a>(
    body: &'a serde_json::Map<String, Value>,
    name: &str,
) -> Result<&'a str, ApiError> {
    match field(body, name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ApiError::invalid_request(format!(
            "field `{name}` must be a string"
        ))),
        None => Err(ApiError::invalid_request(format!(
            "field `{name}` is missing"
        ))),
    }
}

fn headers_field(body: &serde_json::Map<String, Value>) -> Result<Vec<(String, String)>, ApiError> {
    match field(body, "headers") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(name, value)| match value {
                Value::String(s) => Ok((name.clone(), s.clone())),
                _ => Err(ApiError::invalid_request(format!(
                    "field `headers.{name}` must be a string"
                ))),
            })
            .collect(),
        Some(_) => Err(ApiError::invalid_request(
            "field `headers` must be an object of strings",
        )),
    }
}

/// `POST /store` `{"key","value","headers"?}`, the original service's write route.
pub async fn store(
    request: HttpRequest,
    body: web::Json<serde_json::Map<String, Value>>,
    state: web::Data<WriterState>,
) -> Result<HttpResponse, ApiError> {
    let key = string_field(&body, "key")?;
    let value = string_field(&body, "value")?;
    let headers = headers_field(&body)?;
    let correlation = CorrelationId::of(&request);
    state
        .write(Write {
            key: key.as_bytes(),
            value: Some(value.as_bytes()),
            correlation_id: &correlation.0,
            headers: &headers,
        })
        .await
}

/// `POST /remove` `{"key"}`: writes a tombstone.
pub async fn remove(
    request: HttpRequest,
    body: web::Json<serde_json::Map<String, Value>>,
    state: web::Data<WriterState>,
) -> Result<HttpResponse, ApiError> {
    let key = string_field(&body, "key")?;
    let correlation = CorrelationId::of(&request);
    state
        .write(Write {
            key: key.as_bytes(),
            value: None,
            correlation_id: &correlation.0,
            headers: &[],
        })
        .await
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
    let reachable = web::block(move || producer.topic_reachable(std::time::Duration::from_secs(2)))
        .await
        .map_err(|e| ApiError::internal(format!("readiness check failed: {e}")))?;
    match reachable {
        Ok(()) => Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ready"}))),
        Err(reason) => Err(ApiError::new(ErrorCode::NotReady, reason)),
    }
}
