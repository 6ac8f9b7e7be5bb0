//! A key in a URL path, as a client and a forwarding shard both write it.

use percent_encoding::{percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// The bytes of a key escaped in a path: all but RFC 3986's unreserved letters, digits, `-`,
/// `_` and `~`. `/` and `.` are escaped too, so a key is one segment that no URL parser on the
/// way folds (`..`, `%2e%2e`) and the service decodes back whole.
const KEY_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');

/// Whether a path can carry `key`: all but `.` and `..` (see [`key_segment`]).
pub fn has_key_segment(key: &[u8]) -> bool {
    !matches!(key, b"." | b"..")
}

/// `key` as one path segment; `None` for a key of dots only (`.`, `..`): a URL parser folds
/// such a segment even escaped (`%2E%2E`), so no path carries it as a key (the body routes do).
pub fn key_segment(key: &[u8]) -> Option<String> {
    if !has_key_segment(key) {
        return None;
    }
    Some(percent_encode(key, KEY_SEGMENT).to_string())
}
