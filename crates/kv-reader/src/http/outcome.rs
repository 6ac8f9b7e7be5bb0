//! `GET /v1/outcomes/{partition}/{offset}`: how this replica decided a conditional or
//! idempotent record, for the writer that produced it (docs/architecture.md, "Conditional
//! writes"). Every replica decides a record alike, so any one that holds the partition answers.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use kv_core::consistency::{ConsistencyToken, RecordPosition};
use kv_core::web::auth::{operation, Authorized};
use kv_core::web::error::{ApiError, ErrorCode};
use serde::Deserialize;

use crate::http::state::HttpState;
use crate::progress::WaitError;

/// How long one question waits for the record to be applied, unless it asks for less; the
/// writer asks again until its own deadline.
const DEFAULT_WAIT: Duration = Duration::from_secs(2);
const MAX_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Deserialize)]
pub struct OutcomeQuery {
    wait_ms: Option<u64>,
}

/// A caller who may ask is one who may read: a `412` tells the key's current version.
pub async fn outcome(
    _auth: Authorized<operation::Read>,
    path: web::Path<(i32, i64)>,
    query: web::Query<OutcomeQuery>,
    state: web::Data<HttpState>,
) -> Result<HttpResponse, ApiError> {
    let (partition, offset) = path.into_inner();
    if partition < 0 || offset < 0 {
        return Err(ApiError::invalid_request(
            "partition and offset must be whole numbers of at least 0",
        ));
    }
    if let Some(cluster) = &state.read.cluster {
        if !cluster.holds(partition) {
            return Err(ApiError::new(
                ErrorCode::PartitionNotHeld,
                format!(
                    "shard {} does not hold partition {partition}: ask a shard that does",
                    cluster.spec.index
                ),
            ));
        }
    }
    let wait = query
        .wait_ms
        .map_or(DEFAULT_WAIT, Duration::from_millis)
        .min(MAX_WAIT);
    let token = ConsistencyToken::from_positions([RecordPosition { partition, offset }]);
    match state.read.progress.wait_for(&token, wait).await {
        Ok(()) => {}
        Err(error @ WaitError::UnknownPartition { .. }) => {
            return Err(ApiError::invalid_request(format!(
                "partition {partition} is not a partition of this topic: {error}"
            )))
        }
        Err(error) => {
            return Err(ApiError::new(
                ErrorCode::NotReady,
                format!(
                    "this replica has not applied the record at {partition}/{offset} yet \
                     ({error}); ask again"
                ),
            )
            .with_retry_after(Duration::from_secs(1)))
        }
    }
    let store = state.read.store.clone();
    let found = web::block(move || store.outcome(partition, offset))
        .await
        .map_err(|e| ApiError::internal(format!("the outcome lookup did not run: {e}")))?
        .map_err(|e| ApiError::internal(format!("cannot read the store: {e}")))?;
    match found {
        Some(outcome) => Ok(HttpResponse::Ok().json(outcome)),
        None => Err(ApiError::new(
            ErrorCode::OutcomeNotFound,
            format!(
                "this replica holds no decision for the record at {partition}/{offset}: it \
                 carried no condition, or it was decided before this replica's store began (a \
                 snapshot, a rebuild) or longer ago than the store remembers"
            ),
        )),
    }
}
