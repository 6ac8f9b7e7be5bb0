//! `GET /v1/kv:watch`: the replica's committed changes under a prefix as server-sent events,
//! resumable from any event's id on any replica.
//!
//! A watch reads the change feed (`crate::changes::feed`) from a cursor of its own, so it never holds more
//! than one chunk of output: when the client reads too slowly for the feed's ring, the watch
//! finds its next change dropped and ends with `overflow`. Every `put` and `delete` carries as
//! its id the position the watch has seen (the consistency-token form), which a resume, here or
//! on another replica, continues after.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix_web::http::header::{self, HeaderName};
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use kv_core::consistency::{ConsistencyToken, RecordPosition};
use kv_core::record::now_ms;
use kv_core::settings::prefixes::KeyAction;
use kv_core::web::auth::{operation, AuthGate, Authorized};
use kv_core::web::error::{ApiError, ErrorCode};
use kv_core::web::http::parse_query;
use kv_core::web::json::BASE64;
use kv_core::web::prefixes::KeyGrant;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::changes::feed::{
    ChangeEvent, ChangeFeed, ChangeKind, FirstListing, Positions, Read, Resume,
};
use crate::changes::metrics::{WatchEvent, WatchMetrics};
use crate::cluster::shard::ShardSpec;
use crate::http::list::prefix_param;
use crate::http::state::{HttpState, PeerClient};
use crate::http::watch_merge::{self, MergeRequest};
use crate::store::{ReadView, ScanPage, Store, StoreError, StoredEntry};

/// The SSE header naming the last event a reconnecting client received.
pub const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
/// The id of a position at which nothing was applied yet: an SSE id cannot be empty, and an
/// empty consistency token does not parse.
pub const START_POSITION: &str = "start";
/// Longest a watch stays silent: then it sends `progress`, with the position it has seen.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// A chunk of output is handed to the connection once it holds this much.
const CHUNK_BYTES: usize = 64 * 1024;
/// Changes taken from the feed under one lock.
const READ_BATCH: usize = 256;
/// First-listing entries read per page, and the value bytes after which a page ends.
const LISTING_PAGE_ENTRIES: usize = 256;
const LISTING_PAGE_BYTES: usize = 1024 * 1024;

/// What the watch handler shares.
#[derive(Debug)]
pub struct WatchState {
    pub feed: Arc<ChangeFeed>,
    pub store: Arc<Store>,
    /// One permit per open watch (KV_API_MAX_WATCHES).
    pub slots: Arc<Semaphore>,
    pub max_watches: usize,
    /// The watches each caller holds (KV_API_MAX_WATCHES_PER_CALLER).
    pub callers: Callers,
    pub metrics: WatchMetrics,
    /// A first-listing page of an encrypted-at-rest store reads it whole, so few run at once;
    /// these slots are the watches' own, so that listings and `SCAN`, which fail rather than
    /// wait for theirs, are never crowded out by snapshots.
    pub sealed_first_listings: Arc<Semaphore>,
    /// Set on a sharded reader, whose feed holds its own partitions' changes only.
    pub shard: Option<ShardSpec>,
}

/// How many watches each caller holds: a token's subject with auth on, else the client's IP
/// address (behind a proxy, the proxy's).
#[derive(Debug)]
pub struct Callers {
    held: Mutex<HashMap<String, usize>>,
    max_per_caller: usize,
}

impl Callers {
    pub fn new(max_per_caller: usize) -> Self {
        Self {
            held: Mutex::new(HashMap::new()),
            max_per_caller,
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One of a caller's watches, counted until it is dropped.
#[derive(Debug)]
struct CallerSlot {
    state: Arc<WatchState>,
    caller: String,
}

impl CallerSlot {
    fn take(state: &Arc<WatchState>, caller: String) -> Result<Self, ApiError> {
        let callers = &state.callers;
        let mut held = callers.held();
        let count = held.entry(caller.clone()).or_insert(0);
        if *count >= callers.max_per_caller {
            return Err(ApiError::new(
                ErrorCode::TooManyRequests,
                format!(
                    "this caller holds {} watches open on this replica \
                     (KV_API_MAX_WATCHES_PER_CALLER); close one, or retry later",
                    callers.max_per_caller
                ),
            )
            .with_retry_after(Duration::from_secs(1)));
        }
        *count += 1;
        drop(held);
        Ok(Self {
            state: state.clone(),
            caller,
        })
    }
}

impl Drop for CallerSlot {
    fn drop(&mut self) {
        let mut held = self.state.callers.held();
        if let Some(count) = held.get_mut(&self.caller) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.caller);
            }
        }
    }
}

/// Whom a watch counts against: the token's subject, else the peer's address.
fn caller_of(auth: &Authorized<operation::Read>, request: &HttpRequest) -> String {
    match auth.claims.as_ref().and_then(|claims| claims.subject()) {
        Some(subject) => format!("sub:{subject}"),
        None => match request.peer_addr() {
            Some(address) => format!("ip:{}", address.ip()),
            None => "ip:unknown".to_owned(),
        },
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchQuery {
    prefix: Option<String>,
    prefix_b64: Option<String>,
    from: Option<String>,
    snapshot: Option<String>,
    /// On a sharded reader: `true` to watch this shard's partitions, knowing that is all.
    shard_local: Option<String>,
}

/// `GET /v1/kv:watch?prefix=&from=&snapshot=`: the changes under `prefix` as server-sent events.
pub async fn watch(
    auth: Authorized<operation::Read>,
    request: HttpRequest,
    state: web::Data<WatchState>,
    http: web::Data<HttpState>,
    client: web::Data<PeerClient>,
) -> Result<HttpResponse, ApiError> {
    if !accepts_event_stream(&request) {
        return Err(ApiError::invalid_request(
            "a watch answers a stream of server-sent events that does not end: send \
             `Accept: text/event-stream`",
        ));
    }
    let query: WatchQuery = parse_query(&request)?;
    // On a shard, a plain watch merges every shard's own (`watch_merge`); `shard_local=true`
    // asks for this shard's partitions only.
    let merge = state.shard.is_some()
        && match query.shard_local.as_deref() {
            None | Some("false") => true,
            Some("true") => false,
            Some(other) => {
                return Err(ApiError::invalid_request(format!(
                    "parameter `shard_local` must be true or false, got {other:?}"
                )))
            }
        };
    let prefix = prefix_param(query.prefix, query.prefix_b64)?;
    // KV_API_AUTH_PREFIXES: a prefix with no watchable key is a 403; otherwise every event and
    // snapshot entry is filtered by `Watch::keys`.
    let keys = auth.keys(KeyAction::Watch);
    if keys.listing(&prefix).is_none() {
        return Err(keys.prefix_refusal(&prefix));
    }
    let snapshot = match query.snapshot.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::invalid_request(format!(
                "parameter `snapshot` must be true or false, got {other:?}"
            )))
        }
    };
    // A reconnecting EventSource sends both the URL it began with and the id it reached.
    let last_event_id = match request.headers().get(LAST_EVENT_ID) {
        Some(raw) => Some(raw.to_str().map(str::to_owned).map_err(|_| {
            ApiError::invalid_request("header Last-Event-ID must be an id this watch sent")
        })?),
        None => None,
    };
    let resume = match last_event_id.or(query.from).as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => Some(parse_position(text)?),
    };
    if !state.feed.started() {
        return Err(ApiError::new(
            ErrorCode::NotReady,
            "this replica has not assigned the topic's partitions yet; retry",
        )
        .with_retry_after(Duration::from_secs(1)));
    }
    let state = state.into_inner();
    let caller = CallerSlot::take(&state, caller_of(&auth, &request))?;
    let Ok(slot) = state.slots.clone().try_acquire_owned() else {
        return Err(ApiError::new(
            ErrorCode::Overloaded,
            format!(
                "{} watches are open on this replica (KV_API_MAX_WATCHES); retry later or on \
                 another replica",
                state.max_watches
            ),
        )
        .with_retry_after(Duration::from_secs(1)));
    };
    if merge {
        let merge = MergeRequest {
            prefix,
            resume,
            snapshot,
            slots: Box::new((slot, caller)),
        };
        return watch_merge::merged(&request, &http, &client.0, merge).await;
    }
    // A watch outlives the request that opened it: it ends when its token would be refused.
    let valid_until_ms = match (&auth.claims, request.app_data::<web::Data<AuthGate>>()) {
        (Some(claims), Some(gate)) => gate.valid_until_ms(claims),
        _ => None,
    };
    let mut watch = Watch::begin(state, prefix, keys, resume, snapshot, (slot, caller));
    watch.valid_until_ms = valid_until_ms;
    let body = futures::stream::unfold(watch, |mut watch| async move {
        let chunk = watch.next_chunk().await?;
        Some((Ok::<_, actix_web::Error>(chunk), watch))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // A proxy that buffers answers would hold events back; this asks it not to.
        .insert_header((HeaderName::from_static("x-accel-buffering"), "no"))
        .streaming(body))
}

fn accepts_event_stream(request: &HttpRequest) -> bool {
    request
        .headers()
        .get_all(header::ACCEPT)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|range| {
            range
                .split(';')
                .next()
                .is_some_and(|media| media.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

/// A position as an event id spells it: a consistency token, or [`START_POSITION`].
pub(crate) fn parse_position(text: &str) -> Result<Positions, ApiError> {
    if text == START_POSITION {
        return Ok(Positions::new());
    }
    let token: ConsistencyToken = text.parse().map_err(|_| {
        ApiError::invalid_request(format!(
            "the position to resume from must be an id a watch sent (a consistency token or \
             `{START_POSITION}`), got {:?}",
            text.chars().take(64).collect::<String>()
        ))
    })?;
    Ok(token.offsets().collect())
}

/// Counts an open watch until its stream is dropped, and holds its slots.
#[derive(Debug)]
struct Open {
    _slot: OwnedSemaphorePermit,
    _caller: CallerSlot,
    state: Arc<WatchState>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.state.metrics.open.dec();
    }
}

#[derive(Debug)]
enum Phase {
    /// Sending the entries of the first listing (`snapshot=true`); `after` is where its next page
    /// starts.
    FirstListing {
        at: Arc<FirstListing>,
        after: Option<Vec<u8>>,
    },
    Live,
    Done,
}

/// One watch: where it is in the feed and what it has seen.
#[derive(Debug)]
struct Watch {
    state: Arc<WatchState>,
    prefix: Vec<u8>,
    /// The keys the caller may watch (KV_API_AUTH_PREFIXES): no event or entry of another.
    keys: KeyGrant,
    phase: Phase,
    epoch: u64,
    cursor: u64,
    /// Per partition, the highest offset whose change this watch has passed: its next id.
    seen: Positions,
    /// The feed's position when the last read reached its newest change.
    position_at_head: Option<Positions>,
    head: tokio::sync::watch::Receiver<u64>,
    /// When the watch sends `progress` unless it sent something before.
    progress_at: Instant,
    out: BytesMut,
    batch: Vec<Arc<ChangeEvent>>,
    /// When the token the watch was opened with stops being accepted (its `exp` plus the
    /// leeway); `None` with auth off.
    valid_until_ms: Option<u64>,
    _open: Open,
}

impl Watch {
    fn begin(
        state: Arc<WatchState>,
        prefix: Vec<u8>,
        keys: KeyGrant,
        resume: Option<Positions>,
        snapshot: bool,
        (slot, caller): (OwnedSemaphorePermit, CallerSlot),
    ) -> Self {
        state.metrics.open.inc();
        let (cursor, position, epoch) = state.feed.live();
        let mut watch = Watch {
            head: state.feed.subscribe(),
            _open: Open {
                _slot: slot,
                _caller: caller,
                state: state.clone(),
            },
            state,
            prefix,
            keys,
            phase: Phase::Live,
            epoch,
            cursor,
            seen: position,
            position_at_head: None,
            progress_at: Instant::now() + PROGRESS_INTERVAL,
            out: BytesMut::new(),
            batch: Vec::new(),
            valid_until_ms: None,
        };
        match (resume, snapshot) {
            (Some(seen), _) => match watch.state.feed.resume(&seen) {
                Resume::FromRing { cursor, epoch } => {
                    watch.cursor = cursor;
                    watch.epoch = epoch;
                    watch.seen = seen;
                }
                Resume::TooOld => watch.reset(
                    "this replica no longer holds every change after that position; its \
                     current entries follow",
                ),
            },
            (None, true) => watch.start_first_listing(),
            (None, false) => {
                let id = watch.seen.clone();
                watch.write_progress(&id);
            }
        }
        watch
    }

    /// The next piece of the stream, waiting for changes; `None` once it ends.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if self.out.len() >= CHUNK_BYTES {
                return Some(self.take());
            }
            // Checked before anything is read, so nothing committed after the expiry is sent.
            if self.token_expired() {
                self.end_for_expiry();
            }
            match self.phase {
                Phase::Done => return (!self.out.is_empty()).then(|| self.take()),
                Phase::FirstListing { .. } => self.first_listing_page().await,
                Phase::Live => {
                    // Seen before reading, so a publish after the read wakes the wait below.
                    self.head.borrow_and_update();
                    if self.read_live() {
                        continue;
                    }
                    if !self.out.is_empty() {
                        return Some(self.take());
                    }
                    if Instant::now() >= self.progress_at {
                        if let Some(position) = self.position_at_head.take() {
                            for (partition, offset) in position {
                                raise(&mut self.seen, partition, offset);
                            }
                            let id = self.seen.clone();
                            self.write_progress(&id);
                        }
                        self.progress_at = Instant::now() + PROGRESS_INTERVAL;
                        continue;
                    }
                    let wake = match self.expiry_instant() {
                        Some(expiry) => expiry.min(self.progress_at),
                        None => self.progress_at,
                    };
                    tokio::select! {
                        changed = self.head.changed() => {
                            if changed.is_err() {
                                self.phase = Phase::Done;
                            }
                        }
                        () = tokio::time::sleep_until(wake) => {}
                    }
                }
            }
        }
    }

    fn token_expired(&self) -> bool {
        self.valid_until_ms.is_some_and(|until| now_ms() > until)
    }

    /// When [`Watch::token_expired`] turns true, on the runtime's clock.
    fn expiry_instant(&self) -> Option<Instant> {
        let until = self.valid_until_ms?;
        let left = until.saturating_sub(now_ms()).saturating_add(1);
        Some(Instant::now() + Duration::from_millis(left))
    }

    /// The token is no longer accepted: a last `error` event in the error contract's shape,
    /// and the stream ends, as the Redis port ends a session's rights.
    fn end_for_expiry(&mut self) {
        if matches!(self.phase, Phase::Done) {
            return;
        }
        let error = ApiError::new(
            ErrorCode::Unauthorized,
            "the token this watch was opened with expired; resume with a new token and the \
             last id received as Last-Event-ID",
        );
        let data = error.body().to_string();
        self.write_raw(WatchEvent::Error, None, &data);
        self.phase = Phase::Done;
    }

    fn take(&mut self) -> Bytes {
        self.progress_at = Instant::now() + PROGRESS_INTERVAL;
        self.out.split().freeze()
    }

    /// Reads the changes after the cursor into the output, up to a chunk's worth; whether the
    /// cursor moved or the phase changed.
    fn read_live(&mut self) -> bool {
        let mut batch = std::mem::take(&mut self.batch);
        batch.clear();
        let read = self
            .state
            .feed
            .read(self.cursor, self.epoch, READ_BATCH, &mut batch);
        let moved = match read {
            Read::Closed => {
                self.phase = Phase::Done;
                true
            }
            Read::Reset => {
                self.reset("this replica's store was rebuilt; its current entries follow");
                true
            }
            Read::Overflow => {
                self.overflow();
                true
            }
            Read::Changes { next, position } => {
                let mut passed = 0u64;
                for event in &batch {
                    if self.out.len() >= CHUNK_BYTES {
                        break;
                    }
                    passed += 1;
                    let seen = self.seen.get(&event.partition).copied().unwrap_or(-1);
                    match event.stands_at {
                        None if seen >= event.offset => continue,
                        None => {
                            self.seen.insert(event.partition, event.offset);
                        }
                        // Sent again after a resume at that position: a delete twice is harmless,
                        // a delete missed leaves an expired key in a client's cache for good.
                        Some(at) if seen > at => continue,
                        Some(_) => {}
                    }
                    self.write_change(event);
                }
                let moved = passed > 0;
                self.position_at_head = if self.cursor + passed == next {
                    position
                } else {
                    None
                };
                self.cursor += passed;
                moved
            }
        };
        batch.clear();
        self.batch = batch;
        moved
    }

    /// What the watch had seen is void: `reset`, then the current entries.
    fn reset(&mut self, reason: &str) {
        self.state.metrics.resets.inc();
        self.write_notice(WatchEvent::Reset, reason);
        self.start_first_listing();
    }

    fn overflow(&mut self) {
        self.state.metrics.overflows.inc();
        self.write_notice(
            WatchEvent::Overflow,
            "this watch fell behind the replica's buffer of changes; resume with the last id",
        );
        self.phase = Phase::Done;
    }

    fn start_first_listing(&mut self) {
        self.phase = match self.state.feed.first_listing() {
            Some(at) => Phase::FirstListing { at, after: None },
            None => Phase::Done,
        };
    }

    /// Writes one page of the first listing; after the last, its position as `progress`,
    /// and the watch goes on live from there.
    async fn first_listing_page(&mut self) {
        let Phase::FirstListing { at, after } = &self.phase else {
            return;
        };
        let (at, after) = (at.clone(), after.clone());
        let Some(entries) = at.entries() else {
            // Taken back: the ring moved past it, the store was rebuilt, or the reader closes.
            match self.state.feed.read(at.seq, at.epoch, 0, &mut Vec::new()) {
                Read::Closed => self.phase = Phase::Done,
                Read::Reset => self.reset("this replica's store was rebuilt; its entries follow"),
                _ => self.overflow(),
            }
            return;
        };
        let prefix = self.prefix.clone();
        let page = if self.state.store.is_encrypted() {
            let Ok(_turn) = self
                .state
                .sealed_first_listings
                .clone()
                .acquire_owned()
                .await
            else {
                self.phase = Phase::Done;
                return;
            };
            let store = self.state.store.clone();
            match web::block(move || scan(&store, &entries, &prefix, after.as_deref())).await {
                Ok(page) => page.map_err(|error| error.to_string()),
                Err(error) => Err(error.to_string()),
            }
        } else {
            scan(&self.state.store, &entries, &prefix, after.as_deref())
                .map_err(|error| error.to_string())
        };
        let page = match page {
            Ok(page) => page,
            Err(error) => {
                tracing::error!(%error, "reading a watch's first listing failed; ending it");
                self.phase = Phase::Done;
                return;
            }
        };
        // An entry past its expiry is gone for every read; its purge may not have run yet.
        let now = now_ms();
        for (key, entry) in page.entries.iter().filter(|(_, e)| e.is_live(now)) {
            self.write_entry(key, entry);
        }
        match page.resume_after {
            Some(next) => {
                self.phase = Phase::FirstListing {
                    at,
                    after: Some(next),
                }
            }
            None => {
                self.cursor = at.seq;
                self.epoch = at.epoch;
                self.seen = at.position.clone();
                self.write_progress(&at.position);
                self.phase = Phase::Live;
            }
        }
    }

    fn write_change(&mut self, event: &ChangeEvent) {
        let kind = match event.kind {
            ChangeKind::Put => WatchEvent::Put,
            ChangeKind::Delete => WatchEvent::Delete,
        };
        let mut data = ChangeData::new(
            event.key(),
            event.value(),
            event.partition,
            event.offset,
            event.correlation_id(),
        );
        data.expires_at = event.expires_at_ms;
        data.reason = event.expired.then_some(EXPIRED);
        data.traceparent = event.traceparent.map(|trace| trace.to_string());
        self.write_key_event(event.key(), kind, true, &data);
    }

    /// A first-listing entry: a `put` without an id, since the listing's position is known only
    /// once all of it was sent.
    fn write_entry(&mut self, key: &[u8], entry: &StoredEntry) {
        let mut data = ChangeData::new(
            key,
            Some(&entry.value),
            entry.partition,
            entry.offset,
            entry
                .correlation_id
                .as_deref()
                .filter(|id| id.bytes().all(|b| b.is_ascii_graphic())),
        );
        data.expires_at = entry.expires_at_ms;
        data.traceparent = entry.traceparent.map(|trace| trace.to_string());
        self.write_key_event(key, WatchEvent::Put, false, &data);
    }

    /// Writes a `put` or `delete` of `key` (with the watch's position as its id when `with_id`),
    /// unless the watch does not show that key: the one place that decides, per key, what a
    /// watch sends, for live changes and first listings alike.
    fn write_key_event(
        &mut self,
        key: &[u8],
        kind: WatchEvent,
        with_id: bool,
        data: &ChangeData<'_>,
    ) {
        // Every key a watch sends passes here: its prefix, and the caller's grant for it.
        if !key.starts_with(&self.prefix) || !self.keys.allows(key) {
            return;
        }
        let id = with_id.then(|| position_id(&self.seen));
        self.write_event(kind, id.as_deref(), data);
    }

    fn write_progress(&mut self, position: &Positions) {
        let id = position_id(position);
        self.write_raw(WatchEvent::Progress, Some(&id), "");
    }

    fn write_notice(&mut self, kind: WatchEvent, reason: &str) {
        let data = serde_json::json!({ "reason": reason }).to_string();
        self.write_raw(kind, None, &data);
    }

    fn write_event(&mut self, kind: WatchEvent, id: Option<&str>, data: &ChangeData<'_>) {
        self.write_head(kind, id);
        // Serializing these fields cannot fail, and JSON text never holds a raw line break.
        let _ = serde_json::to_writer((&mut self.out).writer(), data);
        self.out.put_slice(b"\n\n");
    }

    fn write_raw(&mut self, kind: WatchEvent, id: Option<&str>, data: &str) {
        self.write_head(kind, id);
        self.out.put_slice(data.as_bytes());
        self.out.put_slice(b"\n\n");
    }

    fn write_head(&mut self, kind: WatchEvent, id: Option<&str>) {
        self.state.metrics.count(kind);
        self.out.put_slice(b"event: ");
        self.out.put_slice(kind.name().as_bytes());
        if let Some(id) = id {
            self.out.put_slice(b"\nid: ");
            self.out.put_slice(id.as_bytes());
        }
        self.out.put_slice(b"\ndata: ");
    }
}

fn scan(
    store: &Store,
    view: &ReadView,
    prefix: &[u8],
    after: Option<&[u8]>,
) -> Result<ScanPage, StoreError> {
    store.scan(
        view,
        prefix,
        after,
        LISTING_PAGE_ENTRIES,
        LISTING_PAGE_BYTES,
    )
}

fn raise(positions: &mut Positions, partition: i32, offset: i64) {
    let at = positions.entry(partition).or_insert(offset);
    *at = (*at).max(offset);
}

/// A position as an event id: its consistency token, or [`START_POSITION`] before anything.
pub(crate) fn position_id(position: &Positions) -> String {
    if position.is_empty() {
        return START_POSITION.to_owned();
    }
    ConsistencyToken::from_positions(
        position
            .iter()
            .map(|(&partition, &offset)| RecordPosition { partition, offset }),
    )
    .to_string()
}

/// The data of a `put` or `delete`: text fields when the bytes are UTF-8, else base64.
#[derive(Debug, Serialize)]
struct ChangeData<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_b64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_b64: Option<String>,
    partition: i32,
    offset: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_id: Option<&'a str>,
    /// The span of the request that wrote the put or the delete (W3C `traceparent`), when its
    /// record carried a valid one.
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<String>,
    /// When a put's value expires, in milliseconds since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<u64>,
    /// Why a delete happened when no client asked for it: [`EXPIRED`].
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

/// The `reason` of a `delete` because the key's TTL passed.
const EXPIRED: &str = "expired";

impl<'a> ChangeData<'a> {
    fn new(
        key: &'a [u8],
        value: Option<&'a [u8]>,
        partition: i32,
        offset: i64,
        correlation_id: Option<&'a str>,
    ) -> Self {
        let (key, key_b64) = text_or_base64(key);
        let (value, value_b64) = match value {
            Some(value) => text_or_base64(value),
            None => (None, None),
        };
        Self {
            key,
            key_b64,
            value,
            value_b64,
            partition,
            offset,
            correlation_id,
            traceparent: None,
            expires_at: None,
            reason: None,
        }
    }
}

fn text_or_base64(bytes: &[u8]) -> (Option<&str>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (Some(text), None),
        Err(_) => (None, Some(BASE64.encode(bytes))),
    }
}

/// Ends every watch when the process is told to stop, so that the HTTP server's graceful
/// shutdown is not held up by streams that never end; clients resume elsewhere with their ids.
pub fn end_watches_on_shutdown(feed: Arc<ChangeFeed>) {
    tokio::spawn(async move {
        let Ok(mut terminate) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return;
        };
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        feed.close();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_is_spelled_as_a_consistency_token_or_start_before_anything() {
        assert_eq!(position_id(&Positions::new()), "start");
        let position = Positions::from([(0, 41), (2, 7)]);
        assert_eq!(position_id(&position), "0:41,2:7");
        assert_eq!(parse_position("0:41,2:7").expect("token"), position);
        assert_eq!(parse_position("start").expect("start"), Positions::new());
        for bad in ["0:-1", "x", "0:1,"] {
            let error = parse_position(bad).expect_err(bad);
            assert_eq!(error.code, ErrorCode::InvalidRequest);
        }
    }

    #[test]
    fn a_change_names_its_bytes_as_text_when_they_are_utf8_and_in_base64_otherwise() {
        let data = ChangeData::new(b"users/ada", Some(&[0xff, 0x00]), 1, 7, Some("c-1"));
        assert_eq!(
            serde_json::to_value(&data).expect("json"),
            serde_json::json!({"key": "users/ada", "value_b64": "/wA=", "partition": 1,
                               "offset": 7, "correlation_id": "c-1"})
        );
        let delete = ChangeData::new(&[0xfe], None, 0, 3, None);
        assert_eq!(
            serde_json::to_value(&delete).expect("json"),
            serde_json::json!({"key_b64": "/g==", "partition": 0, "offset": 3})
        );
    }

    #[test]
    fn only_an_explicit_event_stream_accept_header_opens_a_watch() {
        let accepts = |value: &str| {
            let request = actix_web::test::TestRequest::default()
                .insert_header((header::ACCEPT, value))
                .to_http_request();
            accepts_event_stream(&request)
        };
        assert!(accepts("text/event-stream"));
        assert!(accepts("application/json, Text/Event-Stream; q=0.5"));
        assert!(!accepts("*/*"));
        assert!(!accepts("application/json"));
    }
}
