//! The TTL rules of the store (docs/architecture.md, "Keys that expire"). The write transaction
//! ([`super::write`]) applies each record; what these rules keep beside the entries for the
//! sweep, the purge and the repairs (the expiry index, the deletes remembered, the repairs owed)
//! is written and read here, so the rules can be read in one place.
//!
//! - A put that expires is indexed by its expiry (`EXPIRIES`); reads hide it from its expiry on,
//!   and a put already expired when applied applies as a delete, except on a partition this
//!   process sweeps: there it stays, hidden, until the sweeper's own tombstone for it comes back,
//!   so that tombstone is produced even for a put replayed long after it expired.
//! - Every delete applied is remembered for [`DELETE_MEMORY`] (`DELETED`), so a repair can tell
//!   "deleted since" from "never seen" (a replica replaying the compacted topic).
//! - A record the sweeper wrote carries a [`super::Precondition`]: an expiry tombstone applies only
//!   while the key's entry is the put it expires; a repair only if nothing of the key newer than
//!   the stale record it repairs was applied. Any other record is the client's, and wins.
//! - On a swept partition, a sweeper record that, left as the key's last record, would make a
//!   replica replaying the compacted topic end in another state than this one is *harmful*: the
//!   store owes a repair (`PENDING_REPAIRS`, in the same transaction as the record's offset), and
//!   the sweeper re-asserts the key's state after it.

use std::time::Duration;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, WriteTransaction};

use super::entry::{decode_entry, open_entry, StoredEntry};
use super::tables::{
    DELETED, DELETED_BY_TIME, ENTRIES, EXPIRIES, PENDING_REPAIRS, RECORD_KEYS, SEALED_EXPIRIES,
};
use super::write::{Applied, Writing};
use super::{Store, StoreError};

/// How long an applied delete is remembered. A repair the sweeper makes lands within its
/// repair latency (milliseconds) after the stale record it repairs, and any delete a repair must
/// not undo lies between the two, so a delete is needed only that long; the bound is the
/// topic's recommended `min.compaction.lag.ms`, within which every repair must land anyway.
pub const DELETE_MEMORY: Duration = Duration::from_secs(15 * 60);

/// An expired entry the sweep found: what its tombstone needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    pub expires_at_ms: u64,
    /// The Kafka key of the entry's records: the tombstone's key.
    pub record_key: Vec<u8>,
    pub partition: i32,
    /// The put the tombstone expires.
    pub offset: i64,
    /// Where the next sweep of this order continues.
    pub cursor: (u64, Vec<u8>),
}

/// An entry a purge removed at its expiry: what a watch's `delete` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purged {
    pub user_key: Vec<u8>,
    pub partition: i32,
    /// The put that expired.
    pub offset: i64,
}

/// A repair the sweeper owes: the key's state as it is now, after its stale record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRepair {
    pub record_key: Vec<u8>,
    pub partition: i32,
    /// The offset of the stale sweeper record this repairs (the repair's `X-KV-Repair-Of`).
    pub stale_offset: i64,
    /// The key's live entry and its user key, re-put by the repair; `None`: the key is absent,
    /// and the repair is a tombstone.
    pub state: Option<(Vec<u8>, StoredEntry)>,
}

pub(super) fn ensure_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(EXPIRIES)?;
    txn.open_table(DELETED)?;
    txn.open_table(DELETED_BY_TIME)?;
    txn.open_table(PENDING_REPAIRS)?;
    txn.open_table(SEALED_EXPIRIES)?;
    Ok(())
}

pub(super) fn reset_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.delete_table(EXPIRIES)?;
    txn.delete_table(DELETED)?;
    txn.delete_table(DELETED_BY_TIME)?;
    txn.delete_table(PENDING_REPAIRS)?;
    txn.delete_table(SEALED_EXPIRIES)?;
    ensure_tables(txn)
}

impl Writing<'_> {
    /// Notes the delete at `offset`, forgetting the one it replaces.
    pub(super) fn remember_delete(
        &mut self,
        record_key: &[u8],
        offset: i64,
    ) -> Result<(), StoreError> {
        let index = self.index(record_key);
        let old = self
            .deleted
            .insert(index.as_ref(), (offset as u64, self.now_ms))?
            .map(|old| old.value().1);
        if let Some(at) = old {
            self.deleted_by_time.remove((at, index.as_ref()))?;
        }
        self.deleted_by_time
            .insert((self.now_ms, index.as_ref()), ())?;
        Ok(())
    }

    /// The offset of the newest record of the key applied here and still known: its entry, or
    /// its last delete within [`DELETE_MEMORY`]. `None`: never seen, or too long ago.
    pub(super) fn last_known(
        &self,
        record_key: &[u8],
        user_key: Option<&[u8]>,
    ) -> Result<Option<i64>, StoreError> {
        let entry = match user_key {
            Some(user_key) => self.entry(user_key)?.map(|entry| entry.offset),
            None => None,
        };
        let index = self.index(record_key);
        let deleted = self
            .deleted
            .get(index.as_ref())?
            .map(|row| row.value().0 as i64);
        Ok(entry.max(deleted))
    }

    /// Settles the repair owed for the stale record at `stale_offset`: its repair came back.
    pub(super) fn settle(
        &mut self,
        record_key: &[u8],
        stale_offset: i64,
    ) -> Result<(), StoreError> {
        let index = self.index(record_key).into_owned();
        let owed = self
            .pending
            .get(index.as_slice())?
            .map(|row| row.value().1 as i64);
        if owed == Some(stale_offset) {
            self.pending.remove(index.as_slice())?;
        }
        Ok(())
    }

    /// Drops the repair owed for the key, if any: its last record now states it by itself.
    pub(super) fn forgive(&mut self, record_key: &[u8]) -> Result<(), StoreError> {
        let index = self.index(record_key).into_owned();
        self.pending.remove(index.as_slice())?;
        Ok(())
    }

    /// Owes a repair re-asserting the key's state after the stale record at `stale_offset`.
    pub(super) fn owe(
        &mut self,
        record_key: &[u8],
        partition: i32,
        stale_offset: i64,
    ) -> Result<(), StoreError> {
        let index = self.index(record_key).into_owned();
        let sealed = self.seal_record_key(&index, record_key);
        self.pending.insert(
            index.as_slice(),
            (partition as u32, stale_offset as u64, sealed.as_slice()),
        )?;
        Ok(())
    }

    /// Whether the key's state here is what a replica that saw nothing of it before would reach
    /// from its last record alone: `alone` is that state (value, expiry, version), `None`
    /// absent. When it is not, and `partition` is one this process is a candidate owner of, the
    /// record is harmful left last (compaction may keep only it) and a repair is owed; when it
    /// is, any repair owed for an earlier record of the key is no longer needed.
    #[allow(clippy::too_many_arguments)] // the record's coordinates, each needed; one caller
    pub(super) fn judge(
        &mut self,
        record_key: &[u8],
        user_key: Option<&[u8]>,
        partition: i32,
        offset: i64,
        alone: Option<(&[u8], Option<u64>, i64)>,
        swept: &dyn Fn(i32) -> bool,
        applied: &mut Applied,
    ) -> Result<(), StoreError> {
        if !swept(partition) {
            return Ok(());
        }
        let alone = alone.filter(|(_, expires, _)| expires.is_none_or(|at| at > self.now_ms));
        let state = self.live_entry(user_key)?;
        let same = match (&state, alone) {
            (None, None) => true,
            (Some(entry), Some((value, expires, version))) => {
                entry.value == value && entry.expires_at_ms == expires && entry.offset == version
            }
            _ => false,
        };
        if same {
            self.forgive(record_key)?;
        } else {
            self.owe(record_key, partition, offset)?;
            applied.repairs_due += 1;
        }
        Ok(())
    }
}

/// The first key of an expiry-ordered table after every key of expiry `at_ms`.
fn after_expiry(at_ms: u64) -> (u64, &'static [u8]) {
    (at_ms.saturating_add(1), &[])
}

impl Store {
    /// Up to `limit` entries expired by `now_ms` on partitions `swept` holds, in expiry order,
    /// after `after` (a previous [`Expired::cursor`]). At most `scan` rows are read, so the
    /// rows of other partitions never make a sweep long.
    pub fn expired(
        &self,
        now_ms: u64,
        after: Option<&(u64, Vec<u8>)>,
        limit: usize,
        scan: usize,
        swept: &dyn Fn(i32) -> bool,
    ) -> Result<Vec<Expired>, StoreError> {
        let txn = self.db.begin_read()?;
        let expiries = txn.open_table(EXPIRIES)?;
        let end = after_expiry(now_ms);
        let rows = match after {
            None => expiries.range(..end)?,
            Some((at, index)) => {
                if *at > now_ms {
                    return Ok(Vec::new());
                }
                expiries.range((
                    std::ops::Bound::Excluded((*at, index.as_slice())),
                    std::ops::Bound::Excluded(end),
                ))?
            }
        };
        let mut found = Vec::new();
        for row in rows.take(scan) {
            let (key, value) = row?;
            let (expires_at_ms, index) = key.value();
            let (partition, offset, sealed) = value.value();
            if !swept(partition as i32) {
                continue;
            }
            found.push(Expired {
                expires_at_ms,
                record_key: self.open_record_key(index, sealed)?,
                partition: partition as i32,
                offset: offset as i64,
                cursor: (expires_at_ms, index.to_vec()),
            });
            if found.len() == limit {
                break;
            }
        }
        Ok(found)
    }

    fn open_record_key(&self, index: &[u8], sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        match &self.cipher {
            None => Ok(sealed.to_vec()),
            Some(cipher) => cipher
                .open(index, sealed)
                .map_err(|_| StoreError::CorruptEntry),
        }
    }

    /// The earliest expiry in the store, expired or not; the sweep lag is measured from it.
    pub fn earliest_expiry(&self) -> Result<Option<u64>, StoreError> {
        let txn = self.db.begin_read()?;
        let expiries = txn.open_table(EXPIRIES)?;
        let earliest = expiries.first()?.map(|(key, _)| key.value().0);
        Ok(earliest)
    }

    /// Removes, in one transaction, up to `limit` entries expired by `now_ms` on partitions
    /// `swept` does not hold (reading at most `scan` expiry rows), and up to `limit` deletes
    /// remembered for longer than [`DELETE_MEMORY`]. Returns the entries it removed, for the
    /// watches: a replica that is not the sweeper sees no record of these deletes.
    pub fn purge(
        &self,
        now_ms: u64,
        limit: usize,
        scan: usize,
        swept: &dyn Fn(i32) -> bool,
    ) -> Result<Vec<Purged>, StoreError> {
        // Looked for in a read transaction first: an idle replica commits nothing.
        let forget_before = now_ms.saturating_sub(DELETE_MEMORY.as_millis() as u64);
        let (due, forgotten) = {
            let txn = self.db.begin_read()?;
            let expiries = txn.open_table(EXPIRIES)?;
            let mut due = Vec::new();
            for row in expiries.range(..after_expiry(now_ms))?.take(scan) {
                let (key, value) = row?;
                let (at, index) = key.value();
                let (partition, _, sealed) = value.value();
                if !swept(partition as i32) {
                    due.push((at, index.to_vec(), sealed.to_vec()));
                    if due.len() == limit {
                        break;
                    }
                }
            }
            let deleted_by_time = txn.open_table(DELETED_BY_TIME)?;
            let mut forgotten = Vec::new();
            for row in deleted_by_time
                .range(..(forget_before, &[][..]))?
                .take(limit)
            {
                let (key, _) = row?;
                let (at, index) = key.value();
                forgotten.push((at, index.to_vec()));
            }
            (due, forgotten)
        };
        if due.is_empty() && forgotten.is_empty() {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_write()?;
        let mut purged = Vec::new();
        {
            let mut writing = Writing::open(&txn, self.cipher.as_ref(), None, now_ms)?;
            for (at, index, sealed) in due {
                // Only the consumer thread writes, so the row is as read; checked all the same.
                if writing.expiries.remove((at, index.as_slice()))?.is_some() {
                    let record_key = self.open_record_key(&index, &sealed)?;
                    let removed = writing
                        .entries
                        .remove(index.as_slice())?
                        .map(|raw| self.purged(&index, raw.value()));
                    writing.sealed_expiries.remove(index.as_slice())?;
                    writing.record_keys.remove(record_key.as_slice())?;
                    if let Some(removed) = removed {
                        purged.push(removed?);
                    }
                }
            }
            for (at, index) in forgotten {
                writing.deleted_by_time.remove((at, index.as_slice()))?;
                writing.deleted.remove(index.as_slice())?;
            }
        }
        txn.commit()?;
        if !purged.is_empty() {
            self.refresh_read_view();
        }
        Ok(purged)
    }

    /// The user key and origin of the entry stored as `raw` under `index`.
    fn purged(&self, index: &[u8], raw: &[u8]) -> Result<Purged, StoreError> {
        let (user_key, entry) = match &self.cipher {
            None => (index.to_vec(), decode_entry(raw)?),
            Some(cipher) => {
                let (user_key, entry) = open_entry(cipher, index, raw)?;
                (user_key, decode_entry(&entry)?)
            }
        };
        Ok(Purged {
            user_key,
            partition: entry.partition,
            offset: entry.offset,
        })
    }

    /// Up to `limit` repairs the sweeper owes, each with the key's state at `now_ms`.
    pub fn pending_repairs(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<PendingRepair>, StoreError> {
        let txn = self.db.begin_read()?;
        let pending = txn.open_table(PENDING_REPAIRS)?;
        let record_keys = txn.open_table(RECORD_KEYS)?;
        let entries = txn.open_table(ENTRIES)?;
        let mut repairs = Vec::new();
        for row in pending.iter()?.take(limit) {
            let (index, value) = row?;
            let (partition, stale_offset, sealed) = value.value();
            let record_key = self.open_record_key(index.value(), sealed)?;
            let user_key = match record_keys.get(record_key.as_slice())? {
                None => record_key.clone(),
                Some(mapped) => match &self.cipher {
                    None => mapped.value().to_vec(),
                    Some(cipher) => cipher
                        .open(&record_key, mapped.value())
                        .map_err(|_| StoreError::CorruptEntry)?,
                },
            };
            let state = self
                .lookup_any(&entries, &user_key)?
                .filter(|entry| entry.is_live(now_ms))
                .map(|entry| (user_key, entry));
            repairs.push(PendingRepair {
                record_key,
                partition: partition as i32,
                stale_offset: stale_offset as i64,
                state,
            });
        }
        Ok(repairs)
    }

    /// How many repairs the sweeper owes.
    pub fn pending_repair_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(PENDING_REPAIRS)?.len()?)
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::collections::{BTreeMap, BTreeSet};

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::settings::Storage;
    use crate::store::entry::{decode_entry, open_entry};
    use crate::store::testing::expiring_put as put;
    use crate::store::{Change, Precondition};

    const NONE: &dyn Fn(i32) -> bool = &|_| false;
    const ALL: &dyn Fn(i32) -> bool = &|_| true;

    fn delete(key: &[u8], offset: i64, precondition: Option<Precondition>) -> Change<'_> {
        Change::Delete {
            record_key: key,
            user_key: Some(key),
            partition: 0,
            offset,
            traceparent: None,
            precondition,
            decided: None,
        }
    }

    fn repair<'a>(key: &'a [u8], offset: i64, stale: i64, value: &'a [u8]) -> Change<'a> {
        Change::Put {
            record_key: key,
            user_key: Cow::Borrowed(key),
            partition: 0,
            offset,
            correlation_id: None,
            traceparent: None,
            value: Cow::Borrowed(value),
            expires_at_ms: None,
            precondition: Some(Precondition::Repairs(stale, None)),
            decided: None,
        }
    }

    fn apply(
        store: &Store,
        changes: &[Change<'_>],
        now: u64,
        swept: &dyn Fn(i32) -> bool,
    ) -> Applied {
        let next = changes.iter().map(|c| c.offset() + 1).max().unwrap_or(0);
        store
            .apply_at(changes, &BTreeMap::from([(0, next)]), now, swept)
            .expect("apply")
    }

    /// What a read at `now` sees: every live key and its value.
    fn state_at(store: &Store, now: u64) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let txn = store.db.begin_read().expect("read");
        let entries = txn.open_table(ENTRIES).expect("entries");
        let mut state = BTreeMap::new();
        for row in entries.iter().expect("iter") {
            let (key, raw) = row.expect("row");
            let (key, entry) = match &store.cipher {
                None => (
                    key.value().to_vec(),
                    decode_entry(raw.value()).expect("entry"),
                ),
                Some(cipher) => {
                    let (key, entry) =
                        open_entry(cipher, key.value(), raw.value()).expect("sealed entry");
                    (key, decode_entry(&entry).expect("entry"))
                }
            };
            if entry.is_live(now) {
                state.insert(key, entry.value);
            }
        }
        state
    }

    /// A memory store sealed as a disk store with a password is, for the rules that differ
    /// under encryption at rest (keys as MACs, expiries kept beside the sealed entries).
    fn sealed() -> Store {
        let password = kv_core::secret::Secret::new("simulation".to_owned());
        let store = Store::open(&Storage::Memory, Some(&password)).expect("store");
        assert!(store.is_encrypted());
        store
    }

    fn memory() -> Store {
        Store::open(&Storage::Memory, None).expect("store")
    }

    #[test]
    fn an_expiring_put_is_hidden_at_its_expiry_then_purged_and_a_later_write_without_ttl_clears_it()
    {
        let store = memory();
        apply(
            &store,
            &[
                put(b"a", 0, b"1", Some(1_000)),
                put(b"b", 1, b"2", Some(1_000)),
            ],
            500,
            NONE,
        );
        assert_eq!(state_at(&store, 999).len(), 2);
        apply(&store, &[put(b"b", 2, b"lasting", None)], 600, NONE);
        assert_eq!(
            state_at(&store, 1_000),
            BTreeMap::from([(b"b".to_vec(), b"lasting".to_vec())]),
            "hidden at its expiry, not a millisecond later"
        );
        assert_eq!(store.earliest_expiry().expect("earliest"), Some(1_000));
        assert!(store.purge(999, 10, 100, NONE).expect("purge").is_empty());
        let purged = store.purge(1_000, 10, 100, NONE).expect("purge");
        assert_eq!(
            purged,
            vec![Purged {
                user_key: b"a".to_vec(),
                partition: 0,
                offset: 0
            }],
            "what a watch's delete names"
        );
        assert_eq!(
            store.key_count().expect("count"),
            1,
            "the dead key left the store"
        );
        assert_eq!(store.earliest_expiry().expect("earliest"), None);
    }

    #[test]
    fn a_put_already_expired_when_applied_deletes_the_key_unless_its_partition_is_swept() {
        let reader = memory();
        apply(&reader, &[put(b"k", 0, b"old", None)], 100, NONE);
        let applied = apply(&reader, &[put(b"k", 1, b"new", Some(50))], 100, NONE);
        assert_eq!(applied.expired_on_replay, 1);
        assert_eq!(reader.key_count().expect("count"), 0);

        let sweeper = memory();
        apply(
            &sweeper,
            &[put(b"k", 0, b"old", None), put(b"k", 1, b"new", Some(50))],
            100,
            ALL,
        );
        assert!(state_at(&sweeper, 100).is_empty());
        let expired = sweeper.expired(100, None, 10, 100, ALL).expect("expired");
        assert_eq!(expired.len(), 1, "kept for its tombstone");
        assert_eq!(
            (expired[0].record_key.as_slice(), expired[0].offset),
            (&b"k"[..], 1)
        );
        assert_eq!(
            sweeper.purge(100, 10, 100, ALL).expect("purge"),
            vec![],
            "a swept entry waits for its tombstone"
        );
    }

    #[test]
    fn an_expiry_tombstone_names_a_put_by_partition_and_offset_not_offset_alone() {
        // A key whose partition changed (partitions added to the topic): its live put is at
        // offset 5 of partition 1, and partition 0's sweeper expires offset 5 of partition 0.
        let store = memory();
        let mut moved = put(b"k", 5, b"on partition 1", Some(1_000));
        if let Change::Put { partition, .. } = &mut moved {
            *partition = 1;
        }
        store
            .apply_at(&[moved], &BTreeMap::from([(1, 6)]), 0, NONE)
            .expect("apply");
        let applied = apply(
            &store,
            &[delete(b"k", 6, Some(Precondition::Expires(5)))],
            500,
            NONE,
        );
        assert_eq!(
            applied.tombstoned, 0,
            "partition 0's offset 5 is another record"
        );
        assert_eq!(
            state_at(&store, 500),
            BTreeMap::from([(b"k".to_vec(), b"on partition 1".to_vec())])
        );
    }

    #[test]
    fn an_expiry_tombstone_deletes_only_the_put_it_names_and_a_stale_one_owes_a_repair_on_the_sweeper(
    ) {
        for swept in [NONE, ALL] {
            let store = memory();
            apply(&store, &[put(b"k", 0, b"first", Some(1_000))], 0, swept);
            let applied = apply(
                &store,
                &[delete(b"k", 1, Some(Precondition::Expires(0)))],
                1_001,
                swept,
            );
            assert_eq!(applied.tombstoned, 1);
            assert_eq!(store.key_count().expect("count"), 0);

            apply(
                &store,
                &[
                    put(b"k", 2, b"second", Some(2_000)),
                    put(b"k", 3, b"rewritten", None),
                ],
                1_500,
                swept,
            );
            let applied = apply(
                &store,
                &[delete(b"k", 4, Some(Precondition::Expires(2)))],
                2_001,
                swept,
            );
            assert_eq!((applied.stale, applied.tombstoned), (1, 0));
            assert_eq!(
                state_at(&store, 2_001),
                BTreeMap::from([(b"k".to_vec(), b"rewritten".to_vec())])
            );
            let owed = store.pending_repairs(2_001, 10).expect("pending");
            if std::ptr::eq(swept, ALL) {
                assert_eq!(applied.repairs_due, 1);
                assert_eq!(owed.len(), 1);
                assert_eq!(owed[0].stale_offset, 4);
                let (user_key, entry) = owed[0].state.clone().expect("the live write");
                assert_eq!(
                    (user_key.as_slice(), entry.value.as_slice()),
                    (&b"k"[..], &b"rewritten"[..])
                );
                apply(&store, &[repair(b"k", 5, 4, b"rewritten")], 2_002, swept);
                assert!(
                    store
                        .pending_repairs(2_002, 10)
                        .expect("pending")
                        .is_empty(),
                    "settled"
                );
                assert_eq!(
                    store.get(b"k").expect("get").expect("k").offset,
                    5,
                    "the repair is the entry now"
                );
            } else {
                assert!(owed.is_empty(), "only the sweeper owes repairs");
            }
        }
    }

    #[test]
    fn a_repair_applies_on_first_sight_and_over_the_write_it_copies_but_never_over_a_later_write_or_delete(
    ) {
        let fresh = memory();
        apply(&fresh, &[repair(b"k", 9, 7, b"v")], 0, NONE);
        assert_eq!(
            state_at(&fresh, 0).get(&b"k"[..]).map(Vec::as_slice),
            Some(&b"v"[..]),
            "a replica replaying the compacted topic"
        );

        let live = memory();
        apply(
            &live,
            &[
                put(b"k", 5, b"v", None),
                delete(b"k", 7, Some(Precondition::Expires(3))),
                repair(b"k", 9, 7, b"v"),
            ],
            0,
            NONE,
        );
        assert_eq!(live.get(b"k").expect("get").expect("k").offset, 9);

        let rewritten = memory();
        apply(
            &rewritten,
            &[
                put(b"k", 5, b"v", None),
                delete(b"k", 7, Some(Precondition::Expires(3))),
                put(b"k", 8, b"newer", None),
                repair(b"k", 9, 7, b"v"),
            ],
            0,
            NONE,
        );
        assert_eq!(
            state_at(&rewritten, 0).get(&b"k"[..]).map(Vec::as_slice),
            Some(&b"newer"[..])
        );

        let deleted = memory();
        apply(
            &deleted,
            &[
                put(b"k", 5, b"v", None),
                delete(b"k", 7, Some(Precondition::Expires(3))),
                delete(b"k", 8, None),
                repair(b"k", 9, 7, b"v"),
            ],
            0,
            NONE,
        );
        assert!(
            state_at(&deleted, 0).is_empty(),
            "a delete since the stale record is remembered"
        );
    }

    #[test]
    fn deletes_are_forgotten_after_the_delete_memory() {
        let store = memory();
        apply(&store, &[delete(b"k", 3, None)], 1_000, NONE);
        let memory_ms = DELETE_MEMORY.as_millis() as u64;
        store
            .purge(1_000 + memory_ms, 10, 100, NONE)
            .expect("purge");
        apply(&store, &[repair(b"k", 9, 2, b"v")], 1_000 + memory_ms, NONE);
        assert!(
            state_at(&store, 0).is_empty(),
            "still remembered at the bound"
        );
        store
            .purge(1_001 + memory_ms, 10, 100, NONE)
            .expect("purge");
        apply(
            &store,
            &[repair(b"k", 10, 2, b"v")],
            1_001 + memory_ms,
            NONE,
        );
        assert_eq!(state_at(&store, 0).len(), 1, "forgotten after it");
    }

    #[test]
    fn an_encrypted_store_keeps_expiries_without_keys_in_clear() {
        let dir = tempfile::tempdir().expect("dir");
        let storage = Storage::Disk {
            location: dir.path().to_owned(),
        };
        let password = kv_core::secret::Secret::new("pw".to_owned());
        let store = Store::open(&storage, Some(&password)).expect("store");
        apply(
            &store,
            &[
                put(b"secret-key-1", 0, b"v", Some(1_000)),
                delete(b"secret-key-2", 1, None),
            ],
            0,
            ALL,
        );
        apply(
            &store,
            &[
                put(b"secret-key-1", 2, b"w", None),
                delete(b"secret-key-1", 3, Some(Precondition::Expires(0))),
            ],
            500,
            ALL,
        );
        let expired = store.expired(2_000, None, 10, 100, ALL).expect("expired");
        assert!(
            expired.is_empty(),
            "the stale tombstone found a newer write"
        );
        assert_eq!(
            store.pending_repairs(2_000, 10).expect("pending")[0].record_key,
            b"secret-key-1"
        );
        apply(
            &store,
            &[put(b"secret-key-3", 4, b"v", Some(1_000))],
            500,
            ALL,
        );
        assert_eq!(
            store.expired(2_000, None, 10, 100, ALL).expect("expired")[0].record_key,
            b"secret-key-3"
        );
        drop(store);
        let file = std::fs::read(dir.path().join(super::super::FILE_NAME)).expect("file");
        assert!(
            !file.windows(10).any(|w| w == b"secret-key"),
            "a key in clear in the file"
        );
    }

    /// A record on the simulated topic.
    #[derive(Debug, Clone)]
    struct Logged {
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        expires: Option<u64>,
        precondition: Option<Precondition>,
        /// Written by a client (the model's truth), not by the sweeper.
        client: bool,
    }

    fn change_of(record: &Logged, offset: i64) -> Change<'_> {
        match &record.value {
            Some(value) => Change::Put {
                record_key: &record.key,
                user_key: Cow::Borrowed(&record.key),
                partition: 0,
                offset,
                correlation_id: None,
                traceparent: None,
                value: Cow::Borrowed(value),
                expires_at_ms: record.expires,
                precondition: record.precondition,
                decided: None,
            },
            None => Change::Delete {
                record_key: &record.key,
                user_key: Some(&record.key),
                partition: 0,
                offset,
                traceparent: None,
                precondition: record.precondition,
                decided: None,
            },
        }
    }

    /// Applies `log[*from..upto]` and moves `from` on.
    fn catch_up(
        store: &Store,
        log: &[Logged],
        from: &mut usize,
        upto: usize,
        now: u64,
        swept: &dyn Fn(i32) -> bool,
    ) {
        if upto <= *from {
            return;
        }
        let changes: Vec<Change<'_>> = (*from..upto)
            .map(|i| change_of(&log[i], i as i64))
            .collect();
        store
            .apply_at(&changes, &BTreeMap::from([(0, upto as i64)]), now, swept)
            .expect("apply");
        *from = upto;
    }

    /// What the sweeper puts on the topic at `now`: tombstones for what expired, repairs owed.
    fn sweep(
        store: &Store,
        now: u64,
        log: &mut Vec<Logged>,
        sent: &mut BTreeSet<(Vec<u8>, i64, bool)>,
    ) {
        for expired in store
            .expired(now, None, usize::MAX, usize::MAX, ALL)
            .expect("expired")
        {
            if sent.insert((expired.record_key.clone(), expired.offset, false)) {
                log.push(Logged {
                    key: expired.record_key,
                    value: None,
                    expires: None,
                    precondition: Some(Precondition::Expires(expired.offset)),
                    client: false,
                });
            }
        }
        for owed in store.pending_repairs(now, usize::MAX).expect("pending") {
            if sent.insert((owed.record_key.clone(), owed.stale_offset, true)) {
                log.push(Logged {
                    key: owed.record_key,
                    value: owed.state.as_ref().map(|(_, e)| e.value.clone()),
                    expires: owed.state.as_ref().and_then(|(_, e)| e.expires_at_ms),
                    precondition: Some(Precondition::Repairs(
                        owed.stale_offset,
                        owed.state.as_ref().map(|(_, e)| e.offset),
                    )),
                    client: false,
                });
            }
        }
    }

    /// The race of docs/architecture.md, many times over: clients rewrite and delete keys around
    /// their expiry while a sweeper that lags behind the topic by a random number of records
    /// produces tombstones and repairs at its end. Afterwards the sweeper, a live reader and a
    /// fresh replica fed only the last record of every key (what compaction keeps) all hold
    /// exactly what the clients' last writes say.
    #[test]
    fn no_acknowledged_write_is_lost_to_a_stale_tombstone_live_or_after_compaction() {
        simulate_the_race(0..40, memory);
    }

    #[test]
    fn the_race_is_won_the_same_way_by_stores_encrypted_at_rest() {
        // Deriving the keys takes a fraction of a second per store: fewer histories.
        simulate_the_race(100..104, sealed);
    }

    fn simulate_the_race(seeds: std::ops::Range<u64>, open: fn() -> Store) {
        let mut stale_seen = 0;
        let mut repairs_seen = 0;
        for seed in seeds {
            let mut rng = StdRng::seed_from_u64(seed);
            let (sweeper, reader) = (open(), open());
            let (mut swept_to, mut read_to) = (0usize, 0usize);
            let mut log: Vec<Logged> = Vec::new();
            let mut sent = BTreeSet::new();
            // Each key's last client write so far: its value (none: deleted) and expiry.
            let mut truth: BTreeMap<Vec<u8>, Logged> = BTreeMap::new();
            let mut now = 1_000u64;
            for step in 0..600 {
                now += rng.random_range(0..20);
                if rng.random_bool(0.6) {
                    let key = format!("k{}", rng.random_range(0..12)).into_bytes();
                    let (value, expires) = match rng.random_range(0..10) {
                        0 => (None, None),
                        1..=3 => (Some(format!("v{step}").into_bytes()), None),
                        _ => (
                            Some(format!("v{step}").into_bytes()),
                            Some(now + rng.random_range(1..60)),
                        ),
                    };
                    log.push(Logged {
                        key,
                        value,
                        expires,
                        precondition: None,
                        client: true,
                    });
                }
                // The sweeper decides on what it has applied, which lags the topic's end.
                let lag = rng.random_range(0..4);
                catch_up(
                    &sweeper,
                    &log,
                    &mut swept_to,
                    log.len().saturating_sub(lag),
                    now,
                    ALL,
                );
                sweep(&sweeper, now, &mut log, &mut sent);
                let lag = rng.random_range(0..6);
                let upto = log.len().saturating_sub(lag);
                for record in log[read_to.min(upto)..upto].iter().filter(|r| r.client) {
                    truth.insert(record.key.clone(), record.clone());
                }
                catch_up(&reader, &log, &mut read_to, upto, now, NONE);
                reader.purge(now, 3, 100, NONE).expect("purge");
                // Never a moment where the reader shows what the clients' writes so far do not.
                let visible: BTreeMap<Vec<u8>, Vec<u8>> = truth
                    .iter()
                    .filter_map(|(key, write)| match (&write.value, &write.expires) {
                        (Some(value), None) => Some((key.clone(), value.clone())),
                        (Some(value), Some(at)) if *at > now => Some((key.clone(), value.clone())),
                        _ => None,
                    })
                    .collect();
                assert_eq!(
                    state_at(&reader, now),
                    visible,
                    "seed {seed}, step {step}: the live reader"
                );
            }
            // Every TTL has passed; the sweeper catches up until it has nothing more to say.
            now += 1_000;
            loop {
                let before = log.len();
                catch_up(&sweeper, &log, &mut swept_to, log.len(), now, ALL);
                sweep(&sweeper, now, &mut log, &mut sent);
                if log.len() == before {
                    break;
                }
            }
            catch_up(&reader, &log, &mut read_to, log.len(), now, NONE);

            let mut model = BTreeMap::new();
            for record in log.iter().filter(|r| r.client) {
                match (&record.value, record.expires) {
                    (Some(value), None) => model.insert(record.key.clone(), value.clone()),
                    _ => model.remove(&record.key),
                };
            }
            let mut last = BTreeMap::new();
            for (offset, record) in log.iter().enumerate() {
                last.insert(record.key.clone(), offset);
            }
            let compacted = open();
            let mut kept: Vec<usize> = last.into_values().collect();
            kept.sort_unstable();
            let changes: Vec<Change<'_>> =
                kept.iter().map(|&i| change_of(&log[i], i as i64)).collect();
            apply(&compacted, &changes, now, NONE);

            assert_eq!(state_at(&sweeper, now), model, "seed {seed}: the sweeper");
            assert_eq!(state_at(&reader, now), model, "seed {seed}: a live reader");
            assert_eq!(
                state_at(&compacted, now),
                model,
                "seed {seed}: the compacted topic replayed"
            );
            stale_seen += log
                .iter()
                .filter(|r| matches!(r.precondition, Some(Precondition::Expires(_))))
                .count();
            repairs_seen += log
                .iter()
                .filter(|r| matches!(r.precondition, Some(Precondition::Repairs(..))))
                .count();
        }
        assert!(
            repairs_seen > 0 && stale_seen > repairs_seen,
            "the race happened: {stale_seen} tombstones, {repairs_seen} repairs"
        );
    }
}
