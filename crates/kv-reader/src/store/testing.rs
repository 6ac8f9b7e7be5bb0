//! What the store's unit tests build their batches from, shared so that each file's tests say
//! only what they check.

use std::borrow::Cow;

use kv_core::secret::Secret;

use super::Change;

/// A client's put of `value` at `offset` on partition 0, with a correlation id and no expiry.
pub(super) fn put<'a>(key: &'a [u8], offset: i64, value: &'a [u8]) -> Change<'a> {
    Change::Put {
        record_key: key,
        user_key: Cow::Borrowed(key),
        partition: 0,
        offset,
        correlation_id: Some(b"corr-1"),
        traceparent: None,
        value: Cow::Borrowed(value),
        expires_at_ms: None,
        precondition: None,
        decided: None,
    }
}

/// A put of `key` with no correlation id that expires at `expires` (ms since the epoch), if ever.
pub(super) fn expiring_put<'a>(
    key: &'a [u8],
    offset: i64,
    value: &'a [u8],
    expires: Option<u64>,
) -> Change<'a> {
    Change::Put {
        record_key: key,
        user_key: Cow::Borrowed(key),
        partition: 0,
        offset,
        correlation_id: None,
        traceparent: None,
        value: Cow::Borrowed(value),
        expires_at_ms: expires,
        precondition: None,
        decided: None,
    }
}

pub(super) fn password(text: &str) -> Secret<String> {
    Secret::new(text.to_owned())
}
