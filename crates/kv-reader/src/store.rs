//! The replica in redb: entries by user key, and the next offset per partition, written in the
//! same transaction so a restart neither re-applies nor loses anything.
//!
//! On an encrypted topic the record key is a MAC of the user key and a tombstone carries only
//! that MAC, so `record_keys` maps each record key to its user key; on a plaintext topic the two
//! are the same and that table stays empty.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};

use redb::backends::InMemoryBackend;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::settings::Storage;

const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");
const RECORD_KEYS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("record_keys");
const NEXT_OFFSETS: TableDefinition<u32, u64> = TableDefinition::new("next_offsets");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");

/// The file a directory location gets.
pub const FILE_NAME: &str = "kv-reader.redb";

const ENTRY_FORMAT: u8 = 1;
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
    },
    Delete {
        record_key: &'a [u8],
    },
}

/// A value as stored, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    pub partition: i32,
    pub offset: i64,
    pub correlation_id: Option<String>,
    pub value: Vec<u8>,
}

#[derive(Debug)]
pub struct Store {
    db: Database,
    /// Where the file is, for log lines; `None` in memory.
    path: Option<PathBuf>,
}

impl Store {
    pub fn open(storage: &Storage) -> Result<Self, StoreError> {
        let (db, path) = match storage {
            Storage::Memory => {
                let db = Database::builder()
                    .create_with_backend(InMemoryBackend::new())
                    .map_err(|source| StoreError::Open {
                        path: PathBuf::from("(memory)"),
                        source,
                    })?;
                (db, None)
            }
            Storage::Disk { location } => {
                let path = resolve_location(location);
                let db = Database::create(&path).map_err(|source| StoreError::Open {
                    path: path.clone(),
                    source,
                })?;
                (db, Some(path))
            }
        };
        let store = Self { db, path };
        store.ensure_tables()?;
        Ok(store)
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Creates the tables so read transactions never meet a missing table.
    fn ensure_tables(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(ENTRIES)?;
        txn.open_table(RECORD_KEYS)?;
        txn.open_table(NEXT_OFFSETS)?;
        txn.open_table(META)?;
        txn.commit()?;
        Ok(())
    }

    /// The topic this store replicates, if it replicated one before.
    pub fn topic(&self) -> Result<Option<String>, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get("topic")?.map(|v| v.value().to_owned()))
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

    /// Empties the store and records which topic it now replicates (a rebuild from scratch).
    pub fn reset(&self, topic: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.delete_table(ENTRIES)?;
        txn.delete_table(RECORD_KEYS)?;
        txn.delete_table(NEXT_OFFSETS)?;
        txn.open_table(ENTRIES)?;
        txn.open_table(RECORD_KEYS)?;
        txn.open_table(NEXT_OFFSETS)?;
        txn.open_table(META)?.insert("topic", topic)?;
        txn.commit()?;
        Ok(())
    }

    /// Applies a batch and the offsets it reaches in one transaction: both or neither persist.
    pub fn apply(
        &self,
        changes: &[Change<'_>],
        next_offsets: &BTreeMap<i32, i64>,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut entries = txn.open_table(ENTRIES)?;
            let mut record_keys = txn.open_table(RECORD_KEYS)?;
            let mut encoded = Vec::new();
            for change in changes {
                match change {
                    Change::Put {
                        record_key,
                        user_key,
                        partition,
                        offset,
                        correlation_id,
                        value,
                    } => {
                        encode_entry(&mut encoded, *partition, *offset, *correlation_id, value);
                        entries.insert(user_key.as_ref(), encoded.as_slice())?;
                        if *record_key != user_key.as_ref() {
                            record_keys.insert(*record_key, user_key.as_ref())?;
                        }
                    }
                    Change::Delete { record_key } => {
                        let mapped = record_keys.remove(*record_key)?;
                        let user_key = mapped.as_ref().map_or(*record_key, |k| k.value());
                        entries.remove(user_key)?;
                    }
                }
            }
            let mut offsets = txn.open_table(NEXT_OFFSETS)?;
            for (&partition, &offset) in next_offsets {
                offsets.insert(partition as u32, offset as u64)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    pub fn get(&self, user_key: &[u8]) -> Result<Option<StoredEntry>, StoreError> {
        let txn = self.db.begin_read()?;
        let entries = txn.open_table(ENTRIES)?;
        let Some(raw) = entries.get(user_key)? else {
            return Ok(None);
        };
        decode_entry(raw.value()).map(Some)
    }

    /// Looks many keys up in one read transaction, so the answers come from one snapshot.
    pub fn get_many<'k>(
        &self,
        user_keys: impl IntoIterator<Item = &'k [u8]>,
    ) -> Result<Vec<Option<StoredEntry>>, StoreError> {
        let txn = self.db.begin_read()?;
        let entries = txn.open_table(ENTRIES)?;
        user_keys
            .into_iter()
            .map(|key| match entries.get(key)? {
                Some(raw) => decode_entry(raw.value()).map(Some),
                None => Ok(None),
            })
            .collect()
    }

    /// Up to `limit` keys starting with `prefix`, in byte order, strictly after `after` when
    /// given; the flag says whether more keys follow.
    pub fn list_keys(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<Vec<u8>>, bool), StoreError> {
        let txn = self.db.begin_read()?;
        let entries = txn.open_table(ENTRIES)?;
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let mut keys = Vec::with_capacity(limit.min(1024));
        for row in entries.range::<&[u8]>((start, Bound::Unbounded))? {
            let (key, _) = row?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            if keys.len() == limit {
                return Ok((keys, true));
            }
            keys.push(key.to_vec());
        }
        Ok((keys, false))
    }

    pub fn key_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(ENTRIES)?.len()?)
    }
}

fn resolve_location(location: &Path) -> PathBuf {
    if location.is_dir() {
        location.join(FILE_NAME)
    } else {
        location.to_owned()
    }
}

/// `[format][partition BE][offset BE][correlation id length][correlation id][value]`.
fn encode_entry(
    out: &mut Vec<u8>,
    partition: i32,
    offset: i64,
    correlation_id: Option<&[u8]>,
    value: &[u8],
) {
    // Ids longer than a byte's worth are cut; they are for tracing, not identity.
    let correlation_id = correlation_id.unwrap_or_default();
    let correlation_id = &correlation_id[..correlation_id.len().min(u8::MAX as usize)];
    out.clear();
    out.reserve(ENTRY_HEADER_LEN + correlation_id.len() + value.len());
    out.push(ENTRY_FORMAT);
    out.extend_from_slice(&partition.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    out.push(correlation_id.len() as u8);
    out.extend_from_slice(correlation_id);
    out.extend_from_slice(value);
}

fn decode_entry(raw: &[u8]) -> Result<StoredEntry, StoreError> {
    if raw.len() < ENTRY_HEADER_LEN || raw[0] != ENTRY_FORMAT {
        return Err(StoreError::CorruptEntry);
    }
    let partition = i32::from_be_bytes(raw[1..5].try_into().map_err(|_| StoreError::CorruptEntry)?);
    let offset = i64::from_be_bytes(
        raw[5..13]
            .try_into()
            .map_err(|_| StoreError::CorruptEntry)?,
    );
    let id_len = raw[13] as usize;
    let rest = &raw[ENTRY_HEADER_LEN..];
    if rest.len() < id_len {
        return Err(StoreError::CorruptEntry);
    }
    let (id, value) = rest.split_at(id_len);
    Ok(StoredEntry {
        partition,
        offset,
        correlation_id: (!id.is_empty()).then(|| String::from_utf8_lossy(id).into_owned()),
        value: value.to_vec(),
    })
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
        }
    }

    #[test]
    fn an_applied_put_is_readable_with_its_origin() {
        let store = Store::open(&Storage::Memory).expect("store");
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
        let store = Store::open(&Storage::Memory).expect("store");
        store
            .apply(
                &[
                    put(b"gone", 0, b"x"),
                    put(b"empty", 1, b""),
                    Change::Delete {
                        record_key: b"gone",
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
            let store = Store::open(&storage).expect("store");
            store.reset("topic-a").expect("reset");
            store
                .apply(&[put(b"k", 41, b"v")], &BTreeMap::from([(2, 42)]))
                .expect("apply");
        }
        let store = Store::open(&storage).expect("reopen");
        assert_eq!(store.path(), Some(dir.path().join(FILE_NAME).as_path()));
        assert_eq!(store.topic().expect("topic").as_deref(), Some("topic-a"));
        assert_eq!(
            store.next_offsets().expect("offsets"),
            BTreeMap::from([(2, 42)])
        );
        assert_eq!(store.get(b"k").expect("get").expect("present").value, b"v");
    }

    #[test]
    fn listing_pages_through_the_keys_of_a_prefix_in_byte_order() {
        let store = Store::open(&Storage::Memory).expect("store");
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
        let store = Store::open(&Storage::Memory).expect("store");
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
    fn on_an_encrypted_topic_entries_are_found_by_user_key_and_removed_by_record_key_tombstones() {
        let store = Store::open(&Storage::Memory).expect("store");
        let put = Change::Put {
            record_key: b"mac-of-user-1",
            user_key: Cow::Borrowed(b"user-1"),
            partition: 0,
            offset: 0,
            correlation_id: None,
            value: Cow::Borrowed(b"Ada"),
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
                }],
                &BTreeMap::from([(0, 2)]),
            )
            .expect("apply");
        assert_eq!(store.get(b"user-1").expect("get"), None);
    }

    #[test]
    fn reset_empties_entries_and_offsets() {
        let store = Store::open(&Storage::Memory).expect("store");
        store
            .apply(&[put(b"k", 0, b"v")], &BTreeMap::from([(0, 1)]))
            .expect("apply");
        store.reset("t").expect("reset");
        assert_eq!(store.key_count().expect("count"), 0);
        assert!(store.next_offsets().expect("offsets").is_empty());
    }
}
