//! Property tests: whatever bytes arrive from the topic or from a client, the decoders answer
//! with a value or an error, never a panic. `make drills` runs the same properties far longer.

use kv_core::crypto::TopicCipher;
use kv_testkit::decoders::*;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn any_record_decodes_or_is_refused_on_a_plaintext_topic(record in raw_record()) {
        plaintext_record_decodes_or_is_refused(record);
    }

    #[test]
    fn any_record_decodes_or_is_refused_on_an_encrypted_topic(record in raw_record()) {
        encrypted_record_is_never_forged(&encrypted_codec(), record)?;
    }

    #[test]
    fn a_sealed_envelope_with_any_byte_flipped_is_refused(damage in envelope_damage()) {
        flipped_envelope_is_refused(&TopicCipher::new(&topic_key()), damage)?;
    }

    #[test]
    fn a_truncated_envelope_is_refused(damage in envelope_damage()) {
        truncated_envelope_is_refused(&TopicCipher::new(&topic_key()), damage)?;
    }

    #[test]
    fn any_consistency_token_text_parses_or_is_refused(text in token_text()) {
        token_parses_or_is_refused(text)?;
    }
}
