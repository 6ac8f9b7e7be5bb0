//! HTTP routes of a read replica.
//!
//! Every read may carry a consistency token (read-your-writes) and every read answer, found or
//! not, says how fresh the replica was when it read (see [`freshness_middleware`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, ContentType, HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use kv_core::consistency::{ConsistencyToken, RecordPosition, CONSISTENCY_TOKEN_PARAM};
use kv_core::web::auth::{operation, Authorized};
use kv_core::web::error::{ApiError, ErrorCode};
use kv_core::web::http::{
    key_from_path, parse_query, started, JsonBody, CONSISTENCY_TOKEN, CORRELATION_ID, EXPIRES_AT,
};
use kv_core::web::json::{field, BASE64};
use kv_core::web::metrics::metrics_endpoint;
use kv_core::web::routing::{openapi_document, Endpoint};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::progress::{Freshness, Progress, WaitError};
use crate::store::{Store, StoredEntry};

pub const NATIVE_PREFIX: &str = "/v1/kv/";

/// Highest offset applied per partition, in consistency-token form; usable as a token on
/// another replica to read data at least this fresh.
pub const REPLICA_APPLIED_HEADER: HeaderName = HeaderName::from_static("x-replica-applied");
/// Records in the topic this replica has not applied yet, over all partitions.
pub const REPLICA_LAG_HEADER: HeaderName = HeaderName::from_static("x-replica-lag");

/// Most keys one `POST /v1/kv:batchGet` may ask for.
pub const MAX_BATCH_KEYS: usize = 1000;
/// Keys per listing page: default and maximum.
pub const DEFAULT_LIST_LIMIT: usize = 100;
pub const MAX_LIST_LIMIT: usize = 1000;

/// The reader's OpenAPI document, served at `GET /openapi.yaml`.
pub const OPENAPI: &str = include_str!("../../../docs/openapi-reader.yaml");

/// Every route the reader serves. The app registers exactly these, and the OpenAPI test checks
/// the document against them.
pub fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::key_tail("/v1/kv/{key}").on(Method::GET, web::to(get_value)),
        Endpoint::new("/v1/kv").on(Method::GET, web::to(list_keys)),
        Endpoint::new("/v1/kv:batchGet").on(Method::POST, web::to(batch_get)),
        Endpoint::new("/retrieve").on(Method::POST, web::to(retrieve)),
        Endpoint::new("/retrieve/b64").on(Method::POST, web::to(retrieve_b64)),
        Endpoint::new("/healthz").on(Method::GET, web::to(started)),
        Endpoint::new("/healthz/live").on(Method::GET, web::to(live)),
        Endpoint::new("/healthz/ready").on(Method::GET, web::to(ready)),
        Endpoint::new("/metrics").on(Method::GET, web::to(metrics_endpoint)),
        Endpoint::new("/openapi.yaml").on(Method::GET, openapi_document(OPENAPI)),
    ]
}

#[derive(Debug)]
pub struct ReaderState {
    pub store: Arc<Store>,
    pub progress: Arc<Progress>,
    pub read_your_writes_timeout: Duration,
    /// Most value bytes one batchGet answer may carry.
    pub max_batch_get_bytes: usize,
    /// Listings of an encrypted store running at once (see [`MAX_SEALED_LISTINGS`]).
    pub sealed_listings: Arc<tokio::sync::Semaphore>,
}

/// How many listings of an encrypted-at-rest store may run at once: each reads every entry.
pub const MAX_SEALED_LISTINGS: usize = 2;

impl ReaderState {
    /// Waits for the request's consistency token, if any, then notes how fresh the replica is
    /// for [`freshness_middleware`]. Call it right before reading the store.
    async fn prepare_read(&self, request: &HttpRequest) -> Result<(), ApiError> {
        if let Some(token) = consistency_token(request)? {
            let waited = self
                .progress
                .wait_for(&token, self.read_your_writes_timeout)
                .await;
            match waited {
                Ok(()) => {}
                Err(error @ WaitError::UnknownPartition { .. }) => {
                    return Err(ApiError::invalid_request(format!(
                        "consistency token {token} cannot name a write of this topic: {error}"
                    )))
                }
                Err(WaitError::TimedOut) => {
                    return Err(ApiError::new(
                        ErrorCode::NotReady,
                        format!(
                            "this replica has not applied the writes of consistency token \
                             {token} within {} ms (KV_API_READ_YOUR_WRITES_TIMEOUT_MS); retry \
                             later",
                            self.read_your_writes_timeout.as_millis()
                        ),
                    )
                    .with_retry_after(Duration::from_secs(1)))
                }
                Err(error) => {
                    return Err(ApiError::new(
                        ErrorCode::NotReady,
                        format!(
                            "this replica cannot wait for consistency token {token}: {error}; \
                             retry later"
                        ),
                    )
                    .with_retry_after(Duration::from_secs(1)))
                }
            }
        }
        request.extensions_mut().insert(self.progress.freshness());
        Ok(())
    }

    fn lookup(&self, user_key: &[u8]) -> Result<StoredEntry, ApiError> {
        self.store
            .get(user_key)
            .map_err(store_error)?
            .ok_or_else(ApiError::key_not_found)
    }
}

fn store_error(error: crate::store::StoreError) -> ApiError {
    tracing::error!(%error, "reading the store failed");
    ApiError::internal("reading the replica's store failed")
}

/// The token in `X-Consistency-Token` or, for clients that cannot set headers, the
/// `consistency_token` query parameter. An empty token is no token. Both are checked, so a
/// malformed one is refused even beside a good one; a read given both waits for both.
fn consistency_token(request: &HttpRequest) -> Result<Option<ConsistencyToken>, ApiError> {
    let header = match request.headers().get(CONSISTENCY_TOKEN) {
        Some(raw) => Some(raw.to_str().map(str::to_owned).map_err(|_| {
            ApiError::invalid_request(
                "header X-Consistency-Token must be the token a kv-writer returned",
            )
        })?),
        None => None,
    };
    let query = if request.query_string().is_empty() {
        None
    } else {
        parse_query::<HashMap<String, String>>(request)?.remove(CONSISTENCY_TOKEN_PARAM)
    };
    let mut tokens = Vec::new();
    for text in [header, query].iter().flatten() {
        let text = text.trim();
        if !text.is_empty() {
            let token = text
                .parse::<ConsistencyToken>()
                .map_err(|e| ApiError::invalid_request(e.to_string()))?;
            tokens.push(token);
        }
    }
    Ok(match tokens.len() {
        0 => None,
        1 => tokens.pop(),
        _ => Some(ConsistencyToken::from_positions(tokens.iter().flat_map(
            |t| {
                t.offsets()
                    .map(|(partition, offset)| RecordPosition { partition, offset })
            },
        ))),
    })
}

/// Adds `X-Replica-Applied` and `X-Replica-Lag` to every answer of a read, errors included, as
/// the replica was when the handler read the store: the data served is at least that fresh.
pub async fn freshness_middleware(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let mut response = next.call(request).await?;
    let freshness = response.request().extensions_mut().remove::<Freshness>();
    if let Some(freshness) = freshness {
        let headers = response.headers_mut();
        if let Some(applied) = freshness.applied {
            headers.insert(REPLICA_APPLIED_HEADER, applied);
        }
        headers.insert(REPLICA_LAG_HEADER, HeaderValue::from(freshness.lag));
    }
    Ok(response)
}

fn etag(entry: &StoredEntry) -> String {
    format!("\"{}-{}\"", entry.partition, entry.offset)
}

/// A stored correlation id came from a Kafka header anyone could have written; only a valid
/// header value is echoed.
fn correlation_header(entry: &StoredEntry) -> Option<HeaderValue> {
    entry
        .correlation_id
        .as_deref()
        .filter(|id| id.bytes().all(|b| b.is_ascii_graphic()))
        .and_then(|id| HeaderValue::from_str(id).ok())
}

fn value_response(entry: StoredEntry, content_type: ContentType) -> HttpResponse {
    let mut response = entry_headers(&entry);
    response.content_type(content_type).body(entry.value)
}

/// A `200` with the entry's `ETag`, stored correlation id and, when it expires, `X-KV-Expires-At`.
fn entry_headers(entry: &StoredEntry) -> actix_web::HttpResponseBuilder {
    let mut response = HttpResponse::Ok();
    response.insert_header((header::ETAG, etag(entry)));
    if let Some(id) = correlation_header(entry) {
        response.insert_header((CORRELATION_ID, id));
    }
    if let Some(expires_at) = entry.expires_at_ms {
        response.insert_header((EXPIRES_AT, expires_at));
    }
    response
}

/// The seed routes answer as the .NET service's `Results.Ok(value)` did: the text as a JSON
/// string, `application/json`, so its clients' `ReadFromJsonAsync<string>()` keeps working.
fn original_response(entry: &StoredEntry, text: &str) -> HttpResponse {
    entry_headers(entry).json(text)
}

/// Whether `If-None-Match` names the entry's current version.
fn not_modified(request: &HttpRequest, etag: &str) -> bool {
    request
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|list| {
            list.split(',')
                .map(|tag| tag.trim().trim_start_matches("W/"))
                .any(|tag| tag == "*" || tag == etag)
        })
}

/// `GET /v1/kv/{key}`: the raw value bytes.
pub async fn get_value(
    _auth: Authorized<operation::Read>,
    request: HttpRequest,
    state: web::Data<ReaderState>,
) -> Result<HttpResponse, ApiError> {
    let key = key_from_path(&request, NATIVE_PREFIX)?;
    state.prepare_read(&request).await?;
    let entry = state.lookup(&key)?;
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
    _auth: Authorized<operation::Read>,
    request: HttpRequest,
    body: JsonBody<serde_json::Map<String, Value>>,
    state: web::Data<ReaderState>,
) -> Result<HttpResponse, ApiError> {
    let body = body.read().await?;
    let key = key_field(&body)?;
    state.prepare_read(&request).await?;
    let entry = state.lookup(key.as_bytes())?;
    // .NET read the value as UTF-8 text; bytes that are not are replaced, as it did.
    let text = String::from_utf8_lossy(&entry.value);
    Ok(original_response(&entry, &text))
}

/// `POST /retrieve/b64` `{"key": base64}`, the original's binary read route: the value,
/// base64-encoded, as text.
pub async fn retrieve_b64(
    _auth: Authorized<operation::Read>,
    request: HttpRequest,
    body: JsonBody<serde_json::Map<String, Value>>,
    state: web::Data<ReaderState>,
) -> Result<HttpResponse, ApiError> {
    let body = body.read().await?;
    let key = BASE64
        .decode(key_field(&body)?)
        .map_err(|e| ApiError::invalid_request(format!("field `key` is not valid base64: {e}")))?;
    if key.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidKey,
            "field `key` decodes to an empty key",
        ));
    }
    state.prepare_read(&request).await?;
    let entry = state.lookup(&key)?;
    Ok(original_response(&entry, &BASE64.encode(&entry.value)))
}

/// Bytes in JSON: `text` when they are UTF-8, otherwise `b64` (standard base64).
#[derive(Debug, Serialize)]
struct JsonBytes {
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    b64: Option<String>,
}

fn json_bytes(bytes: Vec<u8>) -> JsonBytes {
    match String::from_utf8(bytes) {
        Ok(text) => JsonBytes {
            text: Some(text),
            b64: None,
        },
        Err(e) => JsonBytes {
            text: None,
            b64: Some(BASE64.encode(e.as_bytes())),
        },
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchGetRequest {
    /// Keys as text.
    #[serde(default)]
    keys: Vec<String>,
    /// Keys as standard base64, for binary keys.
    #[serde(default)]
    keys_b64: Vec<String>,
}

#[derive(Debug, Serialize)]
struct BatchGetItem<'a> {
    key: &'a str,
    found: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_b64: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    etag: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_id: Option<&'a str>,
    /// When the value expires, as `X-KV-Expires-At` says it on single reads.
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a Value>,
}

#[derive(Debug, Serialize)]
struct BatchGetAnswer<'a> {
    results: Vec<BatchGetItem<'a>>,
}

/// What a value adds to a batchGet answer before JSON escaping: its text, or its base64.
fn answer_len(value: &[u8]) -> usize {
    if std::str::from_utf8(value).is_ok() {
        value.len()
    } else {
        value.len().div_ceil(3) * 4
    }
}

/// One distinct key's answer, shared by every place the request names it.
#[derive(Debug)]
struct FoundValue {
    value: JsonBytes,
    etag: String,
    correlation_id: Option<String>,
    expires_at: Option<u64>,
}

impl FoundValue {
    fn of(entry: StoredEntry) -> FoundValue {
        FoundValue {
            etag: etag(&entry),
            expires_at: entry.expires_at_ms,
            correlation_id: correlation_header(&entry)
                .and_then(|h| h.to_str().ok().map(str::to_owned)),
            value: json_bytes(entry.value),
        }
    }
}

/// `POST /v1/kv:batchGet` `{"keys": [...]}` or `{"keys_b64": [...]}`: every key looked up in one
/// snapshot; one result per key, in request order. A missing key is a result with
/// `found: false` and the `key_not_found` error, not a failure of the whole batch.
pub async fn batch_get(
    _auth: Authorized<operation::Read>,
    request: HttpRequest,
    body: JsonBody<BatchGetRequest>,
    state: web::Data<ReaderState>,
) -> Result<HttpResponse, ApiError> {
    let body = body.read().await?;
    let count = body.keys.len() + body.keys_b64.len();
    if count == 0 {
        return Err(ApiError::invalid_request(
            "field `keys` (or `keys_b64`) must list at least one key",
        ));
    }
    if count > MAX_BATCH_KEYS {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("field `keys` lists {count} keys, over the limit of {MAX_BATCH_KEYS}"),
        ));
    }
    if !body.keys.is_empty() && !body.keys_b64.is_empty() {
        return Err(ApiError::invalid_request(
            "give either field `keys` or field `keys_b64`, not both",
        ));
    }
    let (labels, keys): (Vec<String>, Vec<Vec<u8>>) = if body.keys_b64.is_empty() {
        for (i, key) in body.keys.iter().enumerate() {
            if key.is_empty() {
                return Err(ApiError::new(
                    ErrorCode::InvalidKey,
                    format!("field `keys[{i}]` is empty"),
                ));
            }
        }
        let keys = body.keys.iter().map(|k| k.as_bytes().to_vec()).collect();
        (body.keys, keys)
    } else {
        let mut keys = Vec::with_capacity(count);
        for (i, key) in body.keys_b64.iter().enumerate() {
            let decoded = BASE64.decode(key).map_err(|e| {
                ApiError::invalid_request(format!("field `keys_b64[{i}]` is not valid base64: {e}"))
            })?;
            if decoded.is_empty() {
                return Err(ApiError::new(
                    ErrorCode::InvalidKey,
                    format!("field `keys_b64[{i}]` is empty"),
                ));
            }
            keys.push(decoded);
        }
        (body.keys_b64, keys)
    };
    state.prepare_read(&request).await?;
    // A key named many times is looked up and held once: 1 000 copies of a key with a 1 MiB
    // value cost one value, and the answer's size is checked before it is built.
    let mut distinct: HashMap<&[u8], usize> = HashMap::with_capacity(keys.len());
    let mut slots = Vec::with_capacity(keys.len());
    for key in &keys {
        let next = distinct.len();
        slots.push(*distinct.entry(key.as_slice()).or_insert(next));
    }
    let mut unique: Vec<&[u8]> = vec![&[]; distinct.len()];
    for (key, slot) in &distinct {
        unique[*slot] = key;
    }
    let mut named = vec![0usize; unique.len()];
    for slot in &slots {
        named[*slot] += 1;
    }
    // Each value counted as often as it is named, as it will be written, and the lookups
    // stopped as soon as the answer would pass the bound: nothing over it is ever held.
    let limit = state.max_batch_get_bytes;
    let mut answer_bytes = 0usize;
    let found = state
        .store
        .get_many_while(unique.iter().copied(), |i, entry| {
            answer_bytes = answer_bytes.saturating_add(answer_len(&entry.value) * named[i]);
            answer_bytes <= limit
        })
        .map_err(store_error)?;
    let Some(found) = found else {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the answer would hold more than {limit} bytes of values (KV_API_MAX_BATCH_GET_BYTES); \
                 ask for fewer keys at a time"
            ),
        ));
    };
    let found: Vec<Option<FoundValue>> = found
        .into_iter()
        .map(|entry| entry.map(FoundValue::of))
        .collect();
    let missing = serde_json::json!({"code": ErrorCode::KeyNotFound, "message": ApiError::key_not_found().message});
    let results: Vec<BatchGetItem<'_>> = labels
        .iter()
        .zip(&slots)
        .map(|(key, slot)| match &found[*slot] {
            Some(found) => BatchGetItem {
                key,
                found: true,
                value: found.value.text.as_deref(),
                value_b64: found.value.b64.as_deref(),
                etag: Some(&found.etag),
                correlation_id: found.correlation_id.as_deref(),
                expires_at: found.expires_at,
                error: None,
            },
            None => BatchGetItem {
                key,
                found: false,
                value: None,
                value_b64: None,
                etag: None,
                correlation_id: None,
                expires_at: None,
                error: Some(&missing),
            },
        })
        .collect();
    Ok(HttpResponse::Ok().json(BatchGetAnswer { results }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    prefix: Option<String>,
    prefix_b64: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
    #[allow(dead_code)] // read by `consistency_token`; named here so it is not an unknown field
    consistency_token: Option<String>,
}

#[derive(Debug, Serialize)]
struct ListedKey {
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_b64: Option<String>,
}

/// `GET /v1/kv?prefix=&limit=&cursor=`: keys in byte order, a page at a time. `next_cursor` is
/// `null` on the last page; pass it back as `cursor` for the next one.
pub async fn list_keys(
    _auth: Authorized<operation::Read>,
    request: HttpRequest,
    state: web::Data<ReaderState>,
) -> Result<HttpResponse, ApiError> {
    // Parsed here, after the token was checked, never by an extractor that could answer 400
    // to a caller who has no right to an answer at all.
    let query: ListQuery = parse_query(&request)?;
    let prefix = match (query.prefix, query.prefix_b64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_request(
                "give either parameter `prefix` or `prefix_b64`, not both",
            ))
        }
        (Some(prefix), None) => prefix.into_bytes(),
        (None, Some(b64)) => BASE64.decode(b64.trim()).map_err(|e| {
            ApiError::invalid_request(format!("parameter `prefix_b64` is not valid base64: {e}"))
        })?,
        (None, None) => Vec::new(),
    };
    let limit = match query.limit.as_deref() {
        None => DEFAULT_LIST_LIMIT,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIST_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::invalid_request(format!(
                    "parameter `limit` must be a whole number from 1 to {MAX_LIST_LIMIT}, got {text:?}"
                ))
            })?,
    };
    let after = match query.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(cursor) => Some(
            URL_SAFE_NO_PAD
                .decode(cursor)
                .ok()
                .filter(|k| !k.is_empty())
                .ok_or_else(|| {
                    ApiError::invalid_request(
                        "parameter `cursor` is not a cursor this API returned",
                    )
                })?,
        ),
    };
    state.prepare_read(&request).await?;
    let (keys, more) = if state.store.is_encrypted() {
        // A sealed store keeps keys in an order that says nothing about them, so listing one
        // opens every entry: it runs on the blocking pool, a few at a time, never on the
        // workers that serve every other read.
        let Ok(slot) = state.sealed_listings.clone().try_acquire_owned() else {
            return Err(ApiError::new(
                ErrorCode::Overloaded,
                "as many listings of this encrypted replica run as it takes at once; retry",
            )
            .with_retry_after(Duration::from_secs(1)));
        };
        let store = state.store.clone();
        web::block(move || {
            let _slot = slot;
            store.list_keys(&prefix, after.as_deref(), limit)
        })
        .await
        .map_err(|e| ApiError::internal(format!("the listing task failed: {e}")))?
        .map_err(store_error)?
    } else {
        state
            .store
            .list_keys(&prefix, after.as_deref(), limit)
            .map_err(store_error)?
    };
    let next_cursor = more
        .then(|| keys.last().map(|k| URL_SAFE_NO_PAD.encode(k)))
        .flatten();
    let keys: Vec<ListedKey> = keys
        .into_iter()
        .map(|k| {
            let bytes = json_bytes(k);
            ListedKey {
                key: bytes.text,
                key_b64: bytes.b64,
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({"keys": keys, "next_cursor": next_cursor})))
}

/// `/healthz/live`: fails once the consumer loop has died, so the orchestrator restarts us.
pub async fn live(state: web::Data<ReaderState>) -> HttpResponse {
    if state.progress.is_alive() {
        HttpResponse::Ok().json(serde_json::json!({"status": "live"}))
    } else {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({
            "status": "dead",
            "error": {
                "code": ErrorCode::Internal,
                "message": "the consumer loop has stopped; the replica no longer follows the topic",
            }
        }))
    }
}

/// `/healthz/ready`: ready once every partition reached its end offset seen at start-up, unless
/// the replica refuses every record it reads for a configuration reason.
pub async fn ready(state: web::Data<ReaderState>) -> HttpResponse {
    let report = state.progress.report();
    let status = match (&report.misconfiguration, report.alive, report.ready) {
        (_, false, _) => "dead",
        (Some(_), true, _) => "misconfigured",
        (None, true, true) => "ready",
        (None, true, false) => "catching_up",
    };
    let mut body = serde_json::json!({
        "status": status,
        "lag": report.lag,
        "partitions": report.partitions,
        "skipped_records": report.skipped_records,
        "rebuilds": report.rebuilds,
        "records_applied": report.records_applied,
    });
    if let Some(misconfiguration) = &report.misconfiguration {
        body["misconfiguration"] = serde_json::json!(misconfiguration);
        body["error"] = serde_json::json!({
            "code": ErrorCode::NotReady,
            "message": misconfiguration.message,
        });
    }
    if report.ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
