//! The read core's refusals in HTTP's error contract: one status per kind of refusal.

use kv_core::web::error::{ApiError, ErrorCode};

use crate::read::{ReadError, ReadErrorKind};

impl From<ReadError> for ApiError {
    fn from(error: ReadError) -> Self {
        let code = match error.kind() {
            ReadErrorKind::Invalid => ErrorCode::InvalidRequest,
            ReadErrorKind::NotFound => ErrorCode::KeyNotFound,
            ReadErrorKind::TooLarge => ErrorCode::PayloadTooLarge,
            ReadErrorKind::NotReady => ErrorCode::NotReady,
            ReadErrorKind::Lagging => ErrorCode::ReplicaLagging,
            ReadErrorKind::ShardUnavailable => ErrorCode::ShardUnavailable,
            ReadErrorKind::Overloaded => ErrorCode::Overloaded,
            ReadErrorKind::Internal => ErrorCode::Internal,
        };
        let answer = ApiError::new(code, error.to_string());
        match error.retry_after() {
            Some(after) => answer.with_retry_after(after),
            None => answer,
        }
    }
}
