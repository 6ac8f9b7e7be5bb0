//! What the consumer thread tells the HTTP handlers: how far each partition is applied, whether
//! the replica caught up, how fresh it is, what it skipped, and whether the loop still runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use actix_web::http::header::HeaderValue;
use kv_core::consistency::ConsistencyToken;
use serde::Serialize;
use tokio::sync::watch;

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
    /// Bumped after every applied batch, so read-your-writes waiters re-check.
    applied: watch::Sender<u64>,
    alive: AtomicBool,
    skipped: Mutex<BTreeMap<&'static str, u64>>,
    rebuilds: AtomicU64,
    /// Records applied (or skipped) since this process started; after a restart it shows that
    /// nothing already in a disk store was applied again.
    records_applied: AtomicU64,
    tombstones_applied: AtomicU64,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            partitions: Mutex::default(),
            freshness: Mutex::default(),
            applied: watch::channel(0).0,
            alive: AtomicBool::new(true),
            skipped: Mutex::default(),
            rebuilds: AtomicU64::new(0),
            records_applied: AtomicU64::new(0),
            tombstones_applied: AtomicU64::new(0),
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
    /// Deletes among `records_applied`.
    pub tombstones_applied: u64,
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

    pub fn report(&self) -> Report {
        let partitions = self.lock_partitions().clone();
        let by_reason = self
            .skipped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Report {
            ready: ready(&partitions) && self.is_alive(),
            alive: self.is_alive(),
            lag: partitions.values().map(PartitionProgress::lag).sum(),
            skipped_records: SkippedRecords {
                total: by_reason.values().sum(),
                by_reason,
            },
            rebuilds: self.rebuilds.load(Ordering::Relaxed),
            records_applied: self.records_applied.load(Ordering::Relaxed),
            tombstones_applied: self.tombstones_applied.load(Ordering::Relaxed),
            partitions,
        }
    }

    /// Ready once partitions are assigned and each reached its end offset seen at start-up.
    pub fn is_ready(&self) -> bool {
        ready(&self.lock_partitions())
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

    /// Whether every offset the token names is already in the store.
    pub fn has_applied(&self, token: &ConsistencyToken) -> bool {
        let partitions = self.lock_partitions();
        token.offsets().all(|(partition, offset)| {
            partitions
                .get(&partition)
                .is_some_and(|p| p.next_offset > offset)
        })
    }

    /// Waits until the token's offsets are applied; `false` when `timeout` ran out first.
    pub async fn wait_for(&self, token: &ConsistencyToken, timeout: Duration) -> bool {
        let mut applied = self.applied.subscribe();
        let wait = async {
            loop {
                // Marking the current version seen before checking means an advance between
                // the check and the await still wakes us.
                applied.borrow_and_update();
                if self.has_applied(token) {
                    return;
                }
                if applied.changed().await.is_err() {
                    // The sender lives in `self`; this cannot close while we hold `self`.
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// Replaces the partitions: at start and after a rebuild.
    pub(crate) fn start(&self, partitions: BTreeMap<i32, PartitionProgress>) {
        let mut guard = self.lock_partitions();
        *guard = partitions;
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
        self.publish(&guard);
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
        self.alive.store(false, Ordering::Relaxed);
        self.applied.send_modify(|n| *n += 1);
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
        self.applied.send_modify(|n| *n += 1);
    }
}

fn ready(partitions: &BTreeMap<i32, PartitionProgress>) -> bool {
    !partitions.is_empty() && partitions.values().all(|p| p.caught_up)
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
        assert!(waiter.await.expect("join"));
        assert!(
            !progress
                .wait_for(&token("0:9"), Duration::from_millis(20))
                .await
        );
    }
}
