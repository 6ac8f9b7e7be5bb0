//! Outcome questions to one reader that are under way at the same time, sent as one
//! `POST /v1/outcomes:batchGet` (docs/architecture.md, "Conditional writes").
//!
//! One HTTP request writer→reader per conditional write roughly doubled the CPU a write costs
//! the writer and the reader that answers (loopback send and receive, a server handling, a
//! credentials check): most of it is per request, not per record. So the questions waiting for
//! one reader share a request, in a `kv_core::lane` lane: it sends at once while fewer than two
//! of its batches are under way, so an idle writer adds no wait; questions that arrive while
//! they are go together in the next batch, up to [`MAX_RECORDS`]. Only questions with the same forwarded
//! `Authorization` share a batch: the reader checks the caller's credentials once per request.
//!
//! Each record's answer is the reply a single question would have had; the caller's retry loop
//! (`Readers` in the conditional module) is per question and unchanged. A reader without the batch
//! route (older than it: `404` or `405`) is remembered as such for [`SINGLE_ROUTE_FOR`], and its
//! questions are asked one by one with `GET /v1/outcomes/{partition}/{offset}`.
//!
//! It holds what asking one reader means, below the conditional module that uses it: a
//! [`Reply`], the single-record route ([`ask_single`]) and the check that an outcome names the
//! record asked ([`checked`]).
//!
//! The writer's `Readers` is shared by every actix worker, so a lane is `Send + Sync`: its
//! queue sits behind a std mutex that is never held across an await, and its senders are tasks
//! spawned on the runtime of the worker whose question started them.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kv_core::conditional::Outcome;
use kv_core::consistency::RecordPosition;
use kv_core::lane::Lane as Queue;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::metrics::{ConditionalMetrics, ReaderReply};

/// Longest one outcome request may take: a reader waits up to about 2 s for the record to be
/// applied before it answers `503`.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest outcome body read from a reader; an outcome is about 100 bytes.
const MAX_REPLY_BYTES: usize = 16 * 1024;
/// Most records in one batch: the reader's bound (`MAX_BATCH_RECORDS` there).
pub(crate) const MAX_RECORDS: usize = 256;
/// How long a reader that answered the batch route with `404`/`405` is asked one record at a
/// time before the batch route is tried again (it may have been upgraded meanwhile).
const SINGLE_ROUTE_FOR: Duration = Duration::from_secs(600);
/// The reader's own wait for a record to be applied, unless the questions have less time.
const READER_WAIT: Duration = Duration::from_secs(2);
/// Beyond the reader's wait, how long its answer may take to arrive.
const ANSWER_MARGIN: Duration = Duration::from_secs(1);
/// Largest batch answer read: an item is about 200 bytes.
const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// One reader's lane.
#[derive(Debug)]
pub(crate) struct Lane {
    base: String,
    client: reqwest::Client,
    metrics: ConditionalMetrics,
    /// Paused while this reader is asked with the single route: it lacks the batch route.
    state: Mutex<Queue<Question>>,
}

/// A question waiting for its batch.
#[derive(Debug)]
struct Question {
    position: RecordPosition,
    authorization: Option<Vec<u8>>,
    correlation_id: String,
    deadline: Instant,
    answer: oneshot::Sender<Reply>,
}

impl Lane {
    pub(crate) fn new(
        base: String,
        client: reqwest::Client,
        metrics: ConditionalMetrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            base,
            client,
            metrics,
            state: Mutex::new(Queue::default()),
        })
    }

    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue<Question>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// This reader's reply about the record at `position`, asked within a batch (or alone, of a
    /// reader without the batch route), given up at `remaining`.
    pub(crate) async fn ask(
        self: &Arc<Self>,
        position: RecordPosition,
        authorization: Option<&[u8]>,
        correlation_id: &str,
        remaining: Duration,
    ) -> Reply {
        let (answer, told) = oneshot::channel();
        let start = {
            let mut state = self.lock();
            (!state.paused()).then(|| {
                state.queue(Question {
                    position,
                    authorization: authorization.map(<[u8]>::to_vec),
                    correlation_id: correlation_id.to_owned(),
                    deadline: Instant::now() + remaining,
                    answer,
                })
            })
        };
        let Some(start) = start else {
            return ask_single(
                &self.client,
                &self.base,
                position,
                authorization,
                correlation_id,
                remaining,
            )
            .await;
        };
        if start {
            tokio::spawn(self.clone().send_while_waiting());
        }
        match tokio::time::timeout(remaining, told).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Reply::Failed(format!("{}: the batch ended unanswered", self.base)),
            Err(_) => Reply::Failed(format!("{}: no answer in time", self.base)),
        }
    }

    /// One of the lane's senders: batches of the questions waiting, one after another, until
    /// none is.
    async fn send_while_waiting(self: Arc<Self>) {
        // Gives the sender's place back if the task ends early (a panic), so the lane never
        // stalls; on the usual end the empty take gives it back.
        struct Sender(Arc<Lane>, bool);
        impl Drop for Sender {
            fn drop(&mut self) {
                if self.1 {
                    self.0.lock().sender_lost();
                }
            }
        }
        let mut sender = Sender(self, true);
        loop {
            // Taken, and the place given back when nothing is left, under one lock: a question
            // queued after this finds a sender's place free.
            let (batch, single) = {
                let mut state = sender.0.lock();
                let Some(batch) = take_batch(&mut state) else {
                    sender.1 = false;
                    return;
                };
                (batch, state.paused())
            };
            if single {
                sender.0.ask_each(batch).await;
            } else {
                sender.0.send(batch).await;
            }
        }
    }

    async fn send(&self, batch: Vec<Question>) {
        let now = Instant::now();
        let longest = batch
            .iter()
            .map(|q| q.deadline.saturating_duration_since(now))
            .max()
            .unwrap_or_default();
        let wait = READER_WAIT.min(longest);
        self.metrics.observe_batch(batch.len());
        let records: Vec<RecordPosition> = batch.iter().map(|q| q.position).collect();
        let url = format!(
            "{}/v1/outcomes:batchGet?wait_ms={}",
            self.base,
            wait.as_millis()
        );
        let request = self
            .client
            .post(&url)
            .timeout(wait + ANSWER_MARGIN)
            .header("X-Correlation-Id", batch[0].correlation_id.as_str())
            .json(&BatchQuestion { records: &records });
        let request = match with_authorization(request, batch[0].authorization.as_deref()) {
            Ok(request) => request,
            Err(reply) => return answer_all(batch, &reply),
        };
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => return answer_all(batch, &Reply::Failed(format!("{url}: {error}"))),
        };
        let status = response.status().as_u16();
        let whole = match status {
            200 => None,
            404 | 405 => {
                tracing::info!(
                    reader = %self.base,
                    "the reader has no POST /v1/outcomes:batchGet ({status}): asking it one \
                     record at a time"
                );
                self.lock().pause_for(SINGLE_ROUTE_FOR);
                return self.ask_each(batch).await;
            }
            401 | 403 => Some(Reply::Refused(status)),
            503 => Some(Reply::NotYet),
            _ => Some(Reply::Failed(format!("{url} answered {status}"))),
        };
        if let Some(reply) = whole {
            return answer_all(batch, &reply);
        }
        let Some(body) = body_within(response, MAX_ANSWER_BYTES).await else {
            return answer_all(
                batch,
                &Reply::Failed(format!("{url}: the outcomes did not arrive whole")),
            );
        };
        let items = match serde_json::from_slice::<BatchAnswer>(&body) {
            Ok(answer) if answer.outcomes.len() == batch.len() => answer.outcomes,
            Ok(answer) => {
                let reply = Reply::Failed(format!(
                    "{url}: {} outcomes for {} records",
                    answer.outcomes.len(),
                    batch.len()
                ));
                return answer_all(batch, &reply);
            }
            Err(e) => {
                let reply = Reply::Failed(format!("the outcomes are not the documented JSON: {e}"));
                return answer_all(batch, &reply);
            }
        };
        for (question, item) in batch.into_iter().zip(items) {
            let reply = item.reply(question.position);
            question.answer.send(reply).ok();
        }
    }

    /// The batch's questions asked one by one with the single route, all at once.
    async fn ask_each(&self, batch: Vec<Question>) {
        let asked = batch.into_iter().map(|question| async move {
            let remaining = question.deadline.saturating_duration_since(Instant::now());
            let reply = ask_single(
                &self.client,
                &self.base,
                question.position,
                question.authorization.as_deref(),
                &question.correlation_id,
                remaining,
            )
            .await;
            question.answer.send(reply).ok();
        });
        futures::future::join_all(asked).await;
    }
}

/// `request` carrying the client's `Authorization` verbatim (marked sensitive, so it is never
/// logged), or the reply when it cannot be a header value.
fn with_authorization(
    request: reqwest::RequestBuilder,
    authorization: Option<&[u8]>,
) -> Result<reqwest::RequestBuilder, Reply> {
    let Some(authorization) = authorization else {
        return Ok(request);
    };
    let mut value = reqwest::header::HeaderValue::from_bytes(authorization)
        .map_err(|_| Reply::Failed("the Authorization header is not valid".into()))?;
    value.set_sensitive(true);
    Ok(request.header(reqwest::header::AUTHORIZATION, value))
}

fn answer_all(batch: Vec<Question>, reply: &Reply) {
    for question in batch {
        question.answer.send(reply.clone()).ok();
    }
}

/// The first waiting question still awaited and those after it with the same
/// `Authorization`, up to [`MAX_RECORDS`], in the order they came; `None` when none is left.
/// Questions whose writes gave up waiting are dropped.
fn take_batch(state: &mut Queue<Question>) -> Option<Vec<Question>> {
    state.next_batch(
        MAX_RECORDS,
        |q| !q.answer.is_closed(),
        |first, q| q.authorization == first.authorization,
    )
}

/// The body of `POST /v1/outcomes:batchGet`.
#[derive(Serialize)]
struct BatchQuestion<'a> {
    records: &'a [RecordPosition],
}

#[derive(Debug, Deserialize)]
struct BatchAnswer {
    outcomes: Vec<BatchItem>,
}

#[derive(Debug, Deserialize)]
struct BatchItem {
    partition: i32,
    offset: i64,
    #[serde(default)]
    outcome: Option<Outcome>,
    #[serde(default)]
    error: Option<ItemError>,
}

#[derive(Debug, Deserialize)]
struct ItemError {
    code: String,
    #[serde(default)]
    message: String,
}

impl BatchItem {
    /// The reply this item is for the question about `position`: an item about another record
    /// is no answer.
    fn reply(self, position: RecordPosition) -> Reply {
        if self.partition != position.partition || self.offset != position.offset {
            return Reply::Failed(format!(
                "the item for {}:{} answers the record at {}:{}",
                position.partition, position.offset, self.partition, self.offset
            ));
        }
        match (self.outcome, self.error) {
            (Some(outcome), None) => checked(outcome, position),
            (None, Some(error)) => match error.code.as_str() {
                "outcome_not_found" => Reply::Unknown,
                "partition_not_held" => Reply::NotHeld,
                "not_ready" => Reply::NotYet,
                code => Reply::Failed(format!("{code}: {}", error.message)),
            },
            _ => Reply::Failed("an item must carry an outcome or an error".into()),
        }
    }
}

/// One reader's reply to one outcome question (alone, or an item of a batch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Decided(Outcome),
    /// `404` / `outcome_not_found`: this reader has no decision for the record (it started
    /// past it).
    Unknown,
    /// `421` / `partition_not_held`: this reader does not hold the partition.
    NotHeld,
    /// `503` / `not_ready`: not applied yet within the reader's wait.
    NotYet,
    /// `401`/`403`: the reader refused the client's credentials.
    Refused(u16),
    /// No usable answer: unreachable, timed out, another status, a malformed outcome.
    Failed(String),
}

impl Reply {
    pub(crate) fn metric(&self) -> ReaderReply {
        match self {
            Self::Decided(_) => ReaderReply::Decided,
            Self::Unknown => ReaderReply::Unknown,
            Self::NotHeld => ReaderReply::NotHeld,
            Self::NotYet => ReaderReply::NotYet,
            Self::Refused(_) => ReaderReply::Refused,
            Self::Failed(_) => ReaderReply::Failed,
        }
    }
}

/// One reader's reply about the record at `position`, asked alone with
/// `GET /v1/outcomes/{partition}/{offset}` (a reader without the batch route).
pub(crate) async fn ask_single(
    client: &reqwest::Client,
    base: &str,
    position: RecordPosition,
    authorization: Option<&[u8]>,
    correlation_id: &str,
    remaining: Duration,
) -> Reply {
    let url = format!(
        "{base}/v1/outcomes/{}/{}",
        position.partition, position.offset
    );
    let request = client
        .get(&url)
        .timeout(remaining.min(REQUEST_TIMEOUT))
        .header("X-Correlation-Id", correlation_id);
    let request = match with_authorization(request, authorization) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) => return Reply::Failed(format!("{url}: {error}")),
    };
    let status = response.status().as_u16();
    match status {
        200 => match body_within(response, MAX_REPLY_BYTES).await {
            Some(body) => decided(&body, position),
            None => Reply::Failed(format!("{url}: the outcome did not arrive whole")),
        },
        404 => Reply::Unknown,
        421 => Reply::NotHeld,
        503 => Reply::NotYet,
        401 | 403 => Reply::Refused(status),
        _ => Reply::Failed(format!("{url} answered {status}")),
    }
}

/// A reader's `200` body, checked to be the outcome of the record asked about.
pub(crate) fn decided(body: &[u8], position: RecordPosition) -> Reply {
    match serde_json::from_slice(body) {
        Ok(outcome) => checked(outcome, position),
        Err(e) => Reply::Failed(format!("the outcome is not the documented JSON: {e}")),
    }
}

/// `outcome`, if it is one of the record at `position`: an outcome naming another record (or a
/// first use at or after it) is no answer.
pub(crate) fn checked(outcome: Outcome, position: RecordPosition) -> Reply {
    let consistent = outcome.partition == position.partition
        && outcome.offset == position.offset
        && outcome
            .first
            .is_none_or(|first| (0..position.offset).contains(&first));
    if !consistent {
        return Reply::Failed(format!(
            "the outcome {outcome:?} is not one of the record at {}:{}",
            position.partition, position.offset
        ));
    }
    Reply::Decided(outcome)
}

pub(crate) async fn body_within(mut response: reqwest::Response, limit: usize) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.ok()? {
        if body.len() + chunk.len() > limit {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    Some(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn question(authorization: &[u8], offset: i64) -> (Question, oneshot::Receiver<Reply>) {
        let (answer, told) = oneshot::channel();
        let question = Question {
            position: RecordPosition {
                partition: 0,
                offset,
            },
            authorization: Some(authorization.to_vec()),
            correlation_id: String::new(),
            deadline: Instant::now(),
            answer,
        };
        (question, told)
    }

    #[test]
    fn a_batch_takes_the_questions_with_the_first_ones_credentials_in_order() {
        let mut state = Queue::default();
        let mut kept = Vec::new();
        for (n, authorization) in [b"a", b"b", b"a", b"b"].into_iter().enumerate() {
            let (q, told) = question(authorization, n as i64);
            let _ = state.queue(q);
            kept.push(told);
        }
        let first = take_batch(&mut state).expect("a batch");
        let offsets: Vec<i64> = first.iter().map(|q| q.position.offset).collect();
        assert_eq!(offsets, [0, 2]);
        let second = take_batch(&mut state).expect("a batch");
        let offsets: Vec<i64> = second.iter().map(|q| q.position.offset).collect();
        assert_eq!(offsets, [1, 3]);
        assert!(take_batch(&mut state).is_none());
    }

    #[test]
    fn a_batch_holds_at_most_its_bound_and_skips_questions_no_longer_awaited() {
        let mut state = Queue::default();
        let mut kept = Vec::new();
        for n in 0..MAX_RECORDS + 3 {
            let (q, told) = question(b"a", n as i64);
            let _ = state.queue(q);
            if n != 0 {
                kept.push(told);
            }
        }
        let batch = take_batch(&mut state).expect("a batch");
        assert_eq!(batch.len(), MAX_RECORDS);
        assert_eq!(batch[0].position.offset, 1, "the first gave up waiting");
        assert_eq!(state.waiting(), 2);
    }

    #[test]
    fn each_item_becomes_the_reply_a_single_question_would_have_had() {
        let at = RecordPosition {
            partition: 1,
            offset: 8,
        };
        let item = |json: serde_json::Value| -> BatchItem {
            serde_json::from_value(json).expect("an item")
        };
        let decided = item(serde_json::json!({"partition": 1, "offset": 8, "outcome":
            {"partition": 1, "offset": 8, "applied": true,
             "version": {"partition": 1, "offset": 8}, "first": null}}));
        assert!(matches!(decided.reply(at), Reply::Decided(_)));
        let error = |code: &str| {
            item(serde_json::json!({"partition": 1, "offset": 8,
                "error": {"code": code, "message": "m"}}))
            .reply(at)
        };
        assert_eq!(error("outcome_not_found"), Reply::Unknown);
        assert_eq!(error("partition_not_held"), Reply::NotHeld);
        assert_eq!(error("not_ready"), Reply::NotYet);
        assert!(matches!(error("invalid_request"), Reply::Failed(_)));
        let another = item(serde_json::json!({"partition": 1, "offset": 9,
            "error": {"code": "not_ready", "message": "m"}}));
        assert!(matches!(another.reply(at), Reply::Failed(_)));
        let wrong_outcome = item(serde_json::json!({"partition": 1, "offset": 8, "outcome":
            {"partition": 1, "offset": 7, "applied": true, "version": null, "first": null}}));
        assert!(matches!(wrong_outcome.reply(at), Reply::Failed(_)));
    }
}
