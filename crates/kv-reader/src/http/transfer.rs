//! `GET /admin/v1/snapshot`: this replica's entries streamed to a peer that bootstraps from
//! them (the transfer; [`crate::transfer`] holds its format).

use std::time::Duration;

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use kv_core::web::auth::{operation, Authorized};
use kv_core::web::error::{ApiError, ErrorCode};
use kv_core::web::http::parse_query;
use serde::Deserialize;

use crate::cluster::shard::ShardSpec;
use crate::http::state::HttpState;
use crate::transfer::format;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotQuery {
    /// The asking shard, `i/N`, and its `replicas`: the snapshot holds its partitions.
    shard: Option<String>,
    replicas: Option<String>,
}

/// `GET /admin/v1/snapshot[?shard=i/N&replicas=R]`: this replica's entries (of the asking
/// shard's partitions) from one read transaction, streamed as docs/wire-format.md describes.
pub async fn snapshot(
    _auth: Authorized<operation::Admin>,
    request: HttpRequest,
    state: web::Data<HttpState>,
) -> Result<HttpResponse, ApiError> {
    let query: SnapshotQuery = parse_query(&request)?;
    let not_ready = |why: &str| {
        ApiError::new(
            ErrorCode::NotReady,
            format!("this replica {why}; ask another, or later"),
        )
        .with_retry_after(Duration::from_secs(1))
    };
    let report = state.read.progress.report();
    if !report.ready {
        return Err(not_ready(
            "is not ready: a snapshot is taken of a caught-up replica only",
        ));
    }
    let held: Vec<i32> = report.partitions.into_keys().collect();
    let wanted: Vec<i32> = match (query.shard, query.replicas) {
        (None, None) => held.clone(),
        (Some(shard), replicas) => {
            let replicas = replicas.as_deref().unwrap_or("1").parse().map_err(|_| {
                ApiError::invalid_request("parameter `replicas` must be a whole number")
            })?;
            let spec = ShardSpec::parse(&shard, replicas).map_err(|e| {
                ApiError::invalid_request(format!(
                    "parameters `shard` (i/N) and `replicas`: {}",
                    e.reason
                ))
            })?;
            let count = state
                .topology
                .partitions()
                .ok_or_else(|| not_ready("has not read the topic's partitions yet"))?;
            (0..count as i32).filter(|&p| spec.holds(p)).collect()
        }
        (None, Some(_)) => {
            return Err(ApiError::invalid_request(
                "parameter `replicas` needs parameter `shard`",
            ))
        }
    };
    if let Some(missing) = wanted.iter().find(|p| !held.contains(p)) {
        return Err(ApiError::invalid_request(format!(
            "this replica does not hold partition {missing}; ask one of its owners"
        )));
    }
    let Ok(slot) = state.snapshots.clone().try_acquire_owned() else {
        return Err(ApiError::new(
            ErrorCode::Overloaded,
            "as many snapshots are being served as KV_API_SNAPSHOT_CONCURRENCY allows; retry",
        )
        .with_retry_after(Duration::from_secs(5)));
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(
        format::CHUNKS_IN_FLIGHT,
    );
    let (store, codec, topic, metrics) = (
        state.read.store.clone(),
        state.codec.clone(),
        state.topic.clone(),
        state.snapshot_metrics.clone(),
    );
    let cluster_id = state.kafka_cluster.id().map(str::to_owned);
    let partitions = wanted.clone();
    let format = format::format_for(
        request
            .headers()
            .get(format::FORMAT_REQUEST_HEADER)
            .and_then(|v| v.to_str().ok()),
    );
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let mut open = true;
        let source = (topic.as_str(), cluster_id.as_deref());
        let result =
            format::write_snapshot(&store, &codec, source, (&partitions, format), |chunk| {
                metrics.bytes_sent.inc_by(chunk.len() as u64);
                open = tx.blocking_send(Ok(chunk)).is_ok();
                open
            });
        let outcome = match result {
            Ok(_) if open => "complete",
            Ok(_) => "cut",
            Err(error) => {
                tracing::error!(%error, "a snapshot failed while reading the store");
                let _ = tx.blocking_send(Err(std::io::Error::other(error.to_string())));
                "cut"
            }
        };
        metrics.served.with_label_values(&[outcome]).inc();
    });
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let listed = wanted
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut answer = HttpResponse::Ok();
    answer.content_type(format::CONTENT_TYPE);
    if let Ok(value) = HeaderValue::from_str(&listed) {
        answer.insert_header((HeaderName::from_static("x-snapshot-partitions"), value));
    }
    Ok(answer.streaming(body))
}
