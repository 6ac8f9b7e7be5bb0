//! Forwards of single-key reads that one worker has under way to one owner at the same time,
//! sent as one batchGet.
//!
//! A forwarded read costs the owner a whole server handling and this shard a client request,
//! per read (docs/benchmarks.md, figure 6). Under load most of both is per request, not per
//! key, so reads that wait for the same owner share one request. Each worker keeps its own
//! lanes (actix workers are single-threaded runtimes): no lock, and the connections stay on the
//! worker's runtime. The lanes are `kv_core::lane`'s: a lane sends at once while fewer than two
//! of its batches are under way, so an idle shard adds no wait; reads that arrive while they
//! are go together in the next one.
//!
//! Only reads whose forwarded headers are the same share a batch (credentials, consistency
//! token, lag bound): the owner checks them once for all. A batch the owner does not answer
//! with a batch (a 503 for one lagging partition, a refusal, an answer too large to hold) is
//! not the answer of any one read: each of its reads is then forwarded on its own and gets the
//! owner's own answer. Only an owner that cannot be reached counts as every read's failure.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use kv_core::lane::Lane;
use kv_core::trace_context::TRACEPARENT;
use kv_core::web::json::BASE64;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::cluster::fanout::{self, PartError};
use crate::cluster::forward::{ByteBudget, ForwardError, Outcome, Outgoing};
use crate::cluster::Cluster;

/// Most keys in one batch.
const MAX_KEYS: usize = 128;
/// Most bytes of one batch's answer held here. Past it the batch's reads are forwarded one by
/// one (a value that large is streamed through, never held), and the lane sends no batch for
/// [`LARGE_PAUSE`]: values that large gain nothing from sharing a request.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
const LARGE_PAUSE: Duration = Duration::from_secs(10);

/// A coalesced read's result in the owner's batch answer.
#[derive(Debug)]
pub struct Coalesced {
    /// The read's batchGet item: `found`, `value` or `value_b64`, `etag`, ...
    pub item: Value,
    /// The batch answer's headers (who served it, how fresh), shared by its reads.
    pub headers: Rc<reqwest::header::HeaderMap>,
}

/// Why a read got no result from a batch.
#[derive(Debug)]
pub enum NotCoalesced {
    /// The owner could not be reached or did not answer in time: as a failed forward, the next
    /// owner is tried.
    Unavailable(ForwardError),
    /// The owner's answer was not a batch's: forward this read on its own.
    Alone,
}

/// One worker's lanes, one per owner it forwards to.
#[derive(Debug)]
pub struct ForwardBatches {
    cluster: Arc<Cluster>,
    client: reqwest::Client,
    lanes: RefCell<HashMap<u32, Rc<RefCell<Lane<Waiting>>>>>,
}

#[derive(Debug)]
struct Waiting {
    request: Outgoing,
    key: Vec<u8>,
    answer: oneshot::Sender<Result<Coalesced, NotCoalesced>>,
}

impl ForwardBatches {
    pub fn new(cluster: Arc<Cluster>, client: reqwest::Client) -> Self {
        Self {
            cluster,
            client,
            lanes: RefCell::default(),
        }
    }

    /// The read of `key` (a `GET` of its value, `request` its forwarded part) answered by
    /// `peer` within a batch. Runs on the worker's runtime: its batches are spawned there.
    pub async fn read(
        &self,
        peer: u32,
        request: &Outgoing,
        key: &[u8],
    ) -> Result<Coalesced, NotCoalesced> {
        let lane = self.lanes.borrow_mut().entry(peer).or_default().clone();
        let (answer, told) = oneshot::channel();
        let start = {
            let mut lane = lane.borrow_mut();
            if lane.paused() {
                return Err(NotCoalesced::Alone);
            }
            lane.queue(Waiting {
                request: request.clone(),
                key: key.to_vec(),
                answer,
            })
        };
        if start {
            let (cluster, client) = (self.cluster.clone(), self.client.clone());
            actix_web::rt::spawn(send_while_waiting(lane, cluster, client, peer));
        }
        // A batch dropped unanswered (its task ended) leaves the read to be forwarded alone.
        told.await.unwrap_or(Err(NotCoalesced::Alone))
    }
}

/// One of a lane's senders: batches of the reads waiting, one after another, until none is.
async fn send_while_waiting(
    lane: Rc<RefCell<Lane<Waiting>>>,
    cluster: Arc<Cluster>,
    client: reqwest::Client,
    peer: u32,
) {
    // Gives the sender's place back if the task ends early (a panic), so the lane never
    // stalls; on the usual end the empty take gives it back.
    struct Sender(Rc<RefCell<Lane<Waiting>>>, bool);
    impl Drop for Sender {
        fn drop(&mut self) {
            if self.1 {
                self.0.borrow_mut().sender_lost();
            }
        }
    }
    let mut sender = Sender(lane, true);
    loop {
        let Some(batch) = take_batch(&mut sender.0.borrow_mut()) else {
            sender.1 = false;
            return;
        };
        send(&sender.0, &cluster, &client, peer, batch).await;
    }
}

/// The first waiting read whose client still waits and those after it with the same forwarded
/// headers, up to [`MAX_KEYS`], in the order they came; `None` when none is left.
fn take_batch(lane: &mut Lane<Waiting>) -> Option<Vec<Waiting>> {
    lane.next_batch(
        MAX_KEYS,
        |read| !read.answer.is_closed(),
        |first, read| shared_part(&read.request).eq(shared_part(&first.request)),
    )
}

/// The forwarded headers the owner judges a request by; a read's own span is not among them
/// (the batch carries its first read's).
fn shared_part(request: &Outgoing) -> impl Iterator<Item = &(&'static str, Vec<u8>)> + Clone {
    request
        .headers
        .iter()
        .filter(|(name, _)| *name != TRACEPARENT)
}

async fn send(
    lane: &RefCell<Lane<Waiting>>,
    cluster: &Cluster,
    client: &reqwest::Client,
    peer: u32,
    batch: Vec<Waiting>,
) {
    let labels: Vec<String> = batch.iter().map(|w| BASE64.encode(&w.key)).collect();
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    let budget = ByteBudget::new(MAX_ANSWER_BYTES);
    cluster.observe_batch(peer, batch.len());
    // The first read's request, as a batchGet's: a JSON body, and the reads' answers are JSON.
    let mut request = batch[0].request.clone();
    request.method = reqwest::Method::POST;
    request
        .headers
        .retain(|(name, _)| !matches!(*name, "content-type" | "accept"));
    request
        .headers
        .push(("content-type", b"application/json".to_vec()));
    let part = fanout::batch_part(
        cluster, client, &request, peer, "keys_b64", &labels, &budget,
    )
    .await;
    match part {
        Ok(part) => {
            let headers = Rc::new(part.headers);
            for (waiting, item) in batch.into_iter().zip(part.items) {
                let headers = headers.clone();
                waiting.answer.send(Ok(Coalesced { item, headers })).ok();
            }
        }
        Err(PartError::Unavailable(error)) if error.outcome != Outcome::Unavailable => {
            for waiting in batch {
                let error = error.clone();
                waiting
                    .answer
                    .send(Err(NotCoalesced::Unavailable(error)))
                    .ok();
            }
        }
        Err(error) => {
            if matches!(error, PartError::TooLarge) {
                lane.borrow_mut().pause_for(LARGE_PAUSE);
            }
            for waiting in batch {
                waiting.answer.send(Err(NotCoalesced::Alone)).ok();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read waiting in `lane`, its client's end kept in `kept` so that it is still awaited.
    fn queue(
        lane: &mut Lane<Waiting>,
        kept: &mut Vec<oneshot::Receiver<Result<Coalesced, NotCoalesced>>>,
        authorization: &[u8],
        span: &[u8],
    ) {
        let (answer, told) = oneshot::channel();
        kept.push(told);
        let request = Outgoing {
            method: reqwest::Method::GET,
            headers: vec![
                ("authorization", authorization.to_vec()),
                (TRACEPARENT, span.to_vec()),
            ],
            correlation_id: String::new(),
        };
        let _ = lane.queue(Waiting {
            request,
            key: b"k".to_vec(),
            answer,
        });
    }

    #[test]
    fn a_batch_takes_the_reads_with_the_first_ones_credentials_whatever_their_spans() {
        let (mut lane, mut kept) = (Lane::default(), Vec::new());
        for (authorization, span) in [(b"a", b"1"), (b"b", b"2"), (b"a", b"3"), (b"b", b"4")] {
            queue(&mut lane, &mut kept, authorization, span);
        }
        let first = take_batch(&mut lane).expect("a batch");
        assert_eq!(first.len(), 2);
        assert!(first
            .iter()
            .all(|w| w.request.headers[0].1 == b"a".to_vec()));
        let second = take_batch(&mut lane).expect("a batch");
        assert_eq!(second.len(), 2);
        assert!(take_batch(&mut lane).is_none());
    }

    #[test]
    fn a_batch_holds_at_most_its_bound_of_keys_and_the_rest_wait_in_order() {
        let (mut lane, mut kept) = (Lane::default(), Vec::new());
        for n in 0..MAX_KEYS + 3 {
            queue(&mut lane, &mut kept, b"a", n.to_string().as_bytes());
        }
        assert_eq!(take_batch(&mut lane).expect("a batch").len(), MAX_KEYS);
        assert_eq!(lane.waiting(), 3);
        let rest = take_batch(&mut lane).expect("the rest");
        assert_eq!(
            rest[0].request.headers[1].1,
            MAX_KEYS.to_string().into_bytes()
        );
    }

    #[test]
    fn a_read_whose_client_went_away_is_not_forwarded() {
        let (mut lane, mut kept) = (Lane::default(), Vec::new());
        queue(&mut lane, &mut kept, b"a", b"1");
        queue(&mut lane, &mut kept, b"a", b"2");
        kept.remove(0);
        let batch = take_batch(&mut lane).expect("a batch");
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].request.headers[1].1, b"2".to_vec());
    }
}
