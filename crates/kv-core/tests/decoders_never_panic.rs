//! Property tests: whatever bytes arrive from the topic or from a client, the decoders answer
//! with a value or an error, never a panic (a panic in the consumer thread would stop a replica).

use std::sync::Arc;

use kv_core::consistency::ConsistencyToken;
use kv_core::crypto::TopicCipher;
use kv_core::record::RecordCodec;
use proptest::prelude::*;

fn encrypted() -> RecordCodec {
    RecordCodec::Encrypted(Arc::new(TopicCipher::new(&[7; 32])))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn any_record_decodes_or_is_refused_on_a_plaintext_topic(
        key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
        payload in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..256)),
    ) {
        let _ = RecordCodec::Plaintext.decode(key.as_deref(), payload.as_deref());
    }

    #[test]
    fn any_record_decodes_or_is_refused_on_an_encrypted_topic(
        key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
        payload in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..256)),
    ) {
        let codec = encrypted();
        if let Ok(decoded) = codec.decode(key.as_deref(), payload.as_deref()) {
            // Only a tombstone can decode without the key: forging an envelope is not possible.
            let is_delete = matches!(decoded, kv_core::record::DecodedRecord::Delete { .. });
            prop_assert!(is_delete, "a forged envelope was accepted");
        }
    }

    #[test]
    fn a_sealed_envelope_with_any_byte_flipped_is_refused(
        user_key in proptest::collection::vec(any::<u8>(), 1..32),
        value in proptest::collection::vec(any::<u8>(), 0..64),
        flip in any::<proptest::sample::Index>(),
        bit in 0u8..8,
    ) {
        let cipher = TopicCipher::new(&[7; 32]);
        let record_key = cipher.record_key(&user_key);
        let mut envelope = cipher.seal(&record_key, &user_key, &value);
        let at = flip.index(envelope.len());
        envelope[at] ^= 1 << bit;
        prop_assert!(cipher.open(&record_key, &envelope).is_err());
    }

    #[test]
    fn a_truncated_envelope_is_refused(
        value in proptest::collection::vec(any::<u8>(), 0..64),
        cut in any::<proptest::sample::Index>(),
    ) {
        let cipher = TopicCipher::new(&[7; 32]);
        let record_key = cipher.record_key(b"k");
        let envelope = cipher.seal(&record_key, b"k", &value);
        let keep = cut.index(envelope.len());
        prop_assert!(cipher.open(&record_key, &envelope[..keep]).is_err());
    }

    #[test]
    fn any_consistency_token_text_parses_or_is_refused(text in ".{0,80}") {
        if let Ok(token) = text.parse::<ConsistencyToken>() {
            prop_assert_eq!(token.to_string().parse::<ConsistencyToken>(), Ok(token));
        }
    }
}
