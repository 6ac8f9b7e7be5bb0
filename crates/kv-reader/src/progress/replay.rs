//! The replay clock: how far a replay since the last (re)assignment got and how fast, for the
//! progress lines a long replay logs and the replay metrics. Without them a replay of millions
//! of records shows nothing between "rebuilding" and ready.

use std::sync::atomic::Ordering;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use super::Progress;

#[derive(Debug)]
pub(super) struct ReplayClock {
    started: Instant,
    /// `records_applied` when the replay started.
    applied_before: u64,
    next_note: Instant,
    /// Set once the replica was first ready after the start.
    ready_after: Option<Duration>,
}

impl ReplayClock {
    pub(super) fn new(applied_before: u64, interval: Duration) -> Self {
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

impl Progress {
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
}
