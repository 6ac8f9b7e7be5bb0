//! What the consumer thread tells the HTTP handlers: how far each partition is applied, whether
//! the replica caught up, how fresh it is, what it skipped, and whether the loop still runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use actix_web::http::header::HeaderValue;
use kv_core::consistency::ConsistencyToken;
use serde::Serialize;
use tokio::sync::oneshot;

/// End-offset reports from the broker (client statistics, one a second) a waiter lets pass
/// before it believes that its offset lies beyond the partition's end. One is not enough: a
/// report can carry a high watermark fetched just before the write was acknowledged.
const END_REPORTS_BEFORE_BEYOND: u64 = 2;

/// A partition's progress, as the readiness endpoint reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PartitionProgress {
    /// Offset of the next record to apply; everything below it is in the store.
    pub next_offset: i64,
    /// The partition's end offset when this reader started (or last rebuilt).
    pub end_offset_at_start: i64,
    /// The latest end offset the consumer heard of from the broker.
    pub end_offset: i64,
    pub caught_up: bool,
}

impl PartitionProgress {
    pub fn new(next_offset: i64, end_offset: i64, caught_up: bool) -> Self {
        Self {
            next_offset,
            end_offset_at_start: end_offset,
            end_offset,
            caught_up: caught_up || next_offset >= end_offset,
        }
    }

    fn lag(&self) -> u64 {
        (self.end_offset - self.next_offset).max(0) as u64
    }
}

/// How fresh the replica is, captured by a read just before it reads the store, so the data
/// it serves is at least this fresh.
#[derive(Debug, Clone, Default)]
pub struct Freshness {
    /// For each partition, the highest offset applied, in consistency-token form (`0:41,1:7`);
    /// `None` before anything was applied. Another replica given it as a token serves data at
    /// least this fresh.
    pub applied: Option<HeaderValue>,
    /// Records known to be in the topic but not yet applied, over all partitions.
    pub lag: u64,
}

/// Why a read-your-writes wait ended without the token's writes applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    #[error("the topic has no partition {partition} (this replica reads partitions {known})")]
    UnknownPartition { partition: i32, known: String },
    #[error("this replica has not assigned the topic's partitions yet")]
    NotStarted,
    #[error(
        "offset {offset} of partition {partition} lies beyond the partition's end offset \
         {end} as this replica last heard it from the broker: no such write exists yet"
    )]
    BeyondEnd {
        partition: i32,
        offset: i64,
        end: i64,
    },
    #[error(
        "{limit} reads are already waiting for their consistency token on this replica \
         (KV_API_MAX_READ_YOUR_WRITES_WAITERS)"
    )]
    TooManyWaiters { limit: usize },
    #[error("the writes were not applied within the timeout")]
    TimedOut,
    #[error("the consumer loop has stopped; the replica no longer follows the topic")]
    Stopped,
}

/// What the consumer tells a waiter when it wakes it.
#[derive(Debug)]
enum Wake {
    Applied,
    BeyondEnd { end: i64 },
}

#[derive(Debug)]
struct Waiter {
    wake: oneshot::Sender<Wake>,
    /// End-offset reports seen when it began to wait.
    reports_at_start: u64,
}

/// Reads waiting for an offset, per partition and ordered by offset, so an applied batch wakes
/// exactly the waiters it satisfies instead of every waiter re-checking every batch.
#[derive(Debug, Default)]
struct Waiters {
    by_partition: BTreeMap<i32, BTreeMap<(i64, u64), Waiter>>,
    count: usize,
    next_id: u64,
    end_reports: u64,
}

impl Waiters {
    fn remove(&mut self, partition: i32, key: (i64, u64)) -> Option<Waiter> {
        let list = self.by_partition.get_mut(&partition)?;
        let waiter = list.remove(&key)?;
        self.count -= 1;
        if list.is_empty() {
            self.by_partition.remove(&partition);
        }
        Some(waiter)
    }

    /// Wakes the waiters of `partition` whose offset is below `next`.
    fn applied(&mut self, partition: i32, next: i64) {
        let Some(list) = self.by_partition.get_mut(&partition) else {
            return;
        };
        let later = list.split_off(&(next, 0));
        let done = std::mem::replace(list, later);
        if list.is_empty() {
            self.by_partition.remove(&partition);
        }
        self.count -= done.len();
        for waiter in done.into_values() {
            let _ = waiter.wake.send(Wake::Applied);
        }
    }

    /// Fails the waiters of `partition` at or past `end` that have seen enough end reports.
    fn beyond_end(&mut self, partition: i32, end: i64) {
        let reports = self.end_reports;
        let Some(list) = self.by_partition.get(&partition) else {
            return;
        };
        let beyond: Vec<(i64, u64)> = list
            .range((end, 0)..)
            .filter(|(_, w)| reports >= w.reports_at_start + END_REPORTS_BEFORE_BEYOND)
            .map(|(key, _)| *key)
            .collect();
        for key in beyond {
            if let Some(waiter) = self.remove(partition, key) {
                let _ = waiter.wake.send(Wake::BeyondEnd { end });
            }
        }
    }

    /// Drops every waiter: their reads answer at once instead of waiting out the timeout.
    fn drop_where(&mut self, mut gone: impl FnMut(i32) -> bool) {
        let partitions: Vec<i32> = self
            .by_partition
            .keys()
            .copied()
            .filter(|p| gone(*p))
            .collect();
        for partition in partitions {
            if let Some(list) = self.by_partition.remove(&partition) {
                self.count -= list.len();
            }
        }
    }
}

/// Removes a waiter that stopped waiting (timed out, its request dropped) from its list.
struct Registration<'a> {
    progress: &'a Progress,
    partition: i32,
    key: (i64, u64),
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.progress
            .lock_waiters()
            .remove(self.partition, self.key);
    }
}

/// Why this replica refuses the records it reads: they were written under another topic
/// configuration than its own (see `replica::Refusals`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Misconfiguration {
    /// The skip reason of the records refused.
    pub reason: &'static str,
    /// Records refused for a configuration reason since the last one it could apply.
    pub refused_records: u64,
    pub message: String,
}

/// Why a disk replica stopped applying records: its file system lacks the room the next batch
/// needs (see `replica::Worker::wait_for_room`). It resumes by itself once the room is there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreFull {
    pub path: String,
    pub free_bytes: u64,
    pub needed_bytes: u64,
    pub message: String,
}

#[derive(Debug)]
pub struct Progress {
    partitions: Mutex<BTreeMap<i32, PartitionProgress>>,
    /// Recomputed whenever progress changes, so a read only clones it.
    freshness: Mutex<Freshness>,
    /// Read-your-writes waiters. Locked only while `partitions` is held, so a waiter that
    /// checked its offset and registered cannot miss the batch applied in between.
    waiters: Mutex<Waiters>,
    max_waiters: usize,
    misconfiguration: Mutex<Option<Misconfiguration>>,
    store_full: Mutex<Option<StoreFull>>,
    /// Times the replica stopped applying for want of room in its store.
    store_full_stops: AtomicU64,
    alive: AtomicBool,
    /// Partitions were assigned (a shard may hold none of them).
    started: AtomicBool,
    skipped: Mutex<BTreeMap<&'static str, u64>>,
    /// Records on another partition than murmur2 of their key gives, per partition.
    misrouted: Mutex<BTreeMap<i32, u64>>,
    rebuilds: AtomicU64,
    /// Records applied (or skipped) since this process started; after a restart it shows that
    /// nothing already in a disk store was applied again.
    records_applied: AtomicU64,
    tombstones_applied: AtomicU64,
    /// When a broker last sent the consumer anything, in milliseconds since the Unix epoch; 0
    /// before the first time.
    broker_answered_ms: AtomicU64,
    /// The replay since partitions were last (re)assigned, for its progress lines and metrics.
    replay: Mutex<ReplayClock>,
    /// KV_API_REPLAY_PROGRESS_INTERVAL_MS: how often a replaying reader says how far it got.
    replay_note_interval: Duration,
}

#[derive(Debug)]
struct ReplayClock {
    started: Instant,
    /// `records_applied` when the replay started.
    applied_before: u64,
    next_note: Instant,
    /// Set once the replica was first ready after the start.
    ready_after: Option<Duration>,
}

impl ReplayClock {
    fn new(applied_before: u64, interval: Duration) -> Self {
        let now = Instant::now();
        Self {
            started: now,
            applied_before,
            next_note: now + interval,
            ready_after: None,
        }
    }
}

/// How far a replay got: what the progress lines say and the replay metrics show.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Replay {
    /// Records applied since the replay started.
    pub applied: u64,
    /// Records between the applied offsets and the end offsets seen at the start.
    pub remaining: u64,
    pub elapsed: Duration,
    pub records_per_second: f64,
    /// `None` before any record was applied.
    pub eta: Option<Duration>,
    /// Once ready: how long the replay took.
    pub ready_after: Option<Duration>,
}

/// What the consumer loop logs about its replay now, if anything.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReplayNote {
    Progress(Replay),
    Ready(Replay),
}

#[cfg(test)]
impl Default for Progress {
    fn default() -> Self {
        Self::new(10_000, Duration::from_secs(10))
    }
}

impl Progress {
    /// At most `max_waiters` reads wait for their consistency token at once; a replay says how
    /// far it got every `replay_note_interval`.
    pub fn new(max_waiters: usize, replay_note_interval: Duration) -> Self {
        Self {
            partitions: Mutex::default(),
            freshness: Mutex::default(),
            waiters: Mutex::default(),
            max_waiters,
            misconfiguration: Mutex::default(),
            store_full: Mutex::default(),
            store_full_stops: AtomicU64::new(0),
            alive: AtomicBool::new(true),
            started: AtomicBool::new(false),
            skipped: Mutex::default(),
            misrouted: Mutex::default(),
            rebuilds: AtomicU64::new(0),
            records_applied: AtomicU64::new(0),
            tombstones_applied: AtomicU64::new(0),
            broker_answered_ms: AtomicU64::new(0),
            replay: Mutex::new(ReplayClock::new(0, replay_note_interval)),
            replay_note_interval,
        }
    }

    /// How far the replay since the last (re)assignment got.
    pub fn replay(&self) -> Replay {
        let clock = self.replay.lock().unwrap_or_else(PoisonError::into_inner);
        self.replay_of(&clock)
    }

    fn replay_of(&self, clock: &ReplayClock) -> Replay {
        let remaining: u64 = self
            .lock_partitions()
            .values()
            .filter(|p| !p.caught_up)
            .map(|p| u64::try_from(p.end_offset_at_start - p.next_offset).unwrap_or(0))
            .sum();
        let applied = self
            .records_applied
            .load(Ordering::Relaxed)
            .saturating_sub(clock.applied_before);
        let elapsed = clock.ready_after.unwrap_or_else(|| clock.started.elapsed());
        let records_per_second = applied as f64 / elapsed.as_secs_f64().max(0.001);
        let eta = (applied > 0).then(|| {
            Duration::from_secs_f64(remaining as f64 / records_per_second.max(f64::MIN_POSITIVE))
        });
        Replay {
            applied,
            remaining,
            elapsed,
            records_per_second,
            eta,
            ready_after: clock.ready_after,
        }
    }

    /// Called by the consumer loop after each batch: a progress note every interval while it
    /// replays, and one when it is first ready.
    pub(crate) fn replay_note(&self) -> Option<ReplayNote> {
        let mut clock = self.replay.lock().unwrap_or_else(PoisonError::into_inner);
        if clock.ready_after.is_some() {
            return None;
        }
        if self.is_ready() {
            clock.ready_after = Some(clock.started.elapsed());
            return Some(ReplayNote::Ready(self.replay_of(&clock)));
        }
        let now = Instant::now();
        if now < clock.next_note {
            return None;
        }
        clock.next_note = now + self.replay_note_interval;
        Some(ReplayNote::Progress(self.replay_of(&clock)))
    }

    /// Notes that a broker sent the consumer something at `at_ms` (from librdkafka's statistics).
    pub fn note_broker_answer(&self, at_ms: u64) {
        self.broker_answered_ms.fetch_max(at_ms, Ordering::Relaxed);
    }

    /// When a broker last sent the consumer anything, if ever.
    pub fn broker_answered_ms(&self) -> Option<u64> {
        match self.broker_answered_ms.load(Ordering::Relaxed) {
            0 => None,
            at => Some(at),
        }
    }
}

/// What `/healthz/ready` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ready: bool,
    pub alive: bool,
    pub lag: u64,
    pub partitions: BTreeMap<i32, PartitionProgress>,
    pub skipped_records: SkippedRecords,
    pub rebuilds: u64,
    pub records_applied: u64,
    /// Records on another partition than murmur2 of their key gives (see the replica).
    pub misrouted_records: u64,
    /// Deletes among `records_applied`.
    pub tombstones_applied: u64,
    /// Set while the replica refuses every record it reads for a configuration reason.
    pub misconfiguration: Option<Misconfiguration>,
    /// Set while the replica does not apply records for want of room in its store.
    pub store_full: Option<StoreFull>,
    pub store_full_stops: u64,
}

impl Report {
    /// The replica's state in one word, as `/healthz/ready` and `/healthz/cluster` say it.
    pub fn status(&self) -> &'static str {
        match (&self.misconfiguration, self.alive, self.ready) {
            (_, false, _) => "dead",
            (Some(_), true, _) => "misconfigured",
            (None, true, _) if self.store_full.is_some() => "store_full",
            (None, true, true) => "ready",
            (None, true, false) => "catching_up",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SkippedRecords {
    pub total: u64,
    pub by_reason: BTreeMap<&'static str, u64>,
}

impl Progress {
    fn lock_partitions(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, PartitionProgress>> {
        self.partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_waiters(&self) -> MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn misconfiguration(&self) -> Option<Misconfiguration> {
        self.misconfiguration
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set_misconfiguration(&self, misconfiguration: Option<Misconfiguration>) {
        *self
            .misconfiguration
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = misconfiguration;
    }

    pub fn store_full(&self) -> Option<StoreFull> {
        self.store_full
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Sets or clears why the replica stopped applying; each stop is counted.
    pub(crate) fn set_store_full(&self, store_full: Option<StoreFull>) {
        if store_full.is_some() {
            self.store_full_stops.fetch_add(1, Ordering::Relaxed);
        }
        *self
            .store_full
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = store_full;
    }

    /// Reads waiting for their consistency token right now.
    pub fn waiters(&self) -> usize {
        self.lock_waiters().count
    }

    pub fn report(&self) -> Report {
        let partitions = self.lock_partitions().clone();
        let misconfiguration = self.misconfiguration();
        let store_full = self.store_full();
        let by_reason = self
            .skipped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Report {
            ready: self.ready(&partitions)
                && self.is_alive()
                && misconfiguration.is_none()
                && store_full.is_none(),
            alive: self.is_alive(),
            lag: partitions.values().map(PartitionProgress::lag).sum(),
            skipped_records: SkippedRecords {
                total: by_reason.values().sum(),
                by_reason,
            },
            rebuilds: self.rebuilds.load(Ordering::Relaxed),
            records_applied: self.records_applied.load(Ordering::Relaxed),
            misrouted_records: self.misrouted_records(),
            tombstones_applied: self.tombstones_applied.load(Ordering::Relaxed),
            partitions,
            misconfiguration,
            store_full,
            store_full_stops: self.store_full_stops.load(Ordering::Relaxed),
        }
    }

    /// The partitions that reached the end offset seen at start-up (or since were added).
    pub fn caught_up_partitions(&self) -> std::collections::BTreeSet<i32> {
        self.lock_partitions()
            .iter()
            .filter(|(_, p)| p.caught_up)
            .map(|(&partition, _)| partition)
            .collect()
    }

    /// Caught up: partitions are assigned and each reached its end offset seen at start-up.
    /// Readiness ([`Report::ready`]) also needs a live consumer, no misconfiguration and room in
    /// the store.
    pub fn is_ready(&self) -> bool {
        self.ready(&self.lock_partitions())
    }

    fn ready(&self, partitions: &BTreeMap<i32, PartitionProgress>) -> bool {
        self.started.load(Ordering::Relaxed) && partitions.values().all(|p| p.caught_up)
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    pub fn freshness(&self) -> Freshness {
        self.freshness
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    #[cfg(test)]
    /// Whether every offset the token names is already in the store.
    pub fn has_applied(&self, token: &ConsistencyToken) -> bool {
        let partitions = self.lock_partitions();
        token.offsets().all(|(partition, offset)| {
            partitions
                .get(&partition)
                .is_some_and(|p| p.next_offset > offset)
        })
    }

    /// Waits until the token's offsets are applied, or fails as soon as the answer is known:
    /// a partition the topic does not have, an offset the broker's end offset has stayed below
    /// for [`END_REPORTS_BEFORE_BEYOND`] reports, too many waiters, a dead consumer. Partitions
    /// are waited for one after the other, so a read holds one place among the waiters.
    pub async fn wait_for(
        &self,
        token: &ConsistencyToken,
        timeout: Duration,
    ) -> Result<(), WaitError> {
        let deadline = tokio::time::Instant::now() + timeout;
        {
            let partitions = self.lock_partitions();
            if !self.is_alive() {
                return Err(WaitError::Stopped);
            }
            if partitions.is_empty() {
                return Err(WaitError::NotStarted);
            }
            // Every partition first: a bad one fails the read before any waiting.
            if let Some((partition, _)) = token.offsets().find(|(p, _)| !partitions.contains_key(p))
            {
                return Err(WaitError::UnknownPartition {
                    partition,
                    known: known_partitions(&partitions),
                });
            }
        }
        for (partition, offset) in token.offsets() {
            let (woken, _registration) = {
                let partitions = self.lock_partitions();
                if !self.is_alive() {
                    return Err(WaitError::Stopped);
                }
                let Some(p) = partitions.get(&partition) else {
                    // Gone in a rebuild after the topic was recreated.
                    return Err(WaitError::UnknownPartition {
                        partition,
                        known: known_partitions(&partitions),
                    });
                };
                if p.next_offset > offset {
                    continue;
                }
                let mut waiters = self.lock_waiters();
                if waiters.count >= self.max_waiters {
                    return Err(WaitError::TooManyWaiters {
                        limit: self.max_waiters,
                    });
                }
                let (wake, woken) = oneshot::channel();
                let key = (offset, waiters.next_id);
                waiters.next_id += 1;
                let reports_at_start = waiters.end_reports;
                waiters.by_partition.entry(partition).or_default().insert(
                    key,
                    Waiter {
                        wake,
                        reports_at_start,
                    },
                );
                waiters.count += 1;
                let registration = Registration {
                    progress: self,
                    partition,
                    key,
                };
                (woken, registration)
            };
            match tokio::time::timeout_at(deadline, woken).await {
                Err(_) => return Err(WaitError::TimedOut),
                Ok(Ok(Wake::Applied)) => {}
                Ok(Ok(Wake::BeyondEnd { end })) => {
                    return Err(WaitError::BeyondEnd {
                        partition,
                        offset,
                        end,
                    })
                }
                // Dropped: the consumer died or a rebuild removed the partition.
                Ok(Err(_)) => {
                    return Err(if self.is_alive() {
                        WaitError::UnknownPartition {
                            partition,
                            known: known_partitions(&self.lock_partitions()),
                        }
                    } else {
                        WaitError::Stopped
                    })
                }
            }
        }
        Ok(())
    }

    /// Replaces the partitions: at start and after a rebuild.
    pub(crate) fn start(&self, partitions: BTreeMap<i32, PartitionProgress>) {
        *self.replay.lock().unwrap_or_else(PoisonError::into_inner) = ReplayClock::new(
            self.records_applied.load(Ordering::Relaxed),
            self.replay_note_interval,
        );
        let mut guard = self.lock_partitions();
        *guard = partitions;
        self.started.store(true, Ordering::Relaxed);
        {
            let mut waiters = self.lock_waiters();
            waiters.drop_where(|p| !guard.contains_key(&p));
            for (&partition, p) in guard.iter() {
                waiters.applied(partition, p.next_offset);
            }
        }
        self.publish(&guard);
    }

    /// Adds partitions discovered while running.
    pub(crate) fn add(&self, added: BTreeMap<i32, PartitionProgress>) {
        let mut guard = self.lock_partitions();
        guard.extend(added);
        self.publish(&guard);
    }

    /// Records a committed batch of `records` records reaching `next_offsets`, and the
    /// partitions that reported their end.
    pub(crate) fn advance(
        &self,
        records: usize,
        next_offsets: &BTreeMap<i32, i64>,
        at_end: &[i32],
    ) {
        self.records_applied
            .fetch_add(records as u64, Ordering::Relaxed);
        let mut guard = self.lock_partitions();
        for (partition, &next) in next_offsets {
            if let Some(p) = guard.get_mut(partition) {
                p.next_offset = next;
                p.end_offset = p.end_offset.max(next);
                p.caught_up |= next >= p.end_offset_at_start;
            }
        }
        for partition in at_end {
            if let Some(p) = guard.get_mut(partition) {
                // The end may lie past the last record (transaction markers): reaching it
                // counts as caught up even when no record reaches the start-up end offset.
                p.caught_up = true;
                p.end_offset = p.next_offset;
            }
        }
        {
            let mut waiters = self.lock_waiters();
            for partition in next_offsets.keys() {
                if let Some(p) = guard.get(partition) {
                    waiters.applied(*partition, p.next_offset);
                }
            }
        }
        self.publish(&guard);
    }

    /// End offsets the consumer heard of from the broker (client statistics).
    pub(crate) fn observe_end_offsets(&self, ends: &[(i32, i64)]) {
        let mut guard = self.lock_partitions();
        for &(partition, end) in ends {
            if let Some(p) = guard.get_mut(&partition) {
                p.end_offset = end.max(p.next_offset);
            }
        }
        {
            let mut waiters = self.lock_waiters();
            waiters.end_reports += 1;
            for &(partition, _) in ends {
                if let Some(p) = guard.get(&partition) {
                    waiters.beyond_end(partition, p.end_offset);
                }
            }
        }
        self.publish(&guard);
    }

    /// Counts a misrouted record; true for the first one of its partition.
    pub(crate) fn count_misrouted(&self, partition: i32) -> bool {
        let mut misrouted = self
            .misrouted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let count = misrouted.entry(partition).or_default();
        *count += 1;
        *count == 1
    }

    pub fn misrouted_records(&self) -> u64 {
        self.misrouted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .sum()
    }

    /// Whether `partition` caught up, and its lag; `None` when this replica does not hold it.
    pub fn partition_state(&self, partition: i32) -> Option<(bool, u64)> {
        self.lock_partitions()
            .get(&partition)
            .map(|p| (p.caught_up, p.lag()))
    }

    /// The highest lag among `partitions` this replica holds (all of them when `None`), and
    /// the partition it is on.
    pub fn max_lag(&self, partitions: Option<&[i32]>) -> Option<(i32, u64)> {
        let guard = self.lock_partitions();
        let lag = |(&partition, p): (&i32, &PartitionProgress)| (partition, p.lag());
        let worst = match partitions {
            None => guard.iter().map(lag).max_by_key(|(_, lag)| *lag),
            Some(wanted) => wanted
                .iter()
                .filter_map(|p| guard.get_key_value(p))
                .map(lag)
                .max_by_key(|(_, lag)| *lag),
        };
        worst
    }

    pub(crate) fn count_skipped(&self, reason: &'static str) {
        *self
            .skipped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(reason)
            .or_default() += 1;
    }

    /// Counts the tombstones of a batch committed to the store.
    pub(crate) fn count_tombstones(&self, tombstones: usize) {
        self.tombstones_applied
            .fetch_add(tombstones as u64, Ordering::Relaxed);
    }

    pub(crate) fn count_rebuild(&self) {
        self.rebuilds.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn mark_dead(&self) {
        let _partitions = self.lock_partitions();
        self.alive.store(false, Ordering::Relaxed);
        self.lock_waiters().drop_where(|_| true);
    }

    fn publish(&self, partitions: &BTreeMap<i32, PartitionProgress>) {
        let mut applied = String::new();
        for (partition, p) in partitions.iter().filter(|(_, p)| p.next_offset > 0) {
            if !applied.is_empty() {
                applied.push(',');
            }
            let _ = write!(applied, "{partition}:{}", p.next_offset - 1);
        }
        let freshness = Freshness {
            applied: HeaderValue::from_str(&applied)
                .ok()
                .filter(|_| !applied.is_empty()),
            lag: partitions.values().map(PartitionProgress::lag).sum(),
        };
        *self
            .freshness
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = freshness;
    }
}

/// The partitions a replica reads, for error messages: `0-2`, or a list when there are gaps.
fn known_partitions(partitions: &BTreeMap<i32, PartitionProgress>) -> String {
    let ids: Vec<i32> = partitions.keys().copied().collect();
    match (ids.first(), ids.last()) {
        (Some(first), Some(last)) if (last - first) as usize + 1 == ids.len() => {
            if first == last {
                first.to_string()
            } else {
                format!("{first}-{last}")
            }
        }
        _ => ids.iter().map(i32::to_string).collect::<Vec<_>>().join(","),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(text: &str) -> ConsistencyToken {
        text.parse().expect("token")
    }

    #[test]
    fn empty_partitions_are_caught_up_from_the_start() {
        let progress = Progress::default();
        assert!(!progress.is_ready(), "nothing assigned yet");
        progress.start(BTreeMap::from([(0, PartitionProgress::new(0, 0, false))]));
        assert!(progress.is_ready());
    }

    #[test]
    fn a_single_record_partition_is_caught_up_after_applying_offset_zero() {
        let progress = Progress::default();
        progress.start(BTreeMap::from([
            (0, PartitionProgress::new(0, 1, false)),
            (1, PartitionProgress::new(0, 0, false)),
        ]));
        assert!(!progress.is_ready());
        progress.advance(1, &BTreeMap::from([(0, 1)]), &[]);
        assert!(progress.is_ready());
    }

    #[test]
    fn reaching_the_end_counts_even_when_markers_follow_the_last_record() {
        let progress = Progress::default();
        progress.start(BTreeMap::from([(0, PartitionProgress::new(0, 5, false))]));
        progress.advance(1, &BTreeMap::from([(0, 3)]), &[0]);
        assert!(progress.is_ready());
    }

    #[test]
    fn freshness_names_the_highest_applied_offset_and_the_lag() {
        let progress = Progress::default();
        progress.start(BTreeMap::from([
            (0, PartitionProgress::new(0, 10, false)),
            (1, PartitionProgress::new(0, 0, false)),
        ]));
        assert!(progress.freshness().applied.is_none());
        assert_eq!(progress.freshness().lag, 10);
        progress.advance(1, &BTreeMap::from([(0, 4)]), &[]);
        let freshness = progress.freshness();
        assert_eq!(freshness.applied.expect("applied"), "0:3");
        assert_eq!(freshness.lag, 6);
        progress.observe_end_offsets(&[(0, 12)]);
        assert_eq!(progress.freshness().lag, 8);
    }

    #[test]
    fn a_token_is_applied_once_every_named_offset_is_below_the_next_offset() {
        let progress = Progress::default();
        progress.start(BTreeMap::from([
            (0, PartitionProgress::new(0, 10, false)),
            (1, PartitionProgress::new(0, 10, false)),
        ]));
        progress.advance(1, &BTreeMap::from([(0, 5)]), &[]);
        assert!(progress.has_applied(&token("0:4")));
        assert!(!progress.has_applied(&token("0:5")));
        assert!(!progress.has_applied(&token("0:1,1:0")));
        assert!(
            !progress.has_applied(&token("7:0")),
            "an unknown partition is not applied"
        );
    }

    #[tokio::test]
    async fn a_waiting_read_wakes_when_its_offset_is_applied() {
        let progress = std::sync::Arc::new(Progress::default());
        progress.start(BTreeMap::from([(0, PartitionProgress::new(0, 10, false))]));
        let waiter = {
            let progress = progress.clone();
            tokio::spawn(async move {
                progress
                    .wait_for(&token("0:2"), Duration::from_secs(30))
                    .await
            })
        };
        tokio::task::yield_now().await;
        progress.advance(1, &BTreeMap::from([(0, 3)]), &[]);
        assert_eq!(waiter.await.expect("join"), Ok(()));
        assert_eq!(
            progress
                .wait_for(&token("0:9"), Duration::from_millis(20))
                .await,
            Err(WaitError::TimedOut)
        );
    }

    fn one_partition(next: i64, end: i64) -> std::sync::Arc<Progress> {
        let progress = std::sync::Arc::new(Progress::default());
        progress.start(BTreeMap::from([(
            0,
            PartitionProgress::new(next, end, false),
        )]));
        progress
    }

    #[tokio::test]
    async fn a_token_naming_a_partition_the_topic_lacks_fails_at_once() {
        let progress = one_partition(0, 10);
        let started = std::time::Instant::now();
        let waited = progress
            .wait_for(&token("0:1,7:0"), Duration::from_secs(30))
            .await;
        assert_eq!(
            waited,
            Err(WaitError::UnknownPartition {
                partition: 7,
                known: "0".to_owned()
            })
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(progress.waiters(), 0);
    }

    #[tokio::test]
    async fn a_token_before_partitions_are_assigned_fails_at_once() {
        let progress = Progress::default();
        assert_eq!(
            progress
                .wait_for(&token("0:0"), Duration::from_secs(30))
                .await,
            Err(WaitError::NotStarted)
        );
    }

    #[tokio::test]
    async fn an_offset_the_broker_end_stays_below_for_two_reports_fails_without_the_timeout() {
        let progress = one_partition(5, 5);
        let waiter = {
            let progress = progress.clone();
            tokio::spawn(async move {
                progress
                    .wait_for(&token("0:1000000"), Duration::from_secs(30))
                    .await
            })
        };
        while progress.waiters() == 0 {
            tokio::task::yield_now().await;
        }
        // The first report may predate the write; the second one settles it.
        progress.observe_end_offsets(&[(0, 6)]);
        tokio::task::yield_now().await;
        assert_eq!(progress.waiters(), 1, "one report is not proof");
        progress.observe_end_offsets(&[(0, 6)]);
        assert_eq!(
            waiter.await.expect("join"),
            Err(WaitError::BeyondEnd {
                partition: 0,
                offset: 1_000_000,
                end: 6
            })
        );
        assert_eq!(progress.waiters(), 0);
    }

    #[tokio::test]
    async fn an_offset_the_end_reaches_keeps_waiting_until_it_is_applied() {
        let progress = one_partition(5, 5);
        let waiter = {
            let progress = progress.clone();
            tokio::spawn(async move {
                progress
                    .wait_for(&token("0:7"), Duration::from_secs(30))
                    .await
            })
        };
        while progress.waiters() == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..3 {
            progress.observe_end_offsets(&[(0, 8)]);
        }
        assert_eq!(
            progress.waiters(),
            1,
            "the write is in the log: keep waiting"
        );
        progress.advance(3, &BTreeMap::from([(0, 8)]), &[]);
        assert_eq!(waiter.await.expect("join"), Ok(()));
    }

    #[tokio::test]
    async fn a_batch_wakes_only_the_waiters_it_satisfies() {
        let progress = one_partition(0, 100);
        let mut waiters = Vec::new();
        for offset in [2, 4, 6, 8] {
            let progress = progress.clone();
            waiters.push(tokio::spawn(async move {
                progress
                    .wait_for(&token(&format!("0:{offset}")), Duration::from_secs(30))
                    .await
            }));
        }
        while progress.waiters() < 4 {
            tokio::task::yield_now().await;
        }
        progress.advance(5, &BTreeMap::from([(0, 5)]), &[]);
        let (satisfied, later) = waiters.split_at_mut(2);
        for waiter in satisfied {
            assert_eq!(waiter.await.expect("join"), Ok(()));
        }
        assert_eq!(progress.waiters(), 2, "offsets 6 and 8 still wait, unwoken");
        assert!(later.iter().all(|w| !w.is_finished()));
        progress.advance(4, &BTreeMap::from([(0, 9)]), &[]);
        for waiter in later {
            assert_eq!(waiter.await.expect("join"), Ok(()));
        }
        assert_eq!(progress.waiters(), 0);
    }

    #[tokio::test]
    async fn waiters_past_the_limit_are_refused_and_a_timed_out_one_frees_its_place() {
        let progress = std::sync::Arc::new(Progress::new(2, Duration::from_secs(10)));
        progress.start(BTreeMap::from([(0, PartitionProgress::new(0, 100, false))]));
        let mut held = Vec::new();
        for _ in 0..2 {
            let progress = progress.clone();
            held.push(tokio::spawn(async move {
                progress
                    .wait_for(&token("0:50"), Duration::from_millis(200))
                    .await
            }));
        }
        while progress.waiters() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            progress
                .wait_for(&token("0:50"), Duration::from_secs(30))
                .await,
            Err(WaitError::TooManyWaiters { limit: 2 })
        );
        for waiter in held {
            assert_eq!(waiter.await.expect("join"), Err(WaitError::TimedOut));
        }
        assert_eq!(progress.waiters(), 0, "a timed-out waiter leaves its list");
        assert_eq!(
            progress
                .wait_for(&token("0:50"), Duration::from_millis(10))
                .await,
            Err(WaitError::TimedOut),
            "there is room again"
        );
    }

    #[tokio::test]
    async fn waiters_fail_at_once_when_the_consumer_dies() {
        let progress = one_partition(0, 100);
        let waiter = {
            let progress = progress.clone();
            tokio::spawn(async move {
                progress
                    .wait_for(&token("0:50"), Duration::from_secs(30))
                    .await
            })
        };
        while progress.waiters() == 0 {
            tokio::task::yield_now().await;
        }
        progress.mark_dead();
        assert_eq!(waiter.await.expect("join"), Err(WaitError::Stopped));
    }

    #[test]
    fn a_misconfigured_replica_is_not_ready_even_when_caught_up() {
        let progress = one_partition(0, 0);
        assert!(progress.report().ready);
        progress.set_misconfiguration(Some(Misconfiguration {
            reason: "wrong_key",
            refused_records: 3,
            message: "another key".to_owned(),
        }));
        let report = progress.report();
        assert!(!report.ready);
        assert_eq!(report.misconfiguration.map(|m| m.reason), Some("wrong_key"));
    }

    #[test]
    fn a_replica_out_of_room_is_not_ready_until_the_room_is_back_and_each_stop_counts() {
        let progress = one_partition(0, 0);
        progress.set_store_full(Some(StoreFull {
            path: "/data/kv-reader.redb".to_owned(),
            free_bytes: 1,
            needed_bytes: 2,
            message: "full".to_owned(),
        }));
        let report = progress.report();
        assert!(!report.ready);
        assert_eq!(report.store_full_stops, 1);
        progress.set_store_full(None);
        let report = progress.report();
        assert!(report.ready && report.store_full.is_none());
        assert_eq!(report.store_full_stops, 1);
    }
}
