//! How a stored entry is written in an HTTP answer: its version as `ETag`, its correlation id,
//! write's trace and expiry as headers, its bytes as text or base64 in JSON.

use actix_web::http::header::{self, ContentType, HeaderValue};
use actix_web::HttpResponse;
use base64::Engine;
use kv_core::conditional::Version;
use kv_core::web::http::{CORRELATION_ID, EXPIRES_AT, WRITE_TRACEPARENT};
use kv_core::web::json::BASE64;
use serde::Serialize;

use crate::store::StoredEntry;

pub fn etag(entry: &StoredEntry) -> String {
    Version {
        partition: entry.partition,
        offset: entry.offset,
    }
    .etag()
}

/// A stored correlation id came from a Kafka header anyone could have written; only a valid
/// header value is echoed.
pub fn correlation_header(entry: &StoredEntry) -> Option<HeaderValue> {
    entry
        .correlation_id
        .as_deref()
        .filter(|id| id.bytes().all(|b| b.is_ascii_graphic()))
        .and_then(|id| HeaderValue::from_str(id).ok())
}

pub fn value_response(entry: StoredEntry, content_type: ContentType) -> HttpResponse {
    let mut response = entry_headers(&entry);
    response.content_type(content_type).body(entry.value)
}

/// A `200` with the entry's `ETag`, stored correlation id and write's trace and, when it
/// expires, `X-KV-Expires-At`.
pub fn entry_headers(entry: &StoredEntry) -> actix_web::HttpResponseBuilder {
    let mut response = HttpResponse::Ok();
    response.insert_header((header::ETAG, etag(entry)));
    if let Some(id) = correlation_header(entry) {
        response.insert_header((CORRELATION_ID, id));
    }
    if let Some(trace) = entry.traceparent {
        response.insert_header((WRITE_TRACEPARENT, trace.to_string()));
    }
    if let Some(expires_at) = entry.expires_at_ms {
        response.insert_header((EXPIRES_AT, expires_at));
    }
    response
}

/// The seed routes answer as the .NET service's `Results.Ok(value)` did: the text as a JSON
/// string, `application/json`, so its clients' `ReadFromJsonAsync<string>()` keeps working.
pub fn original_response(entry: &StoredEntry, text: &str) -> HttpResponse {
    entry_headers(entry).json(text)
}

/// Bytes in JSON: `text` when they are UTF-8, otherwise `b64` (standard base64).
#[derive(Debug, Serialize)]
pub struct JsonBytes {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b64: Option<String>,
}

pub fn json_bytes(bytes: Vec<u8>) -> JsonBytes {
    match String::from_utf8(bytes) {
        Ok(text) => JsonBytes {
            text: Some(text),
            b64: None,
        },
        Err(e) => JsonBytes {
            text: None,
            b64: Some(BASE64.encode(e.as_bytes())),
        },
    }
}
