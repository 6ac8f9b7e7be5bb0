//! `GET /v1/outcomes/{partition}/{offset}`: how this replica decided a conditional or
//! idempotent record, for the writer that produced it (docs/architecture.md, "Conditional
//! writes"). Every replica decides a record alike, so any one that holds the partition answers.
//!
//! `POST /v1/outcomes:batchGet` asks the same of many records at once: a writer with many
//! conditional writes waiting sends their questions together, so a request's cost (a loopback
//! round trip, a credentials check, a server handling) is paid once per batch, not per write.

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use kv_core::conditional::Outcome;
use kv_core::consistency::{ConsistencyToken, RecordPosition};
use kv_core::web::auth::{operation, Authorized};
use kv_core::web::error::{ApiError, ErrorCode};
use kv_core::web::http::JsonBody;
use serde::{Deserialize, Serialize};

use crate::http::state::HttpState;
use crate::progress::WaitError;

/// How long one question waits for the record to be applied, unless it asks for less; the
/// writer asks again until its own deadline.
const DEFAULT_WAIT: Duration = Duration::from_secs(2);
const MAX_WAIT: Duration = Duration::from_secs(5);
/// Most records one `POST /v1/outcomes:batchGet` may ask about.
pub const MAX_BATCH_RECORDS: usize = 256;
/// Most bytes of its body: 256 records of about 40 bytes each, with room to spare.
pub const MAX_BATCH_BODY: usize = 64 * 1024;

#[derive(Debug, Deserialize)]
pub struct OutcomeQuery {
    // Text, so that a number out of range is refused with the parameter's name and bounds.
    wait_ms: Option<String>,
}

impl OutcomeQuery {
    fn wait(&self) -> Result<Duration, ApiError> {
        let Some(text) = self.wait_ms.as_deref() else {
            return Ok(DEFAULT_WAIT);
        };
        text.parse::<u64>()
            .ok()
            .map(Duration::from_millis)
            .filter(|wait| *wait <= MAX_WAIT)
            .ok_or_else(|| {
                ApiError::invalid_request(format!(
                    "parameter `wait_ms` must be a whole number from 0 to {}, got {text:?}",
                    MAX_WAIT.as_millis()
                ))
            })
    }
}

/// A caller who may ask is one who may read: a `412` tells the key's current version.
pub async fn outcome(
    _auth: Authorized<operation::Read>,
    path: web::Path<(i32, i64)>,
    query: web::Query<OutcomeQuery>,
    state: web::Data<HttpState>,
) -> Result<HttpResponse, ApiError> {
    let (partition, offset) = path.into_inner();
    if let Some(refusal) = refusal(partition, offset, &state) {
        return Err(refusal);
    }
    let wait = query.wait()?;
    let token = ConsistencyToken::from_positions([RecordPosition { partition, offset }]);
    match state.read.progress.wait_for(&token, wait).await {
        Ok(()) => {}
        Err(error @ WaitError::UnknownPartition { .. }) => {
            return Err(ApiError::invalid_request(format!(
                "partition {partition} is not a partition of this topic: {error}"
            )))
        }
        Err(error) => {
            return Err(
                not_ready(partition, offset, &error).with_retry_after(Duration::from_secs(1))
            )
        }
    }
    let store = state.read.store.clone();
    let found = web::block(move || store.outcome(partition, offset))
        .await
        .map_err(|e| ApiError::internal(format!("the outcome lookup did not run: {e}")))?
        .map_err(|e| ApiError::internal(format!("cannot read the store: {e}")))?;
    match found {
        Some(outcome) => Ok(HttpResponse::Ok().json(outcome)),
        None => Err(not_found(partition, offset)),
    }
}

/// Why the record at `(partition, offset)` cannot be asked of this replica at all, if it
/// cannot: numbers below 0, or a shard that does not hold the partition.
fn refusal(partition: i32, offset: i64, state: &HttpState) -> Option<ApiError> {
    if partition < 0 || offset < 0 {
        return Some(ApiError::invalid_request(
            "partition and offset must be whole numbers of at least 0",
        ));
    }
    let cluster = state.read.cluster.as_ref()?;
    (!cluster.holds(partition)).then(|| {
        ApiError::new(
            ErrorCode::PartitionNotHeld,
            format!(
                "shard {} does not hold partition {partition}: ask a shard that does",
                cluster.spec.index
            ),
        )
    })
}

fn not_ready(partition: i32, offset: i64, why: &dyn std::fmt::Display) -> ApiError {
    ApiError::new(
        ErrorCode::NotReady,
        format!("this replica has not applied the record at {partition}/{offset} yet ({why}); ask again"),
    )
}

fn not_found(partition: i32, offset: i64) -> ApiError {
    ApiError::new(
        ErrorCode::OutcomeNotFound,
        format!(
            "this replica holds no decision for the record at {partition}/{offset}: it carried \
             no condition, or it was decided before this replica's store began (a snapshot, a \
             rebuild) or longer ago than the store remembers"
        ),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    records: Vec<AskedRecord>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct AskedRecord {
    partition: i32,
    offset: i64,
}

#[derive(Debug, Serialize)]
struct BatchItem {
    partition: i32,
    offset: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<Outcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ItemError>,
}

#[derive(Debug, Serialize)]
struct ItemError {
    code: ErrorCode,
    message: String,
}

impl From<ApiError> for ItemError {
    fn from(error: ApiError) -> Self {
        Self {
            code: error.code,
            message: error.message,
        }
    }
}

#[derive(Debug, Serialize)]
struct BatchAnswer {
    outcomes: Vec<BatchItem>,
}

/// `POST /v1/outcomes:batchGet` `{"records": [{"partition": 0, "offset": 57}, ...]}`: every
/// record's decision, in request order. One wait covers them all (until every record this
/// replica holds is applied, or `wait_ms` passed) and one store lookup reads them all; a record
/// that cannot be told is an item with an error (`partition_not_held`, `not_ready`,
/// `outcome_not_found`, `invalid_request` for a partition the topic lacks), not a failure of
/// the whole batch.
pub async fn batch_outcomes(
    _auth: Authorized<operation::Read>,
    query: web::Query<OutcomeQuery>,
    body: JsonBody<BatchRequest>,
    state: web::Data<HttpState>,
) -> Result<HttpResponse, ApiError> {
    let wait = query.wait()?;
    let records = body.read().await?.records;
    if let Some(negative) = records.iter().find(|r| r.partition < 0 || r.offset < 0) {
        // Outside the request's schema, so the whole request is refused, not the one item.
        return Err(ApiError::invalid_request(format!(
            "record {}/{}: partition and offset must be whole numbers of at least 0",
            negative.partition, negative.offset
        )));
    }
    if records.is_empty() {
        return Err(ApiError::invalid_request(
            "field `records` must list at least one record",
        ));
    }
    if records.len() > MAX_BATCH_RECORDS {
        return Err(ApiError::invalid_request(format!(
            "field `records` lists {} records; at most {MAX_BATCH_RECORDS} may be asked at once",
            records.len()
        )));
    }
    let known = state.read.progress.next_offsets();
    let mut answers: Vec<Option<Result<Outcome, ApiError>>> = Vec::with_capacity(records.len());
    // The highest offset asked per partition: waiting for it waits for every lower one.
    let mut highest: BTreeMap<i32, i64> = BTreeMap::new();
    for record in &records {
        let (partition, offset) = (record.partition, record.offset);
        let refused = if let Some(refusal) = refusal(partition, offset, &state) {
            Some(refusal)
        } else if !known.is_empty() && !known.contains_key(&partition) {
            Some(ApiError::invalid_request(format!(
                "partition {partition} is not a partition of this topic"
            )))
        } else {
            let top = highest.entry(partition).or_insert(offset);
            *top = (*top).max(offset);
            None
        };
        answers.push(refused.map(Err));
    }
    let mut waited = None;
    if !highest.is_empty() {
        let token = ConsistencyToken::from_positions(
            highest
                .iter()
                .map(|(&partition, &offset)| RecordPosition { partition, offset }),
        );
        if let Err(error) = state.read.progress.wait_for(&token, wait).await {
            waited = Some(error);
        }
    }
    // Which of the records are applied now, whatever the wait ended with.
    let applied = state.read.progress.next_offsets();
    let lookups: Vec<(usize, i32, i64)> = records
        .iter()
        .enumerate()
        .filter(|(i, r)| {
            answers[*i].is_none()
                && applied
                    .get(&r.partition)
                    .is_some_and(|&next| next > r.offset)
        })
        .map(|(i, r)| (i, r.partition, r.offset))
        .collect();
    if !lookups.is_empty() {
        let store = state.read.store.clone();
        let asked: Vec<(i32, i64)> = lookups.iter().map(|&(_, p, o)| (p, o)).collect();
        let found = web::block(move || store.outcomes(&asked))
            .await
            .map_err(|e| ApiError::internal(format!("the outcome lookup did not run: {e}")))?
            .map_err(|e| ApiError::internal(format!("cannot read the store: {e}")))?;
        for ((i, partition, offset), found) in lookups.into_iter().zip(found) {
            answers[i] = Some(found.ok_or_else(|| not_found(partition, offset)));
        }
    }
    let why = waited.map_or_else(|| "the wait ended".to_owned(), |error| error.to_string());
    let outcomes = records
        .iter()
        .zip(answers)
        .map(|(record, answer)| {
            let (partition, offset) = (record.partition, record.offset);
            let answer = answer.unwrap_or_else(|| Err(not_ready(partition, offset, &why)));
            match answer {
                Ok(outcome) => BatchItem {
                    partition,
                    offset,
                    outcome: Some(outcome),
                    error: None,
                },
                Err(error) => BatchItem {
                    partition,
                    offset,
                    outcome: None,
                    error: Some(error.into()),
                },
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(BatchAnswer { outcomes }))
}
