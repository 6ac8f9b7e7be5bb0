//! A read request parsed once: its consistency token, its bound on lag and the shard that
//! forwarded it, from headers and the query string together.

use std::collections::HashMap;

use actix_web::http::header::{self, HeaderName};
use actix_web::{HttpMessage, HttpRequest};
use kv_core::consistency::{ConsistencyToken, RecordPosition, CONSISTENCY_TOKEN_PARAM};
use kv_core::web::error::ApiError;
use kv_core::web::http::{parse_query, CONSISTENCY_TOKEN};

use crate::cluster::forward::FORWARDED_BY;
use crate::read::{ReadBounds, ReadCore, Scope};

/// A read's bound on the replica's lag, in records, on the partitions it reads.
pub const MAX_LAG_HEADER: HeaderName = HeaderName::from_static("x-max-replica-lag");
const MAX_LAG_PARAM: &str = "max_lag";

#[derive(Debug, Default)]
pub struct ReadRequest {
    pub bounds: ReadBounds,
    /// The shard that forwarded this request, if one did.
    pub forwarded_by: Option<String>,
}

impl ReadRequest {
    pub fn parse(request: &HttpRequest) -> Result<Self, ApiError> {
        let mut query = if request.query_string().is_empty() {
            HashMap::new()
        } else {
            parse_query::<HashMap<String, String>>(request)?
        };
        Ok(Self {
            bounds: ReadBounds {
                token: consistency_token(request, query.remove(CONSISTENCY_TOKEN_PARAM))?,
                max_lag: max_lag(request, query.remove(MAX_LAG_PARAM))?,
            },
            forwarded_by: forwarded_by(request),
        })
    }

    /// Waits for the request's token and checks its bound on lag (see [`ReadCore::settle`]),
    /// then notes how fresh the replica is for the freshness middleware. Call it right before
    /// reading the store.
    pub async fn settle(
        &self,
        read: &ReadCore,
        request: &HttpRequest,
        scope: Scope<'_>,
    ) -> Result<(), ApiError> {
        let freshness = read.settle(&self.bounds, scope).await?;
        request.extensions_mut().insert(freshness);
        Ok(())
    }
}

/// The shard that forwarded this request, if one did.
fn forwarded_by(request: &HttpRequest) -> Option<String> {
    request.headers().get(FORWARDED_BY).map(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .chars()
            .take(16)
            .collect()
    })
}

/// The read's bound on lag: `max_lag` in the query or `X-Max-Replica-Lag`, the smaller of the
/// two when both are given.
fn max_lag(request: &HttpRequest, query: Option<String>) -> Result<Option<u64>, ApiError> {
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
    let query = match query {
        Some(text) => Some(parse(&text, "parameter `max_lag`")?),
        None => None,
    };
    Ok(match (header, query) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

/// The token in `X-Consistency-Token` or, for clients that cannot set headers, the
/// `consistency_token` query parameter. An empty token is no token. Both are checked, so a
/// malformed one is refused even beside a good one; a read given both waits for both.
fn consistency_token(
    request: &HttpRequest,
    query: Option<String>,
) -> Result<Option<ConsistencyToken>, ApiError> {
    let header = match request.headers().get(CONSISTENCY_TOKEN) {
        Some(raw) => Some(raw.to_str().map(str::to_owned).map_err(|_| {
            ApiError::invalid_request(
                "header X-Consistency-Token must be the token a kv-writer returned",
            )
        })?),
        None => None,
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

/// Whether `If-None-Match` names the entry's current version.
pub fn not_modified(request: &HttpRequest, etag: &str) -> bool {
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
