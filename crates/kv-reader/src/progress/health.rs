//! Whether the replica is alive and ready, and why not: a dead consumer, records refused for a
//! configuration reason, no room in the store. These flags are what orchestrators and the
//! cluster view act on, so they sit here with the report `/healthz/ready` makes of them.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::PoisonError;

use serde::Serialize;

use super::{PartitionProgress, Progress};

/// Why this replica refuses the records it reads: they were written under another topic
/// configuration than its own (see `replica::refusals`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Misconfiguration {
    /// The skip reason of the records refused.
    pub reason: &'static str,
    /// Records refused for a configuration reason since the last one it could apply.
    pub refused_records: u64,
    pub message: String,
}

/// Why a disk replica stopped applying records: its file system lacks the room the next batch
/// needs (see `replica::room`). It resumes by itself once the room is there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreFull {
    pub path: String,
    pub free_bytes: u64,
    pub needed_bytes: u64,
    pub message: String,
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

    pub(crate) fn mark_dead(&self) {
        let _partitions = self.lock_partitions();
        self.alive.store(false, Ordering::Relaxed);
        self.lock_waiters().drop_where(|_| true);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::one_partition;
    use super::*;

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
