//! The requests' shapes: where a key goes in a URL, and the headers read and written.

use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::Url;
use std::time::Duration;

/// The header of a TTL on a write.
pub(crate) const TTL_SECONDS: &str = "x-kv-ttl-seconds";
/// The expiry a read answers for a key that expires.
pub(crate) const EXPIRES_AT: &str = "x-kv-expires-at";
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Characters a key keeps in a URL path: everything else, `/` and `.` segments included, is
/// percent-encoded, so a key is always one path segment to the service.
pub(crate) const KEY_IN_PATH: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'~');

/// `v1/kv/<key>`, the key one percent-encoded path segment.
pub(crate) fn key_path(key: &str) -> String {
    format!(
        "v1/kv/{}",
        percent_encoding::utf8_percent_encode(key, KEY_IN_PATH)
    )
}

/// `path` (relative, already encoded) under `base`.
pub(crate) fn join(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    url.set_path(&format!("{}{path}", base.path()));
    url
}

pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v: &HeaderValue| v.to_str().ok())
}

/// `Retry-After` in seconds (the services never send a date).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    header_str(headers, RETRY_AFTER.as_str())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_one_path_segment_whatever_it_holds() {
        assert_eq!(key_path("users/ada"), "v1/kv/users%2Fada");
        assert_eq!(key_path(".."), "v1/kv/%2E%2E");
        assert_eq!(key_path("a b?c#d"), "v1/kv/a%20b%3Fc%23d");
        assert_eq!(key_path("ünï"), "v1/kv/%C3%BCn%C3%AF");
        let base = Url::parse("http://h:1/prefix/").expect("url");
        assert_eq!(
            join(&base, &key_path("x/../y")).as_str(),
            "http://h:1/prefix/v1/kv/x%2F%2E%2E%2Fy"
        );
    }
}
