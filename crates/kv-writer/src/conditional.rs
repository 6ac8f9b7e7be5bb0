//! The writer's half of conditional writes (docs/api.md, "Conditional writes").
//!
//! A conditional `PUT`/`DELETE /v1/kv/{key}` is produced as an ordinary record plus a header
//! stating its precondition (and the client's `Idempotency-Key`). Every reader decides it in log
//! order; once Kafka acknowledged the record at (partition, offset), the writer asks the readers
//! of `KV_API_READERS`, in turn, for that record's outcome and answers the client from it. The
//! questions waiting for one reader at the same time go together in one
//! `POST /v1/outcomes:batchGet` ([`crate::outcome_lane`]); a reader without that route is asked
//! `GET /v1/outcomes/{p}/{o}`. The client is answered `200` with the new `ETag`, `412` with the key's current one, or,
//! when no reader tells within `KV_API_CONDITIONAL_TIMEOUT_MS`, `503 outcome_unknown`. Never a
//! `200` for a write that did not take effect, never a `412` for one that did.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use kv_core::conditional::{
    check_idempotency_key, condition_from_http, Condition, Outcome, Version, IDEMPOTENCY_KEY_HEADER,
};
use kv_core::consistency::RecordPosition;
use kv_core::web::error::{ApiError, ErrorCode};
use kv_core::web::http::CONSISTENCY_TOKEN;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::answer::{acknowledged, token_for, Answer, KAFKA_OFFSET, KAFKA_PARTITION};
use crate::metrics::ConditionalMetrics;
use crate::outcome_lane::{Lane, Reply, REQUEST_TIMEOUT};

/// The request header naming a retry: `Idempotency-Key`.
pub const IDEMPOTENCY_KEY: header::HeaderName = header::HeaderName::from_static("idempotency-key");

/// Most conditional writes waiting for their outcome at once, per writer process: each has one
/// question to a reader under way at a time, so the readers' queues and connections stay
/// bounded however many clients send. Past it a conditional write is refused with `503 overloaded` before it is produced.
pub const MAX_WAITING_WRITES: usize = 256;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The wait after a round of readers that did not decide, doubling up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// What a client is told to wait before retrying.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// What a native write asked for beyond an ordinary write: a precondition, an idempotency key,
/// or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionalRequest {
    pub condition: Option<Condition>,
    pub idempotency_key: Option<String>,
}

impl ConditionalRequest {
    /// The `If-Match`, `If-None-Match` and `Idempotency-Key` headers of a native write; `None`
    /// when it has none of them. Bad syntax is a `400` naming the header.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, ApiError> {
        let if_match = joined(headers, &header::IF_MATCH, "If-Match")?;
        let if_none_match = joined(headers, &header::IF_NONE_MATCH, "If-None-Match")?;
        let condition = condition_from_http(if_match.as_deref(), if_none_match.as_deref())
            .map_err(|e| ApiError::invalid_request(e.0))?;
        let mut keys = headers.get_all(IDEMPOTENCY_KEY);
        let idempotency_key = match (keys.next(), keys.next()) {
            (None, _) => None,
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid_request(
                    "give one Idempotency-Key header, not several",
                ))
            }
            (Some(value), None) => {
                check_idempotency_key(value.as_bytes())
                    .map_err(|e| ApiError::invalid_request(e.0))?;
                // Visible ASCII, so this never fails.
                value.to_str().ok().map(str::to_owned)
            }
        };
        if condition.is_none() && idempotency_key.is_none() {
            return Ok(None);
        }
        Ok(Some(Self {
            condition,
            idempotency_key,
        }))
    }

    /// The record headers stating this request: the condition's and the idempotency key's.
    pub fn record_headers(&self) -> Vec<(String, Vec<u8>)> {
        let mut headers = Vec::with_capacity(2);
        if let Some(condition) = &self.condition {
            let (name, value) = condition.header();
            headers.push((name.to_owned(), value.into_bytes()));
        }
        if let Some(key) = &self.idempotency_key {
            headers.push((IDEMPOTENCY_KEY_HEADER.to_owned(), key.as_bytes().to_vec()));
        }
        headers
    }
}

/// All values of a header as one comma list (RFC 9110 §5.3), `None` when absent.
fn joined(
    headers: &HeaderMap,
    name: &header::HeaderName,
    shown: &str,
) -> Result<Option<String>, ApiError> {
    let mut values = Vec::new();
    for value in headers.get_all(name) {
        let text = value.to_str().map_err(|_| {
            ApiError::invalid_request(format!("header {shown} must be visible ASCII"))
        })?;
        values.push(text);
    }
    Ok((!values.is_empty()).then(|| values.join(",")))
}

/// The answer for a conditional write on a writer without `KV_API_READERS`.
pub fn not_configured() -> ApiError {
    ApiError::new(
        ErrorCode::ConditionalWritesNotConfigured,
        "conditional writes (If-Match, If-None-Match, Idempotency-Key) are not configured on \
         this writer: set KV_API_READERS to the readers it asks for a write's outcome",
    )
}

/// The readers a conditional write's outcome is asked of, and the bound on how many writes wait.
#[derive(Debug)]
pub struct Readers {
    /// One lane per reader of `KV_API_READERS`, in order: its questions' batches.
    lanes: Vec<Arc<Lane>>,
    timeout: Duration,
    waiting: Arc<Semaphore>,
    /// The reader that last told an outcome for a partition, asked first next time: with
    /// sharded readers, the others would answer `421` first.
    preferred: RwLock<HashMap<i32, usize>>,
    metrics: ConditionalMetrics,
}

/// A conditional write's place among the writes waiting for their outcome.
#[derive(Debug)]
pub struct Waiting(#[allow(dead_code)] OwnedSemaphorePermit);

/// What the client's request carries over to the outcome requests.
#[derive(Debug, Clone, Copy)]
pub struct Asker<'a> {
    /// The request's `Authorization`, forwarded verbatim.
    pub authorization: Option<&'a [u8]>,
    pub correlation_id: &'a str,
}

impl<'a> Asker<'a> {
    pub fn of(request: &'a HttpRequest, correlation_id: &'a str) -> Self {
        Self {
            authorization: request
                .headers()
                .get(header::AUTHORIZATION)
                .map(HeaderValue::as_bytes),
            correlation_id,
        }
    }
}

impl Readers {
    pub fn new(
        bases: Vec<String>,
        timeout: Duration,
        metrics: ConditionalMetrics,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .build()?;
        let lanes = bases
            .into_iter()
            .map(|base| Lane::new(base, client.clone(), metrics.clone()))
            .collect();
        Ok(Self {
            lanes,
            timeout,
            waiting: Arc::new(Semaphore::new(MAX_WAITING_WRITES)),
            preferred: RwLock::new(HashMap::new()),
            metrics,
        })
    }

    /// A place among the writes waiting for their outcome, taken before the record is
    /// produced: a write refused here was not written.
    pub fn wait_slot(&self) -> Result<Waiting, ApiError> {
        self.waiting
            .clone()
            .try_acquire_owned()
            .map(Waiting)
            .map_err(|_| {
                tracing::warn!("as many conditional writes wait for their outcome as allowed");
                ApiError::new(
                    ErrorCode::Overloaded,
                    format!(
                        "{MAX_WAITING_WRITES} conditional writes already wait for their outcome \
                         on this writer; nothing was written, retry later"
                    ),
                )
                .with_retry_after(RETRY_AFTER)
            })
    }

    pub fn metrics(&self) -> &ConditionalMetrics {
        &self.metrics
    }

    /// The outcome of the record Kafka acknowledged at `position`, asked of the readers in turn
    /// until one tells it or `KV_API_CONDITIONAL_TIMEOUT_MS` passed (then `503 outcome_unknown`).
    pub async fn outcome(
        &self,
        position: RecordPosition,
        asker: Asker<'_>,
    ) -> Result<Outcome, ApiError> {
        let started = Instant::now();
        let told = self.ask(position, asker, started).await;
        self.metrics.observe_wait(started);
        told
    }

    async fn ask(
        &self,
        position: RecordPosition,
        asker: Asker<'_>,
        started: Instant,
    ) -> Result<Outcome, ApiError> {
        if position.offset < 0 {
            return Err(unknown(
                "Kafka reported no offset for the record".to_owned(),
            ));
        }
        let deadline = started + self.timeout;
        let count = self.lanes.len();
        let first = self
            .preferred
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&position.partition)
            .copied()
            .unwrap_or(0)
            % count.max(1);
        let mut backoff = FIRST_BACKOFF;
        let mut refused = None;
        let mut undecided = false;
        // The readers asking again cannot help: they do not hold the partition, will never
        // know the outcome, or refuse the credentials.
        let mut done = vec![false; count];
        loop {
            for turn in 0..count {
                let index = (first + turn) % count;
                if done[index] {
                    continue;
                }
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    return Err(self.timed_out(refused));
                }
                let reply = self.lanes[index]
                    .ask(
                        position,
                        asker.authorization,
                        asker.correlation_id,
                        remaining,
                    )
                    .await;
                self.metrics.count_reply(reply.metric());
                match reply {
                    Reply::Decided(outcome) => {
                        if index != first {
                            self.preferred
                                .write()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .insert(position.partition, index);
                        }
                        return Ok(outcome);
                    }
                    Reply::Unknown => {
                        done[index] = true;
                        undecided = true;
                    }
                    Reply::NotHeld => done[index] = true,
                    Reply::Refused(status) => {
                        done[index] = true;
                        refused = Some(status);
                    }
                    // Counted in kv_writer_outcome_requests_total{reply="failed"}.
                    Reply::Failed(reason) => tracing::debug!(
                        reader = %self.lanes[index].base(),
                        correlation_id = asker.correlation_id,
                        "no outcome from a reader: {reason}"
                    ),
                    Reply::NotYet => {}
                }
            }
            if done.iter().all(|done| *done) {
                return Err(match (refused, undecided) {
                    (Some(status), _) => refused_error(status),
                    (None, true) => unknown("no reader holds a decision for the record".into()),
                    (None, false) => unknown(format!(
                        "none of KV_API_READERS holds partition {}",
                        position.partition
                    )),
                });
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(self.timed_out(refused));
            }
            tokio::time::sleep(backoff.min(remaining)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn timed_out(&self, refused: Option<u16>) -> ApiError {
        match refused {
            Some(status) => refused_error(status),
            None => unknown(format!(
                "no reader told its outcome within {} ms (KV_API_CONDITIONAL_TIMEOUT_MS)",
                self.timeout.as_millis()
            )),
        }
    }
}

fn unknown(why: String) -> ApiError {
    ApiError::new(
        ErrorCode::OutcomeUnknown,
        format!(
            "the write is on the topic but its outcome is unknown ({why}): it may or may not have \
             taken effect. Retry it with the same Idempotency-Key, or read the key again"
        ),
    )
    .with_retry_after(RETRY_AFTER)
}

fn refused_error(status: u16) -> ApiError {
    unknown(format!(
        "the readers refused this request's credentials with {status}; the token must also \
         be accepted by the readers"
    ))
}

/// How a decided conditional write is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answered {
    /// It took effect (or, for a repeat, its first did): `200` for the record at `position`.
    Applied { position: RecordPosition },
    /// It did not: `412`, with the key's version as `ETag` (none when absent).
    Failed {
        version: Option<Version>,
        message: String,
    },
}

/// The answer for `outcome`, the decision of the record at `position`; `condition` is the
/// request's.
pub fn answered(
    position: RecordPosition,
    outcome: &Outcome,
    condition: Option<&Condition>,
) -> Answered {
    let decided_at = RecordPosition {
        partition: position.partition,
        offset: outcome.first.unwrap_or(position.offset),
    };
    if outcome.applied {
        return Answered::Applied {
            position: decided_at,
        };
    }
    let why = failure(condition, outcome.version);
    let message = match outcome.first {
        None => format!("the precondition failed: {why}; nothing was written"),
        Some(first) => format!(
            "this Idempotency-Key was first used by the record at offset {first}, which did not \
             take effect: {why}"
        ),
    };
    Answered::Failed {
        version: outcome.version,
        message,
    }
}

/// Which precondition failed, against the key's version when the record was decided.
fn failure(condition: Option<&Condition>, current: Option<Version>) -> String {
    match (condition, current) {
        (Some(Condition::IfMatch(versions)), _) if versions.is_empty() => {
            "If-Match names no strong entity tag (a weak one never matches)".to_owned()
        }
        (Some(Condition::IfMatch(_)), Some(version)) => {
            format!("If-Match: the key's version is {version}, none of those given")
        }
        (Some(Condition::IfMatch(_) | Condition::IfExists), None) => {
            "If-Match: the key does not exist".to_owned()
        }
        (Some(Condition::IfAbsent), Some(version)) => {
            format!("If-None-Match: *: the key exists (version {version})")
        }
        _ => "the write's precondition did not hold".to_owned(),
    }
}

/// The HTTP answer for a decided conditional write. A delete that took effect has no `ETag`:
/// the key is absent.
pub fn respond(answered: Answered, position: RecordPosition, delete: bool) -> HttpResponse {
    match answered {
        Answered::Applied { position } => {
            let mut response = acknowledged(position, Answer::Position);
            if !delete {
                let version = Version {
                    partition: position.partition,
                    offset: position.offset,
                };
                set_etag(&mut response, Some(version));
            }
            response
        }
        Answered::Failed { version, message } => {
            let mut response =
                ApiError::new(ErrorCode::PreconditionFailed, message).error_response();
            set_etag(&mut response, version);
            // A read with it sees at least the state the write was decided against.
            set_token(&mut response, position);
            response
        }
    }
}

/// The `503 outcome_unknown` answer: with where the record is, so that a read given its
/// `X-Consistency-Token` sees the key as it is after the write was decided.
pub fn unknown_response(error: &ApiError, position: RecordPosition) -> HttpResponse {
    let mut response = error.error_response();
    if position.offset >= 0 {
        let headers = response.headers_mut();
        headers.insert(KAFKA_PARTITION, HeaderValue::from(position.partition));
        headers.insert(KAFKA_OFFSET, HeaderValue::from(position.offset));
    }
    set_token(&mut response, position);
    response
}

fn set_token(response: &mut HttpResponse, position: RecordPosition) {
    if let Some(token) = token_for([position]) {
        if let Ok(value) = HeaderValue::from_str(&token) {
            response.headers_mut().insert(CONSISTENCY_TOKEN, value);
        }
    }
}

fn set_etag(response: &mut HttpResponse, version: Option<Version>) {
    if let Some(value) = version.and_then(|v| HeaderValue::from_str(&v.etag()).ok()) {
        response.headers_mut().insert(header::ETAG, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome_lane::decided;
    use actix_web::body::MessageBody;
    use actix_web::http::StatusCode;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                header::HeaderName::from_static(name),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    fn v(partition: i32, offset: i64) -> Version {
        Version { partition, offset }
    }

    fn at(partition: i32, offset: i64) -> RecordPosition {
        RecordPosition { partition, offset }
    }

    #[test]
    fn a_write_without_conditional_headers_is_an_ordinary_write() {
        assert_eq!(ConditionalRequest::from_headers(&headers(&[])), Ok(None));
    }

    #[test]
    fn conditional_headers_become_record_headers() {
        let request = ConditionalRequest::from_headers(&headers(&[
            ("if-match", "\"0-7\""),
            ("if-match", "\"0-5\""),
            ("idempotency-key", "retry-1"),
        ]))
        .expect("valid")
        .expect("conditional");
        assert_eq!(
            request.record_headers(),
            vec![
                ("X-KV-If-Match".to_owned(), b"0-5,0-7".to_vec()),
                ("X-KV-Idempotency-Key".to_owned(), b"retry-1".to_vec()),
            ]
        );
        let request = ConditionalRequest::from_headers(&headers(&[("if-none-match", "*")]))
            .expect("valid")
            .expect("conditional");
        assert_eq!(
            request.record_headers(),
            vec![("X-KV-If-None-Match".to_owned(), b"*".to_vec())]
        );
        let only_key = ConditionalRequest::from_headers(&headers(&[("idempotency-key", "k")]))
            .expect("valid")
            .expect("idempotent");
        assert_eq!(only_key.condition, None);
        assert_eq!(
            only_key.record_headers(),
            vec![("X-KV-Idempotency-Key".to_owned(), b"k".to_vec())]
        );
    }

    #[test]
    fn bad_conditional_headers_are_refused_naming_the_header() {
        for (pairs, named) in [
            (vec![("if-match", "0-7")], "If-Match"),
            (vec![("if-none-match", "\"0-7\"")], "If-None-Match"),
            (vec![("if-match", "*"), ("if-none-match", "*")], "If-Match"),
            (vec![("idempotency-key", "has space")], "Idempotency-Key"),
            (
                vec![("idempotency-key", "a"), ("idempotency-key", "b")],
                "Idempotency-Key",
            ),
        ] {
            let error = ConditionalRequest::from_headers(&headers(&pairs)).expect_err(named);
            assert_eq!(error.code, ErrorCode::InvalidRequest);
            assert!(error.message.contains(named), "{named}: {}", error.message);
        }
    }

    fn outcome(applied: bool, version: Option<Version>, first: Option<i64>) -> Outcome {
        Outcome {
            partition: 0,
            offset: 9,
            applied,
            version,
            first,
        }
    }

    #[test]
    fn an_applied_write_is_answered_at_its_own_position_and_a_repeat_at_the_first() {
        let own = answered(at(0, 9), &outcome(true, Some(v(0, 9)), None), None);
        assert_eq!(own, Answered::Applied { position: at(0, 9) });
        let repeat = answered(at(0, 9), &outcome(true, Some(v(0, 4)), Some(4)), None);
        assert_eq!(repeat, Answered::Applied { position: at(0, 4) });
    }

    #[test]
    fn a_write_not_applied_fails_with_the_current_version_and_says_which_precondition() {
        let stale = Condition::IfMatch(vec![v(0, 1)]);
        let Answered::Failed { version, message } =
            answered(at(0, 9), &outcome(false, Some(v(0, 5)), None), Some(&stale))
        else {
            panic!("must fail");
        };
        assert_eq!(version, Some(v(0, 5)));
        assert!(
            message.contains("If-Match") && message.contains("\"0-5\""),
            "{message}"
        );
        let Answered::Failed { version, message } = answered(
            at(0, 9),
            &outcome(false, Some(v(0, 5)), None),
            Some(&Condition::IfAbsent),
        ) else {
            panic!("must fail");
        };
        assert_eq!(version, Some(v(0, 5)));
        assert!(message.contains("If-None-Match"), "{message}");
        let Answered::Failed { version, message } = answered(
            at(0, 9),
            &outcome(false, None, Some(3)),
            Some(&Condition::IfExists),
        ) else {
            panic!("must fail");
        };
        assert_eq!(version, None);
        assert!(
            message.contains("offset 3") && message.contains("does not exist"),
            "{message}"
        );
    }

    fn body_of(response: HttpResponse) -> serde_json::Value {
        let bytes = response.into_body().try_into_bytes().expect("a full body");
        serde_json::from_slice(&bytes).expect("json")
    }

    #[test]
    fn answers_carry_the_etag_of_the_version_they_name() {
        let ok = respond(Answered::Applied { position: at(2, 4) }, at(2, 9), false);
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers().get(header::ETAG).expect("header"), "\"2-4\"");
        assert_eq!(
            body_of(ok),
            serde_json::json!({"partition": 2, "offset": 4, "consistency_token": "2:4"})
        );
        let deleted = respond(Answered::Applied { position: at(2, 9) }, at(2, 9), true);
        assert!(!deleted.headers().contains_key(header::ETAG));
        let failed = Answered::Failed {
            version: Some(v(2, 3)),
            message: "nope".into(),
        };
        let failed = respond(failed, at(2, 9), false);
        assert_eq!(failed.status(), StatusCode::PRECONDITION_FAILED);
        assert_eq!(
            failed.headers().get(header::ETAG).expect("header"),
            "\"2-3\""
        );
        assert_eq!(
            failed.headers().get(CONSISTENCY_TOKEN).expect("header"),
            "2:9"
        );
        assert_eq!(body_of(failed)["error"]["code"], "precondition_failed");
        let absent = Answered::Failed {
            version: None,
            message: "nope".into(),
        };
        assert!(!respond(absent, at(2, 9), false)
            .headers()
            .contains_key(header::ETAG));
    }

    #[test]
    fn past_the_bound_of_waiting_writes_a_conditional_write_is_refused_before_it_is_produced() {
        let metrics = ConditionalMetrics::register(&prometheus::Registry::new()).expect("metrics");
        let readers = Readers::new(vec!["http://r:1".into()], Duration::from_secs(1), metrics)
            .expect("client");
        let held: Vec<Waiting> = (0..MAX_WAITING_WRITES)
            .map(|_| readers.wait_slot().expect("room"))
            .collect();
        let error = readers.wait_slot().expect_err("full");
        assert_eq!(error.code, ErrorCode::Overloaded);
        assert!(error.retry_after.is_some());
        assert!(
            error.message.contains("nothing was written"),
            "{}",
            error.message
        );
        drop(held);
        assert!(readers.wait_slot().is_ok());
    }

    #[test]
    fn an_unknown_outcome_is_503_with_where_the_record_is() {
        let response = unknown_response(&unknown("test".into()), at(1, 8));
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers().get(CONSISTENCY_TOKEN).expect("header"),
            "1:8"
        );
        assert_eq!(response.headers().get(KAFKA_OFFSET).expect("header"), "8");
        assert!(response.headers().contains_key(header::RETRY_AFTER));
        let body = body_of(response);
        assert_eq!(body["error"]["code"], "outcome_unknown");
        let message = body["error"]["message"].as_str().expect("message");
        assert!(
            message.contains("may or may not") && message.contains("Idempotency-Key"),
            "{message}"
        );
    }

    #[test]
    fn an_outcome_of_another_record_is_not_taken() {
        let body = |json: serde_json::Value| json.to_string().into_bytes();
        let good = body(
            serde_json::json!({"partition": 1, "offset": 8, "applied": true,
            "version": {"partition": 1, "offset": 8}, "first": null}),
        );
        assert!(matches!(decided(&good, at(1, 8)), Reply::Decided(_)));
        assert!(matches!(decided(&good, at(1, 9)), Reply::Failed(_)));
        let later_first = body(
            serde_json::json!({"partition": 1, "offset": 8, "applied": true,
            "version": null, "first": 8}),
        );
        assert!(matches!(decided(&later_first, at(1, 8)), Reply::Failed(_)));
        assert!(matches!(decided(b"{}", at(1, 8)), Reply::Failed(_)));
    }
}
