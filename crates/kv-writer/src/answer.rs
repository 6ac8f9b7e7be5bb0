//! What a client is told when its write was acknowledged: the position as headers and body, and
//! the consistency token; the single writes, batches, conditional writes and reports all answer
//! this way, so it sits below all of them.

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{HttpResponse, HttpResponseBuilder};
use kv_core::consistency::{ConsistencyToken, RecordPosition};
use kv_core::web::http::CONSISTENCY_TOKEN;
use serde::Serialize;

pub const KAFKA_PARTITION: HeaderName = HeaderName::from_static("x-kafka-partition");
pub const KAFKA_OFFSET: HeaderName = HeaderName::from_static("x-kafka-offset");

/// The body of a write's `200`. The position is in the `X-Kafka-*` and `X-Consistency-Token`
/// headers either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `{"partition","offset","consistency_token"}`: the native routes.
    Position,
    /// The JSON string the .NET service's `Results.Ok(...)` wrote (`"Stored"`, `"Removed"`),
    /// so its clients' `ReadFromJsonAsync<string>()` keeps working: the seed routes.
    Original(&'static str),
}

#[derive(Serialize)]
struct Acknowledged {
    partition: i32,
    /// `null` with KAFKA_ACKS=none: the broker reports no offset for unacknowledged writes.
    offset: Option<i64>,
    consistency_token: Option<String>,
}

/// Sets the consistency token header, which a reader takes to serve read-your-writes.
pub fn with_token(response: &mut HttpResponseBuilder, token: &str) {
    if let Ok(value) = HeaderValue::from_str(token) {
        response.insert_header((CONSISTENCY_TOKEN, value));
    }
}

/// The token for acknowledged positions; `None` when no offset is known (KAFKA_ACKS=none), as a
/// token with a negative offset would be refused by every reader.
pub fn token_for(positions: impl IntoIterator<Item = RecordPosition>) -> Option<String> {
    let mut known = positions.into_iter().filter(|p| p.offset >= 0).peekable();
    known.peek()?;
    Some(ConsistencyToken::from_positions(known).to_string())
}

pub(crate) fn acknowledged(position: RecordPosition, answer: Answer) -> HttpResponse {
    let token = token_for([position]);
    let offset = (position.offset >= 0).then_some(position.offset);
    let mut response = HttpResponse::Ok();
    response.insert_header((KAFKA_PARTITION, position.partition));
    if let Some(offset) = offset {
        response.insert_header((KAFKA_OFFSET, offset));
    }
    if let Some(token) = &token {
        with_token(&mut response, token);
    }
    match answer {
        Answer::Position => response.json(Acknowledged {
            partition: position.partition,
            offset,
            consistency_token: token,
        }),
        Answer::Original(text) => response.json(text),
    }
}
