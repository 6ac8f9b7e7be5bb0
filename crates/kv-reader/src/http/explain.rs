//! `GET /v1/state/{key}`: how a rule computes a key, as this replica sees it (docs/api.md,
//! "Computed state"): the published value, the candidate waiting for its hold, and every
//! agent's last report.

use actix_web::{web, HttpRequest, HttpResponse};
use kv_core::settings::prefixes::KeyAction;
use kv_core::web::auth::{operation, Authorized};
use kv_core::web::error::{ApiError, ErrorCode};
use kv_core::web::http::key_from_path;
use serde::Serialize;

use crate::http::forward::route_and_settle;
use crate::http::state::{HttpState, PeerClient};
use kv_core::record::now_ms;

pub const STATE_PREFIX: &str = "/v1/state/";

/// Longest report value shown whole; a longer one is cut (`value_truncated`), so an answer
/// stays small however large the reports (a key keeps at most 1000 agents' reports).
const SHOWN_VALUE_BYTES: usize = 1024;

#[derive(Serialize)]
struct Explanation {
    key: String,
    rule: String,
    reducer: &'static str,
    value: Option<String>,
    candidate: Option<String>,
    candidate_since: Option<u64>,
    publish_at: Option<u64>,
    reports: Vec<ReportView>,
}

#[derive(Serialize)]
struct ReportView {
    agent: String,
    value: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    value_truncated: bool,
    /// Record time, ms since the Unix epoch.
    at: u64,
    /// Whether it still counts (`report_ttl_seconds`).
    live: bool,
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub async fn explain(
    auth: Authorized<operation::Read>,
    request: HttpRequest,
    state: web::Data<HttpState>,
    client: web::Data<PeerClient>,
) -> Result<HttpResponse, ApiError> {
    let key = key_from_path(&request, STATE_PREFIX)?;
    auth.check_key(KeyAction::Read, &key)?;
    let Some(rule) = state
        .read
        .store
        .rules()
        .and_then(|r| r.rule_for(&key))
        .cloned()
    else {
        return Err(ApiError::new(
            ErrorCode::NoRule,
            format!(
                "no rule of KV_API_STATE_RULES covers key {:?}",
                String::from_utf8_lossy(&key)
            ),
        ));
    };
    if let Some(answer) = route_and_settle(&state, &client, &request, &key, None, None).await? {
        return Ok(answer);
    }
    let core = &state.read;
    let store = core.store.clone();
    let lookup = key.clone();
    let explained = web::block(move || store.explain(&lookup, now_ms(), SHOWN_VALUE_BYTES + 1))
        .await
        .map_err(|e| ApiError::internal(format!("the state lookup did not run: {e}")))?
        .map_err(|e| ApiError::internal(format!("cannot read the store: {e}")))?
        .ok_or_else(|| ApiError::internal("the rule disappeared"))?;
    let (candidate, candidate_since) = match explained.candidate {
        Some((value, since)) => (Some(text(&value)), Some(since)),
        None => (None, None),
    };
    Ok(HttpResponse::Ok().json(Explanation {
        key: text(&key),
        rule: rule.prefix.clone(),
        reducer: rule.reducer.name(),
        value: explained.value.as_deref().map(text),
        candidate,
        candidate_since,
        publish_at: explained.publish_at,
        reports: explained
            .reports
            .into_iter()
            .map(|(agent, value, at, live)| ReportView {
                agent: text(&agent),
                value_truncated: value.len() > SHOWN_VALUE_BYTES,
                value: text(&value[..value.len().min(SHOWN_VALUE_BYTES)]),
                at,
                live,
            })
            .collect(),
    }))
}
