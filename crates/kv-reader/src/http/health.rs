//! The health routes: liveness, readiness and the cluster's view, anonymous and keyless.

use actix_web::{web, HttpResponse};
use kv_core::web::error::ErrorCode;

use crate::http::state::HttpState;

/// `/healthz/cluster`: every shard's partitions, readiness and lag as this shard last heard
/// them, this replica's own partitions, replay and freshness, and the partitions it acts on as
/// their owner (`owner`, from [`crate::acting::owner::Election`]); `/status` shows the same value.
/// Anonymous, like the other health routes: it names no key and no peer address.
pub async fn cluster_health(state: web::Data<HttpState>) -> HttpResponse {
    HttpResponse::Ok().json(crate::http::cluster_view::health(
        &state.topic,
        state.read.cluster.as_deref(),
        &state.read.progress,
        &state.election,
    ))
}

/// `/healthz/live`: fails once the consumer loop has died, so the orchestrator restarts us.
pub async fn live(state: web::Data<HttpState>) -> HttpResponse {
    if state.read.progress.is_alive() {
        HttpResponse::Ok().json(serde_json::json!({"status": "live"}))
    } else {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({
            "status": "dead",
            "error": {
                "code": ErrorCode::Internal,
                "message": "the consumer loop has stopped; the replica no longer follows the topic",
            }
        }))
    }
}

/// `/healthz/ready`: ready once every partition reached its end offset seen at start-up, unless
/// the replica refuses every record it reads for a configuration reason or stopped applying for
/// want of room in its store.
pub async fn ready(state: web::Data<HttpState>) -> HttpResponse {
    let report = state.read.progress.report();
    let status = report.status();
    let mut body = serde_json::json!({
        "status": status,
        "lag": report.lag,
        "partitions": report.partitions,
        "skipped_records": report.skipped_records,
        "rebuilds": report.rebuilds,
        "records_applied": report.records_applied,
        "misrouted_records": report.misrouted_records,
    });
    if let Some(store_full) = &report.store_full {
        body["store_full"] = serde_json::json!(store_full);
        body["error"] = serde_json::json!({
            "code": ErrorCode::NotReady,
            "message": store_full.message,
        });
    }
    if let Some(misconfiguration) = &report.misconfiguration {
        body["misconfiguration"] = serde_json::json!(misconfiguration);
        body["error"] = serde_json::json!({
            "code": ErrorCode::NotReady,
            "message": misconfiguration.message,
        });
    }
    if report.ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
