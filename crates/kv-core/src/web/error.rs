//! The one error contract of both HTTP APIs: an [`ErrorCode`] fixes the HTTP status, and every
//! error response has the body `{"error":{"code":"...","message":"..."}}`.

use std::time::Duration;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed: bad JSON, a missing field, bad base64, a bad parameter.
    InvalidRequest,
    /// The key is empty or otherwise unusable.
    InvalidKey,
    /// The body, key or value is larger than the configured limit or the broker accepts.
    PayloadTooLarge,
    UnsupportedMediaType,
    /// The request body did not arrive in time (the writer's `KV_API_BODY_TIMEOUT_MS`).
    RequestTimeout,
    /// The key has no value on this replica.
    KeyNotFound,
    /// No such route.
    NotFound,
    MethodNotAllowed,
    Unauthorized,
    Forbidden,
    /// Kafka could not be reached or did not acknowledge in time; retrying later may succeed.
    KafkaUnavailable,
    /// The replica has not caught up yet (start-up, or a read-your-writes wait ran out).
    NotReady,
    /// Kafka refused the request for a reason retrying will not fix (authorization, config).
    KafkaRejected,
    /// As many requests of this kind run as the service takes at once (bodies held, sealed
    /// listings); retrying later succeeds.
    Overloaded,
    /// A sharded reader reached no shard holding the key's partition; other keys still answer.
    ShardUnavailable,
    /// The replica is further behind on the partitions a read touches than the read allows
    /// (`max_lag`, `X-Max-Replica-Lag`).
    ReplicaLagging,
    /// A conditional write's precondition (`If-Match`, `If-None-Match`) did not hold when its
    /// record was decided in log order: the write did not take effect.
    PreconditionFailed,
    /// A conditional or idempotent write reached a writer without `KV_API_READERS`.
    ConditionalWritesNotConfigured,
    /// A conditional write's record is on the topic but no reader told its outcome in time: it
    /// may or may not have taken effect (retry with the same `Idempotency-Key`, or re-read).
    OutcomeUnknown,
    /// A batch item (or a batch request) asked for a precondition, which batches do not take.
    ConditionalBatchUnsupported,
    Internal,
    /// A reader holds no decision for the record a writer asked about (`GET /v1/outcomes`).
    OutcomeNotFound,
    /// This sharded reader does not hold the partition asked about; another shard does.
    PartitionNotHeld,
    /// A report or state request names a key under no rule of `KV_API_STATE_RULES`.
    NoRule,
    /// This caller holds as many of something as one caller may (watches open); others are
    /// still served. Retrying after one of its own ends succeeds.
    TooManyRequests,
}

impl ErrorCode {
    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidRequest | Self::InvalidKey | Self::ConditionalBatchUnsupported => {
                StatusCode::BAD_REQUEST
            }
            Self::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            Self::ConditionalWritesNotConfigured => StatusCode::NOT_IMPLEMENTED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::KeyNotFound | Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::KafkaUnavailable
            | Self::NotReady
            | Self::Overloaded
            | Self::ShardUnavailable
            | Self::ReplicaLagging
            | Self::OutcomeUnknown => StatusCode::SERVICE_UNAVAILABLE,
            Self::KafkaRejected => StatusCode::BAD_GATEWAY,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::OutcomeNotFound => StatusCode::NOT_FOUND,
            Self::PartitionNotHeld => StatusCode::MISDIRECTED_REQUEST,
            Self::NoRule => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

/// An error as a client sees it. The message says what was wrong, naming the field when a
/// field was wrong; it never carries secrets or internal detail a client cannot act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Sent as `Retry-After` (whole seconds, at least 1) so clients back off instead of hammering.
    pub retry_after: Option<Duration>,
    /// Sent as `WWW-Authenticate` on 401/403 (RFC 6750), telling the client what to fix.
    pub challenge: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
            challenge: None,
        }
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    pub fn key_not_found() -> Self {
        Self::new(ErrorCode::KeyNotFound, "no value is stored for this key")
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub fn with_challenge(mut self, challenge: impl Into<String>) -> Self {
        self.challenge = Some(challenge.into());
        self
    }

    /// The error's JSON body, for an answer that cannot be an HTTP error any more: the last
    /// event of a stream already under way.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!(ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
            },
        })
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: ErrorCode,
    message: &'a str,
}

/// `Retry-After` in whole seconds, rounded up and never 0: a client told to come back after
/// 200 ms waits a second rather than retrying at once. Every answer that carries the header uses
/// this one rounding.
pub fn retry_after_seconds(after: Duration) -> u64 {
    let whole = after.as_secs();
    let seconds = if after.subsec_nanos() > 0 {
        whole + 1
    } else {
        whole
    };
    seconds.max(1)
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let Some(after) = self.retry_after {
            response.insert_header((header::RETRY_AFTER, retry_after_seconds(after)));
        }
        if let Some(challenge) = self.challenge.as_deref() {
            if let Ok(value) = HeaderValue::from_str(challenge) {
                response.insert_header((header::WWW_AUTHENTICATE, value));
            }
        }
        response.json(ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    fn body_of(response: HttpResponse) -> serde_json::Value {
        let bytes = response.into_body().try_into_bytes().expect("a full body");
        serde_json::from_slice(&bytes).expect("json")
    }

    #[test]
    fn an_error_renders_as_the_documented_json_shape() {
        let response = ApiError::invalid_request("field `key` is missing").error_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            body_of(response),
            serde_json::json!({"error": {"code": "invalid_request", "message": "field `key` is missing"}})
        );
    }

    #[test]
    fn a_missing_key_is_404_with_its_own_code() {
        let response = ApiError::key_not_found().error_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(body_of(response)["error"]["code"], "key_not_found");
    }

    #[test]
    fn retry_after_is_whole_seconds_and_never_zero() {
        let response = ApiError::new(ErrorCode::KafkaUnavailable, "broker down")
            .with_retry_after(Duration::from_millis(200))
            .error_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers().get(header::RETRY_AFTER).expect("header"),
            "1"
        );
    }

    #[test]
    fn a_body_that_came_too_slowly_is_408_and_a_full_body_budget_is_503() {
        let slow = ApiError::new(ErrorCode::RequestTimeout, "slow").error_response();
        assert_eq!(slow.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(body_of(slow)["error"]["code"], "request_timeout");
        let full = ApiError::new(ErrorCode::Overloaded, "full").error_response();
        assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body_of(full)["error"]["code"], "overloaded");
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_everywhere() {
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_seconds(Duration::from_millis(2001)), 3);
    }
}
