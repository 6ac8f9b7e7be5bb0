//! Conditional and idempotent writes, decided in log order (docs/architecture.md, "Conditional
//! writes").
//!
//! - A record carrying a condition (`X-KV-If-Match`, `X-KV-If-None-Match`) takes effect only if
//!   the condition holds for the key's state right before it, judged at the record's own
//!   timestamp (so an entry's expiry is judged the same way by every replica, whatever its
//!   clock). Every replica reads the same log, so every replica decides alike.
//! - A record carrying an idempotency key that an earlier record of the same key carried within
//!   [`IDEMPOTENCY_WINDOW_MS`] of record time is a repeat: it changes nothing, and its outcome is
//!   the first one's.
//! - Each decision is kept for [`OUTCOME_MEMORY`] (`OUTCOMES`), for the writer that waits on it.
//! - Whether a decided record is harmful left last is judged like every other record
//!   (`Writing::judge`): a replica that saw only it would decide it against an absent key.

use std::time::Duration;

use kv_core::conditional::{Outcome, Version, IDEMPOTENCY_WINDOW_MS};
use redb::{ReadableDatabase, ReadableTable, WriteTransaction};

use super::tables::{IDEMPOTENCY, IDEMPOTENCY_BY_TIME, OUTCOMES};
use super::write::{Decided, Writing};
use super::{Store, StoreError};

/// How long a decision is kept for a writer to ask about: far longer than a writer waits
/// (`KV_API_CONDITIONAL_TIMEOUT_MS`), and purged by this replica's clock.
pub const OUTCOME_MEMORY: Duration = Duration::from_secs(15 * 60);

/// How one decided record came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Decision {
    /// A repeat of the record at this offset, and whether that one took effect.
    repeat: Option<(i64, bool)>,
    /// Whether the condition holds (no condition: it does).
    holds: bool,
}

impl Decision {
    pub(super) fn takes_effect(&self) -> bool {
        self.repeat.is_none() && self.holds
    }
}

pub(super) fn ensure_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(OUTCOMES)?;
    txn.open_table(IDEMPOTENCY)?;
    txn.open_table(IDEMPOTENCY_BY_TIME)?;
    Ok(())
}

pub(super) fn reset_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.delete_table(OUTCOMES)?;
    txn.delete_table(IDEMPOTENCY)?;
    txn.delete_table(IDEMPOTENCY_BY_TIME)?;
    ensure_tables(txn)
}

impl Writing<'_> {
    /// The key's version as of `at_ms` (record time), if it is live then.
    fn version_at(
        &self,
        user_key: Option<&[u8]>,
        at_ms: u64,
    ) -> Result<Option<Version>, StoreError> {
        let Some(user_key) = user_key else {
            return Ok(None);
        };
        Ok(self
            .entry(user_key)?
            .filter(|entry| entry.is_live(at_ms))
            .map(|entry| Version {
                partition: entry.partition,
                offset: entry.offset,
            }))
    }

    /// Decides the record at `offset`, before it is applied.
    pub(super) fn decide(
        &self,
        record_key: &[u8],
        user_key: Option<&[u8]>,
        offset: i64,
        decided: &Decided<'_>,
    ) -> Result<Decision, StoreError> {
        let repeat = match decided.idempotency_key {
            None => None,
            Some(key) => {
                let index = self.index(record_key);
                self.idempotency
                    .get((index.as_ref(), key))?
                    .map(|row| row.value())
                    .filter(|(first, at, _)| {
                        (*first as i64) < offset
                            && at.saturating_add(IDEMPOTENCY_WINDOW_MS) >= decided.timestamp_ms
                    })
                    .map(|(first, _, applied)| (first as i64, applied == 1))
            }
        };
        let holds = match &decided.condition {
            None => true,
            Some(condition) => condition.holds(self.version_at(user_key, decided.timestamp_ms)?),
        };
        Ok(Decision { repeat, holds })
    }

    /// Keeps the decision for the writer, and the idempotency key of a first record.
    pub(super) fn record_decision(
        &mut self,
        record_key: &[u8],
        user_key: Option<&[u8]>,
        partition: i32,
        offset: i64,
        decided: &Decided<'_>,
        decision: &Decision,
    ) -> Result<(), StoreError> {
        let applied = match decision.repeat {
            Some((_, applied)) => applied,
            None => decision.holds,
        };
        let version = self.version_at(user_key, decided.timestamp_ms)?;
        self.outcomes.insert(
            (partition as u32, offset as u64),
            (
                u8::from(applied),
                version.map_or(-1, |v| v.partition),
                version.map_or(-1, |v| v.offset),
                decision.repeat.map_or(-1, |(first, _)| first),
                self.now_ms,
            ),
        )?;
        if let (Some(key), None) = (decided.idempotency_key, decision.repeat) {
            let index = self.index(record_key).into_owned();
            let old = self.idempotency.insert(
                (index.as_slice(), key),
                (offset as u64, decided.timestamp_ms, u8::from(applied)),
            )?;
            if let Some(old) = old {
                let (_, at, _) = old.value();
                self.idempotency_by_time
                    .remove((at, index.as_slice(), key))?;
            }
            self.idempotency_by_time
                .insert((decided.timestamp_ms, index.as_slice(), key), ())?;
        }
        Ok(())
    }
}

impl Store {
    /// What was decided for the record at `(partition, offset)`, if this replica decided it and
    /// still remembers.
    pub fn outcome(&self, partition: i32, offset: i64) -> Result<Option<Outcome>, StoreError> {
        Ok(self.outcomes(&[(partition, offset)])?.pop().flatten())
    }

    /// What was decided for each record at `(partition, offset)`, in order, read in one
    /// transaction (a writer's batch of questions).
    pub fn outcomes(&self, records: &[(i32, i64)]) -> Result<Vec<Option<Outcome>>, StoreError> {
        let txn = self.db.begin_read()?;
        let outcomes = txn.open_table(OUTCOMES)?;
        let mut found = Vec::with_capacity(records.len());
        for &(partition, offset) in records {
            if partition < 0 || offset < 0 {
                found.push(None);
                continue;
            }
            let row = outcomes.get((partition as u32, offset as u64))?;
            found.push(row.map(|row| {
                let (applied, version_partition, version_offset, first, _) = row.value();
                Outcome {
                    partition,
                    offset,
                    applied: applied == 1,
                    version: (version_offset >= 0).then_some(Version {
                        partition: version_partition,
                        offset: version_offset,
                    }),
                    first: (first >= 0).then_some(first),
                }
            }));
        }
        Ok(found)
    }

    /// Forgets, in one transaction, up to `limit` decisions older than [`OUTCOME_MEMORY`] and
    /// idempotency keys older than twice the window (by this replica's clock against record
    /// time: a margin for the writers' clocks). Returns how many rows it removed.
    pub fn purge_decisions(&self, now_ms: u64, limit: usize) -> Result<usize, StoreError> {
        let outcomes_before = now_ms.saturating_sub(OUTCOME_MEMORY.as_millis() as u64);
        let keys_before = now_ms.saturating_sub(2 * IDEMPOTENCY_WINDOW_MS);
        // Looked for in a read transaction first: an idle replica commits nothing.
        let (old_outcomes, old_keys) = {
            let txn = self.db.begin_read()?;
            let outcomes = txn.open_table(OUTCOMES)?;
            let mut old_outcomes = Vec::new();
            // Decisions of a partition are in offset order, so in time order: the old ones of
            // each partition come first.
            let mut from = (0u32, 0u64);
            'partitions: while old_outcomes.len() < limit {
                let mut rows = outcomes.range(from..)?;
                let Some(row) = rows.next() else { break };
                let (key, value) = row?;
                let (partition, _) = key.value();
                if value.value().4 >= outcomes_before {
                    match partition.checked_add(1) {
                        Some(next) => from = (next, 0),
                        None => break,
                    }
                    continue;
                }
                old_outcomes.push(key.value());
                for row in rows {
                    let (key, value) = row?;
                    let (next_partition, _) = key.value();
                    if next_partition != partition || value.value().4 >= outcomes_before {
                        match partition.checked_add(1) {
                            Some(next) => from = (next, 0),
                            None => break 'partitions,
                        }
                        continue 'partitions;
                    }
                    old_outcomes.push(key.value());
                    if old_outcomes.len() == limit {
                        break 'partitions;
                    }
                }
                break;
            }
            let by_time = txn.open_table(IDEMPOTENCY_BY_TIME)?;
            let mut old_keys = Vec::new();
            for row in by_time
                .range(..(keys_before, &[][..], &[][..]))?
                .take(limit)
            {
                let (key, _) = row?;
                let (at, index, idempotency_key) = key.value();
                old_keys.push((at, index.to_vec(), idempotency_key.to_vec()));
            }
            (old_outcomes, old_keys)
        };
        if old_outcomes.is_empty() && old_keys.is_empty() {
            return Ok(0);
        }
        let removed = old_outcomes.len() + old_keys.len();
        let txn = self.db.begin_write()?;
        {
            let mut outcomes = txn.open_table(OUTCOMES)?;
            for key in old_outcomes {
                outcomes.remove(key)?;
            }
            let mut idempotency = txn.open_table(IDEMPOTENCY)?;
            let mut by_time = txn.open_table(IDEMPOTENCY_BY_TIME)?;
            for (at, index, key) in old_keys {
                by_time.remove((at, index.as_slice(), key.as_slice()))?;
                let current = idempotency
                    .get((index.as_slice(), key.as_slice()))?
                    .map(|row| row.value().1);
                if current == Some(at) {
                    idempotency.remove((index.as_slice(), key.as_slice()))?;
                }
            }
        }
        txn.commit()?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::collections::BTreeMap;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::settings::Storage;
    use crate::store::{Change, Precondition};
    use kv_core::conditional::Condition;

    const NONE: &dyn Fn(i32) -> bool = &|_| false;
    const ALL: &dyn Fn(i32) -> bool = &|_| true;
    const NOW: u64 = 1_000_000;

    fn memory() -> Store {
        Store::open(&Storage::Memory, None).expect("store")
    }

    fn sealed() -> Store {
        let password = kv_core::secret::Secret::new("decisions".to_owned());
        Store::open(&Storage::Memory, Some(&password)).expect("store")
    }

    /// A record on the simulated topic (one partition).
    #[derive(Debug, Clone)]
    struct Logged {
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        condition: Option<Condition>,
        idempotency_key: Option<Vec<u8>>,
        /// A repair's `(stale offset, version)`.
        repairs: Option<(i64, Option<i64>)>,
    }

    impl Logged {
        fn client(key: &[u8], value: Option<&[u8]>, condition: Option<Condition>) -> Self {
            Self {
                key: key.to_vec(),
                value: value.map(<[u8]>::to_vec),
                condition,
                idempotency_key: None,
                repairs: None,
            }
        }

        fn change(&self, offset: i64) -> Change<'_> {
            let decided =
                (self.condition.is_some() || self.idempotency_key.is_some()).then(|| Decided {
                    condition: self.condition.clone(),
                    idempotency_key: self.idempotency_key.as_deref(),
                    timestamp_ms: NOW,
                    published: false,
                });
            let precondition = self
                .repairs
                .map(|(stale, version)| Precondition::Repairs(stale, version));
            match &self.value {
                Some(value) => Change::Put {
                    record_key: &self.key,
                    user_key: Cow::Borrowed(&self.key),
                    partition: 0,
                    offset,
                    correlation_id: None,
                    traceparent: None,
                    value: Cow::Borrowed(value),
                    expires_at_ms: None,
                    precondition,
                    decided,
                },
                None => Change::Delete {
                    record_key: &self.key,
                    user_key: Some(&self.key),
                    partition: 0,
                    offset,
                    traceparent: None,
                    precondition,
                    decided,
                },
            }
        }
    }

    /// Applies `log[*from..upto]` and moves `from` on.
    fn catch_up(store: &Store, log: &[Logged], from: &mut usize, upto: usize, owner: bool) {
        if upto <= *from {
            return;
        }
        let changes: Vec<Change<'_>> = (*from..upto).map(|i| log[i].change(i as i64)).collect();
        let swept = if owner { ALL } else { NONE };
        store
            .apply_at(&changes, &BTreeMap::from([(0, upto as i64)]), NOW, swept)
            .expect("apply");
        *from = upto;
    }

    /// Each key's value and version.
    fn state(store: &Store) -> BTreeMap<Vec<u8>, (Vec<u8>, i64)> {
        let (keys, _) = store.list_keys(b"", None, usize::MAX).expect("keys");
        keys.into_iter()
            .map(|key| {
                let entry = store.get(&key).expect("get").expect("entry");
                (key, (entry.value, entry.offset))
            })
            .collect()
    }

    /// What an owner produces: a repair re-asserting the key's state, with its version.
    fn repairs(store: &Store) -> Vec<Logged> {
        store
            .pending_repairs(NOW, usize::MAX)
            .expect("pending")
            .into_iter()
            .map(|owed| Logged {
                key: owed.record_key,
                value: owed.state.as_ref().map(|(_, e)| e.value.clone()),
                condition: None,
                idempotency_key: None,
                repairs: Some((
                    owed.stale_offset,
                    owed.state.as_ref().map(|(_, e)| e.offset),
                )),
            })
            .collect()
    }

    fn apply(store: &Store, log: &[Logged], owner: bool) {
        let mut from = 0;
        catch_up(store, log, &mut from, log.len(), owner);
    }

    #[test]
    fn a_condition_decides_in_log_order_and_every_decision_is_kept_for_the_writer() {
        let store = memory();
        let log = vec![
            Logged::client(b"k", Some(b"1"), Some(Condition::IfAbsent)),
            Logged::client(b"k", Some(b"2"), Some(Condition::IfAbsent)),
            Logged::client(
                b"k",
                Some(b"3"),
                Some(Condition::IfMatch(vec![Version {
                    partition: 0,
                    offset: 0,
                }])),
            ),
            Logged::client(
                b"k",
                Some(b"4"),
                Some(Condition::IfMatch(vec![Version {
                    partition: 0,
                    offset: 0,
                }])),
            ),
            Logged::client(b"k", None, Some(Condition::IfMatch(vec![]))),
            Logged::client(b"gone", None, Some(Condition::IfExists)),
            Logged::client(b"k", None, Some(Condition::IfExists)),
        ];
        apply(&store, &log, false);
        let outcomes: Vec<(bool, Option<i64>)> = (0..log.len() as i64)
            .map(|o| {
                let outcome = store.outcome(0, o).expect("outcome").expect("decided");
                (outcome.applied, outcome.version.map(|v| v.offset))
            })
            .collect();
        assert_eq!(
            outcomes,
            [
                (true, Some(0)),
                (false, Some(0)),
                (true, Some(2)),
                (false, Some(2)),
                (false, Some(2)),
                (false, None),
                (true, None),
            ]
        );
        assert!(store.get(b"k").expect("get").is_none());
        assert_eq!(store.outcome(1, 0).expect("outcome"), None);
    }

    #[test]
    fn a_repeated_idempotency_key_changes_nothing_and_answers_the_first_outcome() {
        let store = memory();
        let mut first = Logged::client(b"c", Some(b"1"), Some(Condition::IfAbsent));
        first.idempotency_key = Some(b"retry-1".to_vec());
        let mut other = Logged::client(b"c", Some(b"x"), None);
        other.idempotency_key = Some(b"retry-2".to_vec());
        let log = vec![first.clone(), other, first];
        apply(&store, &log, false);
        let repeat = store.outcome(0, 2).expect("outcome").expect("decided");
        assert!(repeat.applied, "the first one took effect");
        assert_eq!(repeat.first, Some(0));
        assert_eq!(
            repeat.version,
            Some(Version {
                partition: 0,
                offset: 1
            })
        );
        assert_eq!(store.get(b"c").expect("get").expect("entry").value, b"x");
    }

    #[test]
    fn a_decided_record_that_would_state_another_value_alone_owes_a_repair_that_keeps_the_version()
    {
        let owner = memory();
        let log = vec![
            Logged::client(b"k", Some(b"1"), None),
            Logged::client(
                b"k",
                Some(b"2"),
                Some(Condition::IfMatch(vec![Version {
                    partition: 0,
                    offset: 0,
                }])),
            ),
        ];
        apply(&owner, &log, true);
        let owed = repairs(&owner);
        assert_eq!(
            owed.len(),
            1,
            "applied, but alone it would find no version 0"
        );
        assert_eq!(owed[0].repairs, Some((1, Some(1))));
        let mut log = log;
        log.extend(owed.iter().cloned());
        log.extend(owed);
        let mut from = 2;
        catch_up(&owner, &log, &mut from, log.len(), true);
        assert!(repairs(&owner).is_empty(), "the repair, twice, settles it");
        assert_eq!(state(&owner)[&b"k".to_vec()], (b"2".to_vec(), 1));
        // The owner that is not one: no bookkeeping.
        let plain = memory();
        apply(&plain, &log[..2], false);
        assert!(repairs(&plain).is_empty());
    }

    /// Clients increment counters with GET-then-If-Match against replicas that lag, create keys
    /// with If-None-Match, delete with If-Match, repeat records by idempotency key, and write
    /// unconditionally; two owners that lag by different amounts (one of them paused for long
    /// stretches) produce repairs at the log's end. Every replica decides alike; each counter
    /// ends at exactly the number of increments answered as applied; and a fresh replica fed
    /// only the last record of every key ends on the same values and versions.
    #[test]
    fn conditional_writes_lose_nothing_live_or_after_compaction_with_two_owners() {
        simulate(0..30, memory);
    }

    #[test]
    fn conditional_writes_decide_alike_in_stores_encrypted_at_rest() {
        simulate(100..103, sealed);
    }

    fn simulate(seeds: std::ops::Range<u64>, open: fn() -> Store) {
        let mut repairs_seen = 0;
        for seed in seeds {
            let mut rng = StdRng::seed_from_u64(seed);
            let (reader, owner_a, owner_b) = (open(), open(), open());
            let (mut read_to, mut a_to, mut b_to) = (0usize, 0usize, 0usize);
            let mut log: Vec<Logged> = Vec::new();
            let mut increments: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
            let mut asked: Vec<(usize, Vec<u8>)> = Vec::new();
            for step in 0..400 {
                let choice = rng.random_range(0..10);
                // Counters are only ever incremented; other keys are written and deleted.
                let prefix = if choice <= 6 { "c" } else { "d" };
                let key = format!("{prefix}{}", rng.random_range(0..4)).into_bytes();
                let seen = reader.get(&key).expect("get");
                let record = match choice {
                    0..=5 => {
                        let (value, condition) = match &seen {
                            None => (1, Condition::IfAbsent),
                            Some(entry) => (
                                String::from_utf8_lossy(&entry.value)
                                    .parse::<i64>()
                                    .expect("a counter")
                                    + 1,
                                Condition::IfMatch(vec![Version {
                                    partition: 0,
                                    offset: entry.offset,
                                }]),
                            ),
                        };
                        let mut record = Logged::client(
                            &key,
                            Some(value.to_string().as_bytes()),
                            Some(condition),
                        );
                        record.idempotency_key = Some(format!("inc-{step}").into_bytes());
                        asked.push((log.len(), key.clone()));
                        record
                    }
                    6 => {
                        // A retry of an earlier increment, by its idempotency key.
                        match asked.iter().rev().nth(rng.random_range(0..3)) {
                            Some((at, _)) => log[*at].clone(),
                            None => continue,
                        }
                    }
                    7 => {
                        let condition = seen.as_ref().map(|entry| {
                            Condition::IfMatch(vec![Version {
                                partition: 0,
                                offset: entry.offset,
                            }])
                        });
                        Logged::client(&key, None, condition.or(Some(Condition::IfExists)))
                    }
                    _ => Logged::client(&key, Some(b"0"), None),
                };
                log.push(record);
                let upto = log.len().saturating_sub(rng.random_range(0..5));
                catch_up(&reader, &log, &mut read_to, upto, false);
                let upto = log.len().saturating_sub(rng.random_range(0..3));
                catch_up(&owner_a, &log, &mut a_to, upto, true);
                let owed = repairs(&owner_a);
                repairs_seen += owed.len();
                log.extend(owed);
                // The second owner wakes now and then, far behind, and acts all the same.
                if rng.random_bool(0.1) {
                    let upto = log.len().saturating_sub(rng.random_range(0..40));
                    catch_up(&owner_b, &log, &mut b_to, upto, true);
                    log.extend(repairs(&owner_b));
                }
            }
            // Quiet: the owners catch up and repair until nothing is owed.
            for _ in 0..10 {
                for (owner, to) in [(&owner_a, &mut a_to), (&owner_b, &mut b_to)] {
                    let end = log.len();
                    catch_up(owner, &log, to, end, true);
                    log.extend(repairs(owner));
                }
            }
            let end = log.len();
            catch_up(&reader, &log, &mut read_to, end, false);
            for (owner, to) in [(&owner_a, &mut a_to), (&owner_b, &mut b_to)] {
                catch_up(owner, &log, to, end, true);
                assert!(
                    repairs(owner).is_empty(),
                    "seed {seed}: repairs never settle"
                );
            }
            let live = state(&reader);
            assert_eq!(state(&owner_a), live, "seed {seed}: replicas disagree");
            assert_eq!(state(&owner_b), live, "seed {seed}: replicas disagree");
            // Every decision alike on every replica.
            for offset in 0..end as i64 {
                let decided = reader.outcome(0, offset).expect("outcome");
                assert_eq!(owner_a.outcome(0, offset).expect("outcome"), decided);
                assert_eq!(owner_b.outcome(0, offset).expect("outcome"), decided);
            }
            // Each counter holds exactly the number of increments answered as applied.
            for (at, key) in &asked {
                let outcome = reader
                    .outcome(0, *at as i64)
                    .expect("outcome")
                    .expect("decided");
                if outcome.applied && outcome.first.is_none() {
                    *increments.entry(key.clone()).or_default() += 1;
                }
            }
            for (key, count) in &increments {
                let value: i64 = String::from_utf8_lossy(&live[key].0)
                    .parse()
                    .expect("a counter");
                assert_eq!(
                    value, *count,
                    "seed {seed}: {key:?} lost or doubled increments"
                );
            }
            // Compaction: the last record of every key, in log order, into a fresh replica.
            let mut last = BTreeMap::new();
            for (offset, record) in log.iter().enumerate() {
                last.insert(record.key.clone(), offset);
            }
            let mut kept: Vec<usize> = last.into_values().collect();
            kept.sort_unstable();
            let fresh = open();
            let changes: Vec<Change<'_>> = kept.iter().map(|&i| log[i].change(i as i64)).collect();
            fresh
                .apply_at(&changes, &BTreeMap::from([(0, end as i64)]), NOW, NONE)
                .expect("apply");
            assert_eq!(
                state(&fresh),
                live,
                "seed {seed}: the compacted replay differs"
            );
        }
        assert!(repairs_seen > 0, "the simulation never needed a repair");
    }
}
