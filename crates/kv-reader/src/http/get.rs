//! Reads of one key: `GET /v1/kv/{key}` and the original service's `/retrieve` routes.

use actix_web::http::header::{self, ContentType};
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use kv_core::settings::prefixes::KeyAction;
use kv_core::web::auth::{operation, Authorized};
use kv_core::web::error::{ApiError, ErrorCode};
use kv_core::web::http::{key_from_path, parse_json, JsonBody};
use kv_core::web::json::{field, BASE64};
use serde_json::Value;

use crate::http::entry::{etag, original_response, value_response};
use crate::http::forward::route_and_settle;
use crate::http::request::not_modified;
use crate::http::state::{HttpState, PeerClient};

/// Where the native routes' keys begin in the path.
pub const NATIVE_PREFIX: &str = "/v1/kv/";

/// `GET /v1/kv/{key}`: the raw value bytes.
pub async fn get_value(
    auth: Authorized<operation::Read>,
    request: HttpRequest,
    state: web::Data<HttpState>,
    client: web::Data<PeerClient>,
) -> Result<HttpResponse, ApiError> {
    let key = key_from_path(&request, NATIVE_PREFIX)?;
    auth.check_key(KeyAction::Read, &key)?;
    if let Some(answer) =
        route_and_settle(&state, &client, &request, &key, None, client.1.as_deref()).await?
    {
        return Ok(answer);
    }
    let core = &state.read;
    let entry = core.lookup(&key)?;
    let tag = etag(&entry);
    if not_modified(&request, &tag) {
        return Ok(HttpResponse::NotModified()
            .insert_header((header::ETAG, tag))
            .finish());
    }
    Ok(value_response(entry, ContentType::octet_stream()))
}

/// The `key` field of the original's JSON bodies; field names match ignoring case, as the
/// original accepted `Key` and `key` alike.
fn key_field(body: &serde_json::Map<String, Value>) -> Result<&str, ApiError> {
    match field(body, "key") {
        Some(Value::String(key)) if !key.is_empty() => Ok(key),
        Some(Value::String(_)) => Err(ApiError::new(ErrorCode::InvalidKey, "field `key` is empty")),
        Some(_) => Err(ApiError::invalid_request("field `key` must be a string")),
        None => Err(ApiError::invalid_request("field `key` is missing")),
    }
}

/// `POST /retrieve` `{"key"}`, the original's read route: the value as text.
pub async fn retrieve(
    auth: Authorized<operation::Read>,
    request: HttpRequest,
    body: JsonBody<serde_json::Map<String, Value>>,
    state: web::Data<HttpState>,
    client: web::Data<PeerClient>,
) -> Result<HttpResponse, ApiError> {
    let raw = body.read_bytes().await?;
    let body: serde_json::Map<String, Value> = parse_json(&raw)?;
    let key = key_field(&body)?;
    auth.check_key(KeyAction::Read, key.as_bytes())?;
    if let Some(answer) =
        route_and_settle(&state, &client, &request, key.as_bytes(), Some(&raw), None).await?
    {
        return Ok(answer);
    }
    let core = &state.read;
    let entry = core.lookup(key.as_bytes())?;
    // .NET read the value as UTF-8 text; bytes that are not are replaced, as it did.
    let text = String::from_utf8_lossy(&entry.value);
    Ok(original_response(&entry, &text))
}

/// `POST /retrieve/b64` `{"key": base64}`, the original's binary read route: the value,
/// base64-encoded, as text.
pub async fn retrieve_b64(
    auth: Authorized<operation::Read>,
    request: HttpRequest,
    body: JsonBody<serde_json::Map<String, Value>>,
    state: web::Data<HttpState>,
    client: web::Data<PeerClient>,
) -> Result<HttpResponse, ApiError> {
    let raw = body.read_bytes().await?;
    let body: serde_json::Map<String, Value> = parse_json(&raw)?;
    let key = BASE64
        .decode(key_field(&body)?)
        .map_err(|e| ApiError::invalid_request(format!("field `key` is not valid base64: {e}")))?;
    if key.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidKey,
            "field `key` decodes to an empty key",
        ));
    }
    auth.check_key(KeyAction::Read, &key)?;
    if let Some(answer) =
        route_and_settle(&state, &client, &request, &key, Some(&raw), None).await?
    {
        return Ok(answer);
    }
    let core = &state.read;
    let entry = core.lookup(&key)?;
    Ok(original_response(&entry, &BASE64.encode(&entry.value)))
}
