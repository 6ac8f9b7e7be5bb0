//! The decoder properties, shared by kv-core's quick property tests and its long drill: whatever bytes arrive from the topic or from a client, the decoders
//! answer with a value or an error, never a panic (a panic in the consumer thread would stop a
//! replica), and a forged or damaged envelope is never accepted.

use std::sync::Arc;

use kv_core::consistency::ConsistencyToken;
use kv_core::crypto::TopicCipher;
use kv_core::record::{DecodedRecord, RecordCodec};
use proptest::prelude::*;
use proptest::sample::Index;

/// A record as it may arrive: key and payload, each possibly absent.
pub type RawRecord = (Option<Vec<u8>>, Option<Vec<u8>>);

pub fn topic_key() -> [u8; 32] {
    [7; 32]
}

pub fn raw_record() -> impl Strategy<Value = RawRecord> {
    (
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..256)),
    )
}

/// A sealed envelope for a random key and value, and a place in it to damage.
pub fn envelope_damage() -> impl Strategy<Value = (Vec<u8>, Vec<u8>, Index, u8)> {
    (
        proptest::collection::vec(any::<u8>(), 1..32),
        proptest::collection::vec(any::<u8>(), 0..64),
        any::<Index>(),
        0u8..8,
    )
}

pub fn token_text() -> impl Strategy<Value = String> {
    ".{0,80}"
}

pub fn plaintext_record_decodes_or_is_refused((key, payload): RawRecord) {
    let _ = RecordCodec::Plaintext.decode(key.as_deref(), payload.as_deref());
}

pub fn encrypted_record_is_never_forged(
    codec: &RecordCodec,
    (key, payload): RawRecord,
) -> Result<(), TestCaseError> {
    if let Ok(decoded) = codec.decode(key.as_deref(), payload.as_deref()) {
        // Only a tombstone can decode without the key: forging an envelope is not possible.
        let is_delete = matches!(decoded, DecodedRecord::Delete { .. });
        prop_assert!(is_delete, "a forged envelope was accepted");
    }
    Ok(())
}

pub fn encrypted_codec() -> RecordCodec {
    RecordCodec::Encrypted(Arc::new(TopicCipher::new(&topic_key())))
}

pub fn flipped_envelope_is_refused(
    cipher: &TopicCipher,
    (user_key, value, flip, bit): (Vec<u8>, Vec<u8>, Index, u8),
) -> Result<(), TestCaseError> {
    let record_key = cipher.record_key(&user_key);
    let mut envelope = cipher.seal(&record_key, &user_key, &value);
    let at = flip.index(envelope.len());
    envelope[at] ^= 1 << bit;
    prop_assert!(cipher.open(&record_key, &envelope).is_err());
    Ok(())
}

pub fn truncated_envelope_is_refused(
    cipher: &TopicCipher,
    (user_key, value, cut, _): (Vec<u8>, Vec<u8>, Index, u8),
) -> Result<(), TestCaseError> {
    let record_key = cipher.record_key(&user_key);
    let envelope = cipher.seal(&record_key, &user_key, &value);
    let keep = cut.index(envelope.len());
    prop_assert!(cipher.open(&record_key, &envelope[..keep]).is_err());
    Ok(())
}

pub fn token_parses_or_is_refused(text: String) -> Result<(), TestCaseError> {
    if let Ok(token) = text.parse::<ConsistencyToken>() {
        prop_assert_eq!(token.to_string().parse::<ConsistencyToken>(), Ok(token));
    }
    Ok(())
}
