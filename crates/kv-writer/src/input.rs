//! Turning JSON write bodies (`/store`, `/store/b64`, `/remove`, batch items) into writes.
//!
//! Field names are matched ignoring case, as the original accepted `Key` and `key` alike. Every
//! error names the field, with its path inside a batch (`items[3].value`).

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine;
use kv_core::record::{CORRELATION_ID_HEADER, RESERVED_HEADERS};
use kv_core::web::error::{ApiError, ErrorCode};
use kv_core::web::json::BASE64;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// How keys, values and header values are spelled in a JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// JSON strings whose UTF-8 bytes are the data (`/store`).
    Utf8,
    /// JSON strings holding standard base64 of the data (`/store/b64`), for binary data.
    Base64,
}

impl Encoding {
    /// The `encoding` field of a batch as parsed: absent means UTF-8.
    fn from_scalar(field: Option<Scalar<'_>>) -> Result<Self, ApiError> {
        match field {
            None | Some(Scalar::Null) => Ok(Self::Utf8),
            Some(Scalar::Str(name)) => match name.to_ascii_lowercase().as_str() {
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
    /// A put that expires this many seconds after the writer takes it; checked against
    /// [`MaxTtl`] already.
    pub ttl_seconds: Option<u64>,
}

/// The longest TTL a write may ask for (KV_API_MAX_TTL_SECONDS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxTtl(pub u64);

impl MaxTtl {
    /// A TTL as given, `None` when it is not a whole number; `what` names where it was given.
    pub fn check(
        self,
        seconds: Option<u64>,
        what: impl FnOnce() -> String,
    ) -> Result<u64, ApiError> {
        match seconds {
            Some(seconds) if (1..=self.0).contains(&seconds) => Ok(seconds),
            _ => Err(ApiError::invalid_request(format!(
                "{} must be a whole number of seconds from 1 to {} (KV_API_MAX_TTL_SECONDS)",
                what(),
                self.0
            ))),
        }
    }

    /// A TTL given as text (a request header or query parameter).
    pub fn parse(self, text: &str, what: impl FnOnce() -> String) -> Result<u64, ApiError> {
        let text = text.trim();
        let seconds = text
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| text.parse::<u64>().ok())
            .flatten();
        self.check(seconds, what)
    }
}

/// A JSON value where a string, a boolean or null is expected, as parsed: only strings keep their
/// content (borrowed from the body when it holds no escapes), anything else is skipped while
/// parsing, so a wrong type costs no memory and is still reported naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scalar<'de> {
    Str(Cow<'de, str>),
    Bool(bool),
    /// A whole number from 0 to `u64::MAX`, as JSON spelled it without a fraction or exponent.
    Whole(u64),
    Null,
    /// Any other number, an array or an object.
    Other,
}

/// A map key or a string, borrowed from the body where possible.
struct Text<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// One visit of a JSON value that is not what a shape expects, answered with `$other`, skipping
/// whatever nests inside it.
macro_rules! other_visit {
    ($other:expr, bool) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($other)
        }
    };
    ($other:expr, i64) => {
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($other)
        }
    };
    ($other:expr, u64) => {
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($other)
        }
    };
    ($other:expr, f64) => {
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($other)
        }
    };
    ($other:expr, str) => {
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($other)
        }
    };
    ($other:expr, unit) => {
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($other)
        }
    };
    ($other:expr, seq) => {
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok($other)
        }
    };
    ($other:expr, map) => {
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok($other)
        }
    };
}

/// The visits of the JSON kinds listed, each answered with `$other`.
macro_rules! other_json_values {
    ($other:expr; $($kind:ident),*) => {
        $( other_visit!($other, $kind); )*
    };
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl<'de> Visitor<'de> for ScalarVisitor {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            other_json_values!(Scalar::Other; i64, f64, seq, map);
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Scalar::Whole(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// One field looked up ignoring case while an object is parsed, as [`kv_core::web::json::field`]
/// does on a parsed object (a map ordered by name, keeping a repeated name's last value): an
/// exact name wins, else the name in another case that sorts first.
#[derive(Debug)]
struct Named<T> {
    exact: Option<T>,
    other: Option<(String, T)>,
}

impl<T> Default for Named<T> {
    fn default() -> Self {
        Self {
            exact: None,
            other: None,
        }
    }
}

impl<T> Named<T> {
    /// Whether `key` is this field's name in some case; then `value` is read into it.
    fn offer<'de, A: MapAccess<'de>>(
        &mut self,
        key: &str,
        name: &str,
        map: &mut A,
    ) -> Result<bool, A::Error>
    where
        T: Deserialize<'de>,
    {
        if key == name {
            self.exact = Some(map.next_value()?);
        } else if key.eq_ignore_ascii_case(name) {
            let wins = self
                .other
                .as_ref()
                .is_none_or(|(seen, _)| key <= seen.as_str());
            if wins {
                self.other = Some((key.to_owned(), map.next_value()?));
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        } else {
            return Ok(false);
        }
        Ok(true)
    }

    fn get(self) -> Option<T> {
        self.exact.or(self.other.map(|(_, value)| value))
    }
}

/// The `headers` field of a write as parsed.
#[derive(Debug)]
enum RawHeaders<'de> {
    Null,
    Object(BTreeMap<Cow<'de, str>, Scalar<'de>>),
    Other,
}

impl<'de> Deserialize<'de> for RawHeaders<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HeadersVisitor;
        impl<'de> Visitor<'de> for HeadersVisitor {
            type Value = RawHeaders<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            other_json_values!(RawHeaders::Other; bool, i64, u64, f64, str, seq);
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(RawHeaders::Null)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                // Ordered by name and keeping a repeated name's last value, as serde_json's
                // object map does, so records carry the headers the JSON-tree parse gave them.
                let mut headers = BTreeMap::new();
                while let Some(Text(name)) = map.next_key()? {
                    let value: Scalar<'de> = map.next_value()?;
                    headers.insert(name, value);
                }
                Ok(RawHeaders::Object(headers))
            }
        }
        deserializer.deserialize_any(HeadersVisitor)
    }
}

/// One write object (`/store` body or batch item) as parsed, before its fields are checked.
/// Unknown fields are skipped unread.
#[derive(Debug, Default)]
pub struct RawWrite<'de> {
    key: Named<Scalar<'de>>,
    value: Named<Scalar<'de>>,
    delete: Named<Scalar<'de>>,
    headers: Named<RawHeaders<'de>>,
    /// The TTL under the original routes' spelling and under the batch's: either is taken
    /// anywhere, so a TTL is never ignored for being spelled the other way.
    ttl_camel: Named<Scalar<'de>>,
    ttl_snake: Named<Scalar<'de>>,
    /// A batch item's precondition fields, only to refuse them (batches are unconditional);
    /// ignored on the original routes, as the original ignored unknown fields.
    if_match: Named<Scalar<'de>>,
    if_none_match: Named<Scalar<'de>>,
}

impl<'de> RawWrite<'de> {
    fn read<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut write = RawWrite::default();
        while let Some(Text(key)) = map.next_key()? {
            let taken = write.key.offer(&key, "key", &mut map)?
                || write.value.offer(&key, "value", &mut map)?
                || write.delete.offer(&key, "delete", &mut map)?
                || write.headers.offer(&key, "headers", &mut map)?
                || write.ttl_camel.offer(&key, TTL_FIELD, &mut map)?
                || write.ttl_snake.offer(&key, TTL_BATCH_FIELD, &mut map)?
                || write.if_match.offer(&key, IF_MATCH_FIELD, &mut map)?
                || write
                    .if_none_match
                    .offer(&key, IF_NONE_MATCH_FIELD, &mut map)?;
            if !taken {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(write)
    }
}

/// The TTL field of `/store` and `/store/b64` bodies.
pub const TTL_FIELD: &str = "ttlSeconds";
/// The TTL field of a batch item.
pub const TTL_BATCH_FIELD: &str = "ttl_seconds";
/// A batch item's precondition fields, refused: conditional writes go one at a time.
pub const IF_MATCH_FIELD: &str = "if_match";
pub const IF_NONE_MATCH_FIELD: &str = "if_none_match";

/// A batch item: a write object, or any other JSON value (refused naming the item).
#[derive(Debug)]
enum RawItem<'de> {
    /// Boxed: a batch holds up to its limit of these, most of them small.
    Object(Box<RawWrite<'de>>),
    Other,
}

impl<'de> Deserialize<'de> for RawItem<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ItemVisitor;
        impl<'de> Visitor<'de> for ItemVisitor {
            type Value = RawItem<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            other_json_values!(RawItem::Other; bool, i64, u64, f64, str, unit, seq);
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                RawWrite::read(map).map(|write| RawItem::Object(Box::new(write)))
            }
        }
        deserializer.deserialize_any(ItemVisitor)
    }
}

/// The limit a batch's `items` are parsed under: items past it are counted, never built.
#[derive(Debug, Clone, Copy)]
pub struct ItemLimit(pub usize);

/// A batch's `items` as parsed.
#[derive(Debug)]
enum RawItems<'de> {
    Array(Vec<RawItem<'de>>),
    /// More than the limit: how many there were, for the error.
    TooMany(usize),
    Other,
}

struct ItemsSeed(ItemLimit);

impl<'de> DeserializeSeed<'de> for ItemsSeed {
    type Value = RawItems<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        struct ItemsVisitor(usize);
        impl<'de> Visitor<'de> for ItemsVisitor {
            type Value = RawItems<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            other_json_values!(RawItems::Other; bool, i64, u64, f64, str, unit, map);
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let limit = self.0;
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(limit));
                while items.len() < limit {
                    match seq.next_element()? {
                        Some(item) => items.push(item),
                        None => return Ok(RawItems::Array(items)),
                    }
                }
                if seq.next_element::<IgnoredAny>()?.is_none() {
                    return Ok(RawItems::Array(items));
                }
                // Past the limit the rest is only counted, so the error can say how many there
                // were without the memory of holding them.
                let mut count = items.len() + 1;
                drop(items);
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    count += 1;
                }
                Ok(RawItems::TooMany(count))
            }
        }
        deserializer.deserialize_any(ItemsVisitor(self.0 .0))
    }
}

/// The body of `POST /v1/kv:batch` as parsed, straight from the bytes: no generic JSON tree is
/// built, item strings borrow from the body, and items past the limit are never held.
#[derive(Debug)]
pub struct RawBatch<'de> {
    items: Named<RawItems<'de>>,
    encoding: Named<Scalar<'de>>,
}

impl<'de> RawBatch<'de> {
    /// Parses `body`; only malformed JSON, or a body that is not an object, fails here.
    pub fn parse(body: &'de [u8], limit: ItemLimit) -> Result<Self, ApiError> {
        struct BatchVisitor(ItemLimit);
        impl<'de> Visitor<'de> for BatchVisitor {
            type Value = RawBatch<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut items: Named<RawItems<'de>> = Named::default();
                let mut encoding: Named<Scalar<'de>> = Named::default();
                while let Some(Text(key)) = map.next_key()? {
                    if key.eq_ignore_ascii_case("items") {
                        let value = map.next_value_seed(ItemsSeed(self.0))?;
                        if key == "items" {
                            items.exact = Some(value);
                        } else if items.other.as_ref().is_none_or(|(seen, _)| *key <= **seen) {
                            items.other = Some((key.into_owned(), value));
                        }
                    } else if !encoding.offer(&key, "encoding", &mut map)? {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(RawBatch { items, encoding })
            }
        }
        parse_whole(body, |deserializer| {
            deserializer.deserialize_map(BatchVisitor(limit))
        })
    }

    /// Checks the items' count and encoding, then every item in order: the first bad one
    /// refuses the request, with the messages the JSON-object path gives.
    pub fn writes(
        self,
        max_items: usize,
        max_ttl: MaxTtl,
        mut check: impl FnMut(&WriteInput<'de>, &str) -> Result<(), ApiError>,
    ) -> Result<Vec<WriteInput<'de>>, ApiError> {
        let items = match self.items.get() {
            Some(RawItems::Array(items)) => items,
            Some(RawItems::TooMany(count)) => return Err(too_many(count, max_items)),
            Some(RawItems::Other) => {
                return Err(ApiError::invalid_request(
                    "field `items` must be an array of writes",
                ))
            }
            None => return Err(ApiError::invalid_request("field `items` is missing")),
        };
        if items.is_empty() {
            return Err(ApiError::invalid_request("field `items` is empty"));
        }
        if items.len() > max_items {
            return Err(too_many(items.len(), max_items));
        }
        let encoding = Encoding::from_scalar(self.encoding.get())?;
        let mut writes = Vec::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            let path = format!("items[{index}].");
            let RawItem::Object(raw) = item else {
                return Err(ApiError::invalid_request(format!(
                    "field `items[{index}]` must be an object"
                )));
            };
            let write = raw.batch_item(&path, encoding, max_ttl)?;
            check(&write, &path)?;
            writes.push(write);
        }
        Ok(writes)
    }
}

/// Parses all of `body` with `parse`: trailing bytes are an error, as for any JSON body.
fn parse_whole<'de, T>(
    body: &'de [u8],
    parse: impl FnOnce(
        &mut serde_json::Deserializer<serde_json::de::SliceRead<'de>>,
    ) -> serde_json::Result<T>,
) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    parse(&mut deserializer)
        .and_then(|parsed| deserializer.end().map(|()| parsed))
        .map_err(|e| ApiError::invalid_request(format!("the JSON body is invalid: {e}")))
}

fn too_many(count: usize, max: usize) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("field `items` has {count} writes, over the limit of {max}"),
    )
}

impl<'de> RawWrite<'de> {
    /// Parses the body of a single write (`/store`, `/store/b64`, `/remove`) straight into its
    /// fields; only malformed JSON, or a body that is not an object, fails here.
    pub fn parse(body: &'de [u8]) -> Result<Self, ApiError> {
        struct WriteVisitor;
        impl<'de> Visitor<'de> for WriteVisitor {
            type Value = RawWrite<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                RawWrite::read(map)
            }
        }
        parse_whole(body, |deserializer| {
            deserializer.deserialize_map(WriteVisitor)
        })
    }

    /// `{"key","value","headers"?,"ttlSeconds"?}`: a put.
    pub fn put(mut self, encoding: Encoding, max_ttl: MaxTtl) -> Result<WriteInput<'de>, ApiError> {
        let decode = Decode { path: "", encoding };
        let ttl_seconds = self.ttl("", max_ttl)?;
        Ok(WriteInput {
            key: decode.required("key", self.key.get())?,
            value: Some(decode.required("value", self.value.get())?),
            headers: decode.headers(self.headers.get())?,
            ttl_seconds,
        })
    }

    /// `{"key"}`: a delete.
    pub fn delete(self, encoding: Encoding) -> Result<WriteInput<'de>, ApiError> {
        let decode = Decode { path: "", encoding };
        self.no_ttl_on_delete("", "a delete")?;
        Ok(WriteInput {
            key: decode.required("key", self.key.get())?,
            value: None,
            headers: decode.headers(self.headers.get())?,
            ttl_seconds: None,
        })
    }

    /// The TTL under either spelling (`null` is none), checked against `max_ttl`.
    fn ttl(&mut self, path: &str, max_ttl: MaxTtl) -> Result<Option<u64>, ApiError> {
        let camel = std::mem::take(&mut self.ttl_camel).get();
        let snake = std::mem::take(&mut self.ttl_snake).get();
        let (name, value) = match (camel, snake) {
            (None | Some(Scalar::Null), None | Some(Scalar::Null)) => return Ok(None),
            (Some(value), None | Some(Scalar::Null)) => (TTL_FIELD, value),
            (None | Some(Scalar::Null), Some(value)) => (TTL_BATCH_FIELD, value),
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid_request(format!(
                    "give either field `{path}{TTL_FIELD}` or field `{path}{TTL_BATCH_FIELD}`, \
                     not both"
                )))
            }
        };
        let seconds = match value {
            Scalar::Whole(seconds) => Some(seconds),
            _ => None,
        };
        max_ttl
            .check(seconds, || format!("field `{path}{name}`"))
            .map(Some)
    }

    /// Refuses a TTL on a write that deletes: a tombstone has nothing to expire.
    fn no_ttl_on_delete(&self, path: &str, what: &str) -> Result<(), ApiError> {
        for (named, name) in [
            (&self.ttl_camel, TTL_FIELD),
            (&self.ttl_snake, TTL_BATCH_FIELD),
        ] {
            let given = named
                .exact
                .as_ref()
                .or(named.other.as_ref().map(|(_, v)| v));
            if given.is_some_and(|value| *value != Scalar::Null) {
                return Err(ApiError::invalid_request(format!(
                    "field `{path}{name}` cannot be given with {what}: a delete has nothing to \
                     expire"
                )));
            }
        }
        Ok(())
    }

    /// A batch item: a put, or a delete when it says `"delete": true`.
    fn batch_item(
        mut self,
        path: &str,
        encoding: Encoding,
        max_ttl: MaxTtl,
    ) -> Result<WriteInput<'de>, ApiError> {
        for (field, name) in [
            (&self.if_match, IF_MATCH_FIELD),
            (&self.if_none_match, IF_NONE_MATCH_FIELD),
        ] {
            if field.exact.is_some() || field.other.is_some() {
                return Err(conditional_batch_item(path, name));
            }
        }
        let delete = match std::mem::take(&mut self.delete).get() {
            None | Some(Scalar::Null) | Some(Scalar::Bool(false)) => false,
            Some(Scalar::Bool(true)) => true,
            Some(_) => {
                return Err(ApiError::invalid_request(format!(
                    "field `{path}delete` must be true or false"
                )))
            }
        };
        if delete {
            self.no_ttl_on_delete(path, &format!("`{path}delete`: true"))?;
        }
        let ttl_seconds = self.ttl(path, max_ttl)?;
        let key = self.key.get();
        let value = self.value.get();
        let headers = self.headers.get();
        let decode = Decode { path, encoding };
        if !delete {
            let Some(value) = value else {
                return Err(ApiError::invalid_request(format!(
                    "field `{path}value` is missing (to delete the key, send \"delete\": true)"
                )));
            };
            return Ok(WriteInput {
                key: decode.required("key", key)?,
                value: Some(decode.required("value", Some(value))?),
                headers: decode.headers(headers)?,
                ttl_seconds,
            });
        }
        if value.is_some() {
            return Err(ApiError::invalid_request(format!(
                "field `{path}value` cannot be given with `{path}delete`: true"
            )));
        }
        Ok(WriteInput {
            key: decode.required("key", key)?,
            value: None,
            headers: decode.headers(headers)?,
            ttl_seconds: None,
        })
    }
}

fn conditional_batch_item(path: &str, name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::ConditionalBatchUnsupported,
        format!(
            "field `{path}{name}`: batch items cannot be conditional; send a conditional write \
             alone, as PUT or DELETE /v1/kv/{{key}} with If-Match or If-None-Match"
        ),
    )
}

/// Turns parsed fields into bytes, naming the field (with its path) in every error.
struct Decode<'p> {
    path: &'p str,
    encoding: Encoding,
}

impl Decode<'_> {
    fn required<'de>(
        &self,
        name: &str,
        value: Option<Scalar<'de>>,
    ) -> Result<Cow<'de, [u8]>, ApiError> {
        match value {
            Some(Scalar::Str(text)) => self.decode(name, text),
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

    fn decode<'de>(&self, name: &str, text: Cow<'de, str>) -> Result<Cow<'de, [u8]>, ApiError> {
        match self.encoding {
            Encoding::Utf8 => Ok(match text {
                Cow::Borrowed(text) => Cow::Borrowed(text.as_bytes()),
                Cow::Owned(text) => Cow::Owned(text.into_bytes()),
            }),
            Encoding::Base64 => BASE64.decode(text.as_bytes()).map(Cow::Owned).map_err(|e| {
                ApiError::invalid_request(format!(
                    "field `{}{name}` is not valid base64: {e}",
                    self.path
                ))
            }),
        }
    }

    fn headers(&self, headers: Option<RawHeaders<'_>>) -> Result<Vec<(String, Vec<u8>)>, ApiError> {
        let headers = match headers {
            None | Some(RawHeaders::Null) => return Ok(Vec::new()),
            Some(RawHeaders::Object(headers)) => headers,
            Some(RawHeaders::Other) => {
                return Err(ApiError::invalid_request(format!(
                    "field `{}headers` must be an object of strings",
                    self.path
                )))
            }
        };
        headers
            .into_iter()
            .map(|(name, value)| {
                let field_name = format!("headers.{name}");
                if name.is_empty() {
                    return Err(ApiError::invalid_request(format!(
                        "field `{}headers` has an empty header name",
                        self.path
                    )));
                }
                // As for a `/store` body: the gateway sets this header from the request.
                if name.eq_ignore_ascii_case(CORRELATION_ID_HEADER) {
                    return Err(ApiError::invalid_request(format!(
                        "field `{}{field_name}` is reserved: send the X-Correlation-Id request \
                         header instead",
                        self.path
                    )));
                }
                // Readers act on these: a client's copy could set or fake a TTL.
                if RESERVED_HEADERS
                    .iter()
                    .any(|r| name.eq_ignore_ascii_case(r))
                {
                    return Err(ApiError::invalid_request(format!(
                        "field `{}{field_name}` is reserved: the writer sets the TTL headers \
                         from the write's TTL field",
                        self.path
                    )));
                }
                match value {
                    Scalar::Str(text) => Ok((
                        name.into_owned(),
                        self.decode(&field_name, text)?.into_owned(),
                    )),
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

    use serde_json::Value;

    /// A body as the routes read it: bytes that outlive the parsed write.
    fn body(json: Value) -> &'static [u8] {
        Box::leak(json.to_string().into_bytes().into_boxed_slice())
    }

    const MAX_TTL: MaxTtl = MaxTtl(86_400);

    fn put(json: Value, encoding: Encoding) -> Result<WriteInput<'static>, ApiError> {
        RawWrite::parse(body(json))?.put(encoding, MAX_TTL)
    }

    #[test]
    fn field_names_are_matched_ignoring_case() {
        let json = serde_json::json!({"Key": "k", "VALUE": "v", "Headers": {"a": "b"}});
        let write = put(json, Encoding::Utf8).expect("a put");
        assert_eq!(&*write.key, b"k");
        assert_eq!(write.value.as_deref(), Some(&b"v"[..]));
        assert_eq!(write.headers, vec![("a".to_owned(), b"b".to_vec())]);
    }

    #[test]
    fn base64_fields_are_decoded_with_or_without_padding() {
        let json = serde_json::json!({"key": "AP8=", "value": "aGk", "headers": {"h": "AA=="}});
        let write = put(json, Encoding::Base64).expect("a put");
        assert_eq!(&*write.key, &[0x00, 0xff]);
        assert_eq!(write.value.as_deref(), Some(&b"hi"[..]));
        assert_eq!(write.headers, vec![("h".to_owned(), vec![0])]);
    }

    #[test]
    fn bad_base64_names_the_field() {
        let json = serde_json::json!({"key": "a2V5", "value": "not base64!"});
        let error = put(json, Encoding::Base64).expect_err("must fail");
        assert_eq!(error.code, ErrorCode::InvalidRequest);
        assert!(error.message.contains("`value`"), "{}", error.message);
    }

    fn batch_writes(body: &Value, max: usize) -> Result<Vec<WriteInput<'static>>, ApiError> {
        RawBatch::parse(self::body(body.clone()), ItemLimit(max))?
            .writes(max, MAX_TTL, |_, _| Ok(()))
    }

    #[test]
    fn a_batch_item_names_its_path_and_needs_a_value_or_delete() {
        let items = serde_json::json!({"items": [
            {"key": "a", "value": "1"}, {"key": "b", "value": "2"}, {"key": "c", "value": "3"},
            {"key": "k"}
        ]});
        let error = batch_writes(&items, 10).expect_err("must fail");
        assert!(
            error.message.contains("`items[3].value`"),
            "{}",
            error.message
        );
        let body = serde_json::json!({"items": [{"key": "k", "delete": true}]});
        let writes = batch_writes(&body, 10).expect("a delete");
        assert_eq!(writes[0].value, None);
    }

    #[test]
    fn batch_fields_are_matched_ignoring_case_and_an_exact_name_wins() {
        let body = serde_json::json!({"ITEMS": [{"KEY": "k", "Value": "v", "headers": {"h": "x"}}],
            "Encoding": "utf-8"});
        let writes = batch_writes(&body, 10).expect("a put");
        assert_eq!(&*writes[0].key, b"k");
        assert_eq!(writes[0].value.as_deref(), Some(&b"v"[..]));
        assert_eq!(writes[0].headers, vec![("h".to_owned(), b"x".to_vec())]);
        let body = serde_json::json!({"Items": 5, "items": [{"key": "k", "value": "v"}]});
        assert_eq!(batch_writes(&body, 10).expect("exact wins").len(), 1);
    }

    #[test]
    fn a_conditional_batch_item_is_refused_naming_its_field() {
        for (field, named) in [("if_match", "if_match"), ("If_None_Match", "if_none_match")] {
            let body = serde_json::json!({"items": [
                {"key": "a", "value": "1"},
                {"key": "b", "value": "2", field: "\"0-1\""},
            ]});
            let error = batch_writes(&body, 10).expect_err(field);
            assert_eq!(error.code, ErrorCode::ConditionalBatchUnsupported);
            assert!(
                error.message.contains(&format!("`items[1].{named}`")),
                "{}",
                error.message
            );
        }
        // The original routes ignore unknown fields, these among them.
        let json = serde_json::json!({"key": "k", "value": "v", "if_match": "*"});
        assert!(put(json, Encoding::Utf8).is_ok());
    }

    #[test]
    fn a_batch_over_the_item_limit_is_refused_with_its_count() {
        let items: Vec<Value> = (0..1001)
            .map(|i| serde_json::json!({"key": i.to_string(), "value": "v"}))
            .collect();
        let error = batch_writes(&serde_json::json!({ "items": items }), 1000).expect_err("over");
        assert_eq!(error.code, ErrorCode::PayloadTooLarge);
        assert_eq!(
            error.message,
            "field `items` has 1001 writes, over the limit of 1000"
        );
        let items: Vec<Value> = (0..1000)
            .map(|i| serde_json::json!({"key": i.to_string(), "value": "v"}))
            .collect();
        let writes = batch_writes(&serde_json::json!({ "items": items }), 1000).expect("at");
        assert_eq!(writes.len(), 1000);
    }

    #[test]
    fn a_batch_body_that_is_not_an_object_or_not_json_is_invalid_json() {
        for body in [&b"[1]"[..], b"{\"items\": [", b"{} trailing"] {
            let error = RawBatch::parse(body, ItemLimit(10)).expect_err("must fail");
            assert_eq!(error.code, ErrorCode::InvalidRequest);
            assert!(error.message.contains("JSON"), "{}", error.message);
        }
    }

    #[test]
    fn the_correlation_id_header_cannot_be_set_through_the_body() {
        let json =
            serde_json::json!({"key": "k", "value": "v", "headers": {"x-correlation-id": "x"}});
        let error = put(json, Encoding::Utf8).expect_err("must fail");
        assert!(error.message.contains("reserved"), "{}", error.message);
    }

    #[test]
    fn a_ttl_is_read_under_either_spelling_in_any_case_and_null_is_none() {
        for field in ["ttlSeconds", "TTLSECONDS", "ttl_seconds"] {
            let write = put(
                serde_json::json!({"key": "k", "value": "v", field: 60}),
                Encoding::Utf8,
            )
            .expect(field);
            assert_eq!(write.ttl_seconds, Some(60), "{field}");
        }
        let write = put(
            serde_json::json!({"key": "k", "value": "v", "ttlSeconds": null}),
            Encoding::Utf8,
        )
        .expect("null");
        assert_eq!(write.ttl_seconds, None);
        let error = put(
            serde_json::json!({"key": "k", "value": "v", "ttlSeconds": 1, "ttl_seconds": 1}),
            Encoding::Utf8,
        )
        .expect_err("both");
        assert!(error.message.contains("not both"), "{}", error.message);
    }

    #[test]
    fn a_ttl_outside_one_second_to_the_maximum_is_refused_naming_the_field() {
        for bad in [
            serde_json::json!(0),
            serde_json::json!(-5),
            serde_json::json!(1.5),
            serde_json::json!(1e3),
            serde_json::json!("60"),
            serde_json::json!(true),
            serde_json::json!([60]),
            serde_json::json!(86_401),
            serde_json::json!(u64::MAX),
        ] {
            let error = put(
                serde_json::json!({"key": "k", "value": "v", "ttlSeconds": bad}),
                Encoding::Utf8,
            )
            .expect_err("bad ttl");
            assert_eq!(error.code, ErrorCode::InvalidRequest);
            assert!(
                error.message.contains("field `ttlSeconds`")
                    && error.message.contains("from 1 to 86400"),
                "{bad}: {}",
                error.message
            );
        }
        assert_eq!(
            put(
                serde_json::json!({"key": "k", "value": "v", "ttlSeconds": 86_400}),
                Encoding::Utf8
            )
            .expect("the maximum")
            .ttl_seconds,
            Some(86_400)
        );
    }

    #[test]
    fn a_batch_item_ttl_names_its_path_and_a_delete_takes_none() {
        let body = serde_json::json!({"items": [
            {"key": "a", "value": "1", "ttl_seconds": 5},
            {"key": "b", "value": "2"},
        ]});
        let writes = batch_writes(&body, 10).expect("writes");
        assert_eq!(writes[0].ttl_seconds, Some(5));
        assert_eq!(writes[1].ttl_seconds, None);
        let body = serde_json::json!({"items": [{"key": "a", "value": "1"}, {"key": "b", "value": "2", "ttl_seconds": 0}]});
        let error = batch_writes(&body, 10).expect_err("zero");
        assert!(
            error.message.contains("field `items[1].ttl_seconds`"),
            "{}",
            error.message
        );
        let body = serde_json::json!({"items": [{"key": "a", "delete": true, "ttl_seconds": 5}]});
        let error = batch_writes(&body, 10).expect_err("a delete with a ttl");
        assert!(
            error.message.contains("`items[0].ttl_seconds`")
                && error.message.contains("nothing to expire"),
            "{}",
            error.message
        );
        let error = RawWrite::parse(self::body(serde_json::json!({"key": "k", "ttlSeconds": 5})))
            .expect("parse")
            .delete(Encoding::Utf8)
            .expect_err("remove with a ttl");
        assert!(error.message.contains("`ttlSeconds`"), "{}", error.message);
    }

    #[test]
    fn ttl_headers_cannot_be_set_through_the_body() {
        for name in ["X-KV-Expires-At", "x-kv-expired-offset", "X-KV-Repair-Of"] {
            let json = serde_json::json!({"key": "k", "value": "v", "headers": {name: "1"}});
            let error = put(json, Encoding::Utf8).expect_err(name);
            assert!(error.message.contains("reserved"), "{}", error.message);
        }
    }

    #[test]
    fn a_ttl_in_text_is_digits_only() {
        let what = || "header X-KV-TTL-Seconds".to_owned();
        assert_eq!(MAX_TTL.parse(" 30 ", what), Ok(30));
        for bad in [
            "",
            "+30",
            "-1",
            "0",
            "30s",
            "3 0",
            "86401",
            "99999999999999999999999",
        ] {
            let error = MAX_TTL.parse(bad, what).expect_err(bad);
            assert!(
                error.message.starts_with("header X-KV-TTL-Seconds must be"),
                "{bad}: {}",
                error.message
            );
        }
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
