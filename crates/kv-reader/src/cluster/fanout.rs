//! The remote half of a sharded read: one owner's part of a batchGet or of a listing page,
//! asked with the caller's credentials, and the merge of the parts into one answer.

use std::collections::BTreeSet;

use base64::Engine;
use kv_core::web::json::BASE64;
use serde_json::Value;

use crate::cluster::forward::{
    read_bounded, read_within, BodyError, ByteBudget, ForwardError, Outcome, Outgoing, SERVED_BY,
};
use crate::cluster::{Cluster, Target};

/// Why an owner's part is missing.
#[derive(Debug)]
pub enum PartError {
    /// No usable answer: the next owner of those partitions is tried.
    Unavailable(ForwardError),
    /// The owner's verdict on the request itself (401, 403, 400, 413): it is the answer.
    Refused(reqwest::Response),
    /// The owner's answer is larger than the whole answer may be.
    TooLarge,
}

/// One owner's part of a batchGet: its items in the order asked, who answered, and the
/// answer's headers (its freshness, for a coalesced forward).
#[derive(Debug)]
pub struct BatchPart {
    pub items: Vec<Value>,
    pub served_by: Option<String>,
    pub headers: reqwest::header::HeaderMap,
}

/// Asks `peer` for the keys `labels` (as the caller gave them, in `field`: `keys` or
/// `keys_b64`). The answer's body is taken from `budget`, which every owner's part shares.
pub async fn batch_part(
    cluster: &Cluster,
    client: &reqwest::Client,
    request: &Outgoing,
    peer: u32,
    field: &str,
    labels: &[&str],
    budget: &ByteBudget,
) -> Result<BatchPart, PartError> {
    let body = serde_json::to_vec(&serde_json::json!({ field: labels }))
        .map_err(|e| unavailable(peer, format!("cannot encode the request: {e}")))?;
    let response = cluster
        .forward(client, peer, request, "/v1/kv:batchGet", Some(body))
        .await
        .map_err(PartError::Unavailable)?;
    let served_by = served_by(&response);
    if !response.status().is_success() {
        return Err(PartError::Refused(response));
    }
    let headers = response.headers().clone();
    let body = read_within(response, budget).await.map_err(|e| match e {
        BodyError::TooLarge(_) => PartError::TooLarge,
        other => unavailable(peer, other.to_string()),
    })?;
    #[derive(serde::Deserialize)]
    struct Answer {
        results: Vec<Value>,
    }
    // The body is dropped here; its bytes go back if the part is not used.
    let (parsed, read) = (serde_json::from_slice::<Answer>(&body), body.len());
    drop(body);
    let answer = parsed.map_err(|e| {
        budget.give_back(read);
        unavailable(peer, format!("answered a batchGet that is not one: {e}"))
    })?;
    if answer.results.len() != labels.len() {
        budget.give_back(read);
        return Err(unavailable(
            peer,
            format!(
                "answered {} results for {} keys",
                answer.results.len(),
                labels.len()
            ),
        ));
    }
    Ok(BatchPart {
        items: answer.results,
        served_by,
        headers,
    })
}

/// One owner's listing page: its keys after the cursor, and whether it holds more.
#[derive(Debug)]
pub struct PagePart {
    pub keys: Vec<Vec<u8>>,
    pub more: bool,
    pub served_by: Option<String>,
}

/// Asks `peer` for the page the caller asked for (`query`, as given), from its own
/// partitions.
pub async fn page_part(
    cluster: &Cluster,
    client: &reqwest::Client,
    request: &Outgoing,
    query: &str,
    peer: u32,
    limit: usize,
) -> Result<PagePart, PartError> {
    let path = match query {
        "" => "/v1/kv".to_owned(),
        query => format!("/v1/kv?{query}"),
    };
    let response = cluster
        .forward(client, peer, request, &path, None)
        .await
        .map_err(PartError::Unavailable)?;
    let served_by = served_by(&response);
    if !response.status().is_success() {
        return Err(PartError::Refused(response));
    }
    let body = read_bounded(response, limit)
        .await
        .map_err(|e| unavailable(peer, e.to_string()))?;
    #[derive(serde::Deserialize)]
    struct Listed {
        key: Option<String>,
        key_b64: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Page {
        keys: Vec<Listed>,
        next_cursor: Option<String>,
    }
    let page: Page = serde_json::from_slice(&body)
        .map_err(|e| unavailable(peer, format!("answered a listing that is not one: {e}")))?;
    let mut keys = Vec::with_capacity(page.keys.len());
    for listed in page.keys {
        match (listed.key, listed.key_b64) {
            (Some(text), None) => keys.push(text.into_bytes()),
            (None, Some(b64)) => keys.push(
                BASE64
                    .decode(b64)
                    .map_err(|e| unavailable(peer, format!("listed a key in bad base64: {e}")))?,
            ),
            _ => {
                return Err(unavailable(
                    peer,
                    "listed a key without key or key_b64".to_owned(),
                ))
            }
        }
    }
    Ok(PagePart {
        keys,
        more: page.next_cursor.is_some(),
        served_by,
    })
}

/// Whom to ask for a listing page: for each of the `count` partitions not `covered` by a page
/// already read, its best owner as `best` says (`None`: none left), each asked once and
/// covering every partition it holds (`holds`). Returns the owners with the partitions their
/// page covers, and the partitions no owner is left for. A retry after an owner failed asks
/// only for what the pages read so far do not cover.
pub fn plan_listing(
    count: u32,
    covered: &BTreeSet<i32>,
    best: impl Fn(i32) -> Option<Target>,
    holds: impl Fn(Target, i32) -> bool,
) -> (Vec<(Target, Vec<i32>)>, Vec<i32>) {
    let mut planned = covered.clone();
    let mut sources: Vec<(Target, Vec<i32>)> = Vec::new();
    let mut unavailable = Vec::new();
    for partition in 0..count as i32 {
        if planned.contains(&partition) {
            continue;
        }
        match best(partition) {
            None => unavailable.push(partition),
            Some(target) => {
                let held: Vec<i32> = (0..count as i32).filter(|&p| holds(target, p)).collect();
                planned.extend(held.iter().copied());
                if !sources.iter().any(|(t, _)| *t == target) {
                    sources.push((target, held));
                }
            }
        }
    }
    (sources, unavailable)
}

/// The first `limit` keys of the union of sorted pages, and whether more follow. Each part is
/// the first keys after the cursor of the partitions it covers; parts may overlap (a partition
/// held by two of the owners asked), so keys are deduplicated.
pub fn merge_pages(parts: Vec<(Vec<Vec<u8>>, bool)>, limit: usize) -> (Vec<Vec<u8>>, bool) {
    let mut any_more = false;
    let mut union = BTreeSet::new();
    for (keys, more) in parts {
        any_more |= more;
        union.extend(keys);
    }
    let more = any_more || union.len() > limit;
    (union.into_iter().take(limit).collect(), more)
}

fn served_by(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get(SERVED_BY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn unavailable(peer: u32, message: String) -> PartError {
    PartError::Unavailable(ForwardError {
        peer,
        outcome: Outcome::Answered,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[&str]) -> Vec<Vec<u8>> {
        list.iter().map(|k| k.as_bytes().to_vec()).collect()
    }

    #[test]
    fn a_listing_retry_asks_only_for_the_partitions_no_page_read_covers() {
        // Six partitions over three shards, each partition on two (p % 3 and p % 3 + 1).
        let holds = |target: Target, p: i32| {
            let shard = match target {
                Target::Local => 0,
                Target::Peer(shard) => shard as i32,
            };
            p % 3 == shard || (p % 3 + 1) % 3 == shard
        };
        let first = |p: i32| {
            Some(if p % 3 == 0 {
                Target::Local
            } else {
                Target::Peer(1)
            })
        };
        let (sources, unavailable) = plan_listing(6, &BTreeSet::new(), first, holds);
        assert!(unavailable.is_empty());
        assert_eq!(
            sources.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            vec![Target::Local, Target::Peer(1)]
        );
        // Peer 1 failed; the local page was read: only what it does not cover is asked again,
        // of the next owner, and the local store is not listed twice.
        let covered: BTreeSet<i32> = sources[0].1.iter().copied().collect();
        let retry = |p: i32| {
            Some(if p % 3 == 1 {
                Target::Peer(2)
            } else {
                Target::Local
            })
        };
        let (sources, unavailable) = plan_listing(6, &covered, retry, holds);
        assert!(unavailable.is_empty());
        assert_eq!(
            sources.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            vec![Target::Peer(2)],
            "{sources:?}"
        );
    }

    #[test]
    fn merged_pages_hold_the_smallest_keys_of_every_part_once() {
        let (page, more) = merge_pages(
            vec![
                (keys(&["a", "d", "e"]), true),
                (keys(&["b", "c", "d"]), false),
            ],
            3,
        );
        assert_eq!(page, keys(&["a", "b", "c"]));
        assert!(more);
        let (page, more) = merge_pages(vec![(keys(&["a"]), false), (keys(&["a", "b"]), false)], 3);
        assert_eq!(page, keys(&["a", "b"]));
        assert!(!more, "every part is exhausted and the union fits");
    }
}
