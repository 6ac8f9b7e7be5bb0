//! HTTP routes of a read replica.
//!
//! Every read may carry a consistency token (read-your-writes) and every read answer, found or
//! not, says how fresh the replica was when it read (see [`freshness_middleware`]).

pub mod explain;
pub mod outcome;
pub mod status_page;
pub mod watch;

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
use kv_core::record::RecordCodec;
use kv_core::web::auth::{operation, Authorized};
use kv_core::web::error::{ApiError, ErrorCode};
use kv_core::web::http::{
    key_from_path, parse_json, parse_query, started, JsonBody, CONSISTENCY_TOKEN, CORRELATION_ID,
    EXPIRES_AT,
};
use kv_core::web::json::{field, BASE64};
use kv_core::web::metrics::metrics_endpoint;
use kv_core::web::routing::{openapi_document, openapi_json_document, Endpoint};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::acting::owner::Election;
use crate::cluster::fanout::{self, PartError};
use crate::cluster::shard::{ShardSpec, Topology};
use crate::cluster::{Cluster, Target, FORWARDED_BY_HEADER, MAX_LAG_HEADER, SERVED_BY_HEADER};
use crate::metrics::SnapshotMetrics;
use crate::replica::progress::{Freshness, Progress, WaitError};
use crate::store::{Store, StoredEntry};
use crate::transfer::format;

pub const NATIVE_PREFIX: &str = "/v1/kv/";

/// Highest offset applied per partition, in consistency-token form; usable as a token on
/// another replica to read data at least this fresh.
pub const REPLICA_APPLIED_HEADER: HeaderName = HeaderName::from_static("x-replica-applied");
/// Records in the topic this replica has not applied yet, over all partitions.
pub const REPLICA_LAG_HEADER: HeaderName = HeaderName::from_static("x-replica-lag");
/// Milliseconds since a broker last answered this replica's consumer. The lag is counted
/// against the end offsets the broker last reported, so a replica cut off from the broker shows
/// its last lag; this header is what grows then.
pub const REPLICA_SILENCE_HEADER: HeaderName = HeaderName::from_static("x-replica-silence-ms");

/// Most keys one `POST /v1/kv:batchGet` may ask for.
pub const MAX_BATCH_KEYS: usize = 1000;
/// Keys per listing page: default and maximum.
pub const DEFAULT_LIST_LIMIT: usize = 100;
pub const MAX_LIST_LIMIT: usize = 1000;

/// The reader's OpenAPI document, served at `GET /openapi.yaml`.
pub const OPENAPI: &str = include_str!("../../../../docs/openapi-reader.yaml");

/// Every route the reader serves. The app registers exactly these, and the OpenAPI test checks
/// the document against them.
pub fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::key_tail("/v1/kv/{key}").on(Method::GET, web::to(get_value)),
        Endpoint::new("/v1/kv").on(Method::GET, web::to(list_keys)),
        Endpoint::new("/v1/kv:batchGet").on(Method::POST, web::to(batch_get)),
        Endpoint::new("/v1/kv:watch").on(Method::GET, web::to(crate::http::watch::watch)),
        Endpoint::key_tail("/v1/state/{key}")
            .on(Method::GET, web::to(crate::http::explain::explain)),
        Endpoint::new("/v1/outcomes/{partition}/{offset}")
            .on(Method::GET, web::to(crate::http::outcome::outcome)),
        Endpoint::new("/retrieve").on(Method::POST, web::to(retrieve)),
        Endpoint::new("/retrieve/b64").on(Method::POST, web::to(retrieve_b64)),
        Endpoint::new("/healthz").on(Method::GET, web::to(started)),
        Endpoint::new("/healthz/live").on(Method::GET, web::to(live)),
        Endpoint::new("/healthz/ready").on(Method::GET, web::to(ready)),
        Endpoint::new("/healthz/cluster").on(Method::GET, web::to(cluster_health)),
        Endpoint::new("/status").on(Method::GET, web::to(crate::http::status_page::status_page)),
        Endpoint::new("/admin/v1/snapshot").on(Method::GET, web::to(snapshot)),
        Endpoint::new("/metrics").on(Method::GET, web::to(metrics_endpoint)),
        Endpoint::new("/openapi.yaml").on(Method::GET, openapi_document(OPENAPI)),
        Endpoint::new("/openapi.json").on(Method::GET, openapi_json_document(OPENAPI)),
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
    /// Set on a sharded reader: who holds which partition, and how to reach them.
    pub cluster: Option<Arc<Cluster>>,
    /// What a snapshot needs: the topic, its partition count, how records are encoded on it.
    pub topic: String,
    pub topology: Arc<Topology>,
    pub codec: RecordCodec,
    /// Snapshots being served (KV_API_SNAPSHOT_CONCURRENCY).
    pub snapshots: Arc<tokio::sync::Semaphore>,
    pub snapshot_metrics: SnapshotMetrics,
    /// Which partitions this process acts on as their owner.
    pub election: Election,
}

/// The HTTP client a worker forwards reads with; one per worker, so its connections stay on
/// the worker's own runtime.
#[derive(Debug, Clone)]
pub struct PeerClient(pub reqwest::Client);

/// The partitions a read touches: the token's offsets elsewhere do not concern it, and only
/// their lag counts against `max_lag`.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// A full replica's read.
    All,
    Partitions(&'a [i32]),
}

/// Where a read of one key is answered.
pub(crate) enum Routed {
    /// Here, scoped to these partitions.
    Local(Vec<i32>),
    /// By an owner; its answer.
    Forwarded(HttpResponse),
}

/// How many listings of an encrypted-at-rest store may run at once: each reads every entry.
pub const MAX_SEALED_LISTINGS: usize = 2;

impl ReaderState {
    /// Waits for the request's consistency token, if any, then notes how fresh the replica is
    /// for [`freshness_middleware`]. Call it right before reading the store.
    pub(crate) async fn prepare_read(
        &self,
        request: &HttpRequest,
        scope: Scope<'_>,
    ) -> Result<(), ApiError> {
        let token = match consistency_token(request)? {
            Some(token) => self.scoped(token, scope)?,
            None => None,
        };
        if let Some(token) = token {
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
        if let Some(bound) = max_lag(request)? {
            let partitions = match scope {
                Scope::All => None,
                Scope::Partitions(partitions) => Some(partitions),
            };
            if let Some((partition, lag)) = self.progress.max_lag(partitions) {
                if lag > bound {
                    return Err(ApiError::new(
                        ErrorCode::ReplicaLagging,
                        format!(
                            "this replica is {lag} records behind on partition {partition}, more \
                             than the {bound} the read allows (max_lag); retry, or read from \
                             another replica"
                        ),
                    )
                    .with_retry_after(Duration::from_secs(1)));
                }
            }
        }
        request.extensions_mut().insert(self.progress.freshness());
        Ok(())
    }

    /// The part of a token a sharded read waits for: the offsets of the partitions it reads.
    /// A partition the topic does not have is still an error.
    fn scoped(
        &self,
        token: ConsistencyToken,
        scope: Scope<'_>,
    ) -> Result<Option<ConsistencyToken>, ApiError> {
        let (Some(cluster), Scope::Partitions(partitions)) = (&self.cluster, scope) else {
            return Ok(Some(token));
        };
        let count = topic_partitions(cluster)?;
        if let Some((partition, _)) = token.offsets().find(|(p, _)| *p as u32 >= count) {
            return Err(ApiError::invalid_request(format!(
                "consistency token {token} cannot name a write of this topic: the topic has no \
                 partition {partition} (it has {count})"
            )));
        }
        let kept = ConsistencyToken::from_positions(
            token
                .offsets()
                .filter(|(p, _)| partitions.contains(p))
                .map(|(partition, offset)| RecordPosition { partition, offset }),
        );
        let empty = kept.offsets().next().is_none();
        Ok((!empty).then_some(kept))
    }

    /// Answers the read of `key` by forwarding it to an owner of its partition when this shard
    /// should not answer it itself. `body` is the request's own, for the owner.
    pub(crate) async fn route_key(
        &self,
        client: &PeerClient,
        request: &HttpRequest,
        key: &[u8],
        body: Option<&[u8]>,
    ) -> Result<Routed, ApiError> {
        let Some(cluster) = &self.cluster else {
            return Ok(Routed::Local(Vec::new()));
        };
        let count = topic_partitions(cluster)?;
        let partition = cluster.partition_of(key, count);
        if let Some(from) = forwarded_by(request) {
            return if cluster.holds(partition) {
                Ok(Routed::Local(vec![partition]))
            } else {
                Err(misrouted_forward(&from, partition))
            };
        }
        let mut failures = Vec::new();
        for target in cluster.targets(partition, max_lag(request)?, &self.progress) {
            let peer = match target {
                Target::Local => return Ok(Routed::Local(vec![partition])),
                Target::Peer(peer) => peer,
            };
            let path = request
                .uri()
                .path_and_query()
                .map_or_else(|| request.path().to_owned(), |pq| pq.as_str().to_owned());
            match cluster
                .forward(&client.0, peer, request, &path, body.map(<[u8]>::to_vec))
                .await
            {
                Ok(response) => {
                    let answer = fanout::passed_through(response, self.max_batch_get_bytes).await;
                    return Ok(Routed::Forwarded(answer));
                }
                Err(error) => failures.push(error.to_string()),
            }
        }
        Err(shard_unavailable(&[partition], &failures))
    }

    /// A full replica's reads touch every partition; a shard's, the ones routed to it.
    pub(crate) fn scope<'a>(&self, partitions: &'a [i32]) -> Scope<'a> {
        match self.cluster {
            None => Scope::All,
            Some(_) => Scope::Partitions(partitions),
        }
    }

    fn lookup(&self, user_key: &[u8]) -> Result<StoredEntry, ApiError> {
        self.store
            .get(user_key)
            .map_err(store_error)?
            .ok_or_else(ApiError::key_not_found)
    }
}

/// The topic's partition count, which a sharded reader routes by.
fn topic_partitions(cluster: &Cluster) -> Result<u32, ApiError> {
    cluster.partitions().ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotReady,
            "this shard has not read the topic's partitions from the broker yet; retry",
        )
        .with_retry_after(Duration::from_secs(1))
    })
}

/// The shard that forwarded this request, if one did.
fn forwarded_by(request: &HttpRequest) -> Option<String> {
    request.headers().get(FORWARDED_BY_HEADER).map(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .chars()
            .take(16)
            .collect()
    })
}

fn misrouted_forward(from: &str, partition: i32) -> ApiError {
    ApiError::new(
        ErrorCode::ShardUnavailable,
        format!(
            "shard {from} forwarded a read of partition {partition} here, but this shard does \
             not hold it: the shards disagree on KV_API_SHARD or KV_API_SHARD_REPLICAS"
        ),
    )
    .with_retry_after(Duration::from_secs(1))
}

fn shard_unavailable(partitions: &[i32], failures: &[String]) -> ApiError {
    let tried = if failures.is_empty() {
        String::new()
    } else {
        format!(" (tried: {})", failures.join("; "))
    };
    ApiError::new(
        ErrorCode::ShardUnavailable,
        format!(
            "no shard holding partition {} answers{tried}; keys of other partitions still \
             answer; retry",
            partitions
                .iter()
                .map(i32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
    .with_retry_after(Duration::from_secs(1))
}

/// The read's bound on lag: `max_lag` in the query or `X-Max-Replica-Lag`, the smaller of the
/// two when both are given.
fn max_lag(request: &HttpRequest) -> Result<Option<u64>, ApiError> {
    let parse = |text: &str, name: &str| {
        text.trim().parse::<u64>().map_err(|_| {
            ApiError::invalid_request(format!(
                "{name} must be a whole number of records (0 or more), got {:?}",
                text.chars().take(32).collect::<String>()
            ))
        })
    };
    let header = match request.headers().get(MAX_LAG_HEADER) {
        Some(raw) => Some(parse(
            raw.to_str().unwrap_or("?"),
            "header X-Max-Replica-Lag",
        )?),
        None => None,
    };
    let query = if request.query_string().contains("max_lag") {
        match parse_query::<HashMap<String, String>>(request)?.remove("max_lag") {
            Some(text) => Some(parse(&text, "parameter `max_lag`")?),
            None => None,
        }
    } else {
        None
    };
    Ok(match (header, query) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
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
/// the replica was when the handler read the store: the data served is at least that fresh; and
/// `X-Replica-Silence-Ms`, how long ago a broker last answered (once one has).
pub async fn freshness_middleware(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let state = request.app_data::<web::Data<ReaderState>>();
    let served_by = state.and_then(|state| state.cluster.as_ref().map(|c| c.served_by()));
    let answered_ms = state.and_then(|state| state.progress.broker_answered_ms());
    let mut response = next.call(request).await?;
    // Every answer of a shard names who answered: a forwarded one carries the owner's.
    if let Some(served_by) = served_by {
        if !response.headers().contains_key(SERVED_BY_HEADER) {
            response.headers_mut().insert(SERVED_BY_HEADER, served_by);
        }
    }
    let freshness = response.request().extensions_mut().remove::<Freshness>();
    if let Some(freshness) = freshness {
        let headers = response.headers_mut();
        if let Some(applied) = freshness.applied {
            headers.insert(REPLICA_APPLIED_HEADER, applied);
        }
        headers.insert(REPLICA_LAG_HEADER, HeaderValue::from(freshness.lag));
        if let Some(answered_ms) = answered_ms {
            let silence = kv_core::record::now_ms().saturating_sub(answered_ms);
            headers.insert(REPLICA_SILENCE_HEADER, HeaderValue::from(silence));
        }
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
    client: web::Data<PeerClient>,
) -> Result<HttpResponse, ApiError> {
    let key = key_from_path(&request, NATIVE_PREFIX)?;
    let scope = match state.route_key(&client, &request, &key, None).await? {
        Routed::Forwarded(answer) => return Ok(answer),
        Routed::Local(scope) => scope,
    };
    state.prepare_read(&request, state.scope(&scope)).await?;
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
    client: web::Data<PeerClient>,
) -> Result<HttpResponse, ApiError> {
    let raw = body.read_bytes().await?;
    let body: serde_json::Map<String, Value> = parse_json(&raw)?;
    let key = key_field(&body)?;
    let scope = match state
        .route_key(&client, &request, key.as_bytes(), Some(&raw))
        .await?
    {
        Routed::Forwarded(answer) => return Ok(answer),
        Routed::Local(scope) => scope,
    };
    state.prepare_read(&request, state.scope(&scope)).await?;
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
    let scope = match state.route_key(&client, &request, &key, Some(&raw)).await? {
        Routed::Forwarded(answer) => return Ok(answer),
        Routed::Local(scope) => scope,
    };
    state.prepare_read(&request, state.scope(&scope)).await?;
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
    client: web::Data<PeerClient>,
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
    let field = if body.keys_b64.is_empty() {
        "keys"
    } else {
        "keys_b64"
    };
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
    if let Some(cluster) = state.cluster.clone() {
        return batch_get_across(&state, &cluster, &client, &request, field, &labels, &keys).await;
    }
    state.prepare_read(&request, Scope::All).await?;
    let wanted: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let found = state.lookup_bounded(&wanted, state.max_batch_get_bytes)?;
    let results: Vec<BatchGetItem<'_>> = labels
        .iter()
        .zip(&found.slots)
        .map(|(key, slot)| found.item(key, *slot))
        .collect();
    Ok(HttpResponse::Ok().json(BatchGetAnswer { results }))
}

/// The values of a batchGet's keys, each distinct key looked up and held once.
struct BatchValues {
    /// For each key asked, in order, its place in `found`.
    slots: Vec<usize>,
    found: Vec<Option<FoundValue>>,
    /// What the values add to the answer (see [`answer_len`]), each counted as often as named.
    answer_bytes: usize,
}

impl BatchValues {
    fn item<'a>(&'a self, key: &'a str, slot: usize) -> BatchGetItem<'a> {
        match &self.found[slot] {
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
                error: Some(&KEY_NOT_FOUND_ITEM),
            },
        }
    }
}

static KEY_NOT_FOUND_ITEM: std::sync::LazyLock<Value> = std::sync::LazyLock::new(
    || serde_json::json!({"code": ErrorCode::KeyNotFound, "message": ApiError::key_not_found().message}),
);

fn answer_too_large(limit: usize) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!(
            "the answer would hold more than {limit} bytes of values (KV_API_MAX_BATCH_GET_BYTES); \
             ask for fewer keys at a time"
        ),
    )
}

impl ReaderState {
    /// Looks `keys` up in one snapshot. A key named many times is looked up and held once:
    /// 1 000 copies of a key with a 1 MiB value cost one value, and the lookups stop as soon
    /// as the answer would pass `limit`, so nothing over it is ever held.
    fn lookup_bounded(&self, keys: &[&[u8]], limit: usize) -> Result<BatchValues, ApiError> {
        let mut distinct: HashMap<&[u8], usize> = HashMap::with_capacity(keys.len());
        let mut slots = Vec::with_capacity(keys.len());
        for key in keys {
            let next = distinct.len();
            slots.push(*distinct.entry(key).or_insert(next));
        }
        let mut unique: Vec<&[u8]> = vec![&[]; distinct.len()];
        for (key, slot) in &distinct {
            unique[*slot] = key;
        }
        let mut named = vec![0usize; unique.len()];
        for slot in &slots {
            named[*slot] += 1;
        }
        let mut answer_bytes = 0usize;
        let found = self
            .store
            .get_many_while(unique.iter().copied(), |i, entry| {
                answer_bytes = answer_bytes.saturating_add(answer_len(&entry.value) * named[i]);
                answer_bytes <= limit
            })
            .map_err(store_error)?
            .ok_or_else(|| answer_too_large(limit))?;
        Ok(BatchValues {
            slots,
            found: found
                .into_iter()
                .map(|entry| entry.map(FoundValue::of))
                .collect(),
            answer_bytes,
        })
    }
}

/// A sharded batchGet: the keys split by the owner of their partition, each owner asked once,
/// all at once, and the answers put back in request order. An owner that cannot be reached
/// hands its partitions to the next owner; keys of a partition no owner serves get a
/// `shard_unavailable` result, every other key its answer.
async fn batch_get_across(
    state: &ReaderState,
    cluster: &Cluster,
    client: &PeerClient,
    request: &HttpRequest,
    field: &str,
    labels: &[String],
    keys: &[Vec<u8>],
) -> Result<HttpResponse, ApiError> {
    let count = topic_partitions(cluster)?;
    let partitions: Vec<i32> = keys
        .iter()
        .map(|k| cluster.partition_of(k, count))
        .collect();
    let forwarded = forwarded_by(request);
    if let Some(from) = &forwarded {
        if let Some(&partition) = partitions.iter().find(|&&p| !cluster.holds(p)) {
            return Err(misrouted_forward(from, partition));
        }
    }
    let bound = max_lag(request)?;
    let limit = state.max_batch_get_bytes;
    let mut results: Vec<Option<Value>> = vec![None; keys.len()];
    let mut pending: std::collections::BTreeSet<i32> = partitions.iter().copied().collect();
    let mut excluded = std::collections::BTreeSet::new();
    let mut failures: Vec<String> = Vec::new();
    let mut served = std::collections::BTreeSet::new();
    let mut answer_bytes = 0usize;
    let mut unavailable: Vec<i32> = Vec::new();
    while !pending.is_empty() {
        let mut local: Vec<i32> = Vec::new();
        let mut remote: std::collections::BTreeMap<u32, Vec<i32>> = Default::default();
        for &partition in &pending {
            let target = if forwarded.is_some() {
                Some(Target::Local)
            } else {
                cluster
                    .targets(partition, bound, &state.progress)
                    .into_iter()
                    .find(|t| !matches!(t, Target::Peer(peer) if excluded.contains(peer)))
            };
            match target {
                Some(Target::Local) => local.push(partition),
                Some(Target::Peer(peer)) => remote.entry(peer).or_default().push(partition),
                None => unavailable.push(partition),
            }
        }
        pending.clear();
        let asked = |parts: &[i32]| -> Vec<usize> {
            (0..keys.len())
                .filter(|&i| parts.contains(&partitions[i]))
                .collect()
        };
        let parts = remote.iter().map(|(&peer, parts)| {
            let indices = asked(parts);
            async move {
                let wanted: Vec<&str> = indices.iter().map(|&i| labels[i].as_str()).collect();
                let body_limit = limit
                    .saturating_mul(6)
                    .saturating_add(wanted.iter().map(|l| 2 * l.len() + 512).sum());
                let part = fanout::batch_part(
                    cluster, &client.0, request, peer, field, &wanted, body_limit,
                )
                .await;
                (peer, indices, part)
            }
        });
        let local_part = async {
            if local.is_empty() {
                return Ok(None);
            }
            state
                .prepare_read(request, Scope::Partitions(&local))
                .await?;
            let indices = asked(&local);
            let wanted: Vec<&[u8]> = indices.iter().map(|&i| keys[i].as_slice()).collect();
            let found = state.lookup_bounded(&wanted, limit)?;
            Ok::<_, ApiError>(Some((indices, found)))
        };
        let (local_part, remote_parts) =
            futures::join!(local_part, futures::future::join_all(parts));
        if let Some((indices, found)) = local_part? {
            answer_bytes += found.answer_bytes;
            for (n, &i) in indices.iter().enumerate() {
                let item = found.item(&labels[i], found.slots[n]);
                results[i] = Some(serde_json::to_value(item).map_err(|e| {
                    ApiError::internal(format!("cannot encode a batchGet result: {e}"))
                })?);
            }
            served.insert(cluster.spec.index.to_string());
        }
        for (peer, indices, part) in remote_parts {
            match part {
                Ok(part) => {
                    for (&i, item) in indices.iter().zip(part.items) {
                        answer_bytes = answer_bytes.saturating_add(item_value_len(&item));
                        results[i] = Some(item);
                    }
                    served.insert(part.served_by.unwrap_or_else(|| peer.to_string()));
                }
                Err(PartError::Refused(answer)) => return Ok(answer),
                Err(PartError::Unavailable(error)) => {
                    failures.push(error.to_string());
                    excluded.insert(peer);
                    pending.extend(remote[&peer].iter().copied());
                }
            }
        }
        if answer_bytes > limit {
            return Err(answer_too_large(limit));
        }
    }
    if !unavailable.is_empty() {
        let error = shard_unavailable(&unavailable, &failures);
        let item_error = serde_json::json!({"code": error.code, "message": error.message});
        for (i, slot) in results.iter_mut().enumerate() {
            if slot.is_none() && unavailable.contains(&partitions[i]) {
                *slot = Some(serde_json::json!({
                    "key": labels[i],
                    "found": false,
                    "error": item_error,
                }));
            }
        }
    }
    // Freshness headers describe one replica; a merged answer names its shards instead.
    request.extensions_mut().remove::<Freshness>();
    let served: Vec<String> = served.into_iter().collect();
    let mut answer = HttpResponse::Ok();
    if let Ok(value) = HeaderValue::from_str(&served.join(",")) {
        answer.insert_header((SERVED_BY_HEADER, value));
    }
    Ok(answer.json(serde_json::json!({ "results": results })))
}

/// What an item's value adds to a batchGet answer, as the owner counted it.
fn item_value_len(item: &Value) -> usize {
    ["value", "value_b64"]
        .iter()
        .filter_map(|field| item.get(field).and_then(Value::as_str))
        .map(str::len)
        .sum()
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
    #[allow(dead_code)] // read by `max_lag`
    max_lag: Option<String>,
}

/// The key prefix of a listing or a watch: parameter `prefix`, or `prefix_b64` for bytes.
pub(crate) fn prefix_param(
    prefix: Option<String>,
    prefix_b64: Option<String>,
) -> Result<Vec<u8>, ApiError> {
    match (prefix, prefix_b64) {
        (Some(_), Some(_)) => Err(ApiError::invalid_request(
            "give either parameter `prefix` or `prefix_b64`, not both",
        )),
        (Some(prefix), None) => Ok(prefix.into_bytes()),
        (None, Some(b64)) => BASE64.decode(b64.trim()).map_err(|e| {
            ApiError::invalid_request(format!("parameter `prefix_b64` is not valid base64: {e}"))
        }),
        (None, None) => Ok(Vec::new()),
    }
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
    client: web::Data<PeerClient>,
) -> Result<HttpResponse, ApiError> {
    // Parsed here, after the token was checked, never by an extractor that could answer 400
    // to a caller who has no right to an answer at all.
    let query: ListQuery = parse_query(&request)?;
    let prefix = prefix_param(query.prefix, query.prefix_b64)?;
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
    let (keys, more) = match &state.cluster {
        None => {
            state.prepare_read(&request, Scope::All).await?;
            state.local_page(prefix, after, limit).await?
        }
        Some(cluster) => {
            let count = topic_partitions(cluster)?;
            let held: Vec<i32> = (0..count as i32).filter(|&p| cluster.holds(p)).collect();
            if forwarded_by(&request).is_some() {
                state
                    .prepare_read(&request, Scope::Partitions(&held))
                    .await?;
                state.local_page(prefix, after, limit).await?
            } else {
                return list_across(
                    &state, cluster, &client, &request, &held, prefix, after, limit,
                )
                .await;
            }
        }
    };
    Ok(page_answer(keys, more))
}

fn page_answer(keys: Vec<Vec<u8>>, more: bool) -> HttpResponse {
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
    HttpResponse::Ok().json(serde_json::json!({"keys": keys, "next_cursor": next_cursor}))
}

/// Most bytes one owner's listing page may take: a page of the longest keys, base64-encoded.
const MAX_PAGE_BODY: usize = 64 * 1024 * 1024;

impl ReaderState {
    /// A page of this replica's own keys.
    async fn local_page(
        &self,
        prefix: Vec<u8>,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<(Vec<Vec<u8>>, bool), ApiError> {
        if self.store.is_encrypted() {
            // A sealed store keeps keys in an order that says nothing about them, so listing
            // one opens every entry: it runs on the blocking pool, a few at a time, never on
            // the workers that serve every other read.
            let Ok(slot) = self.sealed_listings.clone().try_acquire_owned() else {
                return Err(ApiError::new(
                    ErrorCode::Overloaded,
                    "as many listings of this encrypted replica run as it takes at once; retry",
                )
                .with_retry_after(Duration::from_secs(1)));
            };
            let store = self.store.clone();
            web::block(move || {
                let _slot = slot;
                store.list_keys(&prefix, after.as_deref(), limit)
            })
            .await
            .map_err(|e| ApiError::internal(format!("the listing task failed: {e}")))?
            .map_err(store_error)
        } else {
            self.store
                .list_keys(&prefix, after.as_deref(), limit)
                .map_err(store_error)
        }
    }
}

/// A sharded listing: a set of owners that together hold every partition (this shard first
/// when it serves), each asked for the same page of its own keys, and the pages merged. The
/// cursor is the last key, so a page through any shard is the page a full replica gives.
#[allow(clippy::too_many_arguments)]
async fn list_across(
    state: &ReaderState,
    cluster: &Cluster,
    client: &PeerClient,
    request: &HttpRequest,
    held: &[i32],
    prefix: Vec<u8>,
    after: Option<Vec<u8>>,
    limit: usize,
) -> Result<HttpResponse, ApiError> {
    let count = topic_partitions(cluster)?;
    let bound = max_lag(request)?;
    let mut excluded = std::collections::BTreeSet::new();
    let mut failures: Vec<String> = Vec::new();
    loop {
        let mut covered = std::collections::BTreeSet::new();
        let mut sources: Vec<Target> = Vec::new();
        let mut unavailable = Vec::new();
        for partition in 0..count as i32 {
            if covered.contains(&partition) {
                continue;
            }
            let target = cluster
                .targets(partition, bound, &state.progress)
                .into_iter()
                .find(|t| !matches!(t, Target::Peer(peer) if excluded.contains(peer)));
            match target {
                None => unavailable.push(partition),
                Some(target) => {
                    let shard = match target {
                        Target::Local => cluster.spec.index,
                        Target::Peer(peer) => peer,
                    };
                    covered.extend((0..count as i32).filter(|&p| cluster.spec.is_owner(shard, p)));
                    if !sources.contains(&target) {
                        sources.push(target);
                    }
                }
            }
        }
        if !unavailable.is_empty() {
            return Err(shard_unavailable(&unavailable, &failures));
        }
        let remote = sources.iter().filter_map(|target| match target {
            Target::Local => None,
            Target::Peer(peer) => Some(async move {
                (
                    *peer,
                    fanout::page_part(cluster, &client.0, request, *peer, MAX_PAGE_BODY).await,
                )
            }),
        });
        let local = async {
            if !sources.contains(&Target::Local) {
                return Ok(None);
            }
            state.prepare_read(request, Scope::Partitions(held)).await?;
            state
                .local_page(prefix.clone(), after.clone(), limit)
                .await
                .map(Some)
        };
        let (local, remote) = futures::join!(local, futures::future::join_all(remote));
        let mut pages = Vec::with_capacity(sources.len());
        let mut served = std::collections::BTreeSet::new();
        if let Some(page) = local? {
            pages.push(page);
            served.insert(cluster.spec.index.to_string());
        }
        let mut retry = false;
        for (peer, part) in remote {
            match part {
                Ok(part) => {
                    pages.push((part.keys, part.more));
                    served.insert(part.served_by.unwrap_or_else(|| peer.to_string()));
                }
                Err(PartError::Refused(answer)) => return Ok(answer),
                Err(PartError::Unavailable(error)) => {
                    failures.push(error.to_string());
                    excluded.insert(peer);
                    retry = true;
                }
            }
        }
        if retry {
            continue;
        }
        let (keys, more) = fanout::merge_pages(pages, limit);
        request.extensions_mut().remove::<Freshness>();
        let mut answer = page_answer(keys, more);
        let served: Vec<String> = served.into_iter().collect();
        if let Ok(value) = HeaderValue::from_str(&served.join(",")) {
            answer.headers_mut().insert(SERVED_BY_HEADER, value);
        }
        return Ok(answer);
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotQuery {
    /// The asking shard, `i/N`, and its `replicas`: the snapshot holds its partitions.
    shard: Option<String>,
    replicas: Option<String>,
}

/// `GET /admin/v1/snapshot[?shard=i/N&replicas=R]`: this replica's entries (of the asking
/// shard's partitions) from one read transaction, streamed as docs/wire-format.md describes.
pub async fn snapshot(
    _auth: Authorized<operation::Admin>,
    request: HttpRequest,
    state: web::Data<ReaderState>,
) -> Result<HttpResponse, ApiError> {
    let query: SnapshotQuery = parse_query(&request)?;
    let not_ready = |why: &str| {
        ApiError::new(
            ErrorCode::NotReady,
            format!("this replica {why}; ask another, or later"),
        )
        .with_retry_after(Duration::from_secs(1))
    };
    let report = state.progress.report();
    if !report.ready {
        return Err(not_ready(
            "is not ready: a snapshot is taken of a caught-up replica only",
        ));
    }
    let held: Vec<i32> = report.partitions.into_keys().collect();
    let wanted: Vec<i32> = match (query.shard, query.replicas) {
        (None, None) => held.clone(),
        (Some(shard), replicas) => {
            let replicas = replicas.as_deref().unwrap_or("1").parse().map_err(|_| {
                ApiError::invalid_request("parameter `replicas` must be a whole number")
            })?;
            let spec = ShardSpec::parse(&shard, replicas).map_err(|e| {
                ApiError::invalid_request(format!(
                    "parameters `shard` (i/N) and `replicas`: {}",
                    e.reason
                ))
            })?;
            let count = state
                .topology
                .partitions()
                .ok_or_else(|| not_ready("has not read the topic's partitions yet"))?;
            (0..count as i32).filter(|&p| spec.holds(p)).collect()
        }
        (None, Some(_)) => {
            return Err(ApiError::invalid_request(
                "parameter `replicas` needs parameter `shard`",
            ))
        }
    };
    if let Some(missing) = wanted.iter().find(|p| !held.contains(p)) {
        return Err(ApiError::invalid_request(format!(
            "this replica does not hold partition {missing}; ask one of its owners"
        )));
    }
    let Ok(slot) = state.snapshots.clone().try_acquire_owned() else {
        return Err(ApiError::new(
            ErrorCode::Overloaded,
            "as many snapshots are being served as KV_API_SNAPSHOT_CONCURRENCY allows; retry",
        )
        .with_retry_after(Duration::from_secs(5)));
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(
        format::CHUNKS_IN_FLIGHT,
    );
    let (store, codec, topic, metrics) = (
        state.store.clone(),
        state.codec.clone(),
        state.topic.clone(),
        state.snapshot_metrics.clone(),
    );
    let partitions = wanted.clone();
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let mut open = true;
        let result = format::write_snapshot(&store, &codec, &topic, &partitions, |chunk| {
            metrics.bytes_sent.inc_by(chunk.len() as u64);
            open = tx.blocking_send(Ok(chunk)).is_ok();
            open
        });
        let outcome = match result {
            Ok(_) if open => "complete",
            Ok(_) => "cut",
            Err(error) => {
                tracing::error!(%error, "a snapshot failed while reading the store");
                let _ = tx.blocking_send(Err(std::io::Error::other(error.to_string())));
                "cut"
            }
        };
        metrics.served.with_label_values(&[outcome]).inc();
    });
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let listed = wanted
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut answer = HttpResponse::Ok();
    answer.content_type(format::CONTENT_TYPE);
    if let Ok(value) = HeaderValue::from_str(&listed) {
        answer.insert_header((HeaderName::from_static("x-snapshot-partitions"), value));
    }
    Ok(answer.streaming(body))
}

/// `/healthz/cluster`: every shard's partitions, readiness and lag as this shard last heard
/// them, this replica's own partitions, replay and freshness, and the partitions it acts on as
/// their owner (`owner`, from [`crate::acting::owner::Election`]); `/status` shows the same value.
/// Anonymous, like the other health routes: it names no key and no peer address.
pub async fn cluster_health(state: web::Data<ReaderState>) -> HttpResponse {
    HttpResponse::Ok().json(crate::cluster::health(
        &state.topic,
        state.cluster.as_deref(),
        &state.progress,
        &state.election,
    ))
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
/// the replica refuses every record it reads for a configuration reason or stopped applying for
/// want of room in its store.
pub async fn ready(state: web::Data<ReaderState>) -> HttpResponse {
    let report = state.progress.report();
    let status = report.status();
    let mut body = serde_json::json!({
        "status": status,
        "lag": report.lag,
        "partitions": report.partitions,
        "skipped_records": report.skipped_records,
        "rebuilds": report.rebuilds,
        "records_applied": report.records_applied,
        "misrouted_records": report.misrouted_records,
    });
    if let Some(store_full) = &report.store_full {
        body["store_full"] = serde_json::json!(store_full);
        body["error"] = serde_json::json!({
            "code": ErrorCode::NotReady,
            "message": store_full.message,
        });
    }
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
