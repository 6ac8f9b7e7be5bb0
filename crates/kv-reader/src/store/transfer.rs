//! The store's side of the bootstrap transfer (`crate::transfer`). A snapshot must hold one
//! committed state whole, and an import must not name its topic until it is complete: two
//! guarantees only the transfer needs, kept apart from everyday reads and writes.

use std::borrow::Cow;
use std::collections::BTreeMap;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::computed::{self, ComputedRow};
use super::entry::{decode_entry, open_entry, StoredEntry};
use super::tables::{ENTRIES, META, NEXT_OFFSETS};
use super::{Store, StoreError};

/// What a snapshot states about the store it was taken of.
#[derive(Debug, Clone)]
pub struct ExportHeader {
    pub topic: Option<String>,
    pub source_format: Option<String>,
    pub next_offsets: BTreeMap<i32, i64>,
    /// Entries in the store (a shard's snapshot carries those of its partitions only).
    pub entries: u64,
}

impl Store {
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
        self.refresh_read_view();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Storage;
    use crate::store::testing::put;
    use crate::store::Change;

    #[test]
    fn an_import_names_its_topic_only_once_finished_and_exports_what_it_holds() {
        let store = Store::open(&Storage::Memory, None).expect("store");
        store.clear().expect("clear");
        let mut other_partition = put(b"b", 5, b"w");
        if let Change::Put { partition, .. } = &mut other_partition {
            *partition = 1;
        }
        store
            .apply_now_sweeping_nothing(&[put(b"a", 7, b"v"), other_partition], &BTreeMap::new())
            .expect("apply");
        assert_eq!(
            store.topic().expect("topic"),
            None,
            "not before it is finished"
        );
        let offsets = BTreeMap::from([(0, 8), (1, 6)]);
        store.finish_import("t", "f", &offsets).expect("finish");
        assert_eq!(store.topic().expect("topic").as_deref(), Some("t"));
        assert_eq!(store.next_offsets().expect("offsets"), offsets);

        let mut header = None;
        let mut exported = Vec::new();
        store
            .export(
                |partition| partition == 0,
                |h| {
                    header = Some(h);
                    true
                },
                |key, entry| {
                    exported.push((key.to_vec(), entry.value));
                    true
                },
                |_| true,
            )
            .expect("export");
        let header = header.expect("a header");
        assert_eq!(
            (header.topic.as_deref(), header.source_format.as_deref()),
            (Some("t"), Some("f"))
        );
        assert_eq!(header.next_offsets, BTreeMap::from([(0, 8)]));
        assert_eq!(exported, vec![(b"a".to_vec(), b"v".to_vec())]);
    }
}
