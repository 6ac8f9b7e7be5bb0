//! Requests to one peer that share a batch: kv-reader's forwarded reads to one owner, kv-writer's
//! outcome questions to one reader. Most of a loopback request's cost is per request, not per
//! item, so items waiting for the same peer go together.
//!
//! A lane sends at once while fewer than [`SENDERS`] of its batches are under way, so an idle
//! service adds no wait; items that arrive while they are go together in the next batch. Each
//! sender takes batch after batch until none is left, and leaves with the take that finds the
//! lane empty, so an item queued after that finds a sender's place free.
//!
//! The lane holds state only: its owner decides the lock (a worker's `RefCell`, a shared
//! `Mutex`), spawns the senders, and gives a sender's place back with [`Lane::sender_lost`] if
//! its task ends before the empty take (a panic).

use std::time::{Duration, Instant};

/// Batches under way at once per lane.
pub const SENDERS: usize = 2;

/// What waits for one peer, and how many senders are under way.
#[derive(Debug)]
pub struct Lane<T> {
    waiting: Vec<T>,
    senders: usize,
    paused_until: Option<Instant>,
}

impl<T> Default for Lane<T> {
    fn default() -> Self {
        Self {
            waiting: Vec::new(),
            senders: 0,
            paused_until: None,
        }
    }
}

impl<T> Lane<T> {
    /// Whether the lane sends no batch for now ([`Lane::pause_for`]): its owner then sends
    /// each item alone.
    pub fn paused(&self) -> bool {
        self.paused_until
            .is_some_and(|until| Instant::now() < until)
    }

    /// No batch for `pause`: the peer cannot take one (no batch route, answers too large).
    pub fn pause_for(&mut self, pause: Duration) {
        self.paused_until = Some(Instant::now() + pause);
    }

    /// Queues `item`; true when the caller must start a sender (fewer than [`SENDERS`] were
    /// under way, and the new one is counted).
    #[must_use]
    pub fn queue(&mut self, item: T) -> bool {
        self.waiting.push(item);
        self.senders < SENDERS && {
            self.senders += 1;
            true
        }
    }

    /// A sender's next batch: the first waiting item still `awaited` and those after it that
    /// `share` its batch with it, up to `max`, in the order they came; items no longer awaited
    /// are dropped. `None` when nothing is left: the sender leaves, its place given back.
    pub fn next_batch(
        &mut self,
        max: usize,
        awaited: impl Fn(&T) -> bool,
        share: impl Fn(&T, &T) -> bool,
    ) -> Option<Vec<T>> {
        let mut waiting = std::mem::take(&mut self.waiting)
            .into_iter()
            .filter(|item| awaited(item));
        let Some(first) = waiting.next() else {
            self.senders -= 1;
            return None;
        };
        let mut batch = vec![first];
        for item in waiting {
            if batch.len() < max && share(&batch[0], &item) {
                batch.push(item);
            } else {
                self.waiting.push(item);
            }
        }
        Some(batch)
    }

    /// Gives back the place of a sender whose task ended before its empty take.
    pub fn sender_lost(&mut self) {
        self.senders -= 1;
    }

    /// How many items wait.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_two_senders_start_and_each_leaves_on_the_take_that_finds_nothing() {
        let mut lane = Lane::default();
        assert!(lane.queue(1));
        assert!(lane.queue(2));
        assert!(!lane.queue(3), "two senders are under way");
        let all = |_: &i32| true;
        let batch = lane.next_batch(10, all, |_, _| true).expect("a batch");
        assert_eq!(batch, [1, 2, 3]);
        assert!(lane.next_batch(10, all, |_, _| true).is_none());
        assert!(lane.queue(4), "the sender that left freed its place");
        assert!(!lane.queue(5), "two senders are under way again");
        lane.sender_lost();
        assert!(lane.queue(6), "a lost sender's place is free");
    }

    #[test]
    fn a_batch_takes_what_shares_with_its_first_item_up_to_its_bound_and_skips_what_is_not_awaited()
    {
        let mut lane = Lane::default();
        for n in 0..10 {
            let _ = lane.queue(n);
        }
        let odd_first_pair = |first: &i32, item: &i32| first % 2 == item % 2;
        let batch = lane
            .next_batch(3, |n| *n != 0, odd_first_pair)
            .expect("a batch");
        assert_eq!(batch, [1, 3, 5], "0 was no longer awaited");
        assert_eq!(lane.waiting(), 6);
        let batch = lane
            .next_batch(3, |_| true, odd_first_pair)
            .expect("a batch");
        assert_eq!(batch, [2, 4, 6]);
    }

    #[test]
    fn a_paused_lane_says_so_until_its_pause_ends() {
        let mut lane = Lane::<i32>::default();
        assert!(!lane.paused());
        lane.pause_for(Duration::from_secs(60));
        assert!(lane.paused());
        lane.pause_for(Duration::ZERO);
        assert!(!lane.paused());
    }
}
