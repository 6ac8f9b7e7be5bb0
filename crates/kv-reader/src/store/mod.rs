//! The replica in redb: entries by user key, and the next offset per partition, written in the
//! same transaction so a restart neither re-applies nor loses anything.
//!
//! On an encrypted topic the record key is a MAC of the user key and a tombstone carries only
//! that MAC, so `record_keys` maps each record key to its user key; on a plaintext topic the two
//! are the same and that table stays empty.
//!
//! With a password (see [`crate::store::at_rest`]) keys are stored as keyed MACs and entries sealed, so
//! the file holds neither keys nor values in clear; offsets and the topic name stay readable.
//!
//! Entries that expire are indexed by expiry, and deletes are remembered for a while; both serve
//! the TTL rules of `expiry` (docs/architecture.md, "Keys that expire").

pub mod at_rest;

mod computed;
mod decide;
mod expiry;

pub use computed::{ComputedRow, DueTimer, Explained, SinkPending};
pub use decide::{Decided, OUTCOME_MEMORY};
pub use expiry::{Applied, Expired, PendingRepair, Precondition, DELETE_MEMORY};

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use kv_core::secret::Secret;

use redb::backends::InMemoryBackend;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::settings::{Storage, DEFAULT_CACHE_BYTES};
use crate::store::at_rest::{StoreCipher, DEFAULT_ITERATIONS};

const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");
const RECORD_KEYS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("record_keys");
const NEXT_OFFSETS: TableDefinition<u32, u64> = TableDefinition::new("next_offsets");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// `(expires at, entry key)`: the expiry order of every entry that expires.
type ExpiryKey = (u64, &'static [u8]);
/// `(partition, offset, sealed record key)` of an entry that expires, or of a repair owed.
type SweepRow = (u32, u64, &'static [u8]);
/// Every entry that expires, in expiry order: the sweep and the purge read it.
const EXPIRIES: TableDefinition<ExpiryKey, SweepRow> = TableDefinition::new("expiries");
/// Record key (its index under encryption at rest) → `(offset, when applied)` of the last delete
/// applied to it, for [`DELETE_MEMORY`].
const DELETED: TableDefinition<&[u8], (u64, u64)> = TableDefinition::new("deleted");
const DELETED_BY_TIME: TableDefinition<(u64, &[u8]), ()> = TableDefinition::new("deleted_by_time");
/// Record key (index) → `(partition, stale offset, sealed record key)`: repairs the sweeper owes.
const PENDING_REPAIRS: TableDefinition<&[u8], SweepRow> = TableDefinition::new("pending_repairs");
/// Entry key → expiry, under encryption at rest only: an overwrite reads the old expiry here
/// instead of opening the old entry.
const SEALED_EXPIRIES: TableDefinition<&[u8], u64> = TableDefinition::new("sealed_expiries");
/// `(applied, version partition, version offset, first offset, when decided)` of a decided
/// record, `-1` for none.
type OutcomeRow = (u8, i32, i64, i64, u64);
/// `(record key index, idempotency key)`.
type IdempotencyKey = (&'static [u8], &'static [u8]);
/// `(first offset, its record timestamp, applied)`.
type IdempotencyRow = (u64, u64, u8);
/// `(partition, offset)` of a decided record → its [`OutcomeRow`]: what `GET /v1/outcomes`
/// answers a writer.
const OUTCOMES: TableDefinition<(u32, u64), OutcomeRow> = TableDefinition::new("outcomes");
/// `(record key index, idempotency key)` → `(first offset, its record timestamp, applied)`.
const IDEMPOTENCY: TableDefinition<IdempotencyKey, IdempotencyRow> =
    TableDefinition::new("idempotency");
const IDEMPOTENCY_BY_TIME: TableDefinition<(u64, &[u8], &[u8]), ()> =
    TableDefinition::new("idempotency_by_time");
/// The META key of [`Store::note_broker_contact`].
const BROKER_CONTACT: &str = "broker_contact_ms";

/// The file a directory location gets.
pub const FILE_NAME: &str = "kv-reader.redb";

const ENTRY_FORMAT: u8 = 1;
/// The format of an entry that expires: the expiry after the offset.
const ENTRY_FORMAT_EXPIRING: u8 = 2;
const ENTRY_HEADER_LEN: usize = 1 + 4 + 8 + 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the redb store at {path}: {source}")]
    Open {
        path: PathBuf,
        source: redb::DatabaseError,
    },
    #[error("redb: {0}")]
    Redb(#[from] redb::Error),
    #[error("a stored entry is corrupt")]
    CorruptEntry,
    #[error(
        "KV_API_STATE_STORAGE_PASSWORD does not open the store at {0}: wrong password \
         (delete the store to rebuild it from the topic under a new password)"
    )]
    WrongPassword(PathBuf),
    #[error("the store at {path} {problem}")]
    EncryptionMismatch {
        path: PathBuf,
        problem: &'static str,
    },
}

macro_rules! redb_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Redb(e.into())
            }
        }
    )*};
}
redb_from!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::DatabaseError
);

/// One change a consumed record makes, borrowing the record's bytes where it can.
#[derive(Debug, Clone)]
pub enum Change<'a> {
    Put {
        record_key: &'a [u8],
        user_key: Cow<'a, [u8]>,
        partition: i32,
        offset: i64,
        correlation_id: Option<&'a [u8]>,
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

/// What a snapshot states about the store it was taken of.
#[derive(Debug, Clone)]
pub struct ExportHeader {
    pub topic: Option<String>,
    pub source_format: Option<String>,
    pub next_offsets: BTreeMap<i32, i64>,
    /// Entries in the store (a shard's snapshot carries those of its partitions only).
    pub entries: u64,
}

/// A value as stored, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    pub partition: i32,
    pub offset: i64,
    pub correlation_id: Option<String>,
    pub value: Vec<u8>,
    /// When the value expires, in milliseconds since the Unix epoch; reads never see it after.
    pub expires_at_ms: Option<u64>,
}

impl StoredEntry {
    /// Whether the entry is there for a read at `now_ms`: it has no expiry, or a later one.
    pub fn is_live(&self, now_ms: u64) -> bool {
        live_at(self.expires_at_ms, now_ms)
    }
}

/// Whether an entry expiring at `expires_at_ms` (if ever) is there for a read at `now_ms`.
fn live_at(expires_at_ms: Option<u64>, now_ms: u64) -> bool {
    expires_at_ms.is_none_or(|at| at > now_ms)
}

#[derive(Debug)]
pub struct Store {
    /// The entries as of the last commit, opened once per commit rather than once per read:
    /// beginning a redb read transaction takes a lock and registers it, and opening the table
    /// searches the table of tables. `None` when it could not be opened; reads then open their
    /// own. Declared before `db` so that it is dropped first.
    snapshot: RwLock<Option<Arc<Entries>>>,
    db: Database,
    /// Where the file is, for log lines; `None` in memory.
    path: Option<PathBuf>,
    /// Present when the store is encrypted at rest.
    cipher: Option<StoreCipher>,
    /// The rules of computed keys (`store::computed`), set once before the replica starts.
    rules: std::sync::OnceLock<Arc<kv_core::computed::StateRules>>,
}

type Entries = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

impl Store {
    /// Opens (or creates) the store with the default page cache; see [`Store::open_with_cache`].
    pub fn open(storage: &Storage, password: Option<&Secret<String>>) -> Result<Self, StoreError> {
        Self::open_with_cache(storage, password, DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) the store; with `password`, encrypted at rest. A password given for a
    /// store written without one, or the reverse, is refused rather than guessed at.
    /// `cache_bytes` bounds redb's page cache: for a disk store the process's memory, not the
    /// replica's size; a memory store's pages are in memory anyway, and the cache would hold
    /// them twice.
    pub fn open_with_cache(
        storage: &Storage,
        password: Option<&Secret<String>>,
        cache_bytes: usize,
    ) -> Result<Self, StoreError> {
        let (db, path) = match storage {
            Storage::Memory => {
                let db = Database::builder()
                    .set_cache_size(cache_bytes)
                    .create_with_backend(InMemoryBackend::new())
                    .map_err(|source| StoreError::Open {
                        path: PathBuf::from("(memory)"),
                        source,
                    })?;
                (db, None)
            }
            Storage::Disk { location } => {
                let path = resolve_location(location);
                let db = Database::builder()
                    .set_cache_size(cache_bytes)
                    .create(&path)
                    .map_err(|source| StoreError::Open {
                        path: path.clone(),
                        source,
                    })?;
                (db, Some(path))
            }
        };
        let mut store = Self {
            snapshot: RwLock::new(None),
            db,
            path,
            cipher: None,
            rules: std::sync::OnceLock::new(),
        };
        store.ensure_tables()?;
        store.cipher = store.at_rest_cipher(password)?;
        store.refresh_snapshot();
        Ok(store)
    }

    pub fn is_encrypted(&self) -> bool {
        self.cipher.is_some()
    }

    fn at_rest_cipher(
        &self,
        password: Option<&Secret<String>>,
    ) -> Result<Option<StoreCipher>, StoreError> {
        let path = self
            .path
            .clone()
            .unwrap_or_else(|| PathBuf::from("(memory)"));
        let txn = self.db.begin_write()?;
        let cipher = {
            let mut meta = txn.open_table(META)?;
            let salt = meta.get("kdf_salt")?.map(|v| v.value().to_owned());
            let iterations = meta.get("kdf_iterations")?.map(|v| v.value().to_owned());
            let check = meta.get("password_check")?.map(|v| v.value().to_owned());
            match (password, salt, iterations, check) {
                (None, None, _, _) => None,
                (None, Some(_), _, _) => {
                    return Err(StoreError::EncryptionMismatch {
                        path,
                        problem: "is encrypted at rest: set KV_API_STATE_STORAGE_PASSWORD",
                    })
                }
                (Some(password), Some(salt), Some(iterations), Some(check)) => {
                    let salt = from_hex(&salt).ok_or(StoreError::CorruptEntry)?;
                    let iterations = iterations
                        .parse::<u32>()
                        .ok()
                        .and_then(NonZeroU32::new)
                        .ok_or(StoreError::CorruptEntry)?;
                    let cipher = StoreCipher::derive(password.expose(), &salt, iterations);
                    if to_hex(cipher.check_value()) != check {
                        return Err(StoreError::WrongPassword(path));
                    }
                    Some(cipher)
                }
                (Some(_), Some(_), _, _) => return Err(StoreError::CorruptEntry),
                (Some(password), None, _, _) => {
                    let holds_data = !txn.open_table(ENTRIES)?.is_empty()?
                        || !txn.open_table(NEXT_OFFSETS)?.is_empty()?;
                    if holds_data {
                        return Err(StoreError::EncryptionMismatch {
                            path,
                            problem: "was written without encryption at rest; delete it to \
                                      rebuild it from the topic encrypted",
                        });
                    }
                    let salt = StoreCipher::new_salt();
                    let iterations = NonZeroU32::new(DEFAULT_ITERATIONS).unwrap_or(NonZeroU32::MIN);
                    let cipher = StoreCipher::derive(password.expose(), &salt, iterations);
                    meta.insert("kdf_salt", to_hex(&salt).as_str())?;
                    meta.insert("kdf_iterations", iterations.to_string().as_str())?;
                    meta.insert("password_check", to_hex(cipher.check_value()).as_str())?;
                    Some(cipher)
                }
            }
        };
        txn.commit()?;
        Ok(cipher)
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The space left to unprivileged writers on the disk store's file system; `None` in memory.
    pub fn free_bytes(&self) -> Option<std::io::Result<u64>> {
        let path = self.path.as_deref()?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        Some(
            rustix::fs::statvfs(dir.unwrap_or(Path::new(".")))
                .map(|fs| fs.f_bavail.saturating_mul(fs.f_frsize))
                .map_err(std::io::Error::from),
        )
    }

    /// Creates the tables so read transactions never meet a missing table.
    fn ensure_tables(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(ENTRIES)?;
        txn.open_table(RECORD_KEYS)?;
        txn.open_table(NEXT_OFFSETS)?;
        txn.open_table(META)?;
        expiry::ensure_tables(&txn)?;
        decide::ensure_tables(&txn)?;
        computed::ensure_tables(&txn)?;
        txn.commit()?;
        Ok(())
    }

    /// The topic this store replicates, if it replicated one before.
    pub fn topic(&self) -> Result<Option<String>, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get("topic")?.map(|v| v.value().to_owned()))
    }

    /// When this replica last heard from the broker about its topic, in milliseconds since the
    /// Unix epoch; `None` before the first time.
    pub fn last_broker_contact_ms(&self) -> Result<Option<u64>, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta
            .get(BROKER_CONTACT)?
            .and_then(|v| v.value().parse().ok()))
    }

    /// Records that the broker answered for the topic at `at_ms`: a replica offline for longer
    /// than the topic's `delete.retention.ms` may have missed tombstones compaction removed.
    pub fn note_broker_contact(&self, at_ms: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(META)?
            .insert(BROKER_CONTACT, at_ms.to_string().as_str())?;
        txn.commit()?;
        Ok(())
    }

    /// For each partition, the offset of the next record to apply.
    pub fn next_offsets(&self) -> Result<BTreeMap<i32, i64>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(NEXT_OFFSETS)?;
        let mut offsets = BTreeMap::new();
        for row in table.iter()? {
            let (partition, offset) = row?;
            offsets.insert(partition.value() as i32, offset.value() as i64);
        }
        Ok(offsets)
    }

    /// How the records in the store were read (topic encryption and its key's fingerprint,
    /// schema framing), as the last [`Store::reset`] recorded it.
    pub fn source_format(&self) -> Result<Option<String>, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get("source_format")?.map(|v| v.value().to_owned()))
    }

    /// Empties the store and records which topic it now replicates and how its records are
    /// read (a rebuild from scratch).
    pub fn reset(&self, topic: &str, source_format: &str) -> Result<(), StoreError> {
        self.empty(Some((topic, source_format)))
    }

    /// Empties the store and forgets its topic: a snapshot import starts, or gives up.
    pub fn clear(&self) -> Result<(), StoreError> {
        self.empty(None)
    }

    /// Every entry, offset and expiry gone, in one transaction; the topic and source format
    /// recorded, or forgotten.
    fn empty(&self, replicating: Option<(&str, &str)>) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.delete_table(ENTRIES)?;
        txn.delete_table(RECORD_KEYS)?;
        txn.delete_table(NEXT_OFFSETS)?;
        txn.open_table(ENTRIES)?;
        txn.open_table(RECORD_KEYS)?;
        txn.open_table(NEXT_OFFSETS)?;
        expiry::reset_tables(&txn)?;
        decide::reset_tables(&txn)?;
        computed::reset_tables(&txn)?;
        {
            let mut meta = txn.open_table(META)?;
            match replicating {
                Some((topic, source_format)) => {
                    meta.insert("topic", topic)?;
                    meta.insert("source_format", source_format)?;
                }
                None => {
                    meta.remove("topic")?;
                    meta.remove("source_format")?;
                }
            }
            meta.remove(BROKER_CONTACT)?;
        }
        txn.commit()?;
        self.refresh_snapshot();
        Ok(())
    }

    /// Applies a batch and the offsets it reaches in one transaction: both or neither persist.
    /// A process that sweeps no partition; see [`Store::apply_at`]. Answers, for each
    /// tombstone that removed an entry, its index in `changes` and the user key it removed: on
    /// an encrypted topic the tombstone names only the key's MAC.
    pub fn apply(
        &self,
        changes: &[Change<'_>],
        next_offsets: &BTreeMap<i32, i64>,
    ) -> Result<Vec<(usize, Vec<u8>)>, StoreError> {
        self.apply_at(changes, next_offsets, now_ms(), &|_| false)
            .map(|applied| applied.removed)
    }

    /// Replaces the snapshot reads use with the state just committed. Called after every commit
    /// that changes entries, before the caller reports the new offsets as applied: a read that
    /// waited for them must find their data.
    fn refresh_snapshot(&self) {
        let fresh = match self.open_entries() {
            Ok(entries) => Some(entries),
            Err(error) => {
                tracing::warn!(%error, "cannot open a read snapshot; reads open their own");
                None
            }
        };
        *self
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner) = fresh;
    }

    /// The entries as last committed.
    fn entries(&self) -> Result<Arc<Entries>, StoreError> {
        let snapshot = self
            .snapshot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match snapshot {
            Some(entries) => Ok(entries),
            None => self.open_entries(),
        }
    }

    /// The entries in a read transaction of their own, as of now.
    fn open_entries(&self) -> Result<Arc<Entries>, StoreError> {
        Ok(Arc::new(self.db.begin_read()?.open_table(ENTRIES)?))
    }

    /// The key's entry, unless it has expired by this replica's clock.
    pub fn get(&self, user_key: &[u8]) -> Result<Option<StoredEntry>, StoreError> {
        self.lookup(&*self.entries()?, user_key, now_ms())
    }

    /// Hands `read` the key's live value where it lies in the store's page, without copying it
    /// out: the Redis-protocol port writes it straight into its reply.
    pub fn read_value<R>(
        &self,
        user_key: &[u8],
        read: impl FnOnce(Option<&[u8]>) -> R,
    ) -> Result<R, StoreError> {
        let entries = self.entries()?;
        let now = now_ms();
        match &self.cipher {
            None => match entries.get(user_key)? {
                Some(raw) => {
                    let view = EntryView::of(raw.value())?;
                    Ok(read(view.is_live(now).then_some(view.value)))
                }
                None => Ok(read(None)),
            },
            Some(cipher) => {
                let index = cipher.index(user_key);
                match entries.get(index.as_slice())? {
                    Some(sealed) => {
                        let (_, entry) = open_entry(cipher, &index, sealed.value())?;
                        let view = EntryView::of(&entry)?;
                        Ok(read(view.is_live(now).then_some(view.value)))
                    }
                    None => Ok(read(None)),
                }
            }
        }
    }

    /// The key's entry if it is live at `now_ms`.
    fn lookup(
        &self,
        entries: &redb::ReadOnlyTable<&[u8], &[u8]>,
        user_key: &[u8],
        now_ms: u64,
    ) -> Result<Option<StoredEntry>, StoreError> {
        Ok(self
            .lookup_any(entries, user_key)?
            .filter(|entry| entry.is_live(now_ms)))
    }

    /// The key's entry, expired or not.
    fn lookup_any(
        &self,
        entries: &redb::ReadOnlyTable<&[u8], &[u8]>,
        user_key: &[u8],
    ) -> Result<Option<StoredEntry>, StoreError> {
        match &self.cipher {
            None => match entries.get(user_key)? {
                Some(raw) => decode_entry(raw.value()).map(Some),
                None => Ok(None),
            },
            Some(cipher) => {
                let index = cipher.index(user_key);
                match entries.get(index.as_slice())? {
                    Some(sealed) => {
                        let (_, entry) = open_entry(cipher, &index, sealed.value())?;
                        decode_entry(&entry).map(Some)
                    }
                    None => Ok(None),
                }
            }
        }
    }

    /// Looks many keys up in one read transaction, so the answers come from one snapshot.
    pub fn get_many<'k>(
        &self,
        user_keys: impl IntoIterator<Item = &'k [u8]>,
    ) -> Result<Vec<Option<StoredEntry>>, StoreError> {
        let entries = self.entries()?;
        let now = now_ms();
        user_keys
            .into_iter()
            .map(|key| self.lookup(&entries, key, now))
            .collect()
    }

    /// As [`Store::get_many`], stopping with `None` as soon as `keep` refuses an entry found
    /// (the `i`-th key's), so a caller bounding the answer never holds more than its bound.
    pub fn get_many_while<'k>(
        &self,
        user_keys: impl IntoIterator<Item = &'k [u8]>,
        mut keep: impl FnMut(usize, &StoredEntry) -> bool,
    ) -> Result<Option<Vec<Option<StoredEntry>>>, StoreError> {
        let entries = self.entries()?;
        let now = now_ms();
        let mut found = Vec::new();
        for (i, key) in user_keys.into_iter().enumerate() {
            let entry = self.lookup(&entries, key, now)?;
            if entry.as_ref().is_some_and(|entry| !keep(i, entry)) {
                return Ok(None);
            }
            found.push(entry);
        }
        Ok(Some(found))
    }

    /// Up to `limit` keys starting with `prefix`, in byte order, strictly after `after` when
    /// given; the flag says whether more keys follow.
    pub fn list_keys(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<Vec<u8>>, bool), StoreError> {
        let entries = self.entries()?;
        let now = now_ms();
        if let Some(cipher) = &self.cipher {
            return list_sealed_keys(cipher, &entries, prefix, after, limit, now);
        }
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let mut keys = Vec::with_capacity(limit.min(1024));
        for row in entries.range::<&[u8]>((start, Bound::Unbounded))? {
            let (key, entry) = row?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            if !entry_is_live(entry.value(), now) {
                continue;
            }
            if keys.len() == limit {
                return Ok((keys, true));
            }
            keys.push(key.to_vec());
        }
        Ok((keys, false))
    }

    /// One consistent view for a snapshot: in a single read transaction, the topic, the
    /// source format, the next offsets, the entry count, then every entry whose partition
    /// `keep` admits, handed to `each` with its user key, then every computed-state row of
    /// those partitions, handed to `computed`. Either returning `false` stops early (the
    /// receiver went away).
    pub fn export(
        &self,
        keep: impl Fn(i32) -> bool,
        header: impl FnOnce(ExportHeader) -> bool,
        mut each: impl FnMut(&[u8], StoredEntry) -> bool,
        mut computed: impl FnMut(ComputedRow) -> bool,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let mut next_offsets = BTreeMap::new();
        for row in txn.open_table(NEXT_OFFSETS)?.iter()? {
            let (partition, offset) = row?;
            let partition = partition.value() as i32;
            if keep(partition) {
                next_offsets.insert(partition, offset.value() as i64);
            }
        }
        let entries = txn.open_table(ENTRIES)?;
        let go_on = header(ExportHeader {
            topic: meta.get("topic")?.map(|v| v.value().to_owned()),
            source_format: meta.get("source_format")?.map(|v| v.value().to_owned()),
            next_offsets,
            entries: entries.len()?,
        });
        if !go_on {
            return Ok(());
        }
        for row in entries.iter()? {
            let (key, raw) = row?;
            let (user_key, entry) = match &self.cipher {
                None => (Cow::Borrowed(key.value()), decode_entry(raw.value())?),
                Some(cipher) => {
                    let (user_key, entry) = open_entry(cipher, key.value(), raw.value())?;
                    (Cow::Owned(user_key), decode_entry(&entry)?)
                }
            };
            if keep(entry.partition) && !each(&user_key, entry) {
                return Ok(());
            }
        }
        // The same read transaction: the rows match the entries and the offsets exactly.
        computed::export_rows(&txn, &keep, &mut computed)?;
        Ok(())
    }

    /// The end of a snapshot's import: the offsets it was taken at, and the topic and format
    /// it was read under, in one transaction. Until this commits the store names no topic, so
    /// an import cut short is rebuilt from scratch at the next start.
    pub fn finish_import(
        &self,
        topic: &str,
        source_format: &str,
        next_offsets: &BTreeMap<i32, i64>,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert("topic", topic)?;
            meta.insert("source_format", source_format)?;
            let mut offsets = txn.open_table(NEXT_OFFSETS)?;
            for (&partition, &offset) in next_offsets {
                offsets.insert(partition as u32, offset as u64)?;
            }
        }
        txn.commit()?;
        self.refresh_snapshot();
        Ok(())
    }

    pub fn key_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(ENTRIES)?.len()?)
    }

    /// The entries as last committed, to be read page by page with [`Store::scan`] while later
    /// batches commit. It pins that state in redb (on disk, its pages are not reused) for as
    /// long as it is held.
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.entries().map(Snapshot)
    }

    /// One page of the entries of `snapshot` whose key starts with `prefix`: at most
    /// `max_entries`, stopping once `max_bytes` of values are held (one entry may pass it).
    /// `after` is the `resume_after` of the previous page. In key order, except on a store
    /// encrypted at rest, which is ordered by the keys' MACs and read whole, a bounded number of
    /// rows per page.
    pub fn scan(
        &self,
        snapshot: &Snapshot,
        prefix: &[u8],
        after: Option<&[u8]>,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<ScanPage, StoreError> {
        let entries = &snapshot.0;
        let start = match (after, &self.cipher) {
            (Some(after), _) => Bound::Excluded(after),
            (None, None) => Bound::Included(prefix),
            (None, Some(_)) => Bound::Unbounded,
        };
        let mut page = ScanPage::default();
        let (mut bytes, mut rows) = (0, 0);
        for row in entries.range::<&[u8]>((start, Bound::Unbounded))? {
            let (table_key, raw) = row?;
            let (key, entry) = match &self.cipher {
                None if !table_key.value().starts_with(prefix) => return Ok(page),
                None => (table_key.value().to_vec(), decode_entry(raw.value())?),
                Some(cipher) => {
                    let (key, entry) = open_entry(cipher, table_key.value(), raw.value())?;
                    (key, decode_entry(&entry)?)
                }
            };
            rows += 1;
            if key.starts_with(prefix) {
                bytes += entry.value.len();
                page.entries.push((key, entry));
            }
            if page.entries.len() >= max_entries || bytes >= max_bytes || rows >= MAX_SCAN_ROWS {
                page.resume_after = Some(table_key.value().to_vec());
                return Ok(page);
            }
        }
        Ok(page)
    }
}

/// Rows one [`Store::scan`] page reads at most: a sealed store is read whole to find a prefix.
const MAX_SCAN_ROWS: usize = 4096;

/// A committed state of the entries; see [`Store::snapshot`].
#[derive(Debug, Clone)]
pub struct Snapshot(Arc<Entries>);

/// What [`Store::scan`] found: entries with their user keys, and where the next page starts
/// (`None`: this was the last).
#[derive(Debug, Default)]
pub struct ScanPage {
    pub entries: Vec<(Vec<u8>, StoredEntry)>,
    pub resume_after: Option<Vec<u8>>,
}

/// Listing an encrypted store: its table is ordered by MAC, not by key, so every key is opened
/// and sorted; the cost grows with the store (see docs/operations.md).
fn list_sealed_keys(
    cipher: &StoreCipher,
    entries: &redb::ReadOnlyTable<&[u8], &[u8]>,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: usize,
    now_ms: u64,
) -> Result<(Vec<Vec<u8>>, bool), StoreError> {
    let mut keys = Vec::new();
    for row in entries.iter()? {
        let (index, sealed) = row?;
        let (key, entry) = open_entry(cipher, index.value(), sealed.value())?;
        if key.starts_with(prefix)
            && after.is_none_or(|after| key.as_slice() > after)
            && entry_is_live(&entry, now_ms)
        {
            keys.push(key);
        }
    }
    keys.sort_unstable();
    let more = keys.len() > limit;
    keys.truncate(limit);
    Ok((keys, more))
}

/// Opens a sealed entry into its user key and its plaintext entry bytes.
fn open_entry(
    cipher: &StoreCipher,
    index: &[u8],
    sealed: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
    let plain = cipher
        .open(index, sealed)
        .map_err(|_| StoreError::CorruptEntry)?;
    let (len, rest) = plain.split_at_checked(4).ok_or(StoreError::CorruptEntry)?;
    let key_len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let (key, entry) = rest
        .split_at_checked(key_len)
        .ok_or(StoreError::CorruptEntry)?;
    Ok((key.to_vec(), entry.to_vec()))
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn resolve_location(location: &Path) -> PathBuf {
    if location.is_dir() {
        location.join(FILE_NAME)
    } else {
        location.to_owned()
    }
}

/// `[format][partition BE][offset BE][correlation id length][correlation id][value]`, or for an
/// entry that expires `[format 2][partition BE][offset BE][expires at BE][correlation id
/// length][correlation id][value]`: entries without an expiry keep the first format, so stores
/// written before TTLs existed read as they were.
fn encode_entry(
    out: &mut Vec<u8>,
    partition: i32,
    offset: i64,
    correlation_id: Option<&[u8]>,
    value: &[u8],
    expires_at_ms: Option<u64>,
) {
    // Ids longer than a byte's worth are cut; they are for tracing, not identity.
    let correlation_id = correlation_id.unwrap_or_default();
    let correlation_id = &correlation_id[..correlation_id.len().min(u8::MAX as usize)];
    out.clear();
    out.reserve(ENTRY_HEADER_LEN + 8 + correlation_id.len() + value.len());
    out.push(if expires_at_ms.is_some() {
        ENTRY_FORMAT_EXPIRING
    } else {
        ENTRY_FORMAT
    });
    out.extend_from_slice(&partition.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    if let Some(expires_at) = expires_at_ms {
        out.extend_from_slice(&expires_at.to_be_bytes());
    }
    out.push(correlation_id.len() as u8);
    out.extend_from_slice(correlation_id);
    out.extend_from_slice(value);
}

/// An entry's expiry, read from its first bytes without decoding the rest.
fn entry_expiry(raw: &[u8]) -> Result<Option<u64>, StoreError> {
    match raw.first() {
        Some(&ENTRY_FORMAT) => Ok(None),
        Some(&ENTRY_FORMAT_EXPIRING) => raw
            .get(13..21)
            .and_then(|bytes| bytes.try_into().ok())
            .map(|bytes| Some(u64::from_be_bytes(bytes)))
            .ok_or(StoreError::CorruptEntry),
        _ => Err(StoreError::CorruptEntry),
    }
}

/// Whether a stored entry is live at `now_ms`; a corrupt one is listed, and its read reports it.
fn entry_is_live(raw: &[u8], now_ms: u64) -> bool {
    entry_expiry(raw).map_or(true, |at| live_at(at, now_ms))
}

/// A stored entry as it lies in the store's page: the layout's one reader.
struct EntryView<'a> {
    partition: i32,
    offset: i64,
    correlation_id: &'a [u8],
    value: &'a [u8],
    expires_at_ms: Option<u64>,
}

impl<'a> EntryView<'a> {
    fn of(raw: &'a [u8]) -> Result<EntryView<'a>, StoreError> {
        let expires_at_ms = entry_expiry(raw)?;
        let header_len = ENTRY_HEADER_LEN + if expires_at_ms.is_some() { 8 } else { 0 };
        if raw.len() < header_len {
            return Err(StoreError::CorruptEntry);
        }
        let partition =
            i32::from_be_bytes(raw[1..5].try_into().map_err(|_| StoreError::CorruptEntry)?);
        let offset = i64::from_be_bytes(
            raw[5..13]
                .try_into()
                .map_err(|_| StoreError::CorruptEntry)?,
        );
        let id_len = raw[header_len - 1] as usize;
        let rest = &raw[header_len..];
        if rest.len() < id_len {
            return Err(StoreError::CorruptEntry);
        }
        let (correlation_id, value) = rest.split_at(id_len);
        Ok(EntryView {
            partition,
            offset,
            correlation_id,
            value,
            expires_at_ms,
        })
    }

    fn is_live(&self, now_ms: u64) -> bool {
        live_at(self.expires_at_ms, now_ms)
    }
}

fn decode_entry(raw: &[u8]) -> Result<StoredEntry, StoreError> {
    let view = EntryView::of(raw)?;
    Ok(StoredEntry {
        partition: view.partition,
        offset: view.offset,
        correlation_id: (!view.correlation_id.is_empty())
            .then(|| String::from_utf8_lossy(view.correlation_id).into_owned()),
        value: view.value.to_vec(),
        expires_at_ms: view.expires_at_ms,
    })
}

/// This replica's clock, in milliseconds since the Unix epoch: what expiries are compared with.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put<'a>(key: &'a [u8], offset: i64, value: &'a [u8]) -> Change<'a> {
        Change::Put {
            record_key: key,
            user_key: Cow::Borrowed(key),
            partition: 0,
            offset,
            correlation_id: Some(b"corr-1"),
            value: Cow::Borrowed(value),
            expires_at_ms: None,
            precondition: None,
            decided: None,
        }
    }

    #[test]
    fn an_applied_put_is_readable_with_its_origin() {
        let store = Store::open(&Storage::Memory, None).expect("store");
        store
            .apply(&[put(b"k", 7, b"v")], &BTreeMap::from([(0, 8)]))
            .expect("apply");
        let entry = store.get(b"k").expect("get").expect("present");
        assert_eq!(entry.value, b"v");
        assert_eq!((entry.partition, entry.offset), (0, 7));
        assert_eq!(entry.correlation_id.as_deref(), Some("corr-1"));
        assert_eq!(
            store.next_offsets().expect("offsets"),
            BTreeMap::from([(0, 8)])
        );
    }

    #[test]
    fn a_delete_removes_the_entry_and_an_empty_value_is_kept() {
        let store = Store::open(&Storage::Memory, None).expect("store");
        store
            .apply(
                &[
                    put(b"gone", 0, b"x"),
                    put(b"empty", 1, b""),
                    Change::Delete {
                        record_key: b"gone",
                        user_key: Some(b"gone"),
                        partition: 0,
                        offset: 9,
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
    fn a_disk_store_keeps_entries_and_offsets_across_reopen() {
        let dir = tempfile::tempdir().expect("dir");
        let storage = Storage::Disk {
            location: dir.path().to_owned(),
        };
        {
            let store = Store::open(&storage, None).expect("store");
            store.reset("topic-a", "f").expect("reset");
            store
                .apply(&[put(b"k", 41, b"v")], &BTreeMap::from([(2, 42)]))
                .expect("apply");
        }
        let store = Store::open(&storage, None).expect("reopen");
        assert_eq!(store.path(), Some(dir.path().join(FILE_NAME).as_path()));
        assert_eq!(store.topic().expect("topic").as_deref(), Some("topic-a"));
        assert_eq!(
            store.source_format().expect("format").as_deref(),
            Some("f"),
            "the reset recorded how the records are read"
        );
        assert_eq!(
            store.next_offsets().expect("offsets"),
            BTreeMap::from([(2, 42)])
        );
        assert_eq!(store.get(b"k").expect("get").expect("present").value, b"v");
    }

    #[test]
    fn listing_pages_through_the_keys_of_a_prefix_in_byte_order() {
        let store = Store::open(&Storage::Memory, None).expect("store");
        let keys: [&[u8]; 5] = [b"a", b"user/1", b"user/2", b"user/3", b"v"];
        let changes: Vec<_> = keys.iter().map(|k| put(k, 0, b"x")).collect();
        store
            .apply(&changes, &BTreeMap::from([(0, 1)]))
            .expect("apply");
        let (page, more) = store.list_keys(b"user/", None, 2).expect("list");
        assert_eq!(page, vec![b"user/1".to_vec(), b"user/2".to_vec()]);
        assert!(more);
        let (page, more) = store.list_keys(b"user/", Some(b"user/2"), 2).expect("list");
        assert_eq!(page, vec![b"user/3".to_vec()]);
        assert!(!more);
        let (all, _) = store.list_keys(b"", None, 10).expect("list");
        assert_eq!(all.len(), 5);
    }

    #[test]
    fn get_many_answers_each_key_in_request_order() {
        let store = Store::open(&Storage::Memory, None).expect("store");
        store
            .apply(&[put(b"k", 3, b"v")], &BTreeMap::from([(0, 4)]))
            .expect("apply");
        let found = store
            .get_many([b"missing".as_slice(), b"k".as_slice()])
            .expect("get");
        assert_eq!(found[0], None);
        assert_eq!(found[1].as_ref().expect("present").value, b"v");
    }

    #[test]
    fn a_borrowed_value_read_answers_as_get_does_live_expired_missing_and_encrypted() {
        let dir = tempfile::tempdir().expect("dir");
        let encrypted = Storage::Disk {
            location: dir.path().to_owned(),
        };
        for (storage, secret) in [
            (Storage::Memory, None),
            (encrypted, Some(password("correct horse"))),
        ] {
            let store = Store::open(&storage, secret.as_ref()).expect("store");
            let mut expired = put(b"gone", 1, b"old");
            if let Change::Put { expires_at_ms, .. } = &mut expired {
                *expires_at_ms = Some(1);
            }
            store
                .apply(
                    &[put(b"k", 0, b"value"), expired],
                    &BTreeMap::from([(0, 2)]),
                )
                .expect("apply");
            for key in [b"k".as_slice(), b"gone", b"missing"] {
                let borrowed = store
                    .read_value(key, |value| value.map(<[u8]>::to_vec))
                    .expect("read");
                let copied = store.get(key).expect("get").map(|entry| entry.value);
                assert_eq!(borrowed, copied, "{}", String::from_utf8_lossy(key));
            }
            assert_eq!(
                store
                    .read_value(b"k", |value| value.map(<[u8]>::len))
                    .expect("read"),
                Some(5)
            );
        }
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
            value: Cow::Borrowed(b"Ada"),
            expires_at_ms: None,
            precondition: None,
            decided: None,
        };
        store
            .apply(&[put], &BTreeMap::from([(0, 1)]))
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
            .apply(
                &[Change::Delete {
                    record_key: b"mac-of-user-1",
                    user_key: None,
                    partition: 0,
                    offset: 9,
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
            precondition: None,
            decided: None,
        };
        store
            .apply(&[put, in_clear], &BTreeMap::from([(0, 2)]))
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
            .apply(
                &[
                    put(b"plain", 0, b"v"),
                    Change::Put {
                        record_key: b"mac-of-user-1",
                        user_key: Cow::Borrowed(b"user-1"),
                        partition: 0,
                        offset: 1,
                        correlation_id: None,
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
                        precondition: None,
                        decided: None,
                    },
                    Change::Delete {
                        record_key: b"mac-of-user-1",
                        user_key: None,
                        partition: 0,
                        offset: 0,
                        precondition: None,
                        decided: None,
                    },
                    Change::Delete {
                        record_key: b"plain",
                        user_key: Some(b"plain"),
                        partition: 0,
                        offset: 0,
                        precondition: None,
                        decided: None,
                    },
                ],
                &BTreeMap::from([(0, 5)]),
            )
            .expect("apply");
        assert_eq!(
            removed,
            vec![(3, b"user-1".to_vec()), (4, b"plain".to_vec())]
        );
    }

    #[test]
    fn a_scan_pages_through_the_entries_of_a_prefix_in_a_snapshot_taken_before_later_commits() {
        for password in [None, Some(password("pw"))] {
            let dir = tempfile::tempdir().expect("dir");
            let storage = Storage::Disk {
                location: dir.path().to_owned(),
            };
            let store = Store::open(&storage, password.as_ref()).expect("store");
            let keys: [&[u8]; 5] = [b"a", b"user/1", b"user/2", b"user/3", b"v"];
            let changes: Vec<_> = keys.iter().map(|k| put(k, 0, b"x")).collect();
            store
                .apply(&changes, &BTreeMap::from([(0, 1)]))
                .expect("apply");
            let snapshot = store.snapshot().expect("snapshot");
            store
                .apply(&[put(b"user/4", 1, b"later")], &BTreeMap::from([(0, 2)]))
                .expect("apply");
            let mut found = Vec::new();
            let mut after = None;
            loop {
                let page = store
                    .scan(&snapshot, b"user/", after.as_deref(), 2, usize::MAX)
                    .expect("scan");
                assert!(page.entries.len() <= 2);
                found.extend(page.entries.into_iter().map(|(key, entry)| {
                    assert_eq!(entry.value, b"x");
                    key
                }));
                match page.resume_after {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            found.sort();
            assert_eq!(
                found,
                vec![b"user/1".to_vec(), b"user/2".to_vec(), b"user/3".to_vec()],
                "encrypted at rest: {}",
                password.is_some()
            );
            let one_page = store
                .scan(&snapshot, b"", None, 100, 1)
                .expect("scan by bytes");
            assert_eq!(
                one_page.entries.len(),
                1,
                "a page ends once its bytes are reached"
            );
        }
    }

    #[test]
    fn every_read_sees_the_last_commit_including_a_reset() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(
            &Storage::Disk {
                location: dir.path().to_path_buf(),
            },
            None,
        )
        .expect("store");
        assert_eq!(store.get(b"k").expect("get"), None);
        store
            .apply(&[put(b"k", 0, b"one")], &BTreeMap::from([(0, 1)]))
            .expect("apply");
        let before = store.get(b"k").expect("get").expect("present");
        store
            .apply(&[put(b"k", 1, b"two")], &BTreeMap::from([(0, 2)]))
            .expect("apply");
        assert_eq!(before.value, b"one");
        assert_eq!(
            store.get(b"k").expect("get").expect("present").value,
            b"two"
        );
        assert_eq!(
            store.get_many([b"k".as_slice()]).expect("get_many")[0]
                .as_ref()
                .map(|e| e.value.clone()),
            Some(b"two".to_vec())
        );
        store.reset("t", "f").expect("reset");
        assert_eq!(store.get(b"k").expect("get"), None);
        assert!(store.list_keys(b"", None, 10).expect("list").0.is_empty());
    }

    #[test]
    fn reset_empties_entries_and_offsets() {
        let store = Store::open(&Storage::Memory, None).expect("store");
        store
            .apply(&[put(b"k", 0, b"v")], &BTreeMap::from([(0, 1)]))
            .expect("apply");
        store.reset("t", "f").expect("reset");
        assert_eq!(store.key_count().expect("count"), 0);
        assert!(store.next_offsets().expect("offsets").is_empty());
    }

    #[test]
    fn the_last_broker_contact_is_kept_until_a_reset() {
        let store = Store::open(&Storage::Memory, None).expect("store");
        assert_eq!(store.last_broker_contact_ms().expect("read"), None);
        store.note_broker_contact(1_234).expect("note");
        assert_eq!(store.last_broker_contact_ms().expect("read"), Some(1_234));
        store
            .reset("t", "encryption=off schema_framing=none")
            .expect("reset");
        assert_eq!(store.last_broker_contact_ms().expect("read"), None);
    }

    fn password(text: &str) -> Secret<String> {
        Secret::new(text.to_owned())
    }

    fn file_holds(path: &Path, needle: &[u8]) -> bool {
        let bytes = std::fs::read(path).expect("read the store file");
        bytes.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn an_encrypted_store_serves_lists_and_deletes_without_keys_or_values_in_the_file() {
        let dir = tempfile::tempdir().expect("dir");
        let storage = Storage::Disk {
            location: dir.path().to_owned(),
        };
        let store = Store::open(&storage, Some(&password("correct horse"))).expect("store");
        assert!(store.is_encrypted());
        let changes = [
            put(b"customer/4711", 0, b"top-secret-value"),
            put(b"customer/4712", 1, b"another-secret"),
            put(b"order/1", 2, b"third-secret"),
        ];
        store
            .apply(&changes, &BTreeMap::from([(0, 3)]))
            .expect("apply");
        assert_eq!(
            store
                .get(b"customer/4711")
                .expect("get")
                .expect("present")
                .value,
            b"top-secret-value"
        );
        assert_eq!(
            store.list_keys(b"customer/", None, 1).expect("list"),
            (vec![b"customer/4711".to_vec()], true)
        );
        assert_eq!(
            store
                .list_keys(b"customer/", Some(b"customer/4711"), 10)
                .expect("list"),
            (vec![b"customer/4712".to_vec()], false)
        );
        store
            .apply(
                &[Change::Delete {
                    record_key: b"order/1",
                    user_key: Some(b"order/1"),
                    partition: 0,
                    offset: 9,
                    precondition: None,
                    decided: None,
                }],
                &BTreeMap::from([(0, 4)]),
            )
            .expect("delete");
        assert_eq!(store.get(b"order/1").expect("get"), None);
        drop(store);
        let file = dir.path().join(FILE_NAME);
        for secret in [
            &b"customer/4711"[..],
            b"top-secret-value",
            b"another-secret",
        ] {
            assert!(
                !file_holds(&file, secret),
                "the file holds {secret:?} in clear"
            );
        }
    }

    #[test]
    fn an_encrypted_store_reopens_with_its_password_and_refuses_any_other() {
        let dir = tempfile::tempdir().expect("dir");
        let storage = Storage::Disk {
            location: dir.path().to_owned(),
        };
        {
            let store = Store::open(&storage, Some(&password("right"))).expect("store");
            store
                .apply(&[put(b"k", 0, b"v")], &BTreeMap::from([(0, 1)]))
                .expect("apply");
        }
        let store = Store::open(&storage, Some(&password("right"))).expect("reopen");
        assert_eq!(store.get(b"k").expect("get").expect("present").value, b"v");
        drop(store);
        assert!(matches!(
            Store::open(&storage, Some(&password("wrong"))),
            Err(StoreError::WrongPassword(_))
        ));
        let error = Store::open(&storage, None).expect_err("no password");
        assert!(
            error.to_string().contains("KV_API_STATE_STORAGE_PASSWORD"),
            "{error}"
        );
    }

    #[test]
    fn a_plaintext_store_with_data_is_not_silently_reused_under_a_password() {
        let dir = tempfile::tempdir().expect("dir");
        let storage = Storage::Disk {
            location: dir.path().to_owned(),
        };
        Store::open(&storage, None)
            .expect("store")
            .apply(&[put(b"k", 0, b"v")], &BTreeMap::from([(0, 1)]))
            .expect("apply");
        assert!(matches!(
            Store::open(&storage, Some(&password("pw"))),
            Err(StoreError::EncryptionMismatch { .. })
        ));
    }
}
