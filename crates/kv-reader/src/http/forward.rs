//! The HTTP side of a shard's forward: what of the caller's request goes to the owner, and the
//! owner's answer passed back as this shard's.

use std::time::Duration;

use actix_web::http::header::{self, ContentType, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use base64::Engine;
use kv_core::conditional::Version;
use kv_core::trace_context::TraceParent;
use kv_core::trace_context::TRACEPARENT;
use kv_core::web::error::{ApiError, ErrorCode};
use kv_core::web::http::{CorrelationId, RequestTrace};
use kv_core::web::json::BASE64;
use kv_core::web::routing::key_tail_pattern;
use serde_json::Value;

use crate::cluster::coalesce::{Coalesced, ForwardBatches, NotCoalesced};
use crate::cluster::fanout::PartError;
use crate::cluster::forward::{
    key_path, passed_back, read_bounded, Outgoing, FORWARDED_REQUEST_HEADERS,
};
use crate::cluster::Target;
use crate::http::entry::value_response;
use crate::http::freshness::{
    REPLICA_APPLIED_HEADER, REPLICA_LAG_HEADER, REPLICA_SILENCE_HEADER, SERVED_BY_HEADER,
};
use crate::http::request::ReadRequest;
use crate::http::state::{HttpState, PeerClient};
use crate::read::{Placement, ReadError};
use crate::store::StoredEntry;

/// Answers up to this size are passed back whole; larger ones are streamed.
const SMALL_ANSWER: u64 = 256 * 1024;

/// Where a read of one key is answered.
#[derive(Debug)]
enum Routed {
    /// Here, scoped to these partitions.
    Local(Vec<i32>),
    /// By an owner; its answer.
    Forwarded(HttpResponse),
}

/// What a forward carries of `request`.
pub fn outgoing(request: &HttpRequest) -> Outgoing {
    let mut headers = Vec::new();
    for name in FORWARDED_REQUEST_HEADERS {
        for value in request.headers().get_all(name) {
            headers.push((name, value.as_bytes().to_vec()));
        }
    }
    // The owner's span is a child of this shard's, in the caller's trace.
    headers.push((
        TRACEPARENT,
        RequestTrace::of(request).to_string().into_bytes(),
    ));
    Outgoing {
        method: reqwest::Method::from_bytes(request.method().as_str().as_bytes())
            .unwrap_or(reqwest::Method::GET),
        headers,
        correlation_id: CorrelationId::of(request).0,
    }
}

/// Answers the read of `key` by forwarding it to an owner of its partition when this shard
/// should not answer it itself. `body` is the request's own, for the owner.
async fn route_key(
    state: &HttpState,
    client: &PeerClient,
    request: &HttpRequest,
    read: &ReadRequest,
    key: &[u8],
    body: Option<&[u8]>,
    batches: Option<&ForwardBatches>,
) -> Result<Routed, ApiError> {
    let core = &state.read;
    let (partition, targets) =
        match core.place(key, read.forwarded_by.as_deref(), read.bounds.max_lag)? {
            Placement::Here(scope) => return Ok(Routed::Local(scope)),
            Placement::Owners { partition, targets } => (partition, targets),
        };
    let Some(cluster) = &core.cluster else {
        return Ok(Routed::Local(Vec::new()));
    };
    let outgoing = outgoing(request);
    let mut path = None;
    let mut failures = Vec::new();
    for target in targets {
        let peer = match target {
            Target::Local => return Ok(Routed::Local(vec![partition])),
            Target::Peer(peer) => peer,
        };
        if let Some(batches) = coalescible(batches, request, key) {
            match batches.read(peer, &outgoing, key).await {
                Ok(coalesced) => {
                    if let Some(answer) = coalesced_answer(coalesced) {
                        return Ok(Routed::Forwarded(answer));
                    }
                }
                Err(NotCoalesced::Unavailable(error)) => {
                    failures.push(error.to_string());
                    continue;
                }
                Err(NotCoalesced::Alone) => {}
            }
        }
        let path = match &path {
            Some(path) => path,
            None => path.insert(owner_path(request, key)?),
        };
        match cluster
            .forward(&client.0, peer, &outgoing, path, body.map(<[u8]>::to_vec))
            .await
        {
            Ok(response) => {
                let answer = passed_through(response, core.max_batch_get_bytes).await;
                return Ok(Routed::Forwarded(answer));
            }
            Err(error) => failures.push(error.to_string()),
        }
    }
    Err(ReadError::ShardUnavailable {
        partitions: vec![partition],
        failures,
    }
    .into())
}

/// `batches` when this read may share one: a `GET` with no query and no `If-None-Match` (the
/// owner's own tag check answers that one), of a key a path carries (the others are refused
/// as a forward of their own is).
fn coalescible<'a>(
    batches: Option<&'a ForwardBatches>,
    request: &HttpRequest,
    key: &[u8],
) -> Option<&'a ForwardBatches> {
    let plain = kv_wire::paths::has_key_segment(key)
        && request.method() == actix_web::http::Method::GET
        && request.query_string().is_empty()
        && !request.headers().contains_key(header::IF_NONE_MATCH);
    batches.filter(|_| plain)
}

/// The owner's batch item for a coalesced read as the answer its `GET` gets: the entry it
/// names, answered as `GET` answers an entry ([`value_response`]), or the `key_not_found`
/// error; with the batch's freshness and `X-Served-By`. `None` for an item that is neither:
/// the read is then forwarded on its own.
fn coalesced_answer(coalesced: Coalesced) -> Option<HttpResponse> {
    let mut answer = match entry_of(&coalesced.item) {
        Found::Entry(entry) => value_response(entry, ContentType::octet_stream()),
        Found::Absent => ApiError::key_not_found().error_response(),
        Found::Unreadable => return None,
    };
    for (name, value) in coalesced.headers.iter() {
        let passed_on = BATCH_HEADERS_PASSED_ON
            .iter()
            .find(|passed_on| passed_on.as_str() == name.as_str())
            .cloned();
        if let (Some(name), Ok(value)) = (passed_on, HeaderValue::from_bytes(value.as_bytes())) {
            answer.headers_mut().insert(name, value);
        }
    }
    Some(answer)
}

enum Found {
    Entry(StoredEntry),
    Absent,
    Unreadable,
}

/// The entry a batchGet item describes, as the owner's store holds it.
fn entry_of(item: &Value) -> Found {
    let entry = || -> Option<StoredEntry> {
        let value = match (item.get("value"), item.get("value_b64")) {
            (Some(Value::String(text)), None) => text.as_bytes().to_vec(),
            (None, Some(Value::String(b64))) => BASE64.decode(b64).ok()?,
            _ => return None,
        };
        let version = Version::parse_etag(item.get("etag")?.as_str()?).ok()??;
        let traceparent = match item.get("traceparent") {
            Some(trace) => Some(TraceParent::parse(trace.as_str()?.as_bytes())?),
            None => None,
        };
        let expires_at_ms = match item.get("expires_at") {
            Some(at) => Some(at.as_u64()?),
            None => None,
        };
        Some(StoredEntry {
            partition: version.partition,
            offset: version.offset,
            correlation_id: item
                .get("correlation_id")
                .and_then(Value::as_str)
                .map(str::to_owned),
            traceparent,
            value,
            expires_at_ms,
        })
    };
    match item.get("found").and_then(Value::as_bool) {
        Some(true) => entry().map_or(Found::Unreadable, Found::Entry),
        Some(false)
            if item.pointer("/error/code") == Some(&serde_json::json!(ErrorCode::KeyNotFound)) =>
        {
            Found::Absent
        }
        _ => Found::Unreadable,
    }
}

/// The headers of an owner's batch answer that describe each of its reads: who served it and
/// how fresh the owner was.
const BATCH_HEADERS_PASSED_ON: [HeaderName; 4] = [
    SERVED_BY_HEADER,
    REPLICA_APPLIED_HEADER,
    REPLICA_LAG_HEADER,
    REPLICA_SILENCE_HEADER,
];

/// Where the read of `key` goes at its owner: the route's own path, rebuilt from the decoded
/// key, and the caller's query. Never the caller's raw path: the peer client's URL parser folds
/// `..` and `%2e%2e` in it, which would read another key or reach another route of the owner.
fn owner_path(request: &HttpRequest, key: &[u8]) -> Result<String, ApiError> {
    let mut path = match key_tail_pattern(request).and_then(|p| p.strip_suffix("{key}")) {
        Some(prefix) => key_path(prefix, key).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidKey,
                format!(
                    "key {:?} is dots only, which no URL path carries to the shard that holds \
                     it; read it with POST /retrieve/b64",
                    String::from_utf8_lossy(key)
                ),
            )
        })?,
        // A route of a fixed path, the key in the body.
        None => match request.match_pattern() {
            Some(pattern) if !pattern.contains('{') => pattern,
            _ => {
                return Err(ApiError::internal(format!(
                    "no owner path for the route of {}",
                    request.path()
                )))
            }
        },
    };
    if !request.query_string().is_empty() {
        path.push('?');
        path.push_str(request.query_string());
    }
    Ok(path)
}

/// Parses a read of `key` (token, lag bound, forwarder), forwards it to an owner when this shard
/// should not answer it, and otherwise waits for its token and checks its lag here. `Some`
/// is the owner's answer; `None`: read the store now.
pub async fn route_and_settle(
    state: &HttpState,
    client: &PeerClient,
    request: &HttpRequest,
    key: &[u8],
    body: Option<&[u8]>,
    batches: Option<&ForwardBatches>,
) -> Result<Option<HttpResponse>, ApiError> {
    let read = ReadRequest::parse(request)?;
    let scope = match route_key(state, client, request, &read, key, body, batches).await? {
        Routed::Forwarded(answer) => return Ok(Some(answer)),
        Routed::Local(scope) => scope,
    };
    read.settle(&state.read, request, state.read.scope(&scope))
        .await?;
    Ok(None)
}

/// An owner's refusal of a part of a fanned-out read, as this shard's answer.
pub async fn refused(part: PartError, state: &HttpState) -> HttpResponse {
    match part {
        PartError::Refused(response) => {
            passed_through(response, state.read.max_batch_get_bytes).await
        }
        PartError::TooLarge => ApiError::from(ReadError::AnswerTooLarge {
            limit: state.read.max_batch_get_bytes,
        })
        .error_response(),
        PartError::Unavailable(error) => ApiError::from(ReadError::ShardUnavailable {
            partitions: Vec::new(),
            failures: vec![error.to_string()],
        })
        .error_response(),
    }
}

/// An owner's answer as this shard's answer: status, headers but the hop-by-hop ones, and the
/// body streamed through (a value is never held whole here). Error answers are read whole,
/// within `limit`.
pub async fn passed_through(response: reqwest::Response, limit: usize) -> HttpResponse {
    let status = StatusCode::from_u16(response.status().as_u16())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut answer = HttpResponse::build(status);
    for (name, value) in response.headers() {
        if !passed_back(name.as_str()) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_str().as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            answer.append_header((name, value));
        }
    }
    if status.is_success() || status == StatusCode::NOT_MODIFIED {
        match response.content_length() {
            // Most values are small: one buffer costs less than a stream through both servers.
            Some(length) if length <= SMALL_ANSWER => match response.bytes().await {
                Ok(body) => return answer.body(body),
                Err(error) => {
                    return ApiError::new(
                        ErrorCode::ShardUnavailable,
                        format!("the owner's answer broke off: {error}"),
                    )
                    .with_retry_after(Duration::from_secs(1))
                    .error_response()
                }
            },
            Some(length) => {
                answer.no_chunking(length);
            }
            None => {}
        }
        return answer.streaming(response.bytes_stream());
    }
    match read_bounded(response, limit.max(64 * 1024)).await {
        Ok(body) => answer.body(body),
        Err(error) => ApiError::new(
            ErrorCode::ShardUnavailable,
            format!("the owner's answer could not be read: {error}"),
        )
        .with_retry_after(Duration::from_secs(1))
        .error_response(),
    }
}
