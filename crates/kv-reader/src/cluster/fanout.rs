//! The remote half of a sharded read: one owner's part of a batchGet or of a listing page,
//! asked with the caller's credentials, and the merge of the parts into one answer.

use std::collections::BTreeSet;

use base64::Engine;
use kv_core::web::json::BASE64;
use serde_json::Value;

use crate::cluster::forward::{
    read_bounded, read_within, BodyError, ByteBudget, ForwardError, Outcome, Outgoing, SERVED_BY,
};
use crate::cluster::Cluster;

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

/// One owner's part of a batchGet: its items in the order asked, and who answered.
#[derive(Debug)]
pub struct BatchPart {
    pub items: Vec<Value>,
    pub served_by: Option<String>,
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
