//! The TTL rules of the store (docs/architecture.md, "Keys that expire").
//!
//! - A put that expires is indexed by its expiry (`EXPIRIES`); reads hide it from its expiry on,
//!   and a put already expired when applied applies as a delete, except on a partition this
//!   process sweeps: there it stays, hidden, until the sweeper's own tombstone for it comes back,
//!   so that tombstone is produced even for a put replayed long after it expired.
//! - Every delete applied is remembered for [`DELETE_MEMORY`] (`DELETED`), so a repair can tell
//!   "deleted since" from "never seen" (a replica replaying the compacted topic).
//! - A record the sweeper wrote carries a [`Precondition`]: an expiry tombstone applies only
//!   while the key's entry is the put it expires; a repair only if nothing of the key newer than
//!   the stale record it repairs was applied. Any other record is the client's, and wins.
//! - On a swept partition, a sweeper record that, left as the key's last record, would make a
//!   replica replaying the compacted topic end in another state than this one is *harmful*: the
//!   store owes a repair (`PENDING_REPAIRS`, in the same transaction as the record's offset), and
//!   the sweeper re-asserts the key's state after it.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, WriteTransaction};

use super::{
    decode_entry, encode_entry, entry_expiry, open_entry, Change, Store, StoreError, StoredEntry,
    DELETED, DELETED_BY_TIME, ENTRIES, EXPIRIES, NEXT_OFFSETS, PENDING_REPAIRS, RECORD_KEYS,
};
use crate::at_rest::StoreCipher;

/// How long an applied delete is remembered. A repair the sweeper makes lands within its
/// repair latency (milliseconds) after the stale record it repairs, and any delete a repair must
/// not undo lies between the two, so a delete is needed only that long; the bound is the
/// topic's recommended `min.compaction.lag.ms`, within which every repair must land anyway.
pub const DELETE_MEMORY: Duration = Duration::from_secs(15 * 60);

/// When a record the TTL sweeper wrote applies (its headers, docs/wire-format.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// An expiry tombstone (`X-KV-Expired-Offset`): only while the key's entry is the put at
    /// this offset.
    Expires(i64),
    /// A repair (`X-KV-Repair-Of`): only if no record of the key newer than this offset (the
    /// stale sweeper record it repairs) was applied.
    Repairs(i64),
}

/// What the TTL rules of one applied batch came to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Puts already expired when applied, applied as deletes.
    pub expired_on_replay: u64,
    /// Entries an expiry tombstone removed.
    pub tombstoned: u64,
    /// Sweeper records that found the key changed since they were decided, and were ignored.
    pub stale: u64,
    /// Repairs the batch made due (swept partitions only); they wait in the store.
    pub repairs_due: u64,
}

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
    Ok(())
}

pub(super) fn reset_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.delete_table(EXPIRIES)?;
    txn.delete_table(DELETED)?;
    txn.delete_table(DELETED_BY_TIME)?;
    txn.delete_table(PENDING_REPAIRS)?;
    ensure_tables(txn)
}

/// The tables of one write transaction, and the rules over them.
struct Writing<'t> {
    cipher: Option<&'t StoreCipher>,
    entries: redb::Table<'t, &'static [u8], &'static [u8]>,
    record_keys: redb::Table<'t, &'static [u8], &'static [u8]>,
    expiries: redb::Table<'t, (u64, &'static [u8]), (u32, u64, &'static [u8])>,
    deleted: redb::Table<'t, &'static [u8], (u64, u64)>,
    deleted_by_time: redb::Table<'t, (u64, &'static [u8]), ()>,
    pending: redb::Table<'t, &'static [u8], (u32, u64, &'static [u8])>,
    now_ms: u64,
    encoded: Vec<u8>,
}

impl<'t> Writing<'t> {
    fn open(txn: &'t WriteTransaction, cipher: Option<&'t StoreCipher>, now_ms: u64) -> Result<Self, StoreError> {
        Ok(Self {
            cipher,
            entries: txn.open_table(ENTRIES)?,
            record_keys: txn.open_table(RECORD_KEYS)?,
            expiries: txn.open_table(EXPIRIES)?,
            deleted: txn.open_table(DELETED)?,
            deleted_by_time: txn.open_table(DELETED_BY_TIME)?,
            pending: txn.open_table(PENDING_REPAIRS)?,
            now_ms,
            encoded: Vec::new(),
        })
    }

    /// A key as the file holds it: itself, or its keyed MAC under encryption at rest.
    fn index<'k>(&self, key: &'k [u8]) -> Cow<'k, [u8]> {
        match self.cipher {
            None => Cow::Borrowed(key),
            Some(cipher) => Cow::Owned(cipher.index(key).to_vec()),
        }
    }

    /// A record key as the expiry and repair tables hold it: sealed under encryption at rest.
    fn seal_record_key(&self, index: &[u8], record_key: &[u8]) -> Vec<u8> {
        match self.cipher {
            None => record_key.to_vec(),
            Some(cipher) => cipher.seal(index, &[record_key]),
        }
    }

    /// The user key a record key names: the mapping stored with its put on an encrypted topic,
    /// else `user_key` (the record key itself on a plaintext topic).
    fn user_key_of(&self, record_key: &[u8], user_key: Option<&[u8]>) -> Result<Option<Vec<u8>>, StoreError> {
        let mapped = match self.record_keys.get(record_key)? {
            None => None,
            Some(mapped) => Some(match self.cipher {
                None => mapped.value().to_vec(),
                Some(cipher) => cipher
                    .open(record_key, mapped.value())
                    .map_err(|_| StoreError::CorruptEntry)?,
            }),
        };
        Ok(mapped.or_else(|| user_key.map(<[u8]>::to_vec)))
    }

    /// The key's entry, expired or not.
    fn entry(&self, user_key: &[u8]) -> Result<Option<StoredEntry>, StoreError> {
        let index = self.index(user_key);
        let Some(raw) = self.entries.get(index.as_ref())? else {
            return Ok(None);
        };
        match self.cipher {
            None => decode_entry(raw.value()).map(Some),
            Some(cipher) => {
                let (_, entry) = open_entry(cipher, &index, raw.value())?;
                decode_entry(&entry).map(Some)
            }
        }
    }


    #[allow(clippy::too_many_arguments)]
    fn put(
        &mut self,
        record_key: &[u8],
        user_key: &[u8],
        partition: i32,
        offset: i64,
        correlation_id: Option<&[u8]>,
        value: &[u8],
        expires_at_ms: Option<u64>,
    ) -> Result<(), StoreError> {
        let mut encoded = std::mem::take(&mut self.encoded);
        encode_entry(&mut encoded, partition, offset, correlation_id, value, expires_at_ms);
        let index = self.index(user_key).into_owned();
        let stored = match self.cipher {
            None => Cow::Borrowed(encoded.as_slice()),
            Some(cipher) => {
                let key_len = (user_key.len() as u32).to_be_bytes();
                Cow::Owned(cipher.seal(&index, &[&key_len, user_key, &encoded]))
            }
        };
        let cipher = self.cipher;
        let old = match self.entries.insert(index.as_slice(), stored.as_ref())? {
            Some(old) => stored_expiry(cipher, &index, old.value())?,
            None => None,
        };
        self.encoded = encoded;
        if let Some(old) = old {
            self.expiries.remove((old, index.as_slice()))?;
        }
        if let Some(expires_at) = expires_at_ms {
            let sealed = self.seal_record_key(&index, record_key);
            self.expiries.insert(
                (expires_at, index.as_slice()),
                (partition as u32, offset as u64, sealed.as_slice()),
            )?;
        }
        if record_key != user_key {
            let mapped = match self.cipher {
                None => Cow::Borrowed(user_key),
                Some(cipher) => Cow::Owned(cipher.seal(record_key, &[user_key])),
            };
            self.record_keys.insert(record_key, mapped.as_ref())?;
        }
        Ok(())
    }

    /// Removes the key's entry, its expiry and its record key mapping.
    fn remove(&mut self, record_key: &[u8], user_key: Option<&[u8]>) -> Result<bool, StoreError> {
        self.record_keys.remove(record_key)?;
        let Some(user_key) = user_key else {
            return Ok(false);
        };
        let index = self.index(user_key).into_owned();
        let cipher = self.cipher;
        let old = match self.entries.remove(index.as_slice())? {
            None => return Ok(false),
            Some(old) => stored_expiry(cipher, &index, old.value())?,
        };
        if let Some(old) = old {
            self.expiries.remove((old, index.as_slice()))?;
        }
        Ok(true)
    }

    /// Notes the delete at `offset`, forgetting the one it replaces.
    fn remember_delete(&mut self, record_key: &[u8], offset: i64) -> Result<(), StoreError> {
        let index = self.index(record_key).into_owned();
        let old = self
            .deleted
            .insert(index.as_slice(), (offset as u64, self.now_ms))?
            .map(|old| old.value().1);
        if let Some(at) = old {
            self.deleted_by_time.remove((at, index.as_slice()))?;
        }
        self.deleted_by_time.insert((self.now_ms, index.as_slice()), ())?;
        Ok(())
    }

    /// The offset of the newest record of the key applied here and still known: its entry, or
    /// its last delete within [`DELETE_MEMORY`]. `None`: never seen, or too long ago.
    fn last_known(&self, record_key: &[u8], user_key: Option<&[u8]>) -> Result<Option<i64>, StoreError> {
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
    fn settle(&mut self, record_key: &[u8], stale_offset: i64) -> Result<(), StoreError> {
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

    /// Owes a repair re-asserting the key's state after the stale record at `stale_offset`.
    fn owe(&mut self, record_key: &[u8], partition: i32, stale_offset: i64) -> Result<(), StoreError> {
        let index = self.index(record_key).into_owned();
        let sealed = self.seal_record_key(&index, record_key);
        self.pending.insert(
            index.as_slice(),
            (partition as u32, stale_offset as u64, sealed.as_slice()),
        )?;
        Ok(())
    }

    /// The key's state as a read at this batch's time sees it.
    fn live_entry(&self, user_key: Option<&[u8]>) -> Result<Option<StoredEntry>, StoreError> {
        match user_key {
            Some(user_key) => Ok(self.entry(user_key)?.filter(|e| e.is_live(self.now_ms))),
            None => Ok(None),
        }
    }

    fn apply(&mut self, change: &Change<'_>, swept: &dyn Fn(i32) -> bool, applied: &mut Applied) -> Result<(), StoreError> {
        match change {
            Change::Put {
                record_key,
                user_key,
                partition,
                offset,
                correlation_id,
                value,
                expires_at_ms,
                precondition,
            } => {
                let user_key = user_key.as_ref();
                if let Some(Precondition::Repairs(stale)) = precondition {
                    self.settle(record_key, *stale)?;
                    let last = self.last_known(record_key, Some(user_key))?;
                    if last.is_some_and(|last| last > *stale) {
                        applied.stale += 1;
                        if swept(*partition) {
                            // Left last, this repair would put its value back over what came
                            // after the record it repairs.
                            let outcome = expires_at_ms
                                .is_none_or(|at| at > self.now_ms)
                                .then_some((value.as_ref(), *expires_at_ms));
                            let state = self.live_entry(Some(user_key))?;
                            let same = match (&state, outcome) {
                                (None, None) => true,
                                (Some(entry), Some((value, expires))) => {
                                    entry.value == value && entry.expires_at_ms == expires
                                }
                                _ => false,
                            };
                            if !same {
                                self.owe(record_key, *partition, *offset)?;
                                applied.repairs_due += 1;
                            }
                        }
                        return Ok(());
                    }
                }
                let expired = expires_at_ms.is_some_and(|at| at <= self.now_ms);
                if expired && !swept(*partition) {
                    self.remove(record_key, Some(user_key))?;
                    self.remember_delete(record_key, *offset)?;
                    applied.expired_on_replay += 1;
                } else {
                    self.put(
                        record_key,
                        user_key,
                        *partition,
                        *offset,
                        *correlation_id,
                        value,
                        *expires_at_ms,
                    )?;
                }
            }
            Change::Delete {
                record_key,
                user_key,
                partition,
                offset,
                precondition,
            } => {
                let user_key = self.user_key_of(record_key, *user_key)?;
                let applies = match precondition {
                    None => true,
                    Some(Precondition::Expires(expired)) => {
                        let current = match &user_key {
                            Some(user_key) => self.entry(user_key)?,
                            None => None,
                        };
                        current.is_some_and(|entry| entry.offset == *expired)
                    }
                    Some(Precondition::Repairs(stale)) => {
                        self.settle(record_key, *stale)?;
                        let last = self.last_known(record_key, user_key.as_deref())?;
                        last.is_none_or(|last| last <= *stale)
                    }
                };
                if applies {
                    let removed = self.remove(record_key, user_key.as_deref())?;
                    self.remember_delete(record_key, *offset)?;
                    if removed && matches!(precondition, Some(Precondition::Expires(_))) {
                        applied.tombstoned += 1;
                    }
                } else {
                    applied.stale += 1;
                    // Left last, this tombstone would delete what came after the record it
                    // names.
                    if swept(*partition) && self.live_entry(user_key.as_deref())?.is_some() {
                        self.owe(record_key, *partition, *offset)?;
                        applied.repairs_due += 1;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The expiry of an entry as stored (sealed under encryption at rest).
fn stored_expiry(
    cipher: Option<&StoreCipher>,
    index: &[u8],
    raw: &[u8],
) -> Result<Option<u64>, StoreError> {
    match cipher {
        None => entry_expiry(raw),
        Some(cipher) => entry_expiry(&open_entry(cipher, index, raw)?.1),
    }
}

/// The first key of an expiry-ordered table after every key of expiry `at_ms`.
fn after_expiry(at_ms: u64) -> (u64, &'static [u8]) {
    (at_ms.saturating_add(1), &[])
}

impl Store {
    /// Applies a batch and the offsets it reaches in one transaction: both or neither persist.
    /// `now_ms` is this replica's clock; `swept` says which partitions this process sweeps, whose
    /// expired puts stay until their tombstones and whose harmful sweeper records owe repairs.
    pub fn apply_at(
        &self,
        changes: &[Change<'_>],
        next_offsets: &BTreeMap<i32, i64>,
        now_ms: u64,
        swept: &dyn Fn(i32) -> bool,
    ) -> Result<Applied, StoreError> {
        let mut applied = Applied::default();
        let txn = self.db.begin_write()?;
        {
            let mut writing = Writing::open(&txn, self.cipher.as_ref(), now_ms)?;
            for change in changes {
                writing.apply(change, swept, &mut applied)?;
            }
            let mut offsets = txn.open_table(NEXT_OFFSETS)?;
            for (&partition, &offset) in next_offsets {
                offsets.insert(partition as u32, offset as u64)?;
            }
        }
        txn.commit()?;
        self.refresh_snapshot();
        Ok(applied)
    }

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
                expiries.range((std::ops::Bound::Excluded((*at, index.as_slice())), std::ops::Bound::Excluded(end)))?
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
            Some(cipher) => cipher.open(index, sealed).map_err(|_| StoreError::CorruptEntry),
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
    /// remembered for longer than [`DELETE_MEMORY`]. Returns how many entries it removed.
    pub fn purge(
        &self,
        now_ms: u64,
        limit: usize,
        scan: usize,
        swept: &dyn Fn(i32) -> bool,
    ) -> Result<u64, StoreError> {
        let txn = self.db.begin_write()?;
        let purged;
        {
            let mut writing = Writing::open(&txn, self.cipher.as_ref(), now_ms)?;
            let mut due = Vec::new();
            for row in writing.expiries.range(..after_expiry(now_ms))?.take(scan) {
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
            purged = due.len() as u64;
            for (at, index, sealed) in due {
                let record_key = self.open_record_key(&index, &sealed)?;
                writing.entries.remove(index.as_slice())?;
                writing.expiries.remove((at, index.as_slice()))?;
                writing.record_keys.remove(record_key.as_slice())?;
            }
            let forget_before = now_ms.saturating_sub(DELETE_MEMORY.as_millis() as u64);
            let mut forgotten = Vec::new();
            for row in writing.deleted_by_time.range(..(forget_before, &[][..]))?.take(limit) {
                let (key, _) = row?;
                let (at, index) = key.value();
                forgotten.push((at, index.to_vec()));
            }
            for (at, index) in forgotten {
                writing.deleted_by_time.remove((at, index.as_slice()))?;
                writing.deleted.remove(index.as_slice())?;
            }
        }
        txn.commit()?;
        if purged > 0 {
            self.refresh_snapshot();
        }
        Ok(purged)
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
