//! One hop to a peer shard: what of the caller's request it carries, the loop guard, the
//! metrics, and a peer's answer read within a bound.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kv_core::web::http::CORRELATION_ID;

use crate::cluster::Cluster;

/// Names the shard that answered a read (a comma list when several did).
pub const SERVED_BY: &str = "x-served-by";
/// The loop guard: set on a forwarded request, which is then never forwarded again.
pub const FORWARDED_BY: &str = "x-kv-forwarded-by";

/// Request headers a forwarded read carries on: the caller's credentials (the owner checks them
/// itself), its read-your-writes token, its correlation id, its conditions.
pub const FORWARDED_REQUEST_HEADERS: [&str; 6] = [
    "authorization",
    "x-consistency-token",
    "x-max-replica-lag",
    "if-none-match",
    "content-type",
    "accept",
];

/// The path of `key` at an owner, below the route's `prefix` (ending in `/`): the key as one
/// segment (`kv_wire::paths`); `None` for a key of dots only, which no path carries.
pub fn key_path(prefix: &str, key: &[u8]) -> Option<String> {
    kv_wire::paths::key_segment(key).map(|segment| format!("{prefix}{segment}"))
}

/// The client of every call to a peer (forwards, fanned-out parts, readiness polls,
/// snapshots): it follows no redirect, so a peer's answer is the answer and no caller's request
/// or token is sent on to an address that is not a configured peer.
pub fn peer_client(connect_timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
}

/// How a forward ended, as the metrics label it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The owner answered (any status but 503).
    Answered,
    /// The owner answered 503: not ready, lagging past the bound, or overloaded.
    Unavailable,
    /// No connection, or it broke before the answer.
    Unreachable,
    TimedOut,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::Unavailable => "unavailable",
            Self::Unreachable => "unreachable",
            Self::TimedOut => "timeout",
        }
    }
}

/// What a forward carries of the caller's request: its method, the headers in
/// [`FORWARDED_REQUEST_HEADERS`], and its correlation id, taken once by the port.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub method: reqwest::Method,
    pub headers: Vec<(&'static str, Vec<u8>)>,
    pub correlation_id: String,
}

/// A forward that got no usable answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("shard {peer}: {message}")]
pub struct ForwardError {
    pub peer: u32,
    pub outcome: Outcome,
    pub message: String,
}

impl Cluster {
    /// Sends the caller's `request` (and `body`) to `peer` at `path_and_query`, with the loop
    /// guard set. A 503 is an error here too, so the caller tries the next owner.
    pub async fn forward(
        &self,
        client: &reqwest::Client,
        peer: u32,
        request: &Outgoing,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<reqwest::Response, ForwardError> {
        let target = &self.peers[peer as usize];
        let url = format!("{}{path_and_query}", target.url);
        let mut outgoing = client
            .request(request.method.clone(), url)
            .timeout(self.forward_timeout);
        for (name, value) in &request.headers {
            outgoing = outgoing.header(*name, value.as_slice());
        }
        outgoing = outgoing
            .header(CORRELATION_ID.as_str(), request.correlation_id.as_str())
            .header(FORWARDED_BY, self.spec.index.to_string());
        if let Some(body) = body {
            outgoing = outgoing.body(body);
        }
        let started = Instant::now();
        let answer = outgoing.send().await;
        self.metrics
            .seconds
            .with_label_values(&[&target.label])
            .observe(started.elapsed().as_secs_f64());
        let (outcome, result) = match answer {
            Ok(response) if response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                let message = format!("answered 503 ({})", error_code(response).await);
                (Outcome::Unavailable, Err(message))
            }
            Ok(response) => (Outcome::Answered, Ok(response)),
            Err(error) if error.is_timeout() => (
                Outcome::TimedOut,
                Err(format!(
                    "no answer within {} ms (KV_API_SHARD_FORWARD_TIMEOUT_MS)",
                    self.forward_timeout.as_millis()
                )),
            ),
            Err(error) => {
                self.mark_down(peer);
                (
                    Outcome::Unreachable,
                    Err(format!("unreachable: {}", error_chain(&error))),
                )
            }
        };
        self.metrics
            .requests
            .with_label_values(&[&target.label, outcome.label()])
            .inc();
        result.map_err(|message| ForwardError {
            peer,
            outcome,
            message,
        })
    }
}

/// The `error.code` of an error answer, for the log and the next owner's choice.
async fn error_code(response: reqwest::Response) -> String {
    read_bounded(response, 64 * 1024)
        .await
        .ok()
        .and_then(|body| kv_wire::errors::ErrorBody::parse(&body))
        .map_or_else(|| "no error body".to_owned(), |error| error.code)
}

/// Why a peer's answer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the answer broke off: {0}")]
    Broken(String),
}

/// A peer's answer body, refused past `limit` bytes: a peer is trusted to answer, not to
/// answer small.
pub async fn read_bounded(response: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    read_within(response, &ByteBudget::new(limit)).await
}

/// Bytes several peers' answers may take together, read at once: each chunk is taken from it
/// as it arrives, so the answers of every owner of a fanned-out read together stay within one
/// bound, however many owners answer.
#[derive(Debug)]
pub struct ByteBudget {
    total: usize,
    left: AtomicUsize,
}

impl ByteBudget {
    pub fn new(total: usize) -> Self {
        Self {
            total,
            left: AtomicUsize::new(total),
        }
    }

    fn take(&self, bytes: usize) -> bool {
        self.left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(bytes)
            })
            .is_ok()
    }

    /// Gives back what an answer that is dropped unused took.
    pub fn give_back(&self, bytes: usize) {
        self.left.fetch_add(bytes, Ordering::AcqRel);
    }
}

/// A peer's answer body, its bytes taken from `budget` as they arrive; refused as soon as the
/// budget is spent (a declared length over what is left: before reading anything).
pub async fn read_within(
    mut response: reqwest::Response,
    budget: &ByteBudget,
) -> Result<Vec<u8>, BodyError> {
    let too_large = BodyError::TooLarge(budget.total);
    if response
        .content_length()
        .is_some_and(|len| len > budget.left.load(Ordering::Acquire) as u64)
    {
        return Err(too_large);
    }
    let mut body = Vec::new();
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Ok(body),
            Err(error) => {
                budget.give_back(body.len());
                return Err(BodyError::Broken(error_chain(&error)));
            }
        };
        if !budget.take(chunk.len()) {
            return Err(too_large);
        }
        body.extend_from_slice(&chunk);
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The headers of an owner's answer a forwarder passes back: all but the hop-by-hop ones.
pub fn passed_back(name: &str) -> bool {
    !matches!(
        name,
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "content-length"
            | "te"
            | "trailer"
            | "upgrade"
            | "proxy-authenticate"
            | "date"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key the owner decodes from the path a peer client sends for `key`.
    fn sent(key: &[u8]) -> Vec<u8> {
        let path = key_path("/v1/kv/", key).expect("a key with a path");
        let url = reqwest::Url::parse(&format!("http://peer:1{path}")).expect("a URL");
        let tail = url
            .path()
            .strip_prefix("/v1/kv/")
            .expect("the route's prefix kept");
        percent_encoding::percent_decode_str(tail).collect()
    }

    #[test]
    fn a_forwarded_key_reaches_the_owner_whole_whatever_its_dots_and_slashes() {
        for key in [
            &b"x3/../target"[..],
            b"../../admin/v1/snapshot",
            b"a/./b",
            b"/",
            b"...",
            b"%2e%2e",
            b"a b?c#d",
            b"\\..\\x",
            b"\xff\x00/..",
            b"plain",
        ] {
            assert_eq!(sent(key), key, "{:?}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn a_key_of_dots_only_has_no_path() {
        assert_eq!(key_path("/v1/kv/", b".."), None);
        assert_eq!(key_path("/v1/kv/", b"."), None);
        assert!(key_path("/v1/kv/", b"...").is_some());
    }

    #[test]
    fn answers_read_against_one_budget_are_refused_once_together_they_spend_it() {
        let budget = ByteBudget::new(10);
        assert!(budget.take(6), "the first answer fits");
        assert!(!budget.take(6), "the second would spend more than is left");
        assert!(budget.take(4));
        budget.give_back(6);
        assert!(budget.take(6), "what a dropped answer took is there again");
        assert!(!budget.take(1));
    }
}
