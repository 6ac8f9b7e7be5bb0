//! `PUT /v1/reports/{key}`: an agent's report on a key computed by a rule (docs/api.md,
//! "Computed state"). The report is one record on the state key's partition, so the
//! partition's owner sees it in order with the key's own records (`kv_core::computed`).

use actix_web::{web, HttpRequest, HttpResponse};
use kv_core::computed::{
    check_agent, report_record_key, AGENT_HTTP_HEADER, MAX_REPORT_BYTES, REPORT_AGENT_HEADER,
};
use kv_core::kafka::kafka_partition;
use kv_core::settings::prefixes::KeyAction;
use kv_core::web::auth::{operation, Authorized};
use kv_core::web::error::{ApiError, ErrorCode};
use kv_core::web::http::{key_from_path, CorrelationId, RequestTrace};

use crate::answer::{acknowledged, Answer};
use crate::input::check_key;
use crate::producer::Write;
use crate::state::WriterState;

pub const REPORTS_PREFIX: &str = "/v1/reports/";

/// `PUT /v1/reports/{key}`: the body is the reported value; the agent is the token's subject
/// (else its client id), or with auth off the `X-KV-Agent` header.
pub async fn put_report(
    auth: Authorized<operation::Write>,
    request: HttpRequest,
    body: web::Payload,
    state: web::Data<WriterState>,
) -> Result<HttpResponse, ApiError> {
    let key = key_from_path(&request, REPORTS_PREFIX)?;
    check_key(&key, state.max_key_bytes, || "the key in the path".into())?;
    auth.check_key(KeyAction::Report, &key)?;
    if key.iter().any(u8::is_ascii_control) {
        return Err(ApiError::new(
            ErrorCode::InvalidKey,
            "a computed key has no control characters",
        ));
    }
    if state.rules.rule_for(&key).is_none() {
        return Err(ApiError::new(
            ErrorCode::NoRule,
            format!(
                "no rule of KV_API_STATE_RULES covers key {:?}: reports are taken only for \
                 keys under a rule's prefix",
                String::from_utf8_lossy(&key)
            ),
        ));
    }
    let agent = agent_of(&auth, &request)?;
    let (value, _permit) = state
        .bodies
        .read(&request, body, MAX_REPORT_BYTES.min(state.max_value_bytes))
        .await?;
    let partitions = state.partitions.count(&state.producer).await?;
    let record_key = report_record_key(&key, agent.as_bytes());
    let headers = [(REPORT_AGENT_HEADER.to_owned(), agent.into_bytes())];
    let correlation = CorrelationId::of(&request);
    let position = state
        .producer
        .write(Write {
            key: &record_key,
            value: Some(&value),
            correlation_id: &correlation.0,
            trace: Some(RequestTrace::of(&request)),
            headers: &headers,
            expires_at_ms: None,
            partition: Some(kafka_partition(&key, partitions)),
        })
        .await?;
    Ok(acknowledged(position, Answer::Position))
}

/// Who reports: a token cannot report as anyone else; without auth, the header says.
fn agent_of(
    auth: &Authorized<operation::Write>,
    request: &HttpRequest,
) -> Result<String, ApiError> {
    let agent = match &auth.claims {
        Some(claims) => claims
            .subject()
            .or_else(|| claims.0.get("client_id").and_then(|v| v.as_str()))
            .or_else(|| claims.0.get("azp").and_then(|v| v.as_str()))
            .map(str::to_owned)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Forbidden,
                    "the token names no subject (sub) or client id to report as",
                )
            })?,
        None => request
            .headers()
            .get(AGENT_HTTP_HEADER)
            .ok_or_else(|| {
                ApiError::invalid_request(format!(
                    "header {AGENT_HTTP_HEADER} is missing: with auth off it names the reporting agent"
                ))
            })?
            .to_str()
            .map_err(|_| {
                ApiError::invalid_request(format!("header {AGENT_HTTP_HEADER} is not text"))
            })?
            .trim()
            .to_owned(),
    };
    check_agent(&agent).map_err(|e| ApiError::invalid_request(format!("agent {agent:?}: {e}")))?;
    Ok(agent)
}
