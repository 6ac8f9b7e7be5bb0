//! What the consumer thread tells the HTTP handlers: how far each partition is applied, whether
//! the replica caught up, how fresh it is, what it skipped, and whether the loop still runs.
//!
//! This file holds the partition table every other part reads under one lock; the waiting
//! reads, the replay clock and the health flags each have a file, since each has its own
//! readers and rules.

mod health;
mod replay;
mod waiters;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use actix_web::http::header::HeaderValue;
use serde::Serialize;

use replay::ReplayClock;
use waiters::Waiters;

pub use health::{Misconfiguration, Report, SkippedRecords, StoreFull};
pub use replay::{Replay, ReplayNote};
pub use waiters::WaitError;

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

    fn lock_partitions(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, PartitionProgress>> {
        self.partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// For each partition this replica reads, the offset of the next record to apply:
    /// everything below it is in the store.
    pub fn next_offsets(&self) -> BTreeMap<i32, i64> {
        self.lock_partitions()
            .iter()
            .map(|(&partition, p)| (partition, p.next_offset))
            .collect()
    }

    /// The partitions that reached the end offset seen at start-up (or since were added).
    pub fn caught_up_partitions(&self) -> std::collections::BTreeSet<i32> {
        self.lock_partitions()
            .iter()
            .filter(|(_, p)| p.caught_up)
            .map(|(&partition, _)| partition)
            .collect()
    }

    pub fn freshness(&self) -> Freshness {
        self.freshness
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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

#[cfg(test)]
mod tests {
    use super::*;

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

    pub(super) fn one_partition(next: i64, end: i64) -> std::sync::Arc<Progress> {
        let progress = std::sync::Arc::new(Progress::default());
        progress.start(BTreeMap::from([(
            0,
            PartitionProgress::new(next, end, false),
        )]));
        progress
    }
}
