//! What calls take and answer: versions, entries, write options.

use std::time::Duration;

use bytes::Bytes;
use kv_wire::consistency::ConsistencyToken;

/// A key's version: where the write that stored its value landed, as `ETag: "partition-offset"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version {
    pub partition: i32,
    pub offset: i64,
}

impl Version {
    /// Parses an `ETag` value (`"2-41"`); a weak tag is no version (they never match).
    pub fn from_etag(etag: &str) -> Option<Self> {
        let inner = etag.trim().strip_prefix('"')?.strip_suffix('"')?;
        let (partition, offset) = inner.split_once('-')?;
        Some(Self {
            partition: partition.parse().ok()?,
            offset: offset.parse().ok()?,
        })
    }

    pub(crate) fn etag(self) -> String {
        format!("\"{}-{}\"", self.partition, self.offset)
    }
}

/// A value as a reader answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Bytes,
    /// The version to make a write conditional on ([`Precondition::IfMatch`]).
    pub version: Option<Version>,
    /// When the key expires, in milliseconds since the Unix epoch.
    pub expires_at_ms: Option<u64>,
}

/// What a write answered once Kafka acknowledged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The key's new version; `None` for a delete (the key is absent) or without offsets
    /// (`KAFKA_ACKS=none` on the writer).
    pub version: Option<Version>,
    pub token: Option<ConsistencyToken>,
}

/// When a write may take effect (HTTP's `If-Match` / `If-None-Match`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precondition {
    #[default]
    Always,
    /// Only while the key's version is this one.
    IfMatch(Version),
    /// Only if the key exists.
    IfExists,
    /// Only if the key is absent.
    IfAbsent,
}

/// The options of one write.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    pub precondition: Precondition,
    /// The key expires this long after the write.
    pub ttl: Option<Duration>,
    /// Sent as `Idempotency-Key`; one is made up for a conditional write without it, so that its
    /// retries are safe.
    pub idempotency_key: Option<String>,
}

/// What [`Client::update`]'s function decides from the key's current entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put(Bytes),
    Delete,
    /// Write nothing; `update` answers the current version.
    Keep,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_etag_is_a_version_and_a_weak_one_is_not() {
        assert_eq!(
            Version::from_etag("\"2-41\""),
            Some(Version {
                partition: 2,
                offset: 41
            })
        );
        assert_eq!(Version::from_etag("W/\"2-41\""), None);
        assert_eq!(Version::from_etag("\"x\""), None);
        assert_eq!(
            Version {
                partition: 2,
                offset: 41
            }
            .etag(),
            "\"2-41\""
        );
    }
}
