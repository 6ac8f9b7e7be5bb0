//! The freshness headers: every answer of a read says how fresh the replica was when it read,
//! and a shard's answers name the shard that served them.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage};

use crate::cluster::forward::SERVED_BY;
use crate::http::state::HttpState;
use crate::progress::Freshness;
use kv_core::record::now_ms;

/// Highest offset applied per partition, in consistency-token form; usable as a token on
/// another replica to read data at least this fresh.
pub const REPLICA_APPLIED_HEADER: HeaderName = HeaderName::from_static("x-replica-applied");
/// Records in the topic this replica has not applied yet, over all partitions.
pub const REPLICA_LAG_HEADER: HeaderName = HeaderName::from_static("x-replica-lag");
/// Milliseconds since a broker last answered this replica's consumer. The lag is counted
/// against the end offsets the broker last reported, so a replica cut off from the broker shows
/// its last lag; this header is what grows then.
pub const REPLICA_SILENCE_HEADER: HeaderName = HeaderName::from_static("x-replica-silence-ms");
/// Names the shard that answered a read (a comma list when several did).
pub const SERVED_BY_HEADER: HeaderName = HeaderName::from_static(SERVED_BY);

/// Adds `X-Replica-Applied` and `X-Replica-Lag` to every answer of a read, errors included, as
/// the replica was when the handler read the store: the data served is at least that fresh; and
/// `X-Replica-Silence-Ms`, how long ago a broker last answered (once one has).
pub async fn freshness_middleware(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let state = request.app_data::<web::Data<HttpState>>();
    let served_by = state.and_then(|state| {
        state
            .read
            .cluster
            .as_ref()
            .map(|c| HeaderValue::from(c.spec.index))
    });
    let answered_ms = state.and_then(|state| state.read.progress.broker_answered_ms());
    let mut response = next.call(request).await?;
    // Every answer of a shard names who answered: a forwarded one carries the owner's.
    if let Some(served_by) = served_by {
        if !response.headers().contains_key(SERVED_BY_HEADER) {
            response.headers_mut().insert(SERVED_BY_HEADER, served_by);
        }
    }
    let freshness = response.request().extensions_mut().remove::<Freshness>();
    if let Some(freshness) = freshness {
        let headers = response.headers_mut();
        if let Some(applied) = freshness.applied {
            headers.insert(REPLICA_APPLIED_HEADER, applied);
        }
        headers.insert(REPLICA_LAG_HEADER, HeaderValue::from(freshness.lag));
        if let Some(answered_ms) = answered_ms {
            let silence = now_ms().saturating_sub(answered_ms);
            headers.insert(REPLICA_SILENCE_HEADER, HeaderValue::from(silence));
        }
    }
    Ok(response)
}
