//! The write transaction: every consumed batch, and the offsets it reaches, commits here in one
//! redb transaction, so this is where a record's effect on the entries is decided. The rules of
//! each kind of record that need their own tables extend [`Writing`] from their own files
//! (`expiry`, `decide`, `computed`).

use std::borrow::Cow;
use std::collections::BTreeMap;

use redb::{ReadableTable, WriteTransaction};

use kv_core::conditional::Condition;
use kv_core::trace_context::TraceParent;

use super::entry::{
    decode_entry, encode_entry, entry_expiry, open_entry, seal_entry, StoredEntry, WriteOrigin,
};
use super::tables::{
    ComputedTables, ExpiryKey, IdempotencyKey, IdempotencyRow, OutcomeRow, SweepRow, DELETED,
    DELETED_BY_TIME, ENTRIES, EXPIRIES, IDEMPOTENCY, IDEMPOTENCY_BY_TIME, NEXT_OFFSETS, OUTCOMES,
    PENDING_REPAIRS, RECORD_KEYS, SEALED_EXPIRIES,
};
use super::{Store, StoreError};
use crate::store::at_rest::StoreCipher;

/// What a writer's record asks to be decided on: its condition, idempotency key and timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided<'a> {
    pub condition: Option<Condition>,
    pub idempotency_key: Option<&'a [u8]>,
    /// The record's timestamp (milliseconds since the Unix epoch; 0 when it has none).
    pub timestamp_ms: u64,
    /// The record is an owner's publication of a computed value (`X-KV-Published`).
    pub published: bool,
}

/// One change a consumed record makes, borrowing the record's bytes where it can.
#[derive(Debug, Clone)]
pub enum Change<'a> {
    Put {
        record_key: &'a [u8],
        user_key: Cow<'a, [u8]>,
        partition: i32,
        offset: i64,
        correlation_id: Option<&'a [u8]>,
        /// The writing request's span: a valid `traceparent` header, or none.
        traceparent: Option<TraceParent>,
        value: Cow<'a, [u8]>,
        /// When the value expires, in milliseconds since the Unix epoch.
        expires_at_ms: Option<u64>,
        /// Set on a record the TTL sweeper wrote: when it applies.
        precondition: Option<Precondition>,
        /// Set on a record a writer waits on: decided in log order (`store::decide`).
        decided: Option<Decided<'a>>,
    },
    /// A tombstone. `user_key` is the user key when the record key is one (plaintext topics).
    /// On an encrypted topic it is `None`: only the mapping stored with the put names the entry,
    /// so a tombstone carrying a user key in clear instead of its MAC deletes nothing.
    Delete {
        record_key: &'a [u8],
        user_key: Option<&'a [u8]>,
        partition: i32,
        offset: i64,
        /// The deleting request's span: a valid `traceparent` header, or none.
        traceparent: Option<TraceParent>,
        /// Set on a record the TTL sweeper wrote: when it applies.
        precondition: Option<Precondition>,
        /// Set on a record a writer waits on: decided in log order (`store::decide`).
        decided: Option<Decided<'a>>,
    },
    /// An agent's report on a ruled key (`store::computed`); never an entry.
    Report {
        key: &'a [u8],
        agent: &'a [u8],
        value: &'a [u8],
        partition: i32,
        offset: i64,
        at_ms: u64,
    },
    /// An owner's tick: evaluate the key's rule at `at_ms`.
    Tick {
        key: &'a [u8],
        partition: i32,
        offset: i64,
        at_ms: u64,
    },
    /// An owner's sink mark: the partition's publications up to `upto` are on their sink.
    SinkDone {
        partition: i32,
        offset: i64,
        upto: i64,
    },
}

impl Change<'_> {
    /// The offset of the record the change came from.
    pub fn offset(&self) -> i64 {
        match self {
            Self::Put { offset, .. }
            | Self::Delete { offset, .. }
            | Self::Report { offset, .. }
            | Self::Tick { offset, .. }
            | Self::SinkDone { offset, .. } => *offset,
        }
    }
}

/// When a record the TTL sweeper wrote applies (its headers, docs/wire-format.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// An expiry tombstone (`X-KV-Expired-Offset`): only while the key's entry is the put at
    /// this offset.
    Expires(i64),
    /// A repair (`X-KV-Repair-Of`): only if no record of the key newer than this offset (the
    /// stale record it repairs) was applied. The second field is the repair's `X-KV-Version`:
    /// the version of the state it re-asserts, which the entry keeps (a repair from a sweeper
    /// that predates it has none and gives the entry its own offset).
    Repairs(i64, Option<i64>),
}

/// What the TTL rules of one applied batch came to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Puts already expired when applied, applied as deletes.
    pub expired_on_replay: u64,
    /// Entries an expiry tombstone removed.
    pub tombstoned: u64,
    /// Sweeper records that found the key changed since they were decided, and were ignored.
    pub stale: u64,
    /// Repairs the batch made due (swept partitions only); they wait in the store.
    pub repairs_due: u64,
    /// For each delete that removed an entry, its index among the changes and the user key
    /// it removed, for watches: on an encrypted topic a tombstone names only the key's MAC.
    pub removed: Vec<(usize, Vec<u8>)>,
    /// The indexes of the puts that did not take effect (a failed condition, a repeat, a stale
    /// repair): watches must not show them.
    pub not_applied: Vec<usize>,
    /// Reports ignored: their key is under no rule here, or one agent too many reported on it.
    pub ignored_reports: u64,
    /// Reports, ticks and publications applied: the owner may have timers due at once.
    pub evaluated: u64,
}

/// The tables of one write transaction, and the rules over them.
pub(super) struct Writing<'t> {
    cipher: Option<&'t StoreCipher>,
    pub(super) entries: redb::Table<'t, &'static [u8], &'static [u8]>,
    pub(super) record_keys: redb::Table<'t, &'static [u8], &'static [u8]>,
    pub(super) expiries: redb::Table<'t, ExpiryKey, SweepRow>,
    pub(super) deleted: redb::Table<'t, &'static [u8], (u64, u64)>,
    pub(super) deleted_by_time: redb::Table<'t, (u64, &'static [u8]), ()>,
    pub(super) pending: redb::Table<'t, &'static [u8], SweepRow>,
    /// Under encryption at rest, the expiry of each entry that has one, so an overwrite learns
    /// the old expiry without opening the old entry.
    pub(super) sealed_expiries: redb::Table<'t, &'static [u8], u64>,
    pub(super) outcomes: redb::Table<'t, (u32, u64), OutcomeRow>,
    pub(super) idempotency: redb::Table<'t, IdempotencyKey, IdempotencyRow>,
    pub(super) idempotency_by_time: redb::Table<'t, (u64, &'static [u8], &'static [u8]), ()>,
    pub(super) now_ms: u64,
    /// Open when the store has rules (`store::computed`).
    pub(super) computed: Option<ComputedTables<'t>>,
    encoded: Vec<u8>,
}

impl<'t> Writing<'t> {
    pub(super) fn open(
        txn: &'t WriteTransaction,
        cipher: Option<&'t StoreCipher>,
        rules: Option<&'t kv_core::computed::StateRules>,
        now_ms: u64,
    ) -> Result<Self, StoreError> {
        let computed = match rules {
            Some(rules) => ComputedTables::open(txn, rules)?,
            None => None,
        };
        Ok(Self {
            computed,
            cipher,
            entries: txn.open_table(ENTRIES)?,
            record_keys: txn.open_table(RECORD_KEYS)?,
            expiries: txn.open_table(EXPIRIES)?,
            deleted: txn.open_table(DELETED)?,
            deleted_by_time: txn.open_table(DELETED_BY_TIME)?,
            pending: txn.open_table(PENDING_REPAIRS)?,
            sealed_expiries: txn.open_table(SEALED_EXPIRIES)?,
            outcomes: txn.open_table(OUTCOMES)?,
            idempotency: txn.open_table(IDEMPOTENCY)?,
            idempotency_by_time: txn.open_table(IDEMPOTENCY_BY_TIME)?,
            now_ms,
            encoded: Vec::new(),
        })
    }

    /// A key as the file holds it: itself, or its keyed MAC under encryption at rest.
    pub(super) fn index<'k>(&self, key: &'k [u8]) -> Cow<'k, [u8]> {
        match self.cipher {
            None => Cow::Borrowed(key),
            Some(cipher) => Cow::Owned(cipher.index(key).to_vec()),
        }
    }

    /// A record key as the expiry and repair tables hold it: sealed under encryption at rest.
    pub(super) fn seal_record_key(&self, index: &[u8], record_key: &[u8]) -> Vec<u8> {
        match self.cipher {
            None => record_key.to_vec(),
            Some(cipher) => cipher.seal(index, &[record_key]),
        }
    }

    /// The user key a record key names: the mapping stored with its put on an encrypted topic,
    /// else `user_key` (the record key itself on a plaintext topic).
    fn user_key_of(
        &self,
        record_key: &[u8],
        user_key: Option<&[u8]>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
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
    pub(super) fn entry(&self, user_key: &[u8]) -> Result<Option<StoredEntry>, StoreError> {
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
        origin: WriteOrigin<'_>,
        value: &[u8],
        expires_at_ms: Option<u64>,
    ) -> Result<(), StoreError> {
        let mut encoded = std::mem::take(&mut self.encoded);
        encode_entry(
            &mut encoded,
            partition,
            offset,
            origin,
            value,
            expires_at_ms,
        );
        let index = self.index(user_key);
        let stored = match self.cipher {
            None => Cow::Borrowed(encoded.as_slice()),
            Some(cipher) => Cow::Owned(seal_entry(cipher, &index, user_key, &encoded)),
        };
        let replaced = self.entries.insert(index.as_ref(), stored.as_ref())?;
        let old = match (self.cipher, replaced) {
            (None, Some(old)) => entry_expiry(old.value())?,
            (Some(_), _) => self
                .sealed_expiries
                .remove(index.as_ref())?
                .map(|at| at.value()),
            (None, None) => None,
        };
        self.encoded = encoded;
        if let Some(old) = old {
            self.expiries.remove((old, index.as_ref()))?;
        }
        if let Some(expires_at) = expires_at_ms {
            if self.cipher.is_some() {
                self.sealed_expiries.insert(index.as_ref(), expires_at)?;
            }
            let sealed = self.seal_record_key(&index, record_key);
            self.expiries.insert(
                (expires_at, index.as_ref()),
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
        let index = self.index(user_key);
        let old = match (self.cipher, self.entries.remove(index.as_ref())?) {
            (_, None) => return Ok(false),
            (None, Some(old)) => entry_expiry(old.value())?,
            (Some(_), Some(_)) => self
                .sealed_expiries
                .remove(index.as_ref())?
                .map(|at| at.value()),
        };
        if let Some(old) = old {
            self.expiries.remove((old, index.as_ref()))?;
        }
        Ok(true)
    }

    /// The key's state as a read at this batch's time sees it.
    pub(super) fn live_entry(
        &self,
        user_key: Option<&[u8]>,
    ) -> Result<Option<StoredEntry>, StoreError> {
        match user_key {
            Some(user_key) => Ok(self.entry(user_key)?.filter(|e| e.is_live(self.now_ms))),
            None => Ok(None),
        }
    }

    /// Puts a value (at `version`: the record's offset, or the version a repair re-asserts),
    /// or, when it already expired on a partition this process is no candidate owner of, applies
    /// it as a delete.
    #[allow(clippy::too_many_arguments)]
    fn put_or_expire(
        &mut self,
        record_key: &[u8],
        user_key: &[u8],
        partition: i32,
        version: i64,
        origin: WriteOrigin<'_>,
        value: &[u8],
        expires_at_ms: Option<u64>,
        swept: &dyn Fn(i32) -> bool,
        applied: &mut Applied,
    ) -> Result<(), StoreError> {
        let expired = expires_at_ms.is_some_and(|at| at <= self.now_ms);
        if expired && !swept(partition) {
            self.remove(record_key, Some(user_key))?;
            self.remember_delete(record_key, version)?;
            applied.expired_on_replay += 1;
            Ok(())
        } else {
            self.put(
                record_key,
                user_key,
                partition,
                version,
                origin,
                value,
                expires_at_ms,
            )
        }
    }

    fn apply(
        &mut self,
        index: usize,
        change: &Change<'_>,
        swept: &dyn Fn(i32) -> bool,
        applied: &mut Applied,
    ) -> Result<(), StoreError> {
        match change {
            Change::Report {
                key,
                agent,
                value,
                partition,
                offset,
                at_ms,
            } => {
                if self.report(key, agent, value, *partition, *offset, *at_ms)? {
                    applied.evaluated += 1;
                } else {
                    applied.ignored_reports += 1;
                }
            }
            Change::Tick {
                key,
                partition,
                at_ms,
                ..
            } => {
                self.tick(key, *partition, *at_ms)?;
                applied.evaluated += 1;
            }
            Change::SinkDone {
                partition, upto, ..
            } => self.sink_done(*partition, *upto)?,
            Change::Put {
                record_key,
                user_key,
                partition,
                offset,
                correlation_id,
                traceparent,
                value,
                expires_at_ms,
                precondition,
                decided,
            } => {
                let user_key = user_key.as_ref();
                let origin = WriteOrigin {
                    correlation_id: *correlation_id,
                    traceparent: *traceparent,
                };
                if let Some(decided) = decided {
                    let decision = self.decide(record_key, Some(user_key), *offset, decided)?;
                    let previous = if decided.published && decision.takes_effect() {
                        self.live_entry(Some(user_key))?.map(|entry| entry.value)
                    } else {
                        None
                    };
                    if decision.takes_effect() {
                        self.put_or_expire(
                            record_key,
                            user_key,
                            *partition,
                            *offset,
                            origin,
                            value,
                            *expires_at_ms,
                            swept,
                            applied,
                        )?;
                    } else {
                        applied.not_applied.push(index);
                    }
                    self.record_decision(
                        record_key,
                        Some(user_key),
                        *partition,
                        *offset,
                        decided,
                        &decision,
                    )?;
                    if decision.takes_effect() {
                        if decided.published {
                            self.published(
                                user_key,
                                *partition,
                                *offset,
                                previous,
                                value,
                                decided.timestamp_ms,
                            )?;
                        } else {
                            self.overridden(user_key)?;
                        }
                    }
                    let alone = decided
                        .condition
                        .as_ref()
                        .is_none_or(|c| c.holds(None))
                        .then_some((value.as_ref(), *expires_at_ms, *offset));
                    return self.judge(
                        record_key,
                        Some(user_key),
                        *partition,
                        *offset,
                        alone,
                        swept,
                        applied,
                    );
                }
                let version = match precondition {
                    Some(Precondition::Repairs(stale, version)) => {
                        self.settle(record_key, *stale)?;
                        let last = self.last_known(record_key, Some(user_key))?;
                        let version = version.unwrap_or(*offset);
                        if last.is_some_and(|last| last > *stale) {
                            applied.stale += 1;
                            applied.not_applied.push(index);
                            // Left last, this repair would put its value back over what came
                            // after the record it repairs.
                            let alone = Some((value.as_ref(), *expires_at_ms, version));
                            return self.judge(
                                record_key,
                                Some(user_key),
                                *partition,
                                *offset,
                                alone,
                                swept,
                                applied,
                            );
                        }
                        version
                    }
                    Some(Precondition::Expires(_)) => *offset,
                    None => {
                        // A plain put is the key's whole state by itself.
                        self.forgive(record_key)?;
                        self.overridden(user_key)?;
                        *offset
                    }
                };
                self.put_or_expire(
                    record_key,
                    user_key,
                    *partition,
                    version,
                    origin,
                    value,
                    *expires_at_ms,
                    swept,
                    applied,
                )?;
            }
            Change::Delete {
                record_key,
                user_key,
                partition,
                offset,
                precondition,
                decided,
                ..
            } => {
                let user_key = self.user_key_of(record_key, *user_key)?;
                let decision = match decided {
                    Some(decided) => {
                        Some(self.decide(record_key, user_key.as_deref(), *offset, decided)?)
                    }
                    None => None,
                };
                let applies = match (&decision, precondition) {
                    (Some(decision), _) => decision.takes_effect(),
                    (None, None) => true,
                    (None, Some(Precondition::Expires(expired))) => {
                        let current = match &user_key {
                            Some(user_key) => self.entry(user_key)?,
                            None => None,
                        };
                        // An offset names a record only within its partition: a key whose
                        // partition changed may hold the same offset of another one.
                        current.is_some_and(|entry| {
                            entry.partition == *partition && entry.offset == *expired
                        })
                    }
                    (None, Some(Precondition::Repairs(stale, _))) => {
                        self.settle(record_key, *stale)?;
                        let last = self.last_known(record_key, user_key.as_deref())?;
                        last.is_none_or(|last| last <= *stale)
                    }
                };
                if applies {
                    if precondition.is_none() {
                        if let Some(user_key) = &user_key {
                            self.overridden(user_key)?;
                        }
                    }
                    let removed = self.remove(record_key, user_key.as_deref())?;
                    if removed {
                        if let Some(user_key) = &user_key {
                            applied.removed.push((index, user_key.to_vec()));
                        }
                    }
                    self.remember_delete(record_key, *offset)?;
                    if removed && matches!(precondition, Some(Precondition::Expires(_))) {
                        applied.tombstoned += 1;
                    }
                } else if decision.is_none() {
                    applied.stale += 1;
                }
                if let (Some(decided), Some(decision)) = (decided, &decision) {
                    self.record_decision(
                        record_key,
                        user_key.as_deref(),
                        *partition,
                        *offset,
                        decided,
                        decision,
                    )?;
                }
                if decided.is_some() || !applies {
                    // Left last, a tombstone makes the key absent: harmful while it lives here.
                    self.judge(
                        record_key,
                        user_key.as_deref(),
                        *partition,
                        *offset,
                        None,
                        swept,
                        applied,
                    )?;
                } else if precondition.is_none() {
                    self.forgive(record_key)?;
                }
            }
        }
        Ok(())
    }
}

impl Store {
    /// Applies a batch and the offsets it reaches in one transaction: both or neither persist.
    /// `now_ms` is this replica's clock ([`kv_core::record::now_ms`]); `swept` says which
    /// partitions this process sweeps, whose expired puts stay until their tombstones and whose
    /// harmful sweeper records owe repairs.
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
            let mut writing = Writing::open(
                &txn,
                self.cipher.as_ref(),
                self.rules.get().map(|r| r.as_ref()),
                now_ms,
            )?;
            for (index, change) in changes.iter().enumerate() {
                writing.apply(index, change, swept, &mut applied)?;
            }
            let mut offsets = txn.open_table(NEXT_OFFSETS)?;
            for (&partition, &offset) in next_offsets {
                offsets.insert(partition as u32, offset as u64)?;
            }
        }
        txn.commit()?;
        self.refresh_read_view();
        Ok(applied)
    }

    /// [`Store::apply_at`] by this host's clock, on a process that sweeps no partition: how a
    /// test feeds a replica that only reads.
    #[cfg(test)]
    pub(crate) fn apply_now_sweeping_nothing(
        &self,
        changes: &[Change<'_>],
        next_offsets: &BTreeMap<i32, i64>,
    ) -> Result<Applied, StoreError> {
        self.apply_at(changes, next_offsets, kv_core::record::now_ms(), &|_| false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Storage;
    use crate::store::testing::{password, put};

    #[test]
    fn an_applied_put_is_readable_with_its_origin_sealed_or_not() {
        let trace = TraceParent::start();
        for password in [None, Some(password("pw"))] {
            let store = Store::open(&Storage::Memory, password.as_ref()).expect("store");
            let mut traced = put(b"k", 7, b"v");
            if let Change::Put { traceparent, .. } = &mut traced {
                *traceparent = Some(trace);
            }
            store
                .apply_now_sweeping_nothing(&[traced], &BTreeMap::from([(0, 8)]))
                .expect("apply");
            let entry = store.get(b"k").expect("get").expect("present");
            assert_eq!(entry.value, b"v");
            assert_eq!((entry.partition, entry.offset), (0, 7));
            assert_eq!(entry.correlation_id.as_deref(), Some("corr-1"));
            assert_eq!(entry.traceparent, Some(trace));
            assert_eq!(
                store.next_offsets().expect("offsets"),
                BTreeMap::from([(0, 8)])
            );
        }
    }

    #[test]
    fn a_delete_removes_the_entry_and_an_empty_value_is_kept() {
        let store = Store::open(&Storage::Memory, None).expect("store");
        store
            .apply_now_sweeping_nothing(
                &[
                    put(b"gone", 0, b"x"),
                    put(b"empty", 1, b""),
                    Change::Delete {
                        record_key: b"gone",
                        user_key: Some(b"gone"),
                        partition: 0,
                        offset: 9,
                        traceparent: None,
                        precondition: None,
                        decided: None,
                    },
                ],
                &BTreeMap::from([(0, 3)]),
            )
            .expect("apply");
        assert_eq!(store.get(b"gone").expect("get"), None);
        assert_eq!(
            store.get(b"empty").expect("get").expect("present").value,
            b""
        );
    }

    #[test]
    fn on_an_encrypted_topic_entries_are_found_by_user_key_and_removed_by_record_key_tombstones() {
        let store = Store::open(&Storage::Memory, None).expect("store");
        let put = Change::Put {
            record_key: b"mac-of-user-1",
            user_key: Cow::Borrowed(b"user-1"),
            partition: 0,
            offset: 0,
            correlation_id: None,
            traceparent: None,
            value: Cow::Borrowed(b"Ada"),
            expires_at_ms: None,
            precondition: None,
            decided: None,
        };
        store
            .apply_now_sweeping_nothing(&[put], &BTreeMap::from([(0, 1)]))
            .expect("apply");
        assert_eq!(
            store.get(b"user-1").expect("get").expect("present").value,
            b"Ada"
        );
        assert_eq!(
            store.list_keys(b"", None, 10).expect("list").0,
            vec![b"user-1".to_vec()]
        );
        store
            .apply_now_sweeping_nothing(
                &[Change::Delete {
                    record_key: b"mac-of-user-1",
                    user_key: None,
                    partition: 0,
                    offset: 9,
                    traceparent: None,
                    precondition: None,
                    decided: None,
                }],
                &BTreeMap::from([(0, 2)]),
            )
            .expect("apply");
        assert_eq!(store.get(b"user-1").expect("get"), None);
    }

    #[test]
    fn on_an_encrypted_topic_a_tombstone_naming_a_user_key_in_clear_deletes_nothing() {
        let store = Store::open(&Storage::Memory, None).expect("store");
        let put = Change::Put {
            record_key: b"mac-of-user-1",
            user_key: Cow::Borrowed(b"user-1"),
            partition: 0,
            offset: 0,
            correlation_id: None,
            traceparent: None,
            value: Cow::Borrowed(b"Ada"),
            expires_at_ms: None,
            precondition: None,
            decided: None,
        };
        let in_clear = Change::Delete {
            record_key: b"user-1",
            user_key: None,
            partition: 0,
            offset: 9,
            traceparent: None,
            precondition: None,
            decided: None,
        };
        store
            .apply_now_sweeping_nothing(&[put, in_clear], &BTreeMap::from([(0, 2)]))
            .expect("apply");
        assert_eq!(
            store.get(b"user-1").expect("get").expect("kept").value,
            b"Ada"
        );
    }

    #[test]
    fn apply_names_the_user_key_of_every_entry_a_tombstone_removed_and_only_those() {
        let store = Store::open(&Storage::Memory, None).expect("store");
        let removed = store
            .apply_now_sweeping_nothing(
                &[
                    put(b"plain", 0, b"v"),
                    Change::Put {
                        record_key: b"mac-of-user-1",
                        user_key: Cow::Borrowed(b"user-1"),
                        partition: 0,
                        offset: 1,
                        correlation_id: None,
                        traceparent: None,
                        value: Cow::Borrowed(b"Ada"),
                        expires_at_ms: None,
                        precondition: None,
                        decided: None,
                    },
                    Change::Delete {
                        record_key: b"never-written",
                        user_key: Some(b"never-written"),
                        partition: 0,
                        offset: 0,
                        traceparent: None,
                        precondition: None,
                        decided: None,
                    },
                    Change::Delete {
                        record_key: b"mac-of-user-1",
                        user_key: None,
                        partition: 0,
                        offset: 0,
                        traceparent: None,
                        precondition: None,
                        decided: None,
                    },
                    Change::Delete {
                        record_key: b"plain",
                        user_key: Some(b"plain"),
                        partition: 0,
                        offset: 0,
                        traceparent: None,
                        precondition: None,
                        decided: None,
                    },
                ],
                &BTreeMap::from([(0, 5)]),
            )
            .expect("apply")
            .removed;
        assert_eq!(
            removed,
            vec![(3, b"user-1".to_vec()), (4, b"plain".to_vec())]
        );
    }
}
