//! The change feed: every change the replica committed, in the order it applied them, kept in a
//! bounded ring that the watches (`crate::http::watch`) read at their own pace.
//!
//! The consumer thread publishes each batch right after its redb commit, so a change is in the
//! feed only once a read would find it. Publishing never waits for a watch: the ring is bounded
//! by count and bytes and drops its oldest changes; a watch whose next change was dropped learns
//! it on its next read (overflow). Watches hold a cursor into the ring, not a queue of their own,
//! so a slow watch costs no memory.
//!
//! Positions are what the replica had applied, per partition (the consistency-token form): the
//! feed's `position` after each batch, and its `horizon`, the highest offset per partition whose
//! change may be missing from the ring (dropped, or applied before the replica started). A
//! resume from a position at or past the horizon on every partition can be served from the ring
//! exactly; any other gets a reset and a first listing.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use kv_core::trace_context::TraceParent;
use tokio::sync::watch;

use crate::settings::WatchSettings;
use crate::store::{Change, Precondition, Purged, ReadView, Store};

/// Highest applied offset per partition; a partition that is absent had nothing applied.
pub type Positions = BTreeMap<i32, i64>;

/// What a change's record carried besides its change: where it landed and its correlation id.
pub type Origin<'m> = (i32, i64, Option<&'m [u8]>);

/// What a ring entry costs beyond its bytes (the event, its `Arc`, the ring's slot).
const EVENT_OVERHEAD: usize = 96;
/// Longest correlation id an event carries, as the store keeps it.
const MAX_CORRELATION_ID: usize = u8::MAX as usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Put,
    Delete,
}

/// One committed change. The key and value are the user's, in clear: on an encrypted topic the
/// record key is a MAC and a tombstone names only that; the store told which entry it removed.
#[derive(Debug)]
pub struct ChangeEvent {
    pub kind: ChangeKind,
    pub partition: i32,
    /// The record's offset; for a delete at expiry, the put that expired.
    pub offset: i64,
    /// A put's expiry, in milliseconds since the Unix epoch.
    pub expires_at_ms: Option<u64>,
    /// A delete because the key's TTL passed: a purge, the sweeper's tombstone, or a put
    /// applied after its expiry.
    pub expired: bool,
    /// Set when the change does not move a watch's position to `offset`: a purge (no record
    /// of it, on a replica that is not the sweeper) or a change past a record held back
    /// (`replica::refusals`). It stands at this offset of its partition: a watch that has seen
    /// past it has seen it, any other is sent it (a delete sent twice is harmless).
    pub stands_at: Option<i64>,
    /// A put's writing request's span, from its record's valid `traceparent`.
    pub traceparent: Option<TraceParent>,
    /// The key, then the value, then the correlation id, in one allocation.
    bytes: Box<[u8]>,
    key_len: usize,
    value_len: usize,
}

/// What a published change is besides its record: its kind, key, value and the rest of
/// [`ChangeEvent`]'s fields.
#[derive(Debug, Clone, Copy)]
struct Shape<'c> {
    kind: ChangeKind,
    key: &'c [u8],
    value: &'c [u8],
    expires_at_ms: Option<u64>,
    expired: bool,
    stands_at: Option<i64>,
    traceparent: Option<TraceParent>,
}

/// The offset past which a watch has seen a change at `offset` standing at `stands_at`: the
/// ring's horizon, once the change is dropped, is raised to it.
fn seen_past(offset: i64, stands_at: Option<i64>) -> i64 {
    stands_at.map_or(offset, |at| at + 1)
}

impl ChangeEvent {
    fn new((partition, offset, correlation_id): Origin<'_>, shape: Shape<'_>) -> Self {
        let Shape {
            kind,
            key,
            value,
            expires_at_ms,
            expired,
            stands_at,
            traceparent,
        } = shape;
        let correlation_id = correlation_id
            .filter(|id| id.iter().all(u8::is_ascii_graphic))
            .map_or(&[][..], |id| &id[..id.len().min(MAX_CORRELATION_ID)]);
        let mut bytes = Vec::with_capacity(key.len() + value.len() + correlation_id.len());
        bytes.extend_from_slice(key);
        bytes.extend_from_slice(value);
        bytes.extend_from_slice(correlation_id);
        Self {
            kind,
            partition,
            offset,
            expires_at_ms,
            expired,
            stands_at,
            traceparent,
            bytes: bytes.into_boxed_slice(),
            key_len: key.len(),
            value_len: value.len(),
        }
    }

    pub fn key(&self) -> &[u8] {
        &self.bytes[..self.key_len]
    }

    /// The value a put stored; `None` for a delete.
    pub fn value(&self) -> Option<&[u8]> {
        (self.kind == ChangeKind::Put).then(|| &self.bytes[self.key_len..][..self.value_len])
    }

    /// The write's correlation id, when it was one a header may carry.
    pub fn correlation_id(&self) -> Option<&str> {
        let id = &self.bytes[self.key_len + self.value_len..];
        std::str::from_utf8(id).ok().filter(|id| !id.is_empty())
    }

    fn cost(&self) -> usize {
        self.bytes.len() + EVENT_OVERHEAD
    }
}

/// What one committed batch came to, besides its changes: the tombstones that removed an entry
/// (as [`Store::apply_at`] answered), the puts that did not take effect (in index order), the
/// next offset of every partition the batch read that the replica stored (never past a record
/// held back), and the time the batch was applied at.
#[derive(Debug)]
pub struct Committed<'a> {
    pub removed: &'a [(usize, Vec<u8>)],
    pub not_applied: &'a [usize],
    pub durable: &'a BTreeMap<i32, i64>,
    pub now_ms: u64,
}

/// A watch's first listing (`snapshot=true` in the API): a committed read view of the store
/// with the position it holds and where the ring continues after it. The feed takes it back
/// (`entries` becomes `None`) once the ring dropped a change after it: a listing that cannot be
/// continued is no use, and it pins pages in redb.
#[derive(Debug)]
pub struct FirstListing {
    entries: Mutex<Option<ReadView>>,
    pub position: Positions,
    /// The sequence number of the first change after the listing's view.
    pub seq: u64,
    pub epoch: u64,
}

impl FirstListing {
    /// The state, unless the feed took it back.
    pub fn entries(&self) -> Option<ReadView> {
        lock(&self.entries).clone()
    }
}

/// What a watch reads from its cursor.
#[derive(Debug)]
pub enum Read {
    /// The changes from the cursor on (possibly none) and the cursor after them; `position` is
    /// the feed's when the changes reach the newest, for a progress event.
    Changes {
        next: u64,
        position: Option<Positions>,
    },
    /// The change at the cursor was dropped from the ring.
    Overflow,
    /// The store was rebuilt since the watch began: what it had seen is void.
    Reset,
    /// The reader is shutting down.
    Closed,
}

/// How a watch resuming from a position starts.
#[derive(Debug)]
pub enum Resume {
    /// From this cursor, skipping changes at or below the position.
    FromRing { cursor: u64, epoch: u64 },
    /// The ring no longer holds every change after the position.
    TooOld,
}

#[derive(Debug)]
struct Ring {
    events: VecDeque<Arc<ChangeEvent>>,
    /// The sequence number of `events[0]`.
    first_seq: u64,
    bytes: usize,
    position: Positions,
    horizon: Positions,
    /// Counts rebuilds of the store: every watch begun before one is reset.
    epoch: u64,
    started: bool,
    closed: bool,
    latest: Option<Arc<FirstListing>>,
    /// First listings handed out, to take back when the ring passes them.
    leases: Vec<Weak<FirstListing>>,
}

impl Ring {
    fn head(&self) -> u64 {
        self.first_seq + self.events.len() as u64
    }

    fn evict_front(&mut self) {
        if let Some(event) = self.events.pop_front() {
            self.bytes -= event.cost();
            self.first_seq += 1;
            raise(
                &mut self.horizon,
                event.partition,
                seen_past(event.offset, event.stands_at),
            );
        }
    }

    /// Takes back every first listing the ring can no longer continue (all of them with `all`).
    fn revoke_leases(&mut self, all: bool) {
        let first = self.first_seq;
        self.leases.retain(|lease| match lease.upgrade() {
            Some(snapshot) if all || snapshot.seq < first => {
                lock(&snapshot.entries).take();
                false
            }
            Some(_) => true,
            None => false,
        });
    }
}

fn raise(positions: &mut Positions, partition: i32, offset: i64) {
    let at = positions.entry(partition).or_insert(offset);
    *at = (*at).max(offset);
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether a watch that has seen everything up to `seen` misses nothing the ring dropped.
fn covers(horizon: &Positions, seen: &Positions) -> bool {
    horizon
        .iter()
        .all(|(partition, &offset)| seen.get(partition).copied().unwrap_or(-1) >= offset)
}

#[derive(Debug)]
pub struct ChangeFeed {
    ring: Mutex<Ring>,
    /// The ring's head after every publish, and on rebuilds and shutdown: watches wait on it.
    head: watch::Sender<u64>,
    store: Arc<Store>,
    max_events: usize,
    max_bytes: usize,
}

impl ChangeFeed {
    pub fn new(settings: &WatchSettings, store: Arc<Store>) -> Self {
        Self {
            ring: Mutex::new(Ring {
                events: VecDeque::new(),
                first_seq: 0,
                bytes: 0,
                position: Positions::new(),
                horizon: Positions::new(),
                epoch: 0,
                started: false,
                closed: false,
                latest: None,
                leases: Vec::new(),
            }),
            head: watch::Sender::new(0),
            store,
            max_events: settings.buffer_events,
            max_bytes: settings.buffer_bytes,
        }
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        lock(&self.ring)
    }

    /// Called by the consumer when it assigns the topic's partitions, with the next offset of
    /// each: at start-up, and after a rebuild, which voids what every watch had seen.
    pub fn restart(&self, next_offsets: impl IntoIterator<Item = (i32, i64)>) {
        let start: Positions = next_offsets
            .into_iter()
            .filter(|&(_, next)| next > 0)
            .map(|(partition, next)| (partition, next - 1))
            .collect();
        let snapshot = self.capture();
        let mut ring = self.ring();
        if ring.started {
            ring.epoch += 1;
            let previous = std::mem::take(&mut ring.position);
            for (partition, offset) in previous {
                raise(&mut ring.horizon, partition, offset);
            }
            ring.revoke_leases(true);
        }
        while !ring.events.is_empty() {
            ring.evict_front();
        }
        for (&partition, &offset) in &start {
            raise(&mut ring.horizon, partition, offset);
        }
        ring.position = start;
        ring.started = true;
        self.set_latest(&mut ring, snapshot);
        let head = ring.head();
        drop(ring);
        self.head.send_replace(head);
    }

    /// Called by the consumer right after a batch committed: its changes (with the record
    /// each came from) and what they came to.
    pub fn publish(
        &self,
        changes: &[Change<'_>],
        origins: &[Origin<'_>],
        committed: &Committed<'_>,
    ) {
        let mut removed = committed.removed.iter().peekable();
        let mut not_applied = committed.not_applied.iter().peekable();
        let mut published = Vec::new();
        for (index, (change, &origin)) in changes.iter().zip(origins).enumerate() {
            let (partition, offset, _) = origin;
            // A change past a record held back is applied, but the position stays before
            // that record until it is applied too.
            let stands_at = committed
                .durable
                .get(&partition)
                .filter(|&&next| offset >= next)
                .map(|next| next - 1);
            let shape = match change {
                Change::Put { .. } if not_applied.next_if(|at| **at == index).is_some() => continue,
                Change::Put {
                    user_key,
                    value,
                    expires_at_ms,
                    traceparent,
                    ..
                } => match expires_at_ms {
                    // The store holds it as deleted (or, on a swept partition, hidden until the
                    // sweeper's tombstone): to a watch it is a delete.
                    Some(at) if *at <= committed.now_ms => Shape {
                        kind: ChangeKind::Delete,
                        key: user_key.as_ref(),
                        value: &[],
                        expires_at_ms: None,
                        expired: true,
                        stands_at,
                        traceparent: None,
                    },
                    _ => Shape {
                        kind: ChangeKind::Put,
                        key: user_key.as_ref(),
                        value: value.as_ref(),
                        expires_at_ms: *expires_at_ms,
                        expired: false,
                        stands_at,
                        traceparent: *traceparent,
                    },
                },
                Change::Delete {
                    precondition,
                    traceparent,
                    ..
                } => {
                    let Some((_, key)) = removed.next_if(|(at, _)| *at == index) else {
                        continue;
                    };
                    Shape {
                        kind: ChangeKind::Delete,
                        key: key.as_slice(),
                        value: &[],
                        expires_at_ms: None,
                        expired: matches!(precondition, Some(Precondition::Expires(_))),
                        stands_at,
                        traceparent: *traceparent,
                    }
                }
                // Reports, ticks and sink marks are never entries.
                Change::Report { .. } | Change::Tick { .. } | Change::SinkDone { .. } => continue,
            };
            published.push((origin, shape));
        }
        self.append(&published, committed.durable);
    }

    /// Called by the consumer after a purge removed expired entries: a `delete` for each,
    /// standing at the position the replica had reached (there is no record of it).
    pub fn publish_expired(&self, purged: &[Purged]) {
        if purged.is_empty() {
            return;
        }
        // Only the consumer thread publishes, so the position holds until the append below.
        let position = self.ring().position.clone();
        let published: Vec<(Origin<'_>, Shape<'_>)> = purged
            .iter()
            .map(|entry| {
                let shape = Shape {
                    kind: ChangeKind::Delete,
                    key: &entry.user_key,
                    value: &[],
                    expires_at_ms: None,
                    expired: true,
                    stands_at: Some(position.get(&entry.partition).copied().unwrap_or(-1)),
                    traceparent: None,
                };
                ((entry.partition, entry.offset, None), shape)
            })
            .collect();
        self.append(&published, &BTreeMap::new());
    }

    /// Appends `published` to the ring, moves the position to `next_offsets`, and wakes the
    /// watches.
    fn append(&self, published: &[(Origin<'_>, Shape<'_>)], next_offsets: &BTreeMap<i32, i64>) {
        // A batch larger than the ring keeps only its newest changes; the rest are dropped at
        // once, so replaying a large topic copies no more than the ring holds.
        let dropped = published.len().saturating_sub(self.max_events);
        let events: Vec<Arc<ChangeEvent>> = published[dropped..]
            .iter()
            .map(|&(origin, shape)| Arc::new(ChangeEvent::new(origin, shape)))
            .collect();
        let snapshot = self.capture();
        let mut ring = self.ring();
        if dropped > 0 {
            while !ring.events.is_empty() {
                ring.evict_front();
            }
            ring.first_seq += dropped as u64;
            for &((partition, offset, _), shape) in &published[..dropped] {
                raise(
                    &mut ring.horizon,
                    partition,
                    seen_past(offset, shape.stands_at),
                );
            }
        }
        for event in events {
            ring.bytes += event.cost();
            ring.events.push_back(event);
        }
        while ring.events.len() > self.max_events
            || (ring.bytes > self.max_bytes && ring.events.len() > 1)
        {
            ring.evict_front();
        }
        // A partition whose first record is held back has applied nothing yet.
        for (&partition, &next) in next_offsets.iter().filter(|(_, &next)| next > 0) {
            ring.position.insert(partition, next - 1);
        }
        ring.revoke_leases(false);
        self.set_latest(&mut ring, snapshot);
        let head = ring.head();
        drop(ring);
        if !published.is_empty() {
            self.head.send_replace(head);
        }
    }

    /// The store's state as this batch left it: only the consumer thread commits, and it is
    /// the one asking.
    fn capture(&self) -> Option<ReadView> {
        match self.store.read_view() {
            Ok(snapshot) => Some(snapshot),
            Err(error) => {
                tracing::warn!(%error, "cannot open a read view for watches' first listings");
                None
            }
        }
    }

    fn set_latest(&self, ring: &mut Ring, snapshot: Option<ReadView>) {
        ring.latest = Some(Arc::new(FirstListing {
            entries: Mutex::new(snapshot),
            position: ring.position.clone(),
            seq: ring.head(),
            epoch: ring.epoch,
        }));
    }

    /// Ends every watch: the reader is shutting down.
    pub fn close(&self) {
        let mut ring = self.ring();
        ring.closed = true;
        ring.revoke_leases(true);
        ring.latest = None;
        let head = ring.head();
        drop(ring);
        self.head.send_replace(head);
    }

    /// Whether the consumer assigned the topic's partitions yet.
    pub fn started(&self) -> bool {
        self.ring().started
    }

    /// A receiver told of every publish, for a watch to wait on.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// Where a watch that wants only what comes next starts: the ring's head, the feed's
    /// position and epoch.
    pub fn live(&self) -> (u64, Positions, u64) {
        let ring = self.ring();
        (ring.head(), ring.position.clone(), ring.epoch)
    }

    /// Where a watch that has seen everything up to `seen` (on any replica) starts.
    pub fn resume(&self, seen: &Positions) -> Resume {
        let ring = self.ring();
        if covers(&ring.horizon, seen) {
            Resume::FromRing {
                cursor: ring.first_seq,
                epoch: ring.epoch,
            }
        } else {
            Resume::TooOld
        }
    }

    /// The newest committed state, with its position and where the ring continues after it;
    /// `None` once the reader is shutting down.
    pub fn first_listing(&self) -> Option<Arc<FirstListing>> {
        let mut ring = self.ring();
        let latest = ring.latest.clone()?;
        if !ring
            .leases
            .iter()
            .any(|lease| lease.as_ptr() == Arc::as_ptr(&latest))
        {
            ring.leases.push(Arc::downgrade(&latest));
        }
        Some(latest)
    }

    /// Appends to `out` the changes from `cursor` on, at most `max` of them, unless the ring
    /// dropped the one at `cursor`, the store was rebuilt since `epoch`, or the reader closes.
    pub fn read(
        &self,
        cursor: u64,
        epoch: u64,
        max: usize,
        out: &mut Vec<Arc<ChangeEvent>>,
    ) -> Read {
        let ring = self.ring();
        if ring.closed {
            return Read::Closed;
        }
        if ring.epoch != epoch {
            return Read::Reset;
        }
        if cursor < ring.first_seq {
            return Read::Overflow;
        }
        let from = (cursor - ring.first_seq) as usize;
        out.extend(
            ring.events
                .range(from.min(ring.events.len())..)
                .take(max)
                .cloned(),
        );
        let next = cursor + (ring.head() - cursor).min(max as u64);
        Read::Changes {
            next,
            position: (next == ring.head()).then(|| ring.position.clone()),
        }
    }

    /// Changes the ring holds and their cost in bytes.
    pub fn held(&self) -> (usize, usize) {
        let ring = self.ring();
        (ring.events.len(), ring.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    use crate::settings::Storage;

    fn feed(events: usize, bytes: usize) -> ChangeFeed {
        let store = Arc::new(Store::open(&Storage::Memory, None).expect("store"));
        let feed = ChangeFeed::new(
            &WatchSettings {
                buffer_events: events,
                buffer_bytes: bytes,
                max_watches: 1,
                max_watches_per_caller: 1,
            },
            store,
        );
        feed.restart([(0, 0), (1, 0)]);
        feed
    }

    fn put<'a>(key: &'a [u8], partition: i32, offset: i64) -> Change<'a> {
        Change::Put {
            record_key: key,
            user_key: Cow::Borrowed(key),
            partition,
            offset,
            correlation_id: None,
            traceparent: None,
            value: Cow::Borrowed(b"v"),
            expires_at_ms: None,
            precondition: None,
            decided: None,
        }
    }

    fn committed<'a>(
        removed: &'a [(usize, Vec<u8>)],
        durable: &'a BTreeMap<i32, i64>,
    ) -> Committed<'a> {
        Committed {
            removed,
            not_applied: &[],
            durable,
            now_ms: 0,
        }
    }

    fn shape<'a>(key: &'a [u8], value: &'a [u8]) -> Shape<'a> {
        Shape {
            kind: ChangeKind::Put,
            key,
            value,
            expires_at_ms: None,
            expired: false,
            stands_at: None,
            traceparent: None,
        }
    }

    /// Publishes puts of `(key, partition, offset)` as one batch.
    fn publish(feed: &ChangeFeed, puts: &[(&'static [u8], i32, i64)]) {
        let changes: Vec<Change<'_>> = puts.iter().map(|&(k, p, o)| put(k, p, o)).collect();
        let origins: Vec<Origin<'_>> = puts.iter().map(|&(_, p, o)| (p, o, None)).collect();
        let mut next = BTreeMap::new();
        for &(_, p, o) in puts {
            next.insert(p, o + 1);
        }
        feed.publish(&changes, &origins, &committed(&[], &next));
    }

    fn read_all(feed: &ChangeFeed, cursor: u64) -> (Vec<(i32, i64)>, Read) {
        let mut out = Vec::new();
        let read = feed.read(cursor, 0, usize::MAX, &mut out);
        (out.iter().map(|e| (e.partition, e.offset)).collect(), read)
    }

    #[test]
    fn a_watch_reads_the_changes_after_its_cursor_in_the_order_they_were_applied() {
        let feed = feed(100, 1 << 20);
        let (cursor, position, _) = feed.live();
        assert!(position.is_empty());
        publish(&feed, &[(b"a", 0, 0), (b"b", 1, 0), (b"c", 0, 1)]);
        let (changes, read) = read_all(&feed, cursor);
        assert_eq!(changes, vec![(0, 0), (1, 0), (0, 1)]);
        match read {
            Read::Changes { next, position } => {
                assert_eq!(next, cursor + 3);
                assert_eq!(position, Some(Positions::from([(0, 1), (1, 0)])));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_ring_drops_its_oldest_changes_past_its_count_or_bytes_and_a_watch_behind_them_overflows()
    {
        let feed = feed(2, 1 << 20);
        let (cursor, ..) = feed.live();
        publish(&feed, &[(b"a", 0, 0), (b"b", 0, 1), (b"c", 0, 2)]);
        assert_eq!(feed.held().0, 2);
        assert!(matches!(read_all(&feed, cursor).1, Read::Overflow));
        assert_eq!(read_all(&feed, cursor + 1).0, vec![(0, 1), (0, 2)]);

        let small = feed_with_bytes(2 * (EVENT_OVERHEAD + 2));
        publish(&small, &[(b"a", 0, 0), (b"b", 0, 1), (b"c", 0, 2)]);
        assert_eq!(small.held().0, 2, "{:?}", small.held());
        let tiny = feed_with_bytes(1);
        publish(&tiny, &[(b"a", 0, 0), (b"b", 0, 1)]);
        assert_eq!(tiny.held().0, 1, "the newest change is always kept");
    }

    fn feed_with_bytes(bytes: usize) -> ChangeFeed {
        feed(100, bytes)
    }

    #[test]
    fn a_resume_is_served_from_the_ring_only_from_a_position_past_every_dropped_change() {
        let feed = feed(2, 1 << 20);
        publish(
            &feed,
            &[(b"a", 0, 0), (b"b", 1, 0), (b"c", 0, 1), (b"d", 0, 2)],
        );
        // (0, 0) and (1, 0) were dropped.
        for seen in [
            Positions::new(),
            Positions::from([(0, 5)]),
            Positions::from([(1, 0)]),
        ] {
            assert!(matches!(feed.resume(&seen), Resume::TooOld), "{seen:?}");
        }
        let Resume::FromRing { cursor, .. } = feed.resume(&Positions::from([(0, 0), (1, 0)]))
        else {
            panic!("covered");
        };
        assert_eq!(read_all(&feed, cursor).0, vec![(0, 1), (0, 2)]);
    }

    #[test]
    fn a_replica_that_resumed_from_its_store_cannot_replay_what_it_applied_before() {
        let feed = feed(10, 1 << 20);
        feed.restart([(0, 40), (1, 0)]);
        assert!(matches!(
            feed.resume(&Positions::from([(0, 38)])),
            Resume::TooOld
        ));
        assert!(matches!(
            feed.resume(&Positions::from([(0, 39)])),
            Resume::FromRing { .. }
        ));
    }

    #[test]
    fn a_batch_larger_than_the_ring_keeps_its_newest_changes() {
        let feed = feed(2, 1 << 20);
        let (cursor, ..) = feed.live();
        publish(
            &feed,
            &[(b"a", 0, 0), (b"b", 0, 1), (b"c", 0, 2), (b"d", 1, 0)],
        );
        assert!(matches!(read_all(&feed, cursor).1, Read::Overflow));
        assert_eq!(read_all(&feed, cursor + 2).0, vec![(0, 2), (1, 0)]);
        assert!(matches!(
            feed.resume(&Positions::from([(0, 0)])),
            Resume::TooOld
        ));
        assert!(matches!(
            feed.resume(&Positions::from([(0, 1)])),
            Resume::FromRing { .. }
        ));
    }

    #[test]
    fn a_rebuild_resets_every_watch_and_takes_back_their_first_listings() {
        let feed = feed(10, 1 << 20);
        publish(&feed, &[(b"a", 0, 0)]);
        let (cursor, _, epoch) = feed.live();
        let snapshot = feed.first_listing().expect("a first listing");
        assert!(snapshot.entries().is_some());
        assert_eq!(snapshot.position, Positions::from([(0, 0)]));
        feed.restart([(0, 0)]);
        let mut out = Vec::new();
        assert!(matches!(
            feed.read(cursor, epoch, 10, &mut out),
            Read::Reset
        ));
        assert!(snapshot.entries().is_none());
        assert!(matches!(
            feed.resume(&Positions::from([(0, 0)])),
            Resume::FromRing { .. }
        ));
        assert!(matches!(feed.resume(&Positions::new()), Resume::TooOld));
    }

    #[test]
    fn a_first_listing_is_taken_back_once_the_ring_drops_a_change_after_it() {
        let feed = feed(1, 1 << 20);
        let snapshot = feed.first_listing().expect("a first listing");
        publish(&feed, &[(b"a", 0, 0)]);
        assert!(snapshot.entries().is_some(), "the ring still continues it");
        publish(&feed, &[(b"b", 0, 1)]);
        assert!(snapshot.entries().is_none());
    }

    #[test]
    fn a_delete_is_published_with_the_user_key_the_store_removed_and_never_the_record_key() {
        let feed = feed(10, 1 << 20);
        let (cursor, ..) = feed.live();
        let changes = [
            Change::Delete {
                record_key: b"mac-1",
                user_key: None,
                partition: 0,
                offset: 0,
                traceparent: None,
                precondition: None,
                decided: None,
            },
            Change::Delete {
                record_key: b"mac-2",
                user_key: None,
                partition: 0,
                offset: 0,
                traceparent: None,
                precondition: None,
                decided: None,
            },
        ];
        let origins = [(0, 5, Some(&b"corr"[..])), (0, 6, None)];
        feed.publish(
            &changes,
            &origins,
            &committed(&[(1, b"user-2".to_vec())], &BTreeMap::from([(0, 7)])),
        );
        let mut out = Vec::new();
        feed.read(cursor, 0, 10, &mut out);
        assert_eq!(
            out.len(),
            1,
            "a tombstone that removed nothing is no change"
        );
        assert_eq!(out[0].kind, ChangeKind::Delete);
        assert_eq!(out[0].key(), b"user-2");
        assert_eq!((out[0].partition, out[0].offset), (0, 6));
        assert_eq!(out[0].value(), None);
    }

    #[test]
    fn a_purge_is_a_delete_at_expiry_standing_at_the_position_and_its_loss_voids_that_position() {
        let feed = feed(1, 1 << 20);
        publish(&feed, &[(b"a", 0, 4)]);
        let (cursor, ..) = feed.live();
        feed.publish_expired(&[Purged {
            user_key: b"a".to_vec(),
            partition: 0,
            offset: 4,
        }]);
        let mut out = Vec::new();
        feed.read(cursor, 0, 10, &mut out);
        assert_eq!(out.len(), 1);
        let event = &out[0];
        assert_eq!(
            (event.kind, event.key(), event.offset, event.expired),
            (ChangeKind::Delete, &b"a"[..], 4, true)
        );
        assert_eq!(event.stands_at, Some(4), "no record: where the replica was");
        assert_eq!(
            feed.live().1,
            Positions::from([(0, 4)]),
            "the position stays"
        );
        publish(&feed, &[(b"b", 0, 5)]);
        assert!(
            matches!(feed.resume(&Positions::from([(0, 4)])), Resume::TooOld),
            "a watch at 0:4 may not have had the dropped delete"
        );
    }

    #[test]
    fn a_put_already_expired_is_a_delete_and_a_change_past_a_held_record_moves_no_position() {
        let feed = feed(10, 1 << 20);
        let (cursor, ..) = feed.live();
        let mut expired = put(b"gone", 0, 3);
        if let Change::Put { expires_at_ms, .. } = &mut expired {
            *expires_at_ms = Some(99);
        }
        let changes = [put(b"a", 0, 2), expired, put(b"c", 1, 8)];
        let origins = [(0, 2, None), (0, 3, None), (1, 8, None)];
        let durable = BTreeMap::from([(0, 3), (1, 9)]);
        let committed = Committed {
            removed: &[],
            not_applied: &[],
            durable: &durable,
            now_ms: 100,
        };
        feed.publish(&changes, &origins, &committed);
        let mut out = Vec::new();
        feed.read(cursor, 0, 10, &mut out);
        let seen: Vec<_> = out
            .iter()
            .map(|e| (e.kind, e.offset, e.expired, e.stands_at))
            .collect();
        assert_eq!(
            seen,
            vec![
                (ChangeKind::Put, 2, false, None),
                (ChangeKind::Delete, 3, true, Some(2)),
                (ChangeKind::Put, 8, false, None),
            ]
        );
        assert_eq!(feed.live().1, Positions::from([(0, 2), (1, 8)]));
    }

    #[test]
    fn an_event_keeps_only_a_correlation_id_a_header_may_carry() {
        let event = ChangeEvent::new((0, 0, Some(b"id-1")), shape(b"k", b"v"));
        assert_eq!(
            (event.key(), event.value(), event.correlation_id()),
            (&b"k"[..], Some(&b"v"[..]), Some("id-1"))
        );
        let bad = ChangeEvent::new((0, 0, Some(b"a\nb")), shape(b"k", b"v"));
        assert_eq!(bad.correlation_id(), None);
    }

    #[test]
    fn a_delete_event_carries_the_trace_of_the_request_that_deleted() {
        let feed = feed(16, 1 << 20);
        let trace = TraceParent::start();
        let changes = [Change::Delete {
            record_key: b"gone",
            user_key: Some(b"gone"),
            partition: 0,
            offset: 0,
            traceparent: Some(trace),
            precondition: None,
            decided: None,
        }];
        feed.publish(
            &changes,
            &[(0, 0, None)],
            &committed(&[(0, b"gone".to_vec())], &BTreeMap::from([(0, 1)])),
        );
        let mut events = Vec::new();
        feed.read(0, 0, 16, &mut events);
        let seen: Vec<_> = events.iter().map(|e| (e.kind, e.traceparent)).collect();
        assert_eq!(seen, [(ChangeKind::Delete, Some(trace))]);
    }

    #[test]
    fn a_put_event_carries_its_writes_trace_and_a_put_expired_on_apply_does_not() {
        let feed = feed(16, 1 << 20);
        let trace = TraceParent::start();
        let traced = |key: &'static [u8], offset, expires_at_ms| {
            let mut change = put(key, 0, offset);
            if let Change::Put {
                traceparent,
                expires_at_ms: expires,
                ..
            } = &mut change
            {
                *traceparent = Some(trace);
                *expires = expires_at_ms;
            }
            change
        };
        let changes = [traced(b"live", 0, None), traced(b"gone", 1, Some(1))];
        let durable = BTreeMap::from([(0, 2)]);
        let committed = Committed {
            now_ms: 2,
            ..committed(&[], &durable)
        };
        feed.publish(&changes, &[(0, 0, None), (0, 1, None)], &committed);
        let mut events = Vec::new();
        feed.read(0, 0, 16, &mut events);
        let seen: Vec<_> = events
            .iter()
            .map(|event| (event.key(), event.kind, event.traceparent))
            .collect();
        assert_eq!(
            seen,
            [
                (&b"live"[..], ChangeKind::Put, Some(trace)),
                (&b"gone"[..], ChangeKind::Delete, None),
            ]
        );
    }
}
