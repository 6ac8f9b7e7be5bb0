//! HTTP routes of a read replica.

use std::sync::Arc;

use actix_web::http::header::{self, ContentType};
use actix_web::{web, HttpRequest, HttpResponse};
use kv_core::error::{ApiError, ErrorCode};
use kv_core::http::{key_from_path, CORRELATION_ID};
use kv_core::record::RecordCodec;
use serde_json::Value;

use crate::replica::Progress;
use crate::store::{Store, StoredEntry};

pub const NATIVE_PREFIX: &str = "/v1/kv/";

#[derive(Debug)]
pub struct ReaderState {
    pub store: Arc<Store>,
    pub progress: Arc<Progress>,
    pub codec: RecordCodec,
}

impl ReaderState {
    fn lookup(&self, user_key: &[u8]) -> Result<StoredEntry, ApiError> {
        let record_key = self.codec.record_key(user_key);
        self.store
            .get(&record_key)
            .map_err(|e| ApiError::internal(format!("reading the store failed: {e}")))?
            .ok_or_else(ApiError::key_not_found)
    }
}

fn value_response(entry: StoredEntry, content_type: ContentType) -> HttpResponse {
    let mut response = HttpResponse::Ok();
    response.content_type(content_type).insert_header((
        header::ETAG,
        format!("\"{}-{}\"", entry.partition, entry.offset),
    ));
    if let Some(id) = entry.correlation_id {
        response.insert_header((CORRELATION_ID, id));
    }
    response.body(entry.value)
}

/// `GET /v1/kv/{key}`: the raw value bytes.
pub async fn get_value(
    request: HttpRequest,
    state: web::Data<ReaderState>,
) -> Result<HttpResponse, ApiError> {
    let key = key_from_path(&request, NATIVE_PREFIX)?;
    let entry = state.lookup(&key)?;
    Ok(value_response(entry, ContentType::octet_stream()))
}

/// `POST /retrieve` `{"key"}`, the original's read route: the value as text.
pub async fn retrieve(
    body: web::Json<serde_json::Map<String, Value>>,
    state: web::Data<ReaderState>,
) -> Result<HttpResponse, ApiError> {
    let key = match body.iter().find(|(k, _)| k.eq_ignore_ascii_case("key")) {
        Some((_, Value::String(key))) if !key.is_empty() => key,
        Some((_, Value::String(_))) => {
            return Err(ApiError::new(ErrorCode::InvalidKey, "field `key` is empty"))
        }
        Some(_) => return Err(ApiError::invalid_request("field `key` must be a string")),
        None => return Err(ApiError::invalid_request("field `key` is missing")),
    };
    let entry = state.lookup(key.as_bytes())?;
    Ok(value_response(entry, ContentType::plaintext()))
}

pub async fn started() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "started"}))
}

/// `/healthz/live`: fails once the consumer loop has died, so the orchestrator restarts us.
pub async fn live(state: web::Data<ReaderState>) -> Result<HttpResponse, ApiError> {
    if state.progress.is_alive() {
        Ok(HttpResponse::Ok().json(serde_json::json!({"status": "live"})))
    } else {
        Err(ApiError::internal("the consumer loop has stopped"))
    }
}

/// `/healthz/ready`: ready once every partition reached its end offset seen at start-up.
pub async fn ready(state: web::Data<ReaderState>) -> HttpResponse {
    let partitions = state.progress.snapshot();
    let ready = state.progress.is_ready() && state.progress.is_alive();
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "catching_up" },
        "partitions": partitions,
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
