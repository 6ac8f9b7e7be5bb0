//! How a key-value write becomes a Kafka record, and how a reader turns records back into state.
//!
//! Plaintext mode is byte-compatible with the original service: the record key is the user key's
//! raw bytes and the record value the value's raw bytes, so existing topics keep working in both
//! directions. A delete is a tombstone (a record with a null value), which compaction understands.
//!
//! Readers index their state by *record key*, not user key: a tombstone carries nothing else, and
//! in encrypted mode (where the record key is a keyed MAC of the user key) it is the only way to
//! find the entry it removes. [`RecordCodec::record_key`] gives the index key for a lookup.

use std::borrow::Cow;
use std::sync::Arc;

use crate::crypto::{EnvelopeError, TopicCipher};
use crate::settings::TopicEncryption;

/// Kafka header carrying the request's correlation id from writer to reader.
pub const CORRELATION_ID_HEADER: &str = "X-Correlation-Id";

/// Kafka header kv-writer puts on every record it produces (docs/wire-format.md): such a record
/// holds the user's bytes, so a reader never strips a schema-registry header from it.
pub const WRITER_HEADER: &str = "X-KV-Writer";
/// The value of [`WRITER_HEADER`]: the wire format's version.
pub const WRITER_HEADER_VALUE: &[u8] = b"1";

/// Kafka header of a put that expires: when, in milliseconds since the Unix epoch, as decimal
/// ASCII (docs/wire-format.md). The writer stamps it with its clock; readers compare it with
/// theirs. Under topic encryption it is authenticated with the envelope.
pub const EXPIRES_AT_HEADER: &str = "X-KV-Expires-At";

/// The clock of both ends of [`EXPIRES_AT_HEADER`]: this host's wall clock, in milliseconds
/// since the Unix epoch. The writer stamps a put's expiry with it and every reader compares
/// expiries with its own, so the hosts' clocks must agree (docs/architecture.md, "Keys that
/// expire"); a clock set before the epoch reads 0.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The [`EXPIRES_AT_HEADER`] of a put written at `now_ms` (see [`now_ms`]) that lives for
/// `ttl_seconds`: milliseconds since the Unix epoch, saturating rather than wrapping.
pub fn expires_at_ms(now_ms: u64, ttl_seconds: u64) -> u64 {
    now_ms.saturating_add(ttl_seconds.saturating_mul(1000))
}
/// Kafka header of a tombstone the TTL sweeper produced: the offset of the expired put it
/// removes. Readers apply it only while that put is the key's entry.
pub const EXPIRED_OFFSET_HEADER: &str = "X-KV-Expired-Offset";
/// Kafka header of a sweeper's repair (a put or a tombstone re-asserting the key's state after
/// one of its own records turned out stale): the offset of that stale record. Readers apply it
/// only if nothing of the key newer than that offset was applied.
pub const REPAIR_OF_HEADER: &str = "X-KV-Repair-Of";
/// Kafka header names a client cannot set through a write's `headers`: the gateway and the
/// partition's owner set them, and readers act on them.
pub const RESERVED_HEADERS: [&str; 13] = [
    CORRELATION_ID_HEADER,
    crate::trace_context::TRACEPARENT,
    EXPIRES_AT_HEADER,
    EXPIRED_OFFSET_HEADER,
    REPAIR_OF_HEADER,
    crate::conditional::IF_MATCH_HEADER,
    crate::conditional::IF_NONE_MATCH_HEADER,
    crate::conditional::IDEMPOTENCY_KEY_HEADER,
    crate::conditional::VERSION_HEADER,
    crate::computed::REPORT_AGENT_HEADER,
    crate::computed::TICK_HEADER,
    crate::computed::SINK_DONE_HEADER,
    crate::computed::PUBLISHED_HEADER,
];

/// What a record's TTL headers say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TtlHeaders {
    /// [`EXPIRES_AT_HEADER`] of a put.
    pub expires_at_ms: Option<u64>,
    /// [`EXPIRED_OFFSET_HEADER`] of a sweeper's tombstone.
    pub expired_offset: Option<i64>,
    /// [`REPAIR_OF_HEADER`] of a sweeper's repair.
    pub repair_of: Option<i64>,
}

/// A TTL header whose value is not a decimal number in range, or two that contradict each other.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadTtlHeader(pub String);

impl BadTtlHeader {
    /// The skip reason readers count such records by.
    pub const REASON: &'static str = "bad_ttl_header";
}

impl TtlHeaders {
    /// Reads the TTL headers among a record's headers (names in any case, a repeated one's
    /// last value), `is_tombstone` saying whether the record has a null value.
    pub fn from_headers<'h>(
        headers: impl IntoIterator<Item = (&'h str, Option<&'h [u8]>)>,
        is_tombstone: bool,
    ) -> Result<Self, BadTtlHeader> {
        let mut found = Self::default();
        for (name, value) in headers {
            let number = |value: Option<&[u8]>| {
                value.and_then(decimal).ok_or_else(|| {
                    BadTtlHeader(format!(
                        "header {name} is not a whole number of at most 18 digits"
                    ))
                })
            };
            if name.eq_ignore_ascii_case(EXPIRES_AT_HEADER) {
                found.expires_at_ms = Some(number(value)?);
            } else if name.eq_ignore_ascii_case(EXPIRED_OFFSET_HEADER) {
                found.expired_offset = Some(number(value)? as i64);
            } else if name.eq_ignore_ascii_case(REPAIR_OF_HEADER) {
                found.repair_of = Some(number(value)? as i64);
            }
        }
        if found.expired_offset.is_some() && (found.repair_of.is_some() || !is_tombstone) {
            return Err(BadTtlHeader(format!(
                "header {EXPIRED_OFFSET_HEADER} belongs on a tombstone without {REPAIR_OF_HEADER}"
            )));
        }
        if is_tombstone {
            // A delete has nothing to expire.
            found.expires_at_ms = None;
        }
        Ok(found)
    }
}

/// A decimal header value: digits only, at most 18 of them, so it fits an i64 and a u64 alike.
fn decimal(value: &[u8]) -> Option<u64> {
    let digits = std::str::from_utf8(value).ok()?.trim();
    if digits.is_empty() || digits.len() > 18 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The record codec of one topic; both roles must use the same one.
#[derive(Debug, Clone, Default)]
pub enum RecordCodec {
    #[default]
    Plaintext,
    /// Record keys are MACs of user keys and values sealed envelopes; see [`crate::crypto`].
    Encrypted(Arc<TopicCipher>),
}

/// A record as a reader applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodedRecord<'a> {
    Put {
        record_key: &'a [u8],
        user_key: Cow<'a, [u8]>,
        value: Cow<'a, [u8]>,
    },
    Delete {
        record_key: &'a [u8],
    },
}

/// Why a record could not be applied; readers skip such records, count them by reason, and go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the record has no key")]
    MissingKey,
    #[error("the record key is empty")]
    EmptyKey,
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
}

impl DecodeError {
    /// Every decode error, so a skipped-records counter can show each reason at zero before the
    /// first skip (an alert on its increase then sees the first one). Keep in step with `reason`.
    pub const ALL: [DecodeError; 7] = [
        Self::MissingKey,
        Self::EmptyKey,
        Self::Envelope(EnvelopeError::NotEncrypted),
        Self::Envelope(EnvelopeError::Truncated),
        Self::Envelope(EnvelopeError::WrongKey),
        Self::Envelope(EnvelopeError::Undecryptable),
        Self::Envelope(EnvelopeError::KeyMismatch),
    ];

    /// A short, stable label for metrics and logs.
    pub fn reason(self) -> &'static str {
        match self {
            Self::MissingKey => "missing_key",
            Self::EmptyKey => "empty_key",
            Self::Envelope(EnvelopeError::NotEncrypted) => "not_encrypted",
            Self::Envelope(EnvelopeError::Truncated) => "truncated_envelope",
            Self::Envelope(EnvelopeError::WrongKey) => "wrong_key",
            Self::Envelope(EnvelopeError::Undecryptable) => "undecryptable",
            Self::Envelope(EnvelopeError::KeyMismatch) => "key_mismatch",
        }
    }
}

impl RecordCodec {
    pub fn for_topic(encryption: &TopicEncryption) -> Self {
        match encryption {
            TopicEncryption::Off => Self::Plaintext,
            TopicEncryption::On { key } => {
                Self::Encrypted(Arc::new(TopicCipher::new(key.expose())))
            }
        }
    }

    /// The Kafka record key for a user key; also the key readers index their state by.
    pub fn record_key<'k>(&self, user_key: &'k [u8]) -> Cow<'k, [u8]> {
        match self {
            Self::Plaintext => Cow::Borrowed(user_key),
            Self::Encrypted(cipher) => Cow::Owned(cipher.record_key(user_key).to_vec()),
        }
    }

    /// The record value for a put. An empty value is a value, distinct from a delete.
    pub fn encode_value<'v>(
        &self,
        record_key: &[u8],
        user_key: &[u8],
        value: &'v [u8],
    ) -> Cow<'v, [u8]> {
        self.encode_expiring_value(record_key, user_key, value, None)
    }

    /// The record value for a put that expires at `expires_at_ms` (sent beside it in
    /// [`EXPIRES_AT_HEADER`]); on an encrypted topic the envelope authenticates the expiry.
    pub fn encode_expiring_value<'v>(
        &self,
        record_key: &[u8],
        user_key: &[u8],
        value: &'v [u8],
        expires_at_ms: Option<u64>,
    ) -> Cow<'v, [u8]> {
        match self {
            Self::Plaintext => Cow::Borrowed(value),
            Self::Encrypted(cipher) => {
                Cow::Owned(cipher.seal_expiring(record_key, user_key, value, expires_at_ms))
            }
        }
    }

    /// Turns a consumed record's key and payload into the change it makes; a null payload deletes.
    pub fn decode<'a>(
        &self,
        record_key: Option<&'a [u8]>,
        payload: Option<&'a [u8]>,
    ) -> Result<DecodedRecord<'a>, DecodeError> {
        self.decode_expiring(record_key, payload, None)
    }

    /// As [`RecordCodec::decode`] for a record whose [`EXPIRES_AT_HEADER`] says `expires_at_ms`:
    /// on an encrypted topic an envelope sealed with another expiry (or none) is undecryptable.
    pub fn decode_expiring<'a>(
        &self,
        record_key: Option<&'a [u8]>,
        payload: Option<&'a [u8]>,
        expires_at_ms: Option<u64>,
    ) -> Result<DecodedRecord<'a>, DecodeError> {
        let record_key = record_key.ok_or(DecodeError::MissingKey)?;
        if record_key.is_empty() {
            return Err(DecodeError::EmptyKey);
        }
        let Some(payload) = payload else {
            return Ok(DecodedRecord::Delete { record_key });
        };
        match self {
            Self::Plaintext => Ok(DecodedRecord::Put {
                record_key,
                user_key: Cow::Borrowed(record_key),
                value: Cow::Borrowed(payload),
            }),
            Self::Encrypted(cipher) => {
                let (user_key, value) = cipher.open_expiring(record_key, payload, expires_at_ms)?;
                Ok(DecodedRecord::Put {
                    record_key,
                    user_key: Cow::Owned(user_key),
                    value: Cow::Owned(value),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_records_carry_the_raw_key_and_value_bytes() {
        let codec = RecordCodec::Plaintext;
        let key = "clé/ünïcode".as_bytes();
        let record_key = codec.record_key(key);
        assert_eq!(&*record_key, key);
        assert_eq!(
            &*codec.encode_value(&record_key, key, b"\x00\xffvalue"),
            b"\x00\xffvalue"
        );
    }

    #[test]
    fn a_plaintext_record_decodes_to_the_same_key_and_value() {
        let decoded = RecordCodec::Plaintext
            .decode(Some(b"user-1"), Some(b"{\"name\":\"Ada\"}"))
            .expect("decodes");
        assert_eq!(
            decoded,
            DecodedRecord::Put {
                record_key: b"user-1",
                user_key: Cow::Borrowed(b"user-1"),
                value: Cow::Borrowed(b"{\"name\":\"Ada\"}"),
            }
        );
    }

    #[test]
    fn a_null_payload_is_a_delete_and_an_empty_one_is_a_value() {
        let codec = RecordCodec::Plaintext;
        assert_eq!(
            codec.decode(Some(b"k"), None).expect("decodes"),
            DecodedRecord::Delete { record_key: b"k" }
        );
        assert!(matches!(
            codec.decode(Some(b"k"), Some(b"")).expect("decodes"),
            DecodedRecord::Put { value, .. } if value.is_empty()
        ));
    }

    fn encrypted() -> RecordCodec {
        RecordCodec::Encrypted(Arc::new(TopicCipher::new(&[9; 32])))
    }

    #[test]
    fn an_encrypted_record_decodes_to_the_user_key_and_value() {
        let codec = encrypted();
        let record_key = codec.record_key(b"user-1");
        let value = codec.encode_value(&record_key, b"user-1", b"Ada");
        assert_eq!(
            codec
                .decode(Some(&record_key), Some(&value))
                .expect("decodes"),
            DecodedRecord::Put {
                record_key: &record_key,
                user_key: Cow::Owned(b"user-1".to_vec()),
                value: Cow::Owned(b"Ada".to_vec()),
            }
        );
    }

    #[test]
    fn every_decode_error_has_its_own_reason() {
        let reasons: std::collections::BTreeSet<&str> =
            DecodeError::ALL.iter().map(|e| e.reason()).collect();
        assert_eq!(reasons.len(), DecodeError::ALL.len());
    }

    #[test]
    fn an_encrypted_topic_keeps_tombstones_null() {
        let codec = encrypted();
        let record_key = codec.record_key(b"user-1");
        assert_eq!(
            codec.decode(Some(&record_key), None).expect("decodes"),
            DecodedRecord::Delete {
                record_key: &record_key
            }
        );
    }

    #[test]
    fn a_plaintext_record_on_an_encrypted_topic_is_refused_with_its_reason() {
        let error = encrypted()
            .decode(Some(b"k"), Some(b"v"))
            .expect_err("must fail");
        assert_eq!(error.reason(), "not_encrypted");
    }

    #[test]
    fn an_encrypted_put_decodes_only_beside_the_expiry_it_was_written_with() {
        let codec = encrypted();
        let record_key = codec.record_key(b"k");
        let value = codec.encode_expiring_value(&record_key, b"k", b"v", Some(42_000));
        assert!(codec
            .decode_expiring(Some(&record_key), Some(&value), Some(42_000))
            .is_ok());
        for tampered in [None, Some(41_000), Some(43_000)] {
            assert_eq!(
                codec
                    .decode_expiring(Some(&record_key), Some(&value), tampered)
                    .expect_err("tampered expiry")
                    .reason(),
                "undecryptable"
            );
        }
        assert_eq!(
            &*RecordCodec::Plaintext.encode_expiring_value(b"k", b"k", b"v", Some(1)),
            b"v",
            "a plaintext value is the value; the expiry travels in its header"
        );
    }

    fn headers<'h>(pairs: &'h [(&'h str, &'h str)]) -> Vec<(&'h str, Option<&'h [u8]>)> {
        pairs
            .iter()
            .map(|(name, value)| (*name, Some(value.as_bytes())))
            .collect()
    }

    #[test]
    fn ttl_headers_are_read_in_any_case_and_a_bad_one_is_refused_with_its_name() {
        let put = TtlHeaders::from_headers(
            headers(&[("x-kv-expires-at", "1767225600000"), ("other", "x")]),
            false,
        )
        .expect("headers");
        assert_eq!(put.expires_at_ms, Some(1_767_225_600_000));
        let tombstone =
            TtlHeaders::from_headers(headers(&[(EXPIRED_OFFSET_HEADER, "41")]), true).expect("ok");
        assert_eq!(tombstone.expired_offset, Some(41));
        let repair =
            TtlHeaders::from_headers(headers(&[(REPAIR_OF_HEADER, "7")]), false).expect("ok");
        assert_eq!(repair.repair_of, Some(7));
        for bad in ["", "-1", "1.5", "12a", "9999999999999999999"] {
            let error = TtlHeaders::from_headers(headers(&[(EXPIRES_AT_HEADER, bad)]), false)
                .expect_err(bad);
            assert!(error.0.contains(EXPIRES_AT_HEADER), "{error}");
        }
        assert!(
            TtlHeaders::from_headers(headers(&[(EXPIRED_OFFSET_HEADER, "1")]), false).is_err(),
            "an expiry tombstone is a tombstone"
        );
        assert!(TtlHeaders::from_headers(
            headers(&[(EXPIRED_OFFSET_HEADER, "1"), (REPAIR_OF_HEADER, "2")]),
            true
        )
        .is_err());
    }

    #[test]
    fn records_without_a_usable_key_are_refused() {
        let codec = RecordCodec::Plaintext;
        assert_eq!(codec.decode(None, Some(b"v")), Err(DecodeError::MissingKey));
        assert_eq!(
            codec.decode(Some(b""), Some(b"v")),
            Err(DecodeError::EmptyKey)
        );
    }

    #[test]
    fn an_expiry_is_the_ttl_in_milliseconds_after_now_and_never_wraps() {
        assert_eq!(expires_at_ms(1_767_225_600_000, 60), 1_767_225_660_000);
        assert_eq!(expires_at_ms(1_000, 0), 1_000);
        assert_eq!(expires_at_ms(1_000, u64::MAX), u64::MAX);
        assert_eq!(expires_at_ms(u64::MAX - 1, 1), u64::MAX);
        assert!(now_ms() > 1_600_000_000_000, "milliseconds, not seconds");
    }
}
