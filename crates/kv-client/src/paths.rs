//! The requests' shapes: where a key goes in a URL, and the headers read and written.

use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::Url;
use std::time::Duration;

use crate::error::Error;

/// The header of a TTL on a write.
pub(crate) const TTL_SECONDS: &str = "x-kv-ttl-seconds";
/// The expiry a read answers for a key that expires.
pub(crate) const EXPIRES_AT: &str = "x-kv-expires-at";
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// `v1/kv/<key>`, the key one percent-encoded path segment, as a forwarding shard writes it
/// (`kv_wire::paths`); a key of dots only has no path.
pub(crate) fn key_path(key: &str) -> Result<String, Error> {
    kv_wire::paths::key_segment(key.as_bytes())
        .map(|segment| format!("v1/kv/{segment}"))
        .ok_or_else(|| Error::UnaddressableKey {
            key: key.to_owned(),
        })
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
        let path = |key: &str| key_path(key).expect("a path");
        assert_eq!(path("users/ada"), "v1/kv/users%2Fada");
        assert_eq!(path("..."), "v1/kv/%2E%2E%2E");
        assert_eq!(path("a b?c#d"), "v1/kv/a%20b%3Fc%23d");
        assert_eq!(path("ünï"), "v1/kv/%C3%BCn%C3%AF");
        let base = Url::parse("http://h:1/prefix/").expect("url");
        assert_eq!(
            join(&base, &path("x/../y")).as_str(),
            "http://h:1/prefix/v1/kv/x%2F%2E%2E%2Fy"
        );
        // A URL parser folds `%2E%2E` like `..`: such a key is refused, never sent.
        assert!(matches!(
            key_path(".."),
            Err(Error::UnaddressableKey { .. })
        ));
        assert!(matches!(key_path("."), Err(Error::UnaddressableKey { .. })));
    }
}
