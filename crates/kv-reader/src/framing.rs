//! Foreign topics written with a Confluent schema-registry serializer prefix keys and values with
//! a 5-byte header (magic byte 0, then a 4-byte schema id). When the registry knows a subject for
//! this topic's keys or values, the header is stripped, but only from payloads that carry one:
//! the original stripped 5 bytes blindly and mangled every other record.

use std::time::Duration;

/// Magic byte plus schema id.
pub const CONFLUENT_HEADER_LEN: usize = 5;
const CONFLUENT_MAGIC: u8 = 0;

/// Which parts of this topic's records carry the schema-registry header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchemaFraming {
    pub key: bool,
    pub value: bool,
}

/// A payload starts with the magic byte but is too short to hold a whole header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadSchemaHeader;

impl BadSchemaHeader {
    pub const REASON: &'static str = "bad_schema_header";
}

impl SchemaFraming {
    pub fn strip_key<'a>(
        &self,
        key: Option<&'a [u8]>,
    ) -> Result<Option<&'a [u8]>, BadSchemaHeader> {
        match key {
            Some(key) if self.key => unframe(key).map(Some),
            other => Ok(other),
        }
    }

    pub fn strip_value<'a>(
        &self,
        value: Option<&'a [u8]>,
    ) -> Result<Option<&'a [u8]>, BadSchemaHeader> {
        match value {
            Some(value) if self.value => unframe(value).map(Some),
            other => Ok(other),
        }
    }
}

fn unframe(bytes: &[u8]) -> Result<&[u8], BadSchemaHeader> {
    match bytes.first() {
        Some(&CONFLUENT_MAGIC) if bytes.len() >= CONFLUENT_HEADER_LEN => {
            Ok(&bytes[CONFLUENT_HEADER_LEN..])
        }
        Some(&CONFLUENT_MAGIC) => Err(BadSchemaHeader),
        // Not written by a registry serializer: served as is.
        _ => Ok(bytes),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot list the subjects of the schema registry at {url} (KAFKA_SCHEMA_REGISTRY_URL): {reason}")]
pub struct RegistryError {
    url: String,
    reason: String,
}

/// Asks the registry (`GET {url}/subjects`) whether `<topic>-key` / `<topic>-value` exist.
///
/// Start-up fails when the registry cannot answer: guessing would store either framed or
/// mangled values, and neither is fixed without a rebuild.
pub async fn discover(
    url: &str,
    topic: &str,
    timeout: Duration,
) -> Result<SchemaFraming, RegistryError> {
    let fail = |reason: String| RegistryError {
        url: redact_userinfo(url),
        reason,
    };
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let response = client
        .get(format!("{}/subjects", url.trim_end_matches('/')))
        .header(
            "Accept",
            "application/vnd.schemaregistry.v1+json, application/json",
        )
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?;
    if !response.status().is_success() {
        return Err(fail(format!("it answered {}", response.status())));
    }
    let subjects: Vec<String> = response
        .json()
        .await
        .map_err(|e| fail(format!("the answer is not a JSON list of subjects: {e}")))?;
    let has = |suffix: &str| subjects.iter().any(|s| s == &format!("{topic}-{suffix}"));
    Ok(SchemaFraming {
        key: has("key"),
        value: has("value"),
    })
}

/// The URL without the `user:password@` it may carry, for error messages and logs.
fn redact_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_credentials_never_reach_an_error_message() {
        assert_eq!(
            redact_userinfo("https://user:secret@registry:8081/x"),
            "https://***@registry:8081/x"
        );
        assert_eq!(
            redact_userinfo("http://registry:8081"),
            "http://registry:8081"
        );
    }

    const BOTH: SchemaFraming = SchemaFraming {
        key: true,
        value: true,
    };

    #[test]
    fn a_framed_payload_loses_exactly_its_header() {
        assert_eq!(
            BOTH.strip_value(Some(b"\x00\x00\x00\x00\x07{\"a\":1}")),
            Ok(Some(b"{\"a\":1}".as_slice()))
        );
        assert_eq!(
            BOTH.strip_key(Some(b"\x00\x00\x00\x00\x07")),
            Ok(Some(b"".as_slice()))
        );
    }

    #[test]
    fn payloads_without_the_magic_byte_are_kept_whole() {
        assert_eq!(
            BOTH.strip_value(Some(b"plain")),
            Ok(Some(b"plain".as_slice()))
        );
        assert_eq!(BOTH.strip_value(None), Ok(None), "a tombstone stays one");
    }

    #[test]
    fn a_truncated_header_is_a_bad_record() {
        assert_eq!(
            BOTH.strip_value(Some(b"\x00\x00\x01")),
            Err(BadSchemaHeader)
        );
    }

    #[test]
    fn nothing_is_stripped_without_a_subject() {
        let none = SchemaFraming::default();
        assert_eq!(
            none.strip_value(Some(b"\x00\x00\x00\x00\x07v")),
            Ok(Some(b"\x00\x00\x00\x00\x07v".as_slice()))
        );
    }
}
