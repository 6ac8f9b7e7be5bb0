//! A plain watch on a shard: one shard-local watch per source shard, merged into one stream that
//! covers every partition, its ids one position per partition as any replica's are.
//!
//! Each partition is taken from one source, its best owner when the watch opens
//! (`Cluster::targets`); a source's events of partitions taken from another source (a shard
//! holding a partition twice over, R > 1) are dropped. This shard is a source like the others,
//! through its own address, so every source is read the same way.
//!
//! While any source lists entries (`snapshot=true`, or after a `reset`), nothing carries an id:
//! an id then would claim positions whose listing has not ended, and a client resuming from it
//! would miss entries. Once every source has listed, `progress` gives the merged position. A
//! `reset` from one source voids what the client holds under the whole prefix, so every source
//! starts over with its entries, and the client is told `reset` once. An `overflow`, or a source
//! that breaks or stays silent 10 s (each sends `progress` every second), ends the stream with an
//! event saying so: the client resumes from its last id, on this shard or any other reader.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::{Duration, Instant};

use actix_web::http::header::{self, HeaderName};
use actix_web::{HttpRequest, HttpResponse};
use base64::Engine;
use bytes::Bytes;
use eventsource_stream::{Event, Eventsource};
use futures::stream::{SelectAll, StreamExt};
use futures::Stream;
use kv_core::trace_context::TRACEPARENT;
use kv_core::web::error::{ApiError, ErrorCode};
use kv_core::web::http::RequestTrace;
use kv_core::web::json::BASE64;
use tokio::sync::mpsc;

use crate::changes::feed::Positions;
use crate::cluster::forward::FORWARDED_BY;
use crate::cluster::{Cluster, Target};
use crate::http::state::HttpState;
use crate::http::watch::{parse_position, position_id, LAST_EVENT_ID};

/// Longest wait for a source's answer head; a stream then has no deadline of its own (a source
/// sends `progress` every second).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a source may stay silent before it counts as broken: ten `progress` intervals (a
/// source waiting for a listing slot of a sealed store sends nothing meanwhile).
const SILENCE: Duration = Duration::from_secs(10);
/// Events handed to the connection ahead of the client reading them.
const AHEAD: usize = 32;
/// Longest a merged watch waits between two `progress` events of its own.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

type Events = Pin<Box<dyn Stream<Item = (usize, Option<Event>)>>>;

/// What the merged watch asks its sources for.
#[allow(missing_debug_implementations)] // `slots` is opaque; nothing to show
pub struct MergeRequest {
    pub prefix: Vec<u8>,
    pub resume: Option<Positions>,
    pub snapshot: bool,
    /// Held while the watch runs: this shard's watch slot and the caller's.
    pub slots: Box<dyn Send + 'static>,
}

/// One source: a shard and the partitions taken from it.
struct Source {
    url: String,
    partitions: Vec<i32>,
}

/// The merged watch's answer: `200` with the stream once every source answered its head, or
/// the error that kept one from answering.
pub async fn merged(
    request: &HttpRequest,
    http: &HttpState,
    client: &reqwest::Client,
    merge: MergeRequest,
) -> Result<HttpResponse, ApiError> {
    let Some(cluster) = http.read.cluster.as_deref() else {
        return Err(ApiError::internal(
            "a merged watch on a reader that is no shard",
        ));
    };
    let sources = sources(cluster, http)?;
    let headers = SourceHeaders::of(request, cluster);
    let mut merger = Merger {
        sources,
        partition_source: BTreeMap::new(),
        positions: merge.resume.clone().unwrap_or_default(),
        listing: Vec::new(),
        heard: Vec::new(),
        last_progress: Instant::now(),
    };
    for (index, source) in merger.sources.iter().enumerate() {
        for &partition in &source.partitions {
            merger.partition_source.insert(partition, index);
        }
    }
    let streams = match merger
        .open_all(
            client,
            &headers,
            &merge.prefix,
            merge.resume.as_ref(),
            merge.snapshot,
        )
        .await
    {
        Ok(streams) => streams,
        Err(OpenError::Unavailable(error)) => return Err(error),
        // A source's own refusal (its token check, its caps) is this watch's answer.
        Err(OpenError::Refused(response)) => {
            return Ok(crate::http::forward::passed_through(response, 16 * 1024).await)
        }
    };
    let (sender, mut receiver) = mpsc::channel::<Bytes>(AHEAD);
    let client = client.clone();
    let slots = merge.slots;
    actix_web::rt::spawn(async move {
        let _slots = slots;
        merger
            .run(streams, &client, &headers, &merge.prefix, &sender)
            .await;
    });
    let body = futures::stream::poll_fn(move |context| {
        receiver
            .poll_recv(context)
            .map(|chunk| chunk.map(Ok::<_, actix_web::Error>))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((HeaderName::from_static("x-accel-buffering"), "no"))
        .streaming(body))
}

/// Each partition's best owner now, grouped by shard; `503 shard_unavailable` when a partition
/// has none that answers.
fn sources(cluster: &Cluster, http: &HttpState) -> Result<Vec<Source>, ApiError> {
    let Some(partitions) = cluster.partitions() else {
        return Err(ApiError::new(
            ErrorCode::NotReady,
            "this shard does not know the topic's partitions yet; retry",
        )
        .with_retry_after(Duration::from_secs(1)));
    };
    let mut by_shard: BTreeMap<u32, Vec<i32>> = BTreeMap::new();
    for partition in 0..partitions as i32 {
        let shard = match cluster
            .targets(partition, None, &http.read.progress)
            .first()
        {
            Some(Target::Local) => cluster.spec.index,
            Some(Target::Peer(peer)) => *peer,
            None => {
                return Err(ApiError::new(
                    ErrorCode::ShardUnavailable,
                    format!("no shard holds partition {partition}"),
                )
                .with_retry_after(Duration::from_secs(1)))
            }
        };
        by_shard.entry(shard).or_default().push(partition);
    }
    Ok(by_shard
        .into_iter()
        .map(|(shard, partitions)| Source {
            url: cluster.peer_url(shard).to_owned(),
            partitions,
        })
        .collect())
}

/// What every source request carries of the caller's: the token (each source checks it, its
/// expiry and its prefixes, again), the loop guard, and the trace.
struct SourceHeaders {
    authorization: Option<String>,
    forwarded_by: String,
    /// This shard's span: each source's is its child.
    traceparent: String,
}

impl SourceHeaders {
    fn of(request: &HttpRequest, cluster: &Cluster) -> Self {
        Self {
            authorization: request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            forwarded_by: cluster.spec.index.to_string(),
            traceparent: RequestTrace::of(request).to_string(),
        }
    }
}

struct Merger {
    sources: Vec<Source>,
    partition_source: BTreeMap<i32, usize>,
    /// The merged position: each partition's from the source it is taken from.
    positions: Positions,
    /// Per source: still listing entries (no id may be sent until none is).
    listing: Vec<bool>,
    /// Per source: when it last sent anything; one silent past [`SILENCE`] ends the watch,
    /// though the others go on talking.
    heard: Vec<Instant>,
    last_progress: Instant,
}

/// What a source's event means for the merged stream.
enum Step {
    Send(Bytes),
    Nothing,
    /// Every source starts over with its entries; the client was told `reset`.
    StartOver(Bytes),
    End(Bytes),
}

impl Merger {
    /// Opens every source; the first that does not answer `200` is the watch's answer.
    async fn open_all(
        &mut self,
        client: &reqwest::Client,
        headers: &SourceHeaders,
        prefix: &[u8],
        resume: Option<&Positions>,
        snapshot: bool,
    ) -> Result<SelectAll<Events>, OpenError> {
        // With a position to resume from, `snapshot` has no effect, as on one replica.
        let listing = snapshot && resume.is_none();
        self.listing = vec![listing; self.sources.len()];
        self.heard = vec![Instant::now(); self.sources.len()];
        let mut all = SelectAll::new();
        for index in 0..self.sources.len() {
            let url = &self.sources[index].url;
            all.push(open(client, headers, url, index, prefix, resume, listing).await?);
        }
        Ok(all)
    }

    async fn run(
        &mut self,
        mut streams: SelectAll<Events>,
        client: &reqwest::Client,
        headers: &SourceHeaders,
        prefix: &[u8],
        sender: &mpsc::Sender<Bytes>,
    ) {
        loop {
            let next = tokio::time::timeout(SILENCE, streams.next()).await;
            if let Some(index) = self.heard.iter().position(|at| at.elapsed() > SILENCE) {
                let _ = sender
                    .send(end_event(
                        ErrorCode::ShardUnavailable,
                        &format!(
                            "the watch of shard {} went silent; resume from the last id",
                            self.sources[index].url
                        ),
                    ))
                    .await;
                return;
            }
            let step = match next {
                Ok(Some((index, Some(event)))) => {
                    self.heard[index] = Instant::now();
                    self.on_event(index, &event)
                }
                // A source ended or broke, or all went silent: the client resumes.
                Ok(Some((index, None))) => Step::End(end_event(
                    ErrorCode::ShardUnavailable,
                    &format!(
                        "the watch of shard {} ended; resume from the last id, here or on any \
                         reader",
                        self.sources[index].url
                    ),
                )),
                Ok(None) | Err(_) => Step::End(end_event(
                    ErrorCode::ShardUnavailable,
                    "a shard's watch went silent; resume from the last id",
                )),
            };
            match step {
                Step::Send(chunk) => {
                    if sender.send(chunk).await.is_err() {
                        return;
                    }
                }
                Step::Nothing => {}
                Step::StartOver(chunk) => {
                    if sender.send(chunk).await.is_err() {
                        return;
                    }
                    match self.open_all(client, headers, prefix, None, true).await {
                        Ok(fresh) => streams = fresh,
                        Err(error) => {
                            let _ = sender.send(error.end_event()).await;
                            return;
                        }
                    }
                }
                Step::End(chunk) => {
                    let _ = sender.send(chunk).await;
                    return;
                }
            }
            if !self.listing.contains(&true) && self.last_progress.elapsed() >= PROGRESS_EVERY {
                self.last_progress = Instant::now();
                let chunk = sse("progress", Some(&position_id(&self.positions)), "");
                if sender.send(chunk).await.is_err() {
                    return;
                }
            }
        }
    }

    fn on_event(&mut self, index: usize, event: &Event) -> Step {
        let source_id = (!event.id.is_empty())
            .then(|| parse_position(&event.id).ok())
            .flatten();
        match event.event.as_str() {
            "put" | "delete" => {
                // Only from the source its partition is taken from.
                let Some(partition) = event_partition(&event.data) else {
                    return Step::Nothing;
                };
                if self.partition_source.get(&partition) != Some(&index) {
                    return Step::Nothing;
                }
                self.take_positions(index, source_id.as_ref());
                let id = (!self.listing.contains(&true)).then(|| position_id(&self.positions));
                Step::Send(sse(&event.event, id.as_deref(), &event.data))
            }
            "progress" => {
                self.take_positions(index, source_id.as_ref());
                let was_listing = std::mem::replace(&mut self.listing[index], false);
                if was_listing && !self.listing.contains(&true) {
                    self.last_progress = Instant::now();
                    return Step::Send(sse("progress", Some(&position_id(&self.positions)), ""));
                }
                Step::Nothing
            }
            "reset" => {
                self.positions.clear();
                Step::StartOver(sse("reset", None, &event.data))
            }
            // `overflow`, a token that expired (`error`), a reader shutting down.
            _ => Step::End(sse(&event.event, None, &event.data)),
        }
    }

    /// The positions of the partitions taken from `index`, from that source's id.
    fn take_positions(&mut self, index: usize, id: Option<&Positions>) {
        let Some(id) = id else {
            return;
        };
        for &partition in &self.sources[index].partitions {
            if let Some(&offset) = id.get(&partition) {
                let at = self.positions.entry(partition).or_insert(offset);
                *at = (*at).max(offset);
            }
        }
    }
}

/// Opens one source's shard-local watch: its events, tagged with `index`, then `None` once it
/// ends or breaks.
async fn open(
    client: &reqwest::Client,
    headers: &SourceHeaders,
    url: &str,
    index: usize,
    prefix: &[u8],
    resume: Option<&Positions>,
    listing: bool,
) -> Result<Events, OpenError> {
    let mut query = format!(
        "shard_local=true&prefix_b64={}",
        percent_encoding::utf8_percent_encode(
            &BASE64.encode(prefix),
            percent_encoding::NON_ALPHANUMERIC
        )
    );
    if listing {
        query.push_str("&snapshot=true");
    }
    let mut request = client
        .get(format!("{url}/v1/kv:watch?{query}"))
        .header("accept", "text/event-stream")
        .header(FORWARDED_BY, &headers.forwarded_by);
    if let Some(authorization) = &headers.authorization {
        request = request.header("authorization", authorization);
    }
    request = request.header(TRACEPARENT, &headers.traceparent);
    if let Some(resume) = resume {
        request = request.header(LAST_EVENT_ID.as_str(), position_id(resume));
    }
    let response = tokio::time::timeout(CONNECT_TIMEOUT, request.send())
        .await
        .map_err(|_| OpenError::Unavailable(unavailable(url, "did not answer in time")))?
        .map_err(|e| OpenError::Unavailable(unavailable(url, &e.to_string())))?;
    if !response.status().is_success() {
        return Err(OpenError::Refused(response));
    }
    let events = response
        .bytes_stream()
        .eventsource()
        // A broken stream ends the source like a closed one.
        .take_while(|event| futures::future::ready(event.is_ok()))
        .filter_map(move |event| futures::future::ready(event.ok().map(|e| (index, Some(e)))))
        .chain(futures::stream::once(async move { (index, None) }));
    Ok(Box::pin(events))
}

fn unavailable(url: &str, why: &str) -> ApiError {
    ApiError::new(
        ErrorCode::ShardUnavailable,
        format!("the watch of shard {url} could not start: {why}"),
    )
    .with_retry_after(Duration::from_secs(1))
}

/// Why a source's watch did not start.
enum OpenError {
    Unavailable(ApiError),
    /// The source answered, with another status than `200`.
    Refused(reqwest::Response),
}

impl OpenError {
    /// The last event of a stream whose sources could not start over.
    fn end_event(&self) -> Bytes {
        match self {
            Self::Unavailable(error) => end_event(error.code, &error.message),
            Self::Refused(response) => end_event(
                ErrorCode::ShardUnavailable,
                &format!(
                    "a shard refused to start its watch over ({}); resume from the last id",
                    response.status().as_u16()
                ),
            ),
        }
    }
}

/// The partition a `put` or `delete` names in its data.
fn event_partition(data: &str) -> Option<i32> {
    #[derive(serde::Deserialize)]
    struct Partition {
        partition: i32,
    }
    serde_json::from_str::<Partition>(data)
        .ok()
        .map(|p| p.partition)
}

/// An event as server-sent events spell it; `data` is one JSON line, or empty.
fn sse(event: &str, id: Option<&str>, data: &str) -> Bytes {
    let mut out = String::with_capacity(event.len() + data.len() + 64);
    out.push_str("event: ");
    out.push_str(event);
    out.push('\n');
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(id);
        out.push('\n');
    }
    for line in data.split('\n') {
        out.push_str("data:");
        if !line.is_empty() {
            out.push(' ');
            out.push_str(line);
        }
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// The last event of a stream that ends for `code`.
fn end_event(code: ErrorCode, message: &str) -> Bytes {
    let body = ApiError::new(code, message).body();
    sse("error", None, &body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merger(sources: &[&[i32]]) -> Merger {
        let sources: Vec<Source> = sources
            .iter()
            .map(|partitions| Source {
                url: "http://s".into(),
                partitions: partitions.to_vec(),
            })
            .collect();
        let mut partition_source = BTreeMap::new();
        for (index, source) in sources.iter().enumerate() {
            for &p in &source.partitions {
                partition_source.insert(p, index);
            }
        }
        Merger {
            listing: vec![false; sources.len()],
            heard: vec![Instant::now(); sources.len()],
            sources,
            partition_source,
            positions: Positions::new(),
            last_progress: Instant::now(),
        }
    }

    fn event(kind: &str, id: &str, data: &str) -> Event {
        Event {
            event: kind.into(),
            id: id.into(),
            data: data.into(),
            retry: None,
        }
    }

    fn text(step: Step) -> String {
        match step {
            Step::Send(b) | Step::StartOver(b) | Step::End(b) => {
                String::from_utf8(b.to_vec()).expect("utf-8")
            }
            Step::Nothing => String::new(),
        }
    }

    #[test]
    fn an_event_is_taken_from_its_partitions_source_only_and_carries_the_merged_position() {
        let mut m = merger(&[&[0, 2], &[1]]);
        let put = r#"{"key":"a","partition":1,"offset":7}"#;
        // Source 0 holds partition 1 too (R = 2): dropped there.
        assert_eq!(text(m.on_event(0, &event("put", "0:3,1:7,2:4", put))), "");
        let sent = text(m.on_event(1, &event("put", "1:7", put)));
        assert!(sent.contains("id: 1:7\n"), "{sent}");
        let other = r#"{"key":"b","partition":2,"offset":5}"#;
        let sent = text(m.on_event(0, &event("delete", "0:3,1:9,2:5", other)));
        // Partition 1's position comes from source 1 alone.
        assert!(sent.contains("id: 0:3,1:7,2:5\n"), "{sent}");
    }

    #[test]
    fn no_id_is_sent_while_a_source_still_lists_and_progress_follows_the_last_listing() {
        let mut m = merger(&[&[0], &[1]]);
        m.listing = vec![true, true];
        let entry = r#"{"key":"a","partition":0,"offset":1}"#;
        assert!(!text(m.on_event(0, &event("put", "", entry))).contains("id:"));
        assert_eq!(text(m.on_event(0, &event("progress", "0:4", ""))), "");
        let live = r#"{"key":"b","partition":0,"offset":5}"#;
        assert!(!text(m.on_event(0, &event("put", "0:5", live))).contains("id:"));
        let done = text(m.on_event(1, &event("progress", "1:2", "")));
        assert!(done.starts_with("event: progress\nid: 0:5,1:2\n"), "{done}");
    }

    #[test]
    fn a_reset_from_one_source_starts_every_source_over_and_an_overflow_ends_the_stream() {
        let mut m = merger(&[&[0], &[1]]);
        m.positions.insert(0, 4);
        assert!(matches!(
            m.on_event(1, &event("reset", "", "")),
            Step::StartOver(_)
        ));
        assert!(m.positions.is_empty());
        assert!(matches!(
            m.on_event(0, &event("overflow", "", "")),
            Step::End(_)
        ));
    }
}
