//! Conditional writes (docs/architecture.md, "Conditional writes"): one definition of a key's
//! version and its `ETag`, of the preconditions a record carries, and of the outcome a reader
//! reports for a conditional record.
//!
//! A conditional write is an ordinary record with a precondition in its headers. Every replica
//! decides it in log order against the key's state at that point, so every replica decides it
//! the same way, and the writer learns the decision from any one of them. Nothing here depends
//! on broker transactions.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Record header of a write applied only while the key's version is one of the listed ones
/// (`<partition>-<offset>`, comma-separated), or, as `*`, only while the key exists.
pub const IF_MATCH_HEADER: &str = "X-KV-If-Match";
/// Record header (`*`) of a write applied only while the key is absent.
pub const IF_NONE_MATCH_HEADER: &str = "X-KV-If-None-Match";
/// Record header carrying the client's `Idempotency-Key`: a second record of the same key with
/// the same idempotency key within [`IDEMPOTENCY_WINDOW_MS`] (by record timestamps) changes
/// nothing and reports the first one's outcome.
pub const IDEMPOTENCY_KEY_HEADER: &str = "X-KV-Idempotency-Key";
/// Record header of a repair: the version (offset) of the state it re-asserts, so the key's
/// `ETag` survives the repair and is the same on a replica that saw only the repair.
pub const VERSION_HEADER: &str = "X-KV-Version";

/// The HTTP request header a client names a retry with.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// At most this many versions in one `If-Match`.
pub const MAX_IF_MATCH_VERSIONS: usize = 16;
/// An idempotency key is 1 to this many visible ASCII characters.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;
/// How long, in record-timestamp milliseconds, a record's idempotency key is remembered. The
/// window is fixed (not a setting) because every replica must decide a repeat alike.
pub const IDEMPOTENCY_WINDOW_MS: u64 = 10 * 60 * 1000;

/// A key's version: where the record that gave the key its current state is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    pub partition: i32,
    pub offset: i64,
}

impl Version {
    /// The strong entity tag reads answer (`"3-1042"`, with the quotes).
    pub fn etag(&self) -> String {
        self.to_string()
    }

    /// Parses one entity tag as [`Version::etag`] writes it. A weak tag (`W/"…"`) never matches
    /// under `If-Match` (RFC 9110 §13.1.1: strong comparison), so it parses as `Ok(None)`.
    pub fn parse_etag(tag: &str) -> Result<Option<Self>, String> {
        let tag = tag.trim();
        let (weak, quoted) = match tag.strip_prefix("W/") {
            Some(rest) => (true, rest),
            None => (false, tag),
        };
        let inner = quoted
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .ok_or_else(|| format!("{tag:?} is not a quoted entity tag such as \"0-42\""))?;
        if weak {
            return Ok(None);
        }
        let parsed = inner.split_once('-').and_then(|(p, o)| {
            let partition: i32 = p.parse().ok()?;
            let offset: i64 = o.parse().ok()?;
            (partition >= 0 && offset >= 0).then_some(Self { partition, offset })
        });
        parsed.map(Some).ok_or_else(|| {
            format!(
                "{tag:?} is not a version this service gave (expected \"<partition>-<offset>\")"
            )
        })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}-{}\"", self.partition, self.offset)
    }
}

/// The precondition a conditional record carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Applies only while the key exists and its version is one of these (sorted, distinct, at
    /// most [`MAX_IF_MATCH_VERSIONS`]). Empty: never applies.
    IfMatch(Vec<Version>),
    /// `If-Match: *`: applies only while the key exists.
    IfExists,
    /// `If-None-Match: *`: applies only while the key is absent.
    IfAbsent,
}

impl Condition {
    /// Whether the condition holds for a key whose live version is `current` (`None`: absent).
    pub fn holds(&self, current: Option<Version>) -> bool {
        match (self, current) {
            (Self::IfMatch(versions), Some(version)) => versions.binary_search(&version).is_ok(),
            (Self::IfExists, Some(_)) | (Self::IfAbsent, None) => true,
            _ => false,
        }
    }

    /// The record header that states this condition, as `(name, value)`.
    pub fn header(&self) -> (&'static str, String) {
        match self {
            Self::IfMatch(versions) => {
                let list: Vec<String> = versions
                    .iter()
                    .map(|v| format!("{}-{}", v.partition, v.offset))
                    .collect();
                (IF_MATCH_HEADER, list.join(","))
            }
            Self::IfExists => (IF_MATCH_HEADER, "*".to_owned()),
            Self::IfAbsent => (IF_NONE_MATCH_HEADER, "*".to_owned()),
        }
    }

    /// A record's condition header, read back (`name` matched in any case by the caller).
    pub fn from_record_header(name: &str, value: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(value)
            .map_err(|_| format!("header {name} is not UTF-8"))?
            .trim();
        if name.eq_ignore_ascii_case(IF_NONE_MATCH_HEADER) {
            return match text {
                "*" => Ok(Self::IfAbsent),
                _ => Err(format!("header {name} must be \"*\"")),
            };
        }
        if text == "*" {
            return Ok(Self::IfExists);
        }
        let mut versions = Vec::new();
        if !text.is_empty() {
            for part in text.split(',') {
                let version = part
                    .trim()
                    .split_once('-')
                    .and_then(|(p, o)| {
                        let partition: i32 = p.parse().ok()?;
                        let offset: i64 = o.parse().ok()?;
                        (partition >= 0 && offset >= 0).then_some(Version { partition, offset })
                    })
                    .ok_or_else(|| format!("header {name} holds {part:?}, not a version"))?;
                versions.push(version);
                if versions.len() > MAX_IF_MATCH_VERSIONS {
                    return Err(format!(
                        "header {name} lists more than {MAX_IF_MATCH_VERSIONS} versions"
                    ));
                }
            }
        }
        versions.sort_unstable();
        versions.dedup();
        Ok(Self::IfMatch(versions))
    }
}

/// What a record's headers say about its conditions (`from_headers`; names in any case).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordConditions<'h> {
    pub condition: Option<Condition>,
    pub idempotency_key: Option<&'h [u8]>,
    /// [`VERSION_HEADER`] of a repair.
    pub version: Option<i64>,
    /// Whether the record carries [`crate::computed::PUBLISHED_HEADER`]: an owner's publication.
    pub published: bool,
}

impl<'h> RecordConditions<'h> {
    /// Reads the condition, idempotency and version headers among a record's headers; a
    /// malformed one is an error naming it (the record is skipped, never applied unconditionally).
    pub fn from_headers(
        headers: impl IntoIterator<Item = (&'h str, Option<&'h [u8]>)>,
    ) -> Result<Self, String> {
        let mut found = Self::default();
        for (name, value) in headers {
            let is_condition = name.eq_ignore_ascii_case(IF_MATCH_HEADER)
                || name.eq_ignore_ascii_case(IF_NONE_MATCH_HEADER);
            if is_condition {
                if found.condition.is_some() {
                    return Err(format!("a record carries more than one condition ({name})"));
                }
                let value = value.ok_or_else(|| format!("header {name} has no value"))?;
                found.condition = Some(Condition::from_record_header(name, value)?);
            } else if name.eq_ignore_ascii_case(IDEMPOTENCY_KEY_HEADER) {
                let value = value.ok_or_else(|| format!("header {name} has no value"))?;
                check_idempotency_key(value).map_err(|e| format!("header {name}: {e}"))?;
                found.idempotency_key = Some(value);
            } else if name.eq_ignore_ascii_case(crate::computed::PUBLISHED_HEADER) {
                found.published = true;
            } else if name.eq_ignore_ascii_case(VERSION_HEADER) {
                let version = value
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.trim().parse::<i64>().ok())
                    .filter(|v| *v >= 0)
                    .ok_or_else(|| format!("header {name} is not an offset"))?;
                found.version = Some(version);
            }
        }
        Ok(found)
    }

    /// Whether the record is decided by a reader for a writer that waits for the outcome.
    pub fn is_decided(&self) -> bool {
        self.condition.is_some() || self.idempotency_key.is_some()
    }
}

/// Why an HTTP precondition or idempotency header was refused: `400`, naming the header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadConditionHeader(pub String);

/// The condition an HTTP write asked for, from its `If-Match` / `If-None-Match` header values.
/// Weak entity tags are dropped: they never match (an `If-Match` left with none fails).
pub fn condition_from_http(
    if_match: Option<&str>,
    if_none_match: Option<&str>,
) -> Result<Option<Condition>, BadConditionHeader> {
    match (if_match, if_none_match) {
        (Some(_), Some(_)) => Err(BadConditionHeader(
            "give If-Match or If-None-Match, not both".to_owned(),
        )),
        (None, None) => Ok(None),
        (None, Some(value)) => match value.trim() {
            "*" => Ok(Some(Condition::IfAbsent)),
            other => Err(BadConditionHeader(format!(
                "If-None-Match on a write must be \"*\" (only if the key is absent), not {:?}",
                truncate(other)
            ))),
        },
        (Some(value), None) => {
            let value = value.trim();
            if value == "*" {
                return Ok(Some(Condition::IfExists));
            }
            if value.is_empty() {
                return Err(BadConditionHeader(
                    "If-Match is empty: give \"*\" or the ETag a read answered".to_owned(),
                ));
            }
            let mut versions = Vec::new();
            for (count, tag) in value.split(',').enumerate() {
                if count >= MAX_IF_MATCH_VERSIONS {
                    return Err(BadConditionHeader(format!(
                        "If-Match lists more than {MAX_IF_MATCH_VERSIONS} entity tags"
                    )));
                }
                let version = Version::parse_etag(tag)
                    .map_err(|e| BadConditionHeader(format!("If-Match: {}", truncate(&e))))?;
                versions.extend(version);
            }
            versions.sort_unstable();
            versions.dedup();
            Ok(Some(Condition::IfMatch(versions)))
        }
    }
}

/// Checks an `Idempotency-Key` header value: 1 to [`MAX_IDEMPOTENCY_KEY_BYTES`] visible ASCII
/// characters.
pub fn check_idempotency_key(value: &[u8]) -> Result<(), BadConditionHeader> {
    if value.is_empty()
        || value.len() > MAX_IDEMPOTENCY_KEY_BYTES
        || !value.iter().all(u8::is_ascii_graphic)
    {
        return Err(BadConditionHeader(format!(
            "{IDEMPOTENCY_KEY} must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} visible ASCII characters"
        )));
    }
    Ok(())
}

fn truncate(text: &str) -> String {
    text.chars().take(80).collect()
}

/// What a reader reports for a conditional (or idempotent) record, decided in log order
/// (`GET /v1/outcomes/{partition}/{offset}`, the writer's question).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub partition: i32,
    pub offset: i64,
    /// Whether the write took effect. For a repeat (`first` set): whether the first did.
    pub applied: bool,
    /// The key's version right after this record was decided (`None`: absent then).
    pub version: Option<Version>,
    /// Set when this record repeated an earlier one's idempotency key: that record's offset.
    pub first: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_etag_round_trips_and_a_weak_one_never_matches() {
        let v = Version {
            partition: 3,
            offset: 1042,
        };
        assert_eq!(v.etag(), "\"3-1042\"");
        assert_eq!(Version::parse_etag(&v.etag()), Ok(Some(v)));
        assert_eq!(Version::parse_etag("W/\"3-1042\""), Ok(None));
        assert!(Version::parse_etag("3-1042").is_err());
        assert!(Version::parse_etag("\"x-1\"").is_err());
        assert!(Version::parse_etag("\"-1-1\"").is_err());
    }

    fn v(partition: i32, offset: i64) -> Version {
        Version { partition, offset }
    }

    #[test]
    fn http_conditions_parse_entity_tag_lists() {
        let c =
            condition_from_http(Some("\"1-5\", \"2-7\", W/\"1-9\", \"1-5\""), None).expect("ok");
        assert_eq!(c, Some(Condition::IfMatch(vec![v(1, 5), v(2, 7)])));
        let c = condition_from_http(Some("W/\"2-7\""), None).expect("ok");
        assert_eq!(c, Some(Condition::IfMatch(vec![])));
        assert!(!Condition::IfMatch(vec![]).holds(Some(v(2, 7))));
        assert_eq!(
            condition_from_http(Some("*"), None),
            Ok(Some(Condition::IfExists))
        );
        assert_eq!(
            condition_from_http(None, Some("*")),
            Ok(Some(Condition::IfAbsent))
        );
        assert!(condition_from_http(None, Some("\"0-1\"")).is_err());
        assert!(condition_from_http(Some("*"), Some("*")).is_err());
        assert!(condition_from_http(Some("nope"), None).is_err());
        assert!(condition_from_http(Some(""), None).is_err());
        let many = vec!["\"0-1\""; MAX_IF_MATCH_VERSIONS + 1].join(",");
        assert!(condition_from_http(Some(&many), None).is_err());
    }

    #[test]
    fn a_condition_round_trips_through_its_record_header() {
        for c in [
            Condition::IfMatch(vec![v(0, 1), v(0, 9)]),
            Condition::IfMatch(vec![]),
            Condition::IfExists,
            Condition::IfAbsent,
        ] {
            let (name, value) = c.header();
            assert_eq!(Condition::from_record_header(name, value.as_bytes()), Ok(c));
        }
        assert!(Condition::from_record_header(IF_MATCH_HEADER, b"1,x").is_err());
        assert!(Condition::from_record_header(IF_NONE_MATCH_HEADER, b"1").is_err());
    }

    #[test]
    fn conditions_hold_as_http_says() {
        assert!(Condition::IfMatch(vec![v(0, 4)]).holds(Some(v(0, 4))));
        assert!(!Condition::IfMatch(vec![v(0, 4)]).holds(Some(v(0, 5))));
        assert!(!Condition::IfMatch(vec![v(0, 4)]).holds(Some(v(1, 4))));
        assert!(!Condition::IfMatch(vec![v(0, 4)]).holds(None));
        assert!(Condition::IfExists.holds(Some(v(0, 0))));
        assert!(!Condition::IfExists.holds(None));
        assert!(Condition::IfAbsent.holds(None));
        assert!(!Condition::IfAbsent.holds(Some(v(0, 0))));
    }

    #[test]
    fn record_headers_give_the_condition_the_idempotency_key_and_a_repairs_version() {
        let headers = [
            ("x-kv-if-match", Some(&b"0-3,0-1"[..])),
            (IDEMPOTENCY_KEY_HEADER, Some(&b"k1"[..])),
            ("X-Other", Some(&b"x"[..])),
        ];
        let found = RecordConditions::from_headers(headers).expect("ok");
        assert_eq!(
            found.condition,
            Some(Condition::IfMatch(vec![v(0, 1), v(0, 3)]))
        );
        assert_eq!(found.idempotency_key, Some(&b"k1"[..]));
        assert!(found.is_decided());
        let found = RecordConditions::from_headers([(VERSION_HEADER, Some(&b"42"[..]))]);
        assert_eq!(found.expect("ok").version, Some(42));
        let two = [
            (IF_MATCH_HEADER, Some(&b"*"[..])),
            (IF_NONE_MATCH_HEADER, Some(&b"*"[..])),
        ];
        assert!(RecordConditions::from_headers(two).is_err());
        assert!(RecordConditions::from_headers([(IF_MATCH_HEADER, None)]).is_err());
        assert!(RecordConditions::from_headers([(VERSION_HEADER, Some(&b"-1"[..]))]).is_err());
        assert!(!RecordConditions::default().is_decided());
    }

    #[test]
    fn idempotency_keys_are_short_visible_ascii() {
        assert!(check_idempotency_key(b"retry-1").is_ok());
        assert!(check_idempotency_key(b"").is_err());
        assert!(check_idempotency_key(b"a b").is_err());
        assert!(check_idempotency_key(&[b'a'; MAX_IDEMPOTENCY_KEY_BYTES + 1]).is_err());
    }
}
