//! Read-your-writes: reads that wait until the offsets of their consistency token are applied.
//! They are kept per partition and ordered by offset so a batch wakes only the reads it
//! satisfies, and they fail early when the answer is known rather than at their timeout.

use std::collections::BTreeMap;
use std::sync::{MutexGuard, PoisonError};
use std::time::Duration;

use kv_core::consistency::ConsistencyToken;
use tokio::sync::oneshot;

use super::{PartitionProgress, Progress};

/// End-offset reports from the broker (client statistics, one a second) a waiter lets pass
/// before it believes that its offset lies beyond the partition's end. One is not enough: a
/// report can carry a high watermark fetched just before the write was acknowledged.
const END_REPORTS_BEFORE_BEYOND: u64 = 2;

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
pub(super) struct Waiters {
    by_partition: BTreeMap<i32, BTreeMap<(i64, u64), Waiter>>,
    count: usize,
    next_id: u64,
    pub(super) end_reports: u64,
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
    pub(super) fn applied(&mut self, partition: i32, next: i64) {
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
    pub(super) fn beyond_end(&mut self, partition: i32, end: i64) {
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
    pub(super) fn drop_where(&mut self, mut gone: impl FnMut(i32) -> bool) {
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

impl Progress {
    pub(super) fn lock_waiters(&self) -> MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads waiting for their consistency token right now.
    pub fn waiters(&self) -> usize {
        self.lock_waiters().count
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
    use super::super::tests::one_partition;
    use super::*;

    fn token(text: &str) -> ConsistencyToken {
        text.parse().expect("token")
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
}
