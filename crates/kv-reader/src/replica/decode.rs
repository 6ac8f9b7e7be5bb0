//! From a polled record to the change it makes, or the reason it is skipped. The skip reasons
//! are named here because the metrics and the readiness report count records by them, and some
//! of them mean the reader and the topic disagree on encryption rather than a bad record.

use kv_core::computed::{control_record, Control};
use kv_core::conditional::RecordConditions;
use kv_core::crypto::{ENVELOPE_FORMAT, RECORD_KEY_LEN};
use kv_core::kafka::kafka_partition;
use kv_core::record::{
    BadTtlHeader, DecodeError, DecodedRecord, RecordCodec, TtlHeaders, WRITER_HEADER,
};
use rdkafka::message::{BorrowedMessage, Headers, Message};

use crate::replica::refusals::ENCRYPTED_ENVELOPE_REASON;
use crate::replica::schema_registry::BadSchemaHeader;
use crate::replica::worker::{correlation_id, traceparent, Worker};
use crate::store::{Change, Decided, Precondition};

/// The shortest envelope (docs/wire-format.md): format, key id, nonce, key length, tag.
const MIN_ENVELOPE_LEN: usize = 2 + 12 + 4 + 16;

/// Why a record is skipped.
#[derive(Debug)]
pub(super) enum Skip {
    Decode(DecodeError),
    SchemaHeader,
    /// A plaintext reader met what has the shape of an envelope of an encrypted topic.
    EncryptedEnvelope,
    TtlHeader(BadTtlHeader),
    /// A condition, idempotency or version header that does not parse: such a record is never
    /// applied as if it had no condition.
    ConditionHeader(String),
    /// A report, tick or sink mark whose record key or header does not fit its header.
    ControlRecord(String),
}

/// The skip reason of [`Skip::ControlRecord`].
pub const CONTROL_RECORD_REASON: &str = "bad_control_record";

/// The skip reason of [`Skip::ConditionHeader`].
pub const CONDITION_HEADER_REASON: &str = "bad_condition_header";

/// Skip reasons that mean the reader and the topic disagree on encryption, not that a record is
/// bad: `undecryptable` too, since the key id is one byte and one other key in 256 shares it.
pub const CONFIGURATION_REASONS: [&str; 4] = [
    "wrong_key",
    "undecryptable",
    "not_encrypted",
    ENCRYPTED_ENVELOPE_REASON,
];

impl Skip {
    pub(super) fn reason(&self) -> &'static str {
        match self {
            Self::Decode(error) => error.reason(),
            Self::SchemaHeader => BadSchemaHeader::REASON,
            Self::EncryptedEnvelope => ENCRYPTED_ENVELOPE_REASON,
            Self::TtlHeader(_) => BadTtlHeader::REASON,
            Self::ConditionHeader(_) => CONDITION_HEADER_REASON,
            Self::ControlRecord(_) => CONTROL_RECORD_REASON,
        }
    }

    pub(super) fn is_configuration(&self) -> bool {
        CONFIGURATION_REASONS.contains(&self.reason())
    }
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Decode(error) => write!(f, "{error}"),
            Self::SchemaHeader => f.write_str(
                "the payload starts with the schema-registry magic byte but is shorter than \
                 its 5-byte header",
            ),
            Self::EncryptedEnvelope => f.write_str(
                "the record looks encrypted (a 32-byte binary key and an envelope value) but \
                 this reader has no KV_API_ENCRYPT_DATA_ON_KAFKA",
            ),
            Self::TtlHeader(error) => write!(f, "{error}"),
            Self::ConditionHeader(error) | Self::ControlRecord(error) => f.write_str(error),
        }
    }
}

impl Worker {
    /// The change a record makes, or why (logged and counted) it cannot be applied.
    pub(super) fn change_for<'m>(
        &self,
        message: &'m BorrowedMessage<'_>,
    ) -> Result<Change<'m>, Skip> {
        match self.control_change(message) {
            Ok(None) => {}
            Ok(Some(change)) => return Ok(change),
            Err(skip) => return Err(self.skipping(message, skip)),
        }
        let decoded = self.decode(message);
        if let Ok((
            DecodedRecord::Put { record_key, .. } | DecodedRecord::Delete { record_key },
            _,
        )) = &decoded
        {
            self.check_routing(message.partition(), message.offset(), record_key);
        }
        let conditions = decoded.and_then(|decoded| {
            let headers = message
                .headers()
                .into_iter()
                .flat_map(|headers| headers.iter().map(|h| (h.key, h.value)));
            RecordConditions::from_headers(headers)
                .map(|conditions| (decoded, conditions))
                .map_err(Skip::ConditionHeader)
        });
        match conditions {
            Ok((
                (
                    DecodedRecord::Put {
                        record_key,
                        user_key,
                        value,
                    },
                    ttl,
                ),
                conditions,
            )) => Ok(Change::Put {
                record_key,
                user_key,
                partition: message.partition(),
                offset: message.offset(),
                correlation_id: correlation_id(message),
                traceparent: traceparent(message),
                value,
                expires_at_ms: ttl.expires_at_ms,
                precondition: precondition(&ttl, conditions.version),
                decided: decided(message, conditions),
            }),
            Ok(((DecodedRecord::Delete { record_key }, ttl), conditions)) => Ok(Change::Delete {
                record_key,
                // On an encrypted topic a record key is a MAC, never a user key.
                user_key: matches!(self.codec, RecordCodec::Plaintext).then_some(record_key),
                partition: message.partition(),
                offset: message.offset(),
                traceparent: traceparent(message),
                precondition: precondition(&ttl, None),
                decided: decided(message, conditions),
            }),
            Err(skip) => Err(self.skipping(message, skip)),
        }
    }

    fn skipping(&self, message: &BorrowedMessage<'_>, skip: Skip) -> Skip {
        self.progress.count_skipped(skip.reason());
        tracing::warn!(
            partition = message.partition(),
            offset = message.offset(),
            reason = skip.reason(),
            "skipping a record that cannot be applied: {skip}"
        );
        skip
    }

    /// A report, tick or sink mark (`kv_core::computed`), recognised by its header whether or
    /// not this reader has rules: such a record is never an entry.
    fn control_change<'m>(
        &self,
        message: &'m BorrowedMessage<'_>,
    ) -> Result<Option<Change<'m>>, Skip> {
        let Some(headers) = message.headers() else {
            return Ok(None);
        };
        let record_key = message.key().unwrap_or_default();
        let control = control_record(record_key, headers.iter().map(|h| (h.key, h.value)))
            .map_err(Skip::ControlRecord)?;
        let at_ms = || {
            message
                .timestamp()
                .to_millis()
                .and_then(|at| u64::try_from(at).ok())
                .unwrap_or(0)
        };
        let (partition, offset) = (message.partition(), message.offset());
        Ok(control.map(|control| match control {
            Control::Report { key, agent } => Change::Report {
                key,
                agent,
                value: message.payload().unwrap_or_default(),
                partition,
                offset,
                at_ms: at_ms(),
            },
            Control::Tick { key, at_ms } => Change::Tick {
                key,
                partition,
                offset,
                at_ms,
            },
            Control::SinkDone { upto } => Change::SinkDone {
                partition,
                offset,
                upto,
            },
        }))
    }

    /// Counts a record that sits on another partition than the writer's partitioner gives its
    /// key (a foreign producer with another partitioner): a sharded reader routes the key to
    /// that other partition's owners, which never saw it.
    fn check_routing(&self, partition: i32, offset: i64, record_key: &[u8]) {
        let Some(partitions) = self.topology.partitions() else {
            return;
        };
        let expected = kafka_partition(record_key, partitions);
        if expected != partition && self.progress.count_misrouted(partition) {
            tracing::warn!(
                partition,
                offset,
                expected,
                "a record sits on another partition than murmur2 of its key gives (a producer \
                 with another partitioner); sharded readers cannot route its key. Logged once \
                 per partition; kv_reader_misrouted_records_total counts them all"
            );
        }
    }

    /// The record's change and its TTL headers (docs/wire-format.md).
    fn decode<'m>(
        &self,
        message: &'m BorrowedMessage<'_>,
    ) -> Result<(DecodedRecord<'m>, TtlHeaders), Skip> {
        let headers = message
            .headers()
            .into_iter()
            .flat_map(|headers| headers.iter().map(|h| (h.key, h.value)));
        let ttl = TtlHeaders::from_headers(headers, message.payload().is_none())
            .map_err(Skip::TtlHeader)?;
        self.decode_framed(message, ttl.expires_at_ms)
            .map(|record| (record, ttl))
    }

    fn decode_framed<'m>(
        &self,
        message: &'m BorrowedMessage<'_>,
        expires_at_ms: Option<u64>,
    ) -> Result<DecodedRecord<'m>, Skip> {
        if self.framing.is_on() && written_by_kv_writer(message) {
            return self
                .codec
                .decode_expiring(message.key(), message.payload(), expires_at_ms)
                .map_err(Skip::Decode);
        }
        let key = self
            .framing
            .strip_key(message.key())
            .map_err(|_| Skip::SchemaHeader)?;
        let payload = self
            .framing
            .strip_value(message.payload())
            .map_err(|_| Skip::SchemaHeader)?;
        let record = self
            .codec
            .decode_expiring(key, payload, expires_at_ms)
            .map_err(Skip::Decode)?;
        match (&self.codec, &record) {
            (
                RecordCodec::Plaintext,
                DecodedRecord::Put {
                    record_key, value, ..
                },
            ) if looks_encrypted(record_key, value) => Err(Skip::EncryptedEnvelope),
            _ => Ok(record),
        }
    }
}

/// A record a plaintext reader must not store as a value: the shape kv-writer gives records on
/// an encrypted topic, a 32-byte record key that is not UTF-8 text (a MAC) and a value that
/// starts with the envelope format byte and holds at least an empty envelope. A text key of 32
/// characters never matches; a binary one matches only beside such a value.
fn looks_encrypted(record_key: &[u8], value: &[u8]) -> bool {
    record_key.len() == RECORD_KEY_LEN
        && std::str::from_utf8(record_key).is_err()
        && value.len() >= MIN_ENVELOPE_LEN
        && value[0] == ENVELOPE_FORMAT
}

/// When a record a partition's owner wrote applies, from its headers (`version`: a repair's
/// `X-KV-Version`); `None` for any other record.
fn precondition(ttl: &TtlHeaders, version: Option<i64>) -> Option<Precondition> {
    match (ttl.expired_offset, ttl.repair_of) {
        (Some(expired), _) => Some(Precondition::Expires(expired)),
        (None, Some(stale)) => Some(Precondition::Repairs(stale, version)),
        (None, None) => None,
    }
}

/// What a writer waits to have decided about the record, if anything.
fn decided<'m>(
    message: &BorrowedMessage<'_>,
    conditions: RecordConditions<'m>,
) -> Option<Decided<'m>> {
    conditions.is_decided().then(|| Decided {
        published: conditions.published,
        condition: conditions.condition,
        idempotency_key: conditions.idempotency_key,
        timestamp_ms: message
            .timestamp()
            .to_millis()
            .and_then(|at| u64::try_from(at).ok())
            .unwrap_or(0),
    })
}

/// Whether kv-writer produced the record: its bytes are the user's, never registry-framed.
fn written_by_kv_writer(message: &BorrowedMessage<'_>) -> bool {
    message.headers().is_some_and(|headers| {
        headers
            .iter()
            .any(|h| h.key.eq_ignore_ascii_case(WRITER_HEADER))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plaintext_reader_knows_an_envelope_by_its_mac_key_and_format_byte() {
        let cipher = kv_core::crypto::TopicCipher::new(&[3; 32]);
        let record_key = cipher.record_key(b"user-1");
        let envelope = cipher.seal(&record_key, b"user-1", b"");
        assert!(looks_encrypted(&record_key, &envelope));
        let hex_id = b"0123456789abcdef0123456789abcdef";
        assert!(
            !looks_encrypted(hex_id, &envelope),
            "a 32-character text key is a user key"
        );
        assert!(!looks_encrypted(&record_key, b"\x01short"));
        assert!(!looks_encrypted(&record_key[..31], &envelope));
    }
}
