//! How the original service's JSON bodies are read, in one place for both services: field names
//! in any case, and base64 with or without padding.

use base64::alphabet::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::{Map, Value};

/// Standard base64 as .NET's `Convert.ToBase64String` writes it (padded on output); padding is
/// optional on input because many clients strip it. The writer decodes with it and the reader
/// decodes and encodes with it, so a key stored as `"aw"` is read back as `"aw"` or `"aw=="`.
pub const BASE64: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Looks a field up ignoring case, as the original accepted `Key` and `key` alike. An exact
/// match wins over a case-insensitive one, so a body with both `key` and `Key` is read
/// predictably.
pub fn field<'a>(body: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    body.get(name).or_else(|| {
        body.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use serde_json::json;

    use super::*;

    #[test]
    fn base64_is_read_with_or_without_padding_and_written_padded() {
        for text in ["aw", "aw=="] {
            assert_eq!(BASE64.decode(text).expect(text), b"k");
        }
        assert_eq!(BASE64.encode(b"k"), "aw==");
        assert!(BASE64.decode("a w=").is_err());
    }

    #[test]
    fn an_exact_field_name_wins_over_one_in_another_case() {
        let body = json!({"Key": "upper", "key": "exact"});
        let body = body.as_object().expect("object");
        assert_eq!(field(body, "key"), Some(&json!("exact")));
        assert_eq!(field(body, "KEY"), Some(&json!("upper")));
        assert_eq!(field(body, "value"), None);
    }
}
