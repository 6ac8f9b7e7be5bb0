//! `GET /v1/kv`: keys in byte order, a page at a time; on a shard, the pages of a set of
//! owners that together hold every partition, merged.

use actix_web::http::header::HeaderValue;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use kv_core::settings::prefixes::KeyAction;
use kv_core::web::auth::{operation, Authorized};
use kv_core::web::error::ApiError;
use kv_core::web::http::parse_query;
use kv_core::web::json::BASE64;
use serde::{Deserialize, Serialize};

use crate::cluster::fanout::{self, PartError};
use crate::cluster::{Cluster, Target};
use crate::http::entry::json_bytes;
use crate::http::forward::{outgoing, refused};
use crate::http::freshness::SERVED_BY_HEADER;
use crate::http::request::ReadRequest;
use crate::http::state::{HttpState, PeerClient};
use crate::progress::Freshness;
use crate::read::limits::{DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT};
use crate::read::{ReadError, Scope};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    prefix: Option<String>,
    prefix_b64: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
    #[allow(dead_code)] // read by `ReadRequest`; named here so it is not an unknown field
    consistency_token: Option<String>,
    #[allow(dead_code)] // read by `ReadRequest`
    max_lag: Option<String>,
}

/// The key prefix of a listing or a watch: parameter `prefix`, or `prefix_b64` for bytes.
pub fn prefix_param(
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
    auth: Authorized<operation::Read>,
    request: HttpRequest,
    state: web::Data<HttpState>,
    client: web::Data<PeerClient>,
) -> Result<HttpResponse, ApiError> {
    // Parsed here, after the token was checked, never by an extractor that could answer 400
    // to a caller who has no right to an answer at all.
    let query: ListQuery = parse_query(&request)?;
    let prefix = prefix_param(query.prefix, query.prefix_b64)?;
    // Only the readable part of the prefix is listed; none of it readable is a 403.
    let grant = auth.keys(KeyAction::Read);
    let prefixes = grant
        .listing(&prefix)
        .ok_or_else(|| grant.prefix_refusal(&prefix))?;
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
    let read = ReadRequest::parse(&request)?;
    let core = &state.read;
    let (keys, more) = match (&core.cluster, core.held_partitions()?) {
        (Some(cluster), Some(held)) => {
            if read.forwarded_by.is_some() {
                read.settle(core, &request, Scope::Partitions(&held))
                    .await?;
                core.page(prefixes, after, limit).await?
            } else {
                return list_across(
                    &state, cluster, &client, &request, &read, &held, prefixes, after, limit,
                )
                .await;
            }
        }
        _ => {
            read.settle(core, &request, Scope::All).await?;
            core.page(prefixes, after, limit).await?
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

/// A sharded listing: a set of owners that together hold every partition (this shard first
/// when it serves), each asked for the same page of its own keys, and the pages merged. The
/// cursor is the last key, so a page through any shard is the page a full replica gives.
#[allow(clippy::too_many_arguments)]
async fn list_across(
    state: &HttpState,
    cluster: &Cluster,
    client: &PeerClient,
    request: &HttpRequest,
    read: &ReadRequest,
    held: &[i32],
    prefixes: Vec<Vec<u8>>,
    after: Option<Vec<u8>>,
    limit: usize,
) -> Result<HttpResponse, ApiError> {
    let core = &state.read;
    let count = core.partition_count(cluster)?;
    let bound = read.bounds.max_lag;
    let outgoing = outgoing(request);
    let mut excluded = std::collections::BTreeSet::new();
    let mut failures: Vec<String> = Vec::new();
    // Pages read so far and the partitions they cover, kept across a retry: only what a
    // failed owner was to cover is asked again, of its partitions' next owners.
    let mut pages = Vec::new();
    let mut served = std::collections::BTreeSet::new();
    let mut covered = std::collections::BTreeSet::new();
    loop {
        let (sources, unavailable) = fanout::plan_listing(
            count,
            &covered,
            |partition| {
                cluster
                    .targets(partition, bound, &core.progress)
                    .into_iter()
                    .find(|t| !matches!(t, Target::Peer(peer) if excluded.contains(peer)))
            },
            |target, partition| {
                let shard = match target {
                    Target::Local => cluster.spec.index,
                    Target::Peer(peer) => peer,
                };
                cluster.spec.is_owner(shard, partition)
            },
        );
        if !unavailable.is_empty() {
            return Err(ReadError::ShardUnavailable {
                partitions: unavailable,
                failures,
            }
            .into());
        }
        let remote = sources.iter().filter_map(|(target, held)| match target {
            Target::Local => None,
            Target::Peer(peer) => {
                let outgoing = &outgoing;
                Some(async move {
                    let query = request.query_string();
                    let part = fanout::page_part(
                        cluster,
                        &client.0,
                        outgoing,
                        query,
                        *peer,
                        MAX_PAGE_BODY,
                    )
                    .await;
                    (*peer, held, part)
                })
            }
        });
        let local_held = sources
            .iter()
            .find(|(target, _)| *target == Target::Local)
            .map(|(_, held)| held);
        let local = async {
            if local_held.is_none() {
                return Ok(None);
            }
            read.settle(core, request, Scope::Partitions(held)).await?;
            core.page(prefixes.clone(), after.clone(), limit)
                .await
                .map(Some)
                .map_err(ApiError::from)
        };
        let (local, remote) = futures::join!(local, futures::future::join_all(remote));
        if let (Some(page), Some(held)) = (local?, local_held) {
            pages.push(page);
            covered.extend(held.iter().copied());
            served.insert(cluster.spec.index.to_string());
        }
        let mut retry = false;
        for (peer, held, part) in remote {
            match part {
                Ok(part) => {
                    pages.push((part.keys, part.more));
                    covered.extend(held.iter().copied());
                    served.insert(part.served_by.unwrap_or_else(|| peer.to_string()));
                }
                Err(PartError::Unavailable(error)) => {
                    failures.push(error.to_string());
                    excluded.insert(peer);
                    retry = true;
                }
                Err(part) => return Ok(refused(part, state).await),
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
