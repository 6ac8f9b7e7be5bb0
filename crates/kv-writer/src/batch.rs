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

use actix_web::http::header::RETRY_AFTER;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use futures::future::join_all;
use kv_core::consistency::RecordPosition;
use kv_core::web::auth::{operation, Authorized, Operation};
use kv_core::web::error::{retry_after_seconds, ApiError, ErrorCode};
use kv_core::web::http::{CorrelationId, JsonBody};
use kv_core::web::json::field;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::input::{Encoding, Fields, WriteInput};
use crate::producer::Write;
use crate::state::{token_for, with_token, WriterState};

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
    body: JsonBody<Map<String, Value>>,
    state: web::Data<WriterState>,
) -> Result<HttpResponse, ApiError> {
    let body = body.read().await?;
    let writes = parse(&body, &state)?;
    if writes.iter().any(|write| write.value.is_none()) {
        auth.permits(Operation::Delete)?;
    }
    let correlation = CorrelationId::of(&request);

    // Queued one after the other so their order on each partition is the items' order.
    let mut pending = Vec::with_capacity(writes.len());
    let mut refused: Option<ApiError> = None;
    for write in &writes {
        if let Some(error) = &refused {
            // The queue stayed full or Kafka is unreachable: later items would only wait again.
            pending.push(Err(error.clone()));
            continue;
        }
        let queued = state
            .producer
            .enqueue(Write {
                key: &write.key,
                value: write.value.as_deref(),
                correlation_id: &correlation.0,
                headers: &write.headers,
            })
            .await;
        if let Err(error) = &queued {
            if error.retry_after.is_some() {
                refused = Some(error.clone());
            }
        }
        pending.push(queued);
    }
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

/// Reads and checks every item; the first bad one refuses the request.
fn parse<'a>(
    body: &'a Map<String, Value>,
    state: &WriterState,
) -> Result<Vec<WriteInput<'a>>, ApiError> {
    let items = match field(body, "items") {
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(ApiError::invalid_request(
                "field `items` must be an array of writes",
            ))
        }
        None => return Err(ApiError::invalid_request("field `items` is missing")),
    };
    if items.is_empty() {
        return Err(ApiError::invalid_request("field `items` is empty"));
    }
    if items.len() > state.max_batch_items {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "field `items` has {} writes, over the limit of {}",
                items.len(),
                state.max_batch_items
            ),
        ));
    }
    let encoding = Encoding::from_field(body)?;
    let mut writes = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let path = format!("items[{index}].");
        let Value::Object(object) = item else {
            return Err(ApiError::invalid_request(format!(
                "field `items[{index}]` must be an object"
            )));
        };
        let write = Fields {
            object,
            path: &path,
            encoding,
        }
        .batch_item()?;
        state.check(&write, &path)?;
        writes.push(write);
    }
    Ok(writes)
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
