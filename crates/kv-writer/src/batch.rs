//! `POST /v1/kv:batch`: many writes in one request, one result per item.
//!
//! Request: `{"encoding"?: "utf-8"|"base64", "items": [{"key","value","headers"?} |
//! {"key","delete": true}]}`. Items are validated first; one bad item refuses the whole request
//! with 400/413 and nothing is written, since a malformed batch is a client bug best fixed before
//! anything lands. Valid items are queued in order (so two writes of one key land in that order)
//! and share the producer's batches.
//!
//! Response: `{"items": [{"status":200,"partition","offset"} | {"status","error":{..}}],
//! "consistency_token"}`. 200 only when every item was acknowledged; otherwise the status of the
//! failure (503 with Retry-After when any item may succeed on retry) with the error contract's
//! `error` object beside the per-item results, because a 2xx must never cover an unacknowledged
//! write.

use actix_web::http::header::{IF_MATCH, IF_NONE_MATCH, RETRY_AFTER};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use futures::future::join_all;
use kv_core::consistency::RecordPosition;
use kv_core::settings::prefixes::KeyAction;
use kv_core::web::auth::{operation, Authorized, Operation};
use kv_core::web::error::{retry_after_seconds, ApiError, ErrorCode};
use kv_core::web::http::{CorrelationId, JsonBody, RequestTrace};
use serde::Serialize;

use crate::answer::{token_for, with_token};
use crate::conditional::IDEMPOTENCY_KEY;
use crate::input::{ItemLimit, RawBatch};
use crate::producer::Write;
use crate::state::{expiry, WriterState};

#[derive(Serialize)]
struct ItemError<'a> {
    code: ErrorCode,
    message: &'a str,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ItemResult<'a> {
    Acknowledged {
        status: u16,
        partition: i32,
        offset: Option<i64>,
    },
    Failed {
        status: u16,
        error: ItemError<'a>,
    },
}

#[derive(Serialize)]
struct BatchResponse<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ItemError<'a>>,
    items: Vec<ItemResult<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    consistency_token: Option<String>,
}

pub async fn batch(
    auth: Authorized<operation::Write>,
    request: HttpRequest,
    body: JsonBody<()>,
    state: web::Data<WriterState>,
) -> Result<HttpResponse, ApiError> {
    refuse_conditional_headers(&request)?;
    let (body, _permit) = state.bodies.read_json(&request, body).await?;
    let writes = RawBatch::parse(&body, ItemLimit(state.max_batch_items))?.writes(
        state.max_batch_items,
        state.max_ttl,
        |write, path| state.check(write, path),
    )?;
    if writes.iter().any(|write| write.value.is_none()) {
        auth.permits(Operation::Delete)?;
    }
    // The whole batch is refused before anything is produced, as for any bad item.
    let (puts, deletes) = (auth.keys(KeyAction::Write), auth.keys(KeyAction::Delete));
    for (index, write) in writes.iter().enumerate() {
        let grant = if write.value.is_some() {
            &puts
        } else {
            &deletes
        };
        grant.check_item("items", index, &write.key)?;
    }
    let correlation = CorrelationId::of(&request);
    let trace = RequestTrace::of(&request);

    // Every item on one producer: queued one after the other on it, they keep the items' order
    // on each partition, which items split across a replaced producer and its successor do not.
    let producer = state.producer.handle();
    let mut pending = Vec::with_capacity(writes.len());
    let mut refused: Option<ApiError> = None;
    for write in &writes {
        if let Some(error) = &refused {
            // The queue stayed full or Kafka is unreachable: later items would only wait again.
            pending.push(Err(error.clone()));
            continue;
        }
        let queued = producer
            .enqueue(Write {
                key: &write.key,
                value: write.value.as_deref(),
                correlation_id: &correlation.0,
                trace: Some(trace),
                headers: &write.headers,
                expires_at_ms: expiry(write.ttl_seconds),
                partition: None,
            })
            .await;
        if let Err(error) = &queued {
            if error.retry_after.is_some() {
                refused = Some(error.clone());
            }
        }
        pending.push(queued);
    }
    drop(producer);
    let outcomes: Vec<Result<RecordPosition, ApiError>> =
        join_all(pending.into_iter().map(|queued| async move {
            match queued {
                Ok(pending) => pending.acknowledged().await,
                Err(error) => Err(error),
            }
        }))
        .await;
    Ok(respond(&outcomes))
}

/// A batch is unconditional: a precondition or idempotency key on it is refused rather than
/// ignored, so no client takes a `200` for a conditional write.
fn refuse_conditional_headers(request: &HttpRequest) -> Result<(), ApiError> {
    let named = [
        (IF_MATCH, "If-Match"),
        (IF_NONE_MATCH, "If-None-Match"),
        (IDEMPOTENCY_KEY, "Idempotency-Key"),
    ]
    .into_iter()
    .find(|(name, _)| request.headers().contains_key(name));
    match named {
        None => Ok(()),
        Some((_, shown)) => Err(ApiError::new(
            ErrorCode::ConditionalBatchUnsupported,
            format!(
                "header {shown}: a batch cannot be conditional or idempotent; send such writes \
                 alone, as PUT or DELETE /v1/kv/{{key}}"
            ),
        )),
    }
}

fn respond(outcomes: &[Result<RecordPosition, ApiError>]) -> HttpResponse {
    let token = token_for(outcomes.iter().filter_map(|o| o.as_ref().ok()).copied());
    let failures: Vec<&ApiError> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    let items = outcomes
        .iter()
        .map(|outcome| match outcome {
            Ok(position) => ItemResult::Acknowledged {
                status: StatusCode::OK.as_u16(),
                partition: position.partition,
                offset: (position.offset >= 0).then_some(position.offset),
            },
            Err(error) => ItemResult::Failed {
                status: error.code.status().as_u16(),
                error: ItemError {
                    code: error.code,
                    message: &error.message,
                },
            },
        })
        .collect();
    // A retryable failure decides the status: retrying the failed items may then succeed.
    let worst = failures
        .iter()
        .find(|e| e.retry_after.is_some())
        .or_else(|| failures.first());
    let summary = format!(
        "{} of {} writes were not acknowledged; see `items`",
        failures.len(),
        outcomes.len()
    );
    let mut response = match worst {
        None => HttpResponse::Ok(),
        Some(error) => {
            let mut response = HttpResponse::build(error.code.status());
            if let Some(after) = error.retry_after {
                response.insert_header((RETRY_AFTER, retry_after_seconds(after)));
            }
            response
        }
    };
    if let Some(token) = &token {
        with_token(&mut response, token);
    }
    response.json(BatchResponse {
        error: worst.map(|error| ItemError {
            code: error.code,
            message: &summary,
        }),
        items,
        consistency_token: token,
    })
}
