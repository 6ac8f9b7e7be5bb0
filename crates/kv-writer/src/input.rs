//! Turning JSON write bodies (`/store`, `/store/b64`, `/remove`, batch items) into writes.
//!
//! Field names are matched ignoring case, as the original accepted `Key` and `key` alike. Every
//! error names the field, with its path inside a batch (`items[3].value`).

use std::borrow::Cow;

use base64::Engine;
use kv_core::record::CORRELATION_ID_HEADER;
use kv_core::web::error::{ApiError, ErrorCode};
use kv_core::web::json::{field, BASE64};
use serde_json::{Map, Value};

/// How keys, values and header values are spelled in a JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// JSON strings whose UTF-8 bytes are the data (`/store`).
    Utf8,
    /// JSON strings holding standard base64 of the data (`/store/b64`), for binary data.
    Base64,
}

impl Encoding {
    /// The `encoding` field of a batch: absent means UTF-8.
    pub fn from_field(body: &Map<String, Value>) -> Result<Self, ApiError> {
        match field(body, "encoding") {
            None | Some(Value::Null) => Ok(Self::Utf8),
            Some(Value::String(name)) => match name.to_ascii_lowercase().as_str() {
                "utf-8" | "utf8" => Ok(Self::Utf8),
                "base64" => Ok(Self::Base64),
                _ => Err(ApiError::invalid_request(format!(
                    "field `encoding` must be \"utf-8\" or \"base64\", got {name:?}"
                ))),
            },
            Some(_) => Err(ApiError::invalid_request(
                "field `encoding` must be \"utf-8\" or \"base64\"",
            )),
        }
    }
}

/// One write read from a JSON object, borrowing from it where no decoding was needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteInput<'a> {
    pub key: Cow<'a, [u8]>,
    /// `None` deletes the key.
    pub value: Option<Cow<'a, [u8]>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// A JSON object holding one write, with the path its fields are reported under.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a, 'p> {
    pub object: &'a Map<String, Value>,
    /// Prepended to field names in errors: empty at the top level, `items[3].` in a batch.
    pub path: &'p str,
    pub encoding: Encoding,
}

impl<'a> Fields<'a, '_> {
    pub fn new(object: &'a Map<String, Value>, encoding: Encoding) -> Self {
        Self {
            object,
            path: "",
            encoding,
        }
    }

    /// `{"key","value","headers"?}`: a put.
    pub fn put(&self) -> Result<WriteInput<'a>, ApiError> {
        Ok(WriteInput {
            key: self.required_bytes("key")?,
            value: Some(self.required_bytes("value")?),
            headers: self.headers()?,
        })
    }

    /// `{"key"}`: a delete.
    pub fn delete(&self) -> Result<WriteInput<'a>, ApiError> {
        Ok(WriteInput {
            key: self.required_bytes("key")?,
            value: None,
            headers: self.headers()?,
        })
    }

    /// A batch item: a put, or a delete when it says `"delete": true`.
    pub fn batch_item(&self) -> Result<WriteInput<'a>, ApiError> {
        let delete = match field(self.object, "delete") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => false,
            Some(Value::Bool(true)) => true,
            Some(_) => {
                return Err(ApiError::invalid_request(format!(
                    "field `{}delete` must be true or false",
                    self.path
                )))
            }
        };
        if !delete {
            if field(self.object, "value").is_none() {
                return Err(ApiError::invalid_request(format!(
                    "field `{}value` is missing (to delete the key, send \"delete\": true)",
                    self.path
                )));
            }
            return self.put();
        }
        if field(self.object, "value").is_some() {
            return Err(ApiError::invalid_request(format!(
                "field `{0}value` cannot be given with `{0}delete`: true",
                self.path
            )));
        }
        self.delete()
    }

    fn required_bytes(&self, name: &str) -> Result<Cow<'a, [u8]>, ApiError> {
        match field(self.object, name) {
            Some(Value::String(text)) => self.decode(name, text),
            Some(_) => Err(ApiError::invalid_request(format!(
                "field `{}{name}` must be a string",
                self.path
            ))),
            None => Err(ApiError::invalid_request(format!(
                "field `{}{name}` is missing",
                self.path
            ))),
        }
    }

    fn decode(&self, name: &str, text: &'a str) -> Result<Cow<'a, [u8]>, ApiError> {
        match self.encoding {
            Encoding::Utf8 => Ok(Cow::Borrowed(text.as_bytes())),
            Encoding::Base64 => BASE64.decode(text).map(Cow::Owned).map_err(|e| {
                ApiError::invalid_request(format!(
                    "field `{}{name}` is not valid base64: {e}",
                    self.path
                ))
            }),
        }
    }

    /// `headers`: an object of header name to string value, sent as Kafka record headers.
    fn headers(&self) -> Result<Vec<(String, Vec<u8>)>, ApiError> {
        let map = match field(self.object, "headers") {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::Object(map)) => map,
            Some(_) => {
                return Err(ApiError::invalid_request(format!(
                    "field `{}headers` must be an object of strings",
                    self.path
                )))
            }
        };
        map.iter()
            .map(|(name, value)| {
                let field_name = format!("headers.{name}");
                if name.is_empty() {
                    return Err(ApiError::invalid_request(format!(
                        "field `{}headers` has an empty header name",
                        self.path
                    )));
                }
                // The gateway sets this header from the request; a second copy would make the
                // record's correlation id ambiguous.
                if name.eq_ignore_ascii_case(CORRELATION_ID_HEADER) {
                    return Err(ApiError::invalid_request(format!(
                        "field `{}{field_name}` is reserved: send the X-Correlation-Id request \
                         header instead",
                        self.path
                    )));
                }
                match value {
                    Value::String(text) => {
                        Ok((name.clone(), self.decode(&field_name, text)?.into_owned()))
                    }
                    _ => Err(ApiError::invalid_request(format!(
                        "field `{}{field_name}` must be a string",
                        self.path
                    ))),
                }
            })
            .collect()
    }
}

/// Refuses a key that is empty or longer than `max` bytes; `what` names it in the error (built
/// only on failure, so the happy path allocates nothing for it).
pub fn check_key(key: &[u8], max: usize, what: impl FnOnce() -> String) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidKey,
            format!("{} is empty", what()),
        ));
    }
    if key.len() > max {
        return Err(too_large(&what(), key.len(), max));
    }
    Ok(())
}

/// Refuses a value longer than `max` bytes; an empty value is a value.
pub fn check_value(
    value: &[u8],
    max: usize,
    what: impl FnOnce() -> String,
) -> Result<(), ApiError> {
    if value.len() > max {
        return Err(too_large(&what(), value.len(), max));
    }
    Ok(())
}

fn too_large(what: &str, len: usize, max: usize) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("{what} is {len} bytes, over the limit of {max} bytes"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(json: Value) -> Map<String, Value> {
        match json {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn field_names_are_matched_ignoring_case() {
        let body = object(serde_json::json!({"Key": "k", "VALUE": "v", "Headers": {"a": "b"}}));
        let write = Fields::new(&body, Encoding::Utf8).put().expect("a put");
        assert_eq!(&*write.key, b"k");
        assert_eq!(write.value.as_deref(), Some(&b"v"[..]));
        assert_eq!(write.headers, vec![("a".to_owned(), b"b".to_vec())]);
    }

    #[test]
    fn base64_fields_are_decoded_with_or_without_padding() {
        let body =
            object(serde_json::json!({"key": "AP8=", "value": "aGk", "headers": {"h": "AA=="}}));
        let write = Fields::new(&body, Encoding::Base64).put().expect("a put");
        assert_eq!(&*write.key, &[0x00, 0xff]);
        assert_eq!(write.value.as_deref(), Some(&b"hi"[..]));
        assert_eq!(write.headers, vec![("h".to_owned(), vec![0])]);
    }

    #[test]
    fn bad_base64_names_the_field() {
        let body = object(serde_json::json!({"key": "a2V5", "value": "not base64!"}));
        let error = Fields::new(&body, Encoding::Base64)
            .put()
            .expect_err("must fail");
        assert_eq!(error.code, ErrorCode::InvalidRequest);
        assert!(error.message.contains("`value`"), "{}", error.message);
    }

    #[test]
    fn a_batch_item_names_its_path_and_needs_a_value_or_delete() {
        let body = object(serde_json::json!({"key": "k"}));
        let fields = Fields {
            object: &body,
            path: "items[3].",
            encoding: Encoding::Utf8,
        };
        let error = fields.batch_item().expect_err("must fail");
        assert!(
            error.message.contains("`items[3].value`"),
            "{}",
            error.message
        );
        let body = object(serde_json::json!({"key": "k", "delete": true}));
        let write = Fields::new(&body, Encoding::Utf8)
            .batch_item()
            .expect("a delete");
        assert_eq!(write.value, None);
    }

    #[test]
    fn the_correlation_id_header_cannot_be_set_through_the_body() {
        let body = object(
            serde_json::json!({"key": "k", "value": "v", "headers": {"x-correlation-id": "x"}}),
        );
        let error = Fields::new(&body, Encoding::Utf8)
            .put()
            .expect_err("must fail");
        assert!(error.message.contains("reserved"), "{}", error.message);
    }

    #[test]
    fn an_empty_key_is_refused_and_an_empty_value_is_not() {
        assert_eq!(
            check_key(b"", 10, || "field `key`".into())
                .expect_err("empty")
                .code,
            ErrorCode::InvalidKey
        );
        assert!(check_value(b"", 10, || "field `value`".into()).is_ok());
        let error =
            check_value(b"12345678901", 10, || "field `value`".into()).expect_err("too long");
        assert_eq!(error.code, ErrorCode::PayloadTooLarge);
        assert!(error.message.contains("field `value`"));
    }
}
