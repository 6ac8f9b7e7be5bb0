//! Why a read is refused, said once for every port: HTTP maps these to its error contract and
//! the Redis port to its error replies, so a rule keeps one wording wherever it is met.

use std::time::Duration;

use kv_core::consistency::ConsistencyToken;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("no value is stored for this key")]
    KeyNotFound,
    /// A token this topic could not have produced: a client's mistake, not worth a retry.
    #[error("consistency token {token} cannot name a write of this topic: {reason}")]
    ForeignToken {
        token: ConsistencyToken,
        reason: String,
    },
    #[error(
        "this replica has not applied the writes of consistency token {token} within {} ms \
         (KV_API_READ_YOUR_WRITES_TIMEOUT_MS at most); retry later",
        waited.as_millis()
    )]
    NotApplied {
        token: ConsistencyToken,
        waited: Duration,
    },
    #[error("this replica cannot wait for consistency token {token}: {reason}; retry later")]
    CannotWait {
        token: ConsistencyToken,
        reason: String,
    },
    #[error(
        "this replica is {lag} records behind on partition {partition}, more than the {bound} \
         the read allows (max_lag); retry, or read from another replica"
    )]
    Lagging {
        partition: i32,
        lag: u64,
        bound: u64,
    },
    #[error("this shard has not read the topic's partitions from the broker yet; retry")]
    PartitionsUnknown,
    /// Said to a client whose port does not forward (the Redis port).
    #[error("key not held by this shard (partition {partition} is another shard's)")]
    NotHeld { partition: i32 },
    #[error(
        "shard {from} forwarded a read of partition {partition} here, but this shard does not \
         hold it: the shards disagree on KV_API_SHARD or KV_API_SHARD_REPLICAS"
    )]
    Misrouted { from: String, partition: i32 },
    #[error(
        "no shard holding partition {} answers{}; keys of other partitions still answer; retry",
        list(partitions),
        tried(failures)
    )]
    ShardUnavailable {
        partitions: Vec<i32>,
        failures: Vec<String>,
    },
    #[error("the request names {asked} keys, over the limit of {max} at a time; ask for fewer")]
    TooManyKeys { asked: usize, max: usize },
    #[error(
        "the answer would hold more than {limit} bytes of values (KV_API_MAX_BATCH_GET_BYTES); \
         ask for fewer keys at a time"
    )]
    AnswerTooLarge { limit: usize },
    #[error("as many listings of this encrypted replica run as it takes at once; retry")]
    ListingsBusy,
    /// The store failed under the read; logged where raised, said vaguely to the caller.
    #[error("reading the replica's store failed")]
    Store(#[source] StoreError),
    #[error("the listing task failed: {0}")]
    Task(String),
}

/// What a port does with a refusal: each kind has one status on HTTP and one reply prefix on
/// the Redis port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadErrorKind {
    /// The request itself is wrong; repeating it fails the same way.
    Invalid,
    NotFound,
    TooLarge,
    /// This replica cannot answer yet; the same request may succeed in a moment.
    NotReady,
    Lagging,
    ShardUnavailable,
    Overloaded,
    Internal,
}

impl ReadError {
    pub fn kind(&self) -> ReadErrorKind {
        match self {
            Self::KeyNotFound => ReadErrorKind::NotFound,
            Self::ForeignToken { .. } | Self::NotHeld { .. } => ReadErrorKind::Invalid,
            Self::NotApplied { .. } | Self::CannotWait { .. } | Self::PartitionsUnknown => {
                ReadErrorKind::NotReady
            }
            Self::Lagging { .. } => ReadErrorKind::Lagging,
            Self::Misrouted { .. } | Self::ShardUnavailable { .. } => {
                ReadErrorKind::ShardUnavailable
            }
            Self::TooManyKeys { .. } | Self::AnswerTooLarge { .. } => ReadErrorKind::TooLarge,
            Self::ListingsBusy => ReadErrorKind::Overloaded,
            Self::Store(_) | Self::Task(_) => ReadErrorKind::Internal,
        }
    }

    /// When a retry may succeed: every refusal a moment can cure waits a second.
    pub fn retry_after(&self) -> Option<Duration> {
        matches!(
            self.kind(),
            ReadErrorKind::NotReady
                | ReadErrorKind::Lagging
                | ReadErrorKind::ShardUnavailable
                | ReadErrorKind::Overloaded
        )
        .then_some(Duration::from_secs(1))
    }

    pub(crate) fn store(error: StoreError) -> Self {
        tracing::error!(%error, "reading the store failed");
        Self::Store(error)
    }
}

fn list(partitions: &[i32]) -> String {
    partitions
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn tried(failures: &[String]) -> String {
    if failures.is_empty() {
        String::new()
    } else {
        format!(" (tried: {})", failures.join("; "))
    }
}
