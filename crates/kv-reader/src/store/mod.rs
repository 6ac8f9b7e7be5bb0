//! The replica in redb: entries by user key, and the next offset per partition, written in the
//! same transaction so a restart neither re-applies nor loses anything.
//!
//! On an encrypted topic the record key is a MAC of the user key and a tombstone carries only
//! that MAC, so `record_keys` maps each record key to its user key; on a plaintext topic the two
//! are the same and that table stays empty.
//!
//! With a password (see [`crate::store::at_rest`]) keys are stored as keyed MACs and entries
//! sealed, so the file holds neither keys nor values in clear; offsets and the topic name stay
//! readable.
//!
//! Entries that expire are indexed by expiry, and deletes are remembered for a while; both serve
//! the TTL rules of `expiry` (docs/architecture.md, "Keys that expire").
//!
//! This file opens the store and keeps what describes it as a whole (its topic, offsets and
//! format); each other concern has a file of its own, named for it.

pub mod at_rest;

mod computed;
mod decide;
mod entry;
mod expiry;
mod read;
mod tables;
#[cfg(test)]
mod testing;
mod transfer;
mod write;

pub use computed::{ComputedRow, DueTimer, Explained, SinkPending};
pub use decide::OUTCOME_MEMORY;
pub use entry::StoredEntry;
pub use expiry::{Expired, PendingRepair, Purged, DELETE_MEMORY};
pub use read::{ReadView, ScanPage};
pub use transfer::ExportHeader;
pub use write::{Applied, Change, Decided, Precondition};

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use kv_core::secret::Secret;

use redb::backends::InMemoryBackend;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use crate::settings::{Storage, DEFAULT_CACHE_BYTES};
use crate::store::at_rest::{StoreCipher, DEFAULT_ITERATIONS};
use tables::{Entries, ENTRIES, META, NEXT_OFFSETS, RECORD_KEYS};

/// The META key of [`Store::note_broker_contact`].
const BROKER_CONTACT: &str = "broker_contact_ms";

/// The file a directory location gets.
pub const FILE_NAME: &str = "kv-reader.redb";

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

#[derive(Debug)]
pub struct Store {
    /// The entries as of the last commit, opened once per commit rather than once per read:
    /// beginning a redb read transaction takes a lock and registers it, and opening the table
    /// searches the table of tables. `None` when it could not be opened; reads then open their
    /// own. Declared before `db` so that it is dropped first.
    committed: RwLock<Option<Arc<Entries>>>,
    db: Database,
    /// Where the file is, for log lines; `None` in memory.
    path: Option<PathBuf>,
    /// Present when the store is encrypted at rest.
    cipher: Option<StoreCipher>,
    /// The rules of computed keys (`store::computed`), set once before the replica starts.
    rules: std::sync::OnceLock<Arc<kv_core::computed::StateRules>>,
}

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
            committed: RwLock::new(None),
            db,
            path,
            cipher: None,
            rules: std::sync::OnceLock::new(),
        };
        store.ensure_tables()?;
        store.cipher = store.at_rest_cipher(password)?;
        store.refresh_read_view();
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
        self.refresh_read_view();
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::testing::{password, put};
    use super::*;

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
                .apply_now_sweeping_nothing(&[put(b"k", 41, b"v")], &BTreeMap::from([(2, 42)]))
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
    fn reset_empties_entries_and_offsets() {
        let store = Store::open(&Storage::Memory, None).expect("store");
        store
            .apply_now_sweeping_nothing(&[put(b"k", 0, b"v")], &BTreeMap::from([(0, 1)]))
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
            .apply_now_sweeping_nothing(&changes, &BTreeMap::from([(0, 3)]))
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
            .apply_now_sweeping_nothing(
                &[Change::Delete {
                    record_key: b"order/1",
                    user_key: Some(b"order/1"),
                    partition: 0,
                    offset: 9,
                    traceparent: None,
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
                .apply_now_sweeping_nothing(&[put(b"k", 0, b"v")], &BTreeMap::from([(0, 1)]))
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
            .apply_now_sweeping_nothing(&[put(b"k", 0, b"v")], &BTreeMap::from([(0, 1)]))
            .expect("apply");
        assert!(matches!(
            Store::open(&storage, Some(&password("pw"))),
            Err(StoreError::EncryptionMismatch { .. })
        ));
    }
}
