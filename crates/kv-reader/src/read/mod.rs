//! The read core: the rules every read obeys, whichever port it came in by. A token is scoped
//! to the partitions this process holds and waited for, a read's bound on lag is checked, a
//! key's owner is found, and the limits are kept here; HTTP and the Redis port adapt these
//! calls and map a [`ReadError`] to their own error form, so they never import each other.

pub mod error;
pub mod limits;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kv_core::consistency::{ConsistencyToken, RecordPosition};
use tokio::sync::Semaphore;

pub use error::{ReadError, ReadErrorKind};

use crate::cluster::{Cluster, Target};
use crate::progress::{Freshness, Progress, WaitError};
use crate::store::{Store, StoredEntry};

/// What a read asks of the replica besides its keys, parsed once by the port.
#[derive(Debug, Clone, Default)]
pub struct ReadBounds {
    /// Read-your-writes: wait until the replica applied these writes.
    pub token: Option<ConsistencyToken>,
    /// Bounded staleness: refuse when the replica is more records behind than this.
    pub max_lag: Option<u64>,
}

/// The partitions a read touches: the token's offsets elsewhere do not concern it, and only
/// their lag counts against `max_lag`.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// A full replica's read.
    All,
    Partitions(&'a [i32]),
}

/// Where a read of one key is answered.
#[derive(Debug)]
pub enum Placement {
    /// Here, scoped to these partitions (none on a full replica).
    Here(Vec<i32>),
    /// By the first of these owners of `partition` that answers; [`Target::Local`] among them
    /// means this shard, behind the peers that serve the partition better.
    Owners {
        partition: i32,
        targets: Vec<Target>,
    },
}

/// The keys of a batch, each distinct key looked up and held once.
#[derive(Debug)]
pub struct BatchLookup {
    /// For each key asked, in order, its place in `found`.
    pub slots: Vec<usize>,
    pub found: Vec<Option<StoredEntry>>,
    /// What the values weigh in the answer, each counted as often as it is named.
    pub answer_bytes: usize,
}

#[derive(Debug)]
pub struct ReadCore {
    pub store: Arc<Store>,
    pub progress: Arc<Progress>,
    /// Set on a sharded reader: who holds which partition, and how to reach them.
    pub cluster: Option<Arc<Cluster>>,
    pub read_your_writes_timeout: Duration,
    /// Most value bytes one batch answer may carry (KV_API_MAX_BATCH_GET_BYTES).
    pub max_batch_get_bytes: usize,
    /// Listings of an encrypted store running at once, on every port together (a watch's
    /// first listing takes one too).
    pub sealed_listings: Arc<Semaphore>,
}

impl ReadCore {
    pub fn new(
        store: Arc<Store>,
        progress: Arc<Progress>,
        cluster: Option<Arc<Cluster>>,
        read_your_writes_timeout: Duration,
        max_batch_get_bytes: usize,
    ) -> Self {
        Self {
            store,
            progress,
            cluster,
            read_your_writes_timeout,
            max_batch_get_bytes,
            sealed_listings: Arc::new(Semaphore::new(limits::MAX_SEALED_LISTINGS)),
        }
    }

    /// The topic's partition count, which a sharded reader routes by.
    pub fn partition_count(&self, cluster: &Cluster) -> Result<u32, ReadError> {
        cluster.partitions().ok_or(ReadError::PartitionsUnknown)
    }

    /// The partitions this process holds: every one on a full replica (`None`).
    pub fn held_partitions(&self) -> Result<Option<Vec<i32>>, ReadError> {
        let Some(cluster) = &self.cluster else {
            return Ok(None);
        };
        let count = self.partition_count(cluster)?;
        Ok(Some(
            (0..count as i32).filter(|&p| cluster.holds(p)).collect(),
        ))
    }

    /// A full replica's reads touch every partition; a shard's, the ones routed to it.
    pub fn scope<'a>(&self, partitions: &'a [i32]) -> Scope<'a> {
        match self.cluster {
            None => Scope::All,
            Some(_) => Scope::Partitions(partitions),
        }
    }

    /// Where `key` is read. `forwarded_from` names the shard that forwarded the read here: a
    /// forwarded read is answered here or refused, never forwarded again.
    pub fn place(
        &self,
        key: &[u8],
        forwarded_from: Option<&str>,
        max_lag: Option<u64>,
    ) -> Result<Placement, ReadError> {
        let Some(cluster) = &self.cluster else {
            return Ok(Placement::Here(Vec::new()));
        };
        let partition = cluster.partition_of(key, self.partition_count(cluster)?);
        if let Some(from) = forwarded_from {
            return if cluster.holds(partition) {
                Ok(Placement::Here(vec![partition]))
            } else {
                Err(ReadError::Misrouted {
                    from: from.to_owned(),
                    partition,
                })
            };
        }
        let targets = cluster.targets(partition, max_lag, &self.progress);
        if targets.first() == Some(&Target::Local) {
            return Ok(Placement::Here(vec![partition]));
        }
        Ok(Placement::Owners { partition, targets })
    }

    /// For a port that does not forward: `Ok` when this process answers `key` itself.
    pub fn held_here(&self, key: &[u8]) -> Result<(), ReadError> {
        let Some(cluster) = &self.cluster else {
            return Ok(());
        };
        let partition = cluster.partition_of(key, self.partition_count(cluster)?);
        if cluster.holds(partition) {
            Ok(())
        } else {
            Err(ReadError::NotHeld { partition })
        }
    }

    /// The part of a token a read waits for: the offsets of the partitions it reads. A
    /// partition the topic does not have is still an error; `None` when nothing is left.
    pub fn scoped(
        &self,
        token: ConsistencyToken,
        scope: Scope<'_>,
    ) -> Result<Option<ConsistencyToken>, ReadError> {
        let (Some(cluster), Scope::Partitions(partitions)) = (&self.cluster, scope) else {
            return Ok(Some(token));
        };
        let count = self.partition_count(cluster)?;
        let foreign = token.offsets().find(|(p, _)| *p as u32 >= count);
        if let Some((partition, _)) = foreign {
            return Err(ReadError::ForeignToken {
                token,
                reason: format!("the topic has no partition {partition} (it has {count})"),
            });
        }
        let kept = ConsistencyToken::from_positions(
            token
                .offsets()
                .filter(|(p, _)| partitions.contains(p))
                .map(|(partition, offset)| RecordPosition { partition, offset }),
        );
        let empty = kept.offsets().next().is_none();
        Ok((!empty).then_some(kept))
    }

    /// Waits at most `timeout` (never past KV_API_READ_YOUR_WRITES_TIMEOUT_MS) for this
    /// replica to apply the writes of `token`.
    pub async fn wait_for(
        &self,
        token: &ConsistencyToken,
        timeout: Duration,
    ) -> Result<(), ReadError> {
        let timeout = timeout.min(self.read_your_writes_timeout);
        match self.progress.wait_for(token, timeout).await {
            Ok(()) => Ok(()),
            Err(error @ WaitError::UnknownPartition { .. }) => Err(ReadError::ForeignToken {
                token: token.clone(),
                reason: error.to_string(),
            }),
            Err(WaitError::TimedOut) => Err(ReadError::NotApplied {
                token: token.clone(),
                waited: timeout,
            }),
            Err(error) => Err(ReadError::CannotWait {
                token: token.clone(),
                reason: error.to_string(),
            }),
        }
    }

    /// Waits for the read's token, if any, and checks its bound on lag: call it right before
    /// reading the store. The freshness returned is what the answer may claim.
    pub async fn settle(
        &self,
        bounds: &ReadBounds,
        scope: Scope<'_>,
    ) -> Result<Freshness, ReadError> {
        let token = match &bounds.token {
            Some(token) => self.scoped(token.clone(), scope)?,
            None => None,
        };
        if let Some(token) = token {
            self.wait_for(&token, self.read_your_writes_timeout).await?;
        }
        if let Some(bound) = bounds.max_lag {
            let partitions = match scope {
                Scope::All => None,
                Scope::Partitions(partitions) => Some(partitions),
            };
            if let Some((partition, lag)) = self.progress.max_lag(partitions) {
                if lag > bound {
                    return Err(ReadError::Lagging {
                        partition,
                        lag,
                        bound,
                    });
                }
            }
        }
        Ok(self.progress.freshness())
    }

    pub fn lookup(&self, key: &[u8]) -> Result<StoredEntry, ReadError> {
        self.store
            .get(key)
            .map_err(ReadError::store)?
            .ok_or(ReadError::KeyNotFound)
    }

    /// Refuses a batch of more keys than any answer may name.
    pub fn check_batch(&self, asked: usize) -> Result<(), ReadError> {
        if asked > limits::MAX_BATCH_KEYS {
            return Err(ReadError::TooManyKeys {
                asked,
                max: limits::MAX_BATCH_KEYS,
            });
        }
        Ok(())
    }

    /// Looks `keys` up in one read view. A key named many times is looked up and held once:
    /// 1 000 copies of a key with a 1 MiB value cost one value, and the lookups stop as soon
    /// as the answer, each value weighed by `weigh` (its size in the port's encoding), would
    /// pass KV_API_MAX_BATCH_GET_BYTES, so nothing over it is ever held.
    pub fn lookup_batch<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k [u8]>,
        weigh: impl Fn(&[u8]) -> usize,
    ) -> Result<BatchLookup, ReadError> {
        let keys = keys.into_iter();
        let mut distinct: HashMap<&[u8], usize> = HashMap::with_capacity(keys.size_hint().0);
        let mut slots = Vec::with_capacity(keys.size_hint().0);
        for key in keys {
            let next = distinct.len();
            slots.push(*distinct.entry(key).or_insert(next));
        }
        let mut unique: Vec<&[u8]> = vec![&[]; distinct.len()];
        for (key, slot) in &distinct {
            unique[*slot] = key;
        }
        let mut named = vec![0usize; unique.len()];
        for slot in &slots {
            named[*slot] += 1;
        }
        let limit = self.max_batch_get_bytes;
        let mut answer_bytes = 0usize;
        let found = self
            .store
            .get_many_while(unique.iter().copied(), |i, entry| {
                answer_bytes = answer_bytes.saturating_add(weigh(&entry.value) * named[i]);
                answer_bytes <= limit
            })
            .map_err(ReadError::store)?
            .ok_or(ReadError::AnswerTooLarge { limit })?;
        Ok(BatchLookup {
            slots,
            found,
            answer_bytes,
        })
    }

    /// Whether a listing must go through [`ReadCore::page`]'s blocking path.
    pub fn listing_blocks(&self) -> bool {
        self.store.is_encrypted()
    }

    /// A page of this replica's own keys under any of `prefixes`, where the caller stands:
    /// for a store whose listing does not block (see [`ReadCore::listing_blocks`]).
    /// `prefixes` are a listing as `KeyGrant::listing` gives it (sorted, none under another),
    /// so a page never holds a key the caller may not read.
    pub fn page_now(
        &self,
        prefixes: &[Vec<u8>],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<Vec<u8>>, bool), ReadError> {
        self.store
            .list_keys_under(prefixes, after, limit)
            .map_err(ReadError::store)
    }

    /// A page of this replica's own keys under any of `prefixes`, `limit` at most, after
    /// `after`.
    pub async fn page(
        &self,
        prefixes: Vec<Vec<u8>>,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<(Vec<Vec<u8>>, bool), ReadError> {
        if !self.listing_blocks() {
            return self.page_now(&prefixes, after.as_deref(), limit);
        }
        // A sealed store keeps keys in an order that says nothing about them, so listing one
        // opens every entry: it runs on the blocking pool, a few at a time, never on the
        // workers that serve every other read.
        let Ok(slot) = self.sealed_listings.clone().try_acquire_owned() else {
            return Err(ReadError::ListingsBusy);
        };
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            store.list_keys_under(&prefixes, after.as_deref(), limit)
        })
        .await
        .map_err(|e| ReadError::Task(e.to_string()))?
        .map_err(ReadError::store)
    }
}
