//! The topic's delete retention, which a resuming replica compares with how long it was away;
//! read beside the replica at start-up, so it has its own small home both can reach.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

/// The topic's `delete.retention.ms` (when compacted), read at start-up beside the replica:
/// `None` inside until the answer came, `Some(None)` when there is nothing to check against.
#[derive(Debug, Clone, Default)]
pub struct DeleteRetention(Arc<(Mutex<Option<Option<Duration>>>, Condvar)>);

/// How long a resuming replica waits for the topic's configuration.
pub(super) const RETENTION_WAIT: Duration = Duration::from_secs(10);

impl DeleteRetention {
    pub fn set(&self, retention: Option<Duration>) {
        let (value, ready) = &*self.0;
        *value.lock().unwrap_or_else(PoisonError::into_inner) = Some(retention);
        ready.notify_all();
    }

    /// The retention, waiting up to `timeout` for the answer; `None` when there is none.
    pub(super) fn wait(&self, timeout: Duration) -> Option<Duration> {
        let (value, ready) = &*self.0;
        let guard = value.lock().unwrap_or_else(PoisonError::into_inner);
        let (guard, _) = ready
            .wait_timeout_while(guard, timeout, |answer| answer.is_none())
            .unwrap_or_else(PoisonError::into_inner);
        guard.flatten()
    }
}
