//! `POST /v1/kv:batchGet`: many keys in one answer, from one read view on a full replica, or
//! split by owner and merged back in request order on a shard.

use actix_web::http::header::HeaderValue;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use base64::Engine;
use futures::stream::{FuturesUnordered, StreamExt};
use kv_core::settings::prefixes::KeyAction;
use kv_core::web::auth::{operation, Authorized};
use kv_core::web::error::{ApiError, ErrorCode};
use kv_core::web::http::JsonBody;
use kv_core::web::json::BASE64;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::cluster::fanout::{self, PartError};
use crate::cluster::forward::ByteBudget;
use crate::cluster::{Cluster, Target};
use crate::http::entry::{correlation_header, etag, json_bytes, JsonBytes};
use crate::http::forward::{outgoing, refused};
use crate::http::freshness::SERVED_BY_HEADER;
use crate::http::request::ReadRequest;
use crate::http::state::{HttpState, PeerClient};
use crate::progress::Freshness;
use crate::read::{BatchLookup, ReadError, Scope};
use crate::store::StoredEntry;

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
    /// The span of the write that stored the value, as `X-KV-Write-Traceparent` says it on
    /// single reads.
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
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
    traceparent: Option<String>,
    expires_at: Option<u64>,
}

impl FoundValue {
    fn of(entry: StoredEntry) -> FoundValue {
        FoundValue {
            etag: etag(&entry),
            expires_at: entry.expires_at_ms,
            correlation_id: correlation_header(&entry)
                .and_then(|h| h.to_str().ok().map(str::to_owned)),
            traceparent: entry.traceparent.map(|trace| trace.to_string()),
            value: json_bytes(entry.value),
        }
    }
}

/// `POST /v1/kv:batchGet` `{"keys": [...]}` or `{"keys_b64": [...]}`: every key looked up in one
/// snapshot; one result per key, in request order. A missing key is a result with
/// `found: false` and the `key_not_found` error, not a failure of the whole batch.
pub async fn batch_get(
    auth: Authorized<operation::Read>,
    request: HttpRequest,
    body: JsonBody<BatchGetRequest>,
    state: web::Data<HttpState>,
    client: web::Data<PeerClient>,
) -> Result<HttpResponse, ApiError> {
    let body = body.read().await?;
    let count = body.keys.len() + body.keys_b64.len();
    if count == 0 {
        return Err(ApiError::invalid_request(
            "field `keys` (or `keys_b64`) must list at least one key",
        ));
    }
    let core = &state.read;
    core.check_batch(count)?;
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
    auth.keys(KeyAction::Read).check_items(field, &keys)?;
    let read = ReadRequest::parse(&request)?;
    if let Some(cluster) = core.cluster.clone() {
        return batch_get_across(
            &state, &cluster, &client, &request, &read, field, &labels, &keys,
        )
        .await;
    }
    read.settle(core, &request, Scope::All).await?;
    let found = BatchValues::of(core.lookup_batch(keys.iter().map(Vec::as_slice), answer_len)?);
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
                traceparent: found.traceparent.as_deref(),
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
                traceparent: None,
                expires_at: None,
                error: Some(&KEY_NOT_FOUND_ITEM),
            },
        }
    }
}

static KEY_NOT_FOUND_ITEM: std::sync::LazyLock<Value> = std::sync::LazyLock::new(
    || serde_json::json!({"code": ErrorCode::KeyNotFound, "message": ApiError::key_not_found().message}),
);

impl BatchValues {
    fn of(lookup: BatchLookup) -> Self {
        Self {
            slots: lookup.slots,
            found: lookup
                .found
                .into_iter()
                .map(|entry| entry.map(FoundValue::of))
                .collect(),
            answer_bytes: lookup.answer_bytes,
        }
    }
}

/// A sharded batchGet: the keys split by the owner of their partition, each owner asked once,
/// all at once, and the answers put back in request order. An owner that cannot be reached
/// hands its partitions to the next owner; keys of a partition no owner serves get a
/// `shard_unavailable` result, every other key its answer.
#[allow(clippy::too_many_arguments)]
async fn batch_get_across(
    state: &HttpState,
    cluster: &Cluster,
    client: &PeerClient,
    request: &HttpRequest,
    read: &ReadRequest,
    field: &str,
    labels: &[String],
    keys: &[Vec<u8>],
) -> Result<HttpResponse, ApiError> {
    let core = &state.read;
    let count = core.partition_count(cluster)?;
    let partitions: Vec<i32> = keys
        .iter()
        .map(|k| cluster.partition_of(k, count))
        .collect();
    let forwarded = read.forwarded_by.as_deref();
    if let Some(from) = forwarded {
        if let Some(&partition) = partitions.iter().find(|&&p| !cluster.holds(p)) {
            return Err(ReadError::Misrouted {
                from: from.to_owned(),
                partition,
            }
            .into());
        }
    }
    let bound = read.bounds.max_lag;
    let limit = core.max_batch_get_bytes;
    // Every owner's part is read against one budget: what the whole answer may hold, its
    // values JSON-escaped (at most 6 bytes a byte) and each key's item around them. An answer
    // within the limit never needs more; one past it is refused as it arrives, never read
    // whole from every owner first.
    let budget = ByteBudget::new(
        limit
            .saturating_mul(6)
            .saturating_add(labels.iter().map(|l| 2 * l.len() + 512).sum()),
    );
    let too_large = || ApiError::from(ReadError::AnswerTooLarge { limit });
    // What the values of the parts read so far add to the answer; checked as each part comes.
    let answer_bytes = AtomicUsize::new(0);
    let outgoing = outgoing(request);
    let mut results: Vec<Option<Value>> = vec![None; keys.len()];
    let mut pending: std::collections::BTreeSet<i32> = partitions.iter().copied().collect();
    let mut excluded = std::collections::BTreeSet::new();
    let mut failures: Vec<String> = Vec::new();
    let mut served = std::collections::BTreeSet::new();
    let mut unavailable: Vec<i32> = Vec::new();
    while !pending.is_empty() {
        let mut local: Vec<i32> = Vec::new();
        let mut remote: std::collections::BTreeMap<u32, Vec<i32>> = Default::default();
        for &partition in &pending {
            let target = if forwarded.is_some() {
                Some(Target::Local)
            } else {
                cluster
                    .targets(partition, bound, &core.progress)
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
        let mut parts: FuturesUnordered<_> = remote
            .iter()
            .map(|(&peer, parts)| {
                let indices = asked(parts);
                let (outgoing, budget) = (&outgoing, &budget);
                async move {
                    let wanted: Vec<&str> = indices.iter().map(|&i| labels[i].as_str()).collect();
                    let part = fanout::batch_part(
                        cluster, &client.0, outgoing, peer, field, &wanted, budget,
                    )
                    .await;
                    (peer, indices, part)
                }
            })
            .collect();
        // Parts as they come; the first past the limit ends the read of the others.
        let remote_parts = async {
            let mut done = Vec::with_capacity(parts.len());
            while let Some((peer, indices, part)) = parts.next().await {
                match &part {
                    Err(PartError::TooLarge) => return Err(too_large()),
                    Ok(part) => {
                        let bytes: usize = part.items.iter().map(item_value_len).sum();
                        if answer_bytes.fetch_add(bytes, Ordering::AcqRel) + bytes > limit {
                            return Err(too_large());
                        }
                    }
                    // The owner's verdict on the request is the answer: no need for the rest.
                    Err(PartError::Refused(_)) => {
                        done.push((peer, indices, part));
                        break;
                    }
                    Err(PartError::Unavailable(_)) => {}
                }
                done.push((peer, indices, part));
            }
            Ok(done)
        };
        let local_part = async {
            if local.is_empty() {
                return Ok(None);
            }
            read.settle(core, request, Scope::Partitions(&local))
                .await?;
            let indices = asked(&local);
            let found = BatchValues::of(
                core.lookup_batch(indices.iter().map(|&i| keys[i].as_slice()), answer_len)?,
            );
            answer_bytes.fetch_add(found.answer_bytes, Ordering::AcqRel);
            Ok::<_, ApiError>(Some((indices, found)))
        };
        let (local_part, remote_parts) = futures::join!(local_part, remote_parts);
        let remote_parts = remote_parts?;
        if let Some((indices, found)) = local_part? {
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
                        results[i] = Some(item);
                    }
                    served.insert(part.served_by.unwrap_or_else(|| peer.to_string()));
                }
                Err(PartError::Unavailable(error)) => {
                    failures.push(error.to_string());
                    excluded.insert(peer);
                    pending.extend(remote[&peer].iter().copied());
                }
                Err(part) => return Ok(refused(part, state).await),
            }
        }
        if answer_bytes.load(Ordering::Acquire) > limit {
            return Err(too_large());
        }
    }
    if !unavailable.is_empty() {
        let error = ApiError::from(ReadError::ShardUnavailable {
            partitions: unavailable.clone(),
            failures,
        });
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
    // Freshness headers describe one replica; a merged answer names its shards instead. A
    // forwarded batch was read here alone, and a coalesced forward passes its freshness on.
    if forwarded.is_none() {
        request.extensions_mut().remove::<Freshness>();
    }
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
