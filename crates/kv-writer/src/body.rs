//! Reading request bodies within bounds: each body must arrive within a time limit, and the
//! bodies buffered at once share a budget of bytes, so slow or many concurrent clients cannot
//! hold the writer's memory or its workers.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::CONTENT_LENGTH;
use actix_web::web::BytesMut;
use actix_web::HttpRequest;
use kv_core::web::error::{ApiError, ErrorCode};
use kv_core::web::http::{read_body, JsonBody};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a request waits for room in the budget before it is refused with 503: long enough
/// to ride out a burst, short enough that a client is not held for long when the writer is full.
const BUDGET_WAIT: Duration = Duration::from_secs(1);

/// What a client should wait before retrying a body the budget had no room for.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The bounds every body is read under.
#[derive(Debug, Clone)]
pub struct BodyLimits {
    timeout: Duration,
    budget: Arc<Semaphore>,
    budget_bytes: usize,
}

/// A body's share of the budget, held until the request is answered: its bytes (and what is
/// built from them) stay in memory until then.
#[derive(Debug)]
pub struct BodyPermit(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl BodyLimits {
    pub fn new(timeout: Duration, budget_bytes: usize) -> Self {
        Self {
            timeout,
            budget: Arc::new(Semaphore::new(budget_bytes.min(Semaphore::MAX_PERMITS))),
            budget_bytes,
        }
    }

    /// Reads a raw body of at most `limit` bytes (see [`read_body`]) within the bounds.
    pub async fn read(
        &self,
        request: &HttpRequest,
        payload: actix_web::web::Payload,
        limit: usize,
    ) -> Result<(BytesMut, BodyPermit), ApiError> {
        let permit = self.reserve(request, limit).await?;
        let body = self.in_time(read_body(payload, request, limit)).await?;
        Ok((body, permit))
    }

    /// Reads a JSON body's bytes (see [`JsonBody::read_bytes`]) within the bounds.
    pub async fn read_json<T>(
        &self,
        request: &HttpRequest,
        body: JsonBody<T>,
    ) -> Result<(BytesMut, BodyPermit), ApiError> {
        let permit = self.reserve(request, body.limit()).await?;
        let body = self.in_time(body.read_bytes()).await?;
        Ok((body, permit))
    }

    /// Takes the body's room in the budget before a byte of it is read: its declared length, or
    /// the route's limit when it declares none (a chunked body may grow to it). A body declared
    /// over its limit is refused by [`read_body`] without reading, so it takes nothing.
    async fn reserve(&self, request: &HttpRequest, limit: usize) -> Result<BodyPermit, ApiError> {
        let declared = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let bytes = match declared {
            Some(len) if len > limit => return Ok(BodyPermit(None)),
            Some(len) => len,
            None => limit,
        };
        if bytes == 0 {
            return Ok(BodyPermit(None));
        }
        // Settings keep every route's limit within the budget, so a permit always exists.
        let wanted = u32::try_from(bytes.min(self.budget_bytes)).unwrap_or(u32::MAX);
        match tokio::time::timeout(BUDGET_WAIT, self.budget.clone().acquire_many_owned(wanted))
            .await
        {
            Ok(Ok(permit)) => Ok(BodyPermit(Some(permit))),
            Ok(Err(_closed)) => Err(ApiError::internal("the body budget is closed")),
            Err(_elapsed) => {
                tracing::warn!(bytes, "no room to buffer a request body; refusing it");
                Err(ApiError::new(
                    ErrorCode::Overloaded,
                    format!(
                        "the writer is buffering as many request bodies as it may \
                         (KV_API_MAX_BUFFERED_BODY_BYTES={}); retry later",
                        self.budget_bytes
                    ),
                )
                .with_retry_after(RETRY_AFTER))
            }
        }
    }

    async fn in_time<F: std::future::Future<Output = Result<BytesMut, ApiError>>>(
        &self,
        read: F,
    ) -> Result<BytesMut, ApiError> {
        match tokio::time::timeout(self.timeout, read).await {
            Ok(read) => read,
            // The unread rest is never drained: web::http::close_when_body_unread closes the
            // connection after this answer.
            Err(_elapsed) => Err(ApiError::new(
                ErrorCode::RequestTimeout,
                format!(
                    "the request body did not arrive within {} ms (KV_API_BODY_TIMEOUT_MS)",
                    self.timeout.as_millis()
                ),
            )),
        }
    }
}
