//! Every way to read the entries (a key, many keys, a listing, a scan), gathered because they
//! must all read the same committed state (the read view kept here) and hide what expired by
//! this replica's clock alike.

use std::ops::Bound;
use std::sync::{Arc, PoisonError};

use kv_core::record::now_ms;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::entry::{decode_entry, entry_is_live, open_entry, EntryView, StoredEntry};
use super::tables::{Entries, ENTRIES};
use super::{Store, StoreError};
use crate::store::at_rest::StoreCipher;

impl Store {
    /// Replaces the read view reads use with the state just committed. Called after every commit
    /// that changes entries, before the caller reports the new offsets as applied: a read that
    /// waited for them must find their data.
    pub(super) fn refresh_read_view(&self) {
        let fresh = match self.open_entries() {
            Ok(entries) => Some(entries),
            Err(error) => {
                tracing::warn!(%error, "cannot open a read view; reads open their own");
                None
            }
        };
        *self
            .committed
            .write()
            .unwrap_or_else(PoisonError::into_inner) = fresh;
    }

    /// The entries as last committed.
    fn entries(&self) -> Result<Arc<Entries>, StoreError> {
        let committed = self
            .committed
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match committed {
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
    pub(super) fn lookup_any(
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

    /// Looks many keys up in one read transaction, so the answers come from one read view.
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

    /// As [`Store::list_keys`] for the keys under any of `prefixes`, which must be sorted with
    /// none under another (as `KeyGrant::listing` gives them): their ranges are then disjoint
    /// and in key order, so listing one after the other keeps the page in key order.
    pub fn list_keys_under(
        &self,
        prefixes: &[Vec<u8>],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<Vec<u8>>, bool), StoreError> {
        let mut keys = Vec::new();
        for (i, prefix) in prefixes.iter().enumerate() {
            // A range wholly before the cursor has nothing left to give.
            if after.is_some_and(|after| after > prefix.as_slice() && !after.starts_with(prefix)) {
                continue;
            }
            let (page, more) = self.list_keys(prefix, after, limit - keys.len())?;
            if keys.is_empty() {
                keys = page;
            } else {
                keys.extend(page);
            }
            if more || (keys.len() == limit && i + 1 < prefixes.len()) {
                return Ok((keys, true));
            }
        }
        Ok((keys, false))
    }

    pub fn key_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(ENTRIES)?.len()?)
    }

    /// The entries as last committed, to be read page by page with [`Store::scan`] while later
    /// batches commit. It pins that state in redb (on disk, its pages are not reused) for as
    /// long as it is held.
    pub fn read_view(&self) -> Result<ReadView, StoreError> {
        self.entries().map(ReadView)
    }

    /// One page of the entries of `view` whose key starts with `prefix`: at most
    /// `max_entries`, stopping once `max_bytes` of values are held (one entry may pass it).
    /// `after` is the `resume_after` of the previous page. In key order, except on a store
    /// encrypted at rest, which is ordered by the keys' MACs and read whole, a bounded number of
    /// rows per page.
    pub fn scan(
        &self,
        view: &ReadView,
        prefix: &[u8],
        after: Option<&[u8]>,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<ScanPage, StoreError> {
        let entries = &view.0;
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

/// A committed state of the entries; see [`Store::read_view`].
#[derive(Debug, Clone)]
pub struct ReadView(Arc<Entries>);

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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::settings::Storage;
    use crate::store::testing::{expiring_put, password, put};
    use crate::store::Change;

    #[test]
    fn listing_pages_through_the_keys_of_a_prefix_in_byte_order() {
        let store = Store::open(&Storage::Memory, None).expect("store");
        let keys: [&[u8]; 5] = [b"a", b"user/1", b"user/2", b"user/3", b"v"];
        let changes: Vec<_> = keys.iter().map(|k| put(k, 0, b"x")).collect();
        store
            .apply_now_sweeping_nothing(&changes, &BTreeMap::from([(0, 1)]))
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
    fn listing_under_several_prefixes_pages_through_their_keys_in_byte_order() {
        for password in [None, Some(password("pw"))] {
            list_under_several_prefixes(
                &Store::open(&Storage::Memory, password.as_ref()).expect("store"),
            );
        }
    }

    fn list_under_several_prefixes(store: &Store) {
        let keys: [&[u8]; 7] = [b"a/1", b"b/1", b"b/2", b"c/1", b"d/1", b"d/2", b"d/3"];
        let changes: Vec<_> = keys.iter().map(|k| put(k, 0, b"x")).collect();
        store
            .apply_now_sweeping_nothing(&changes, &BTreeMap::from([(0, 1)]))
            .expect("apply");
        let under = [b"b/".to_vec(), b"d/".to_vec()];
        let mut listed = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let (page, more) = store
                .list_keys_under(&under, after.as_deref(), 2)
                .expect("list");
            assert!(page.len() <= 2);
            after = page.last().cloned();
            listed.extend(page);
            if !more {
                break;
            }
        }
        let expected: Vec<Vec<u8>> = [&b"b/1"[..], b"b/2", b"d/1", b"d/2", b"d/3"]
            .iter()
            .map(|k| k.to_vec())
            .collect();
        assert_eq!(
            listed, expected,
            "never a/ or c/, and every granted key once"
        );
        let (page, more) = store.list_keys_under(&under, Some(b"c"), 10).expect("list");
        assert_eq!(page, expected[2..].to_vec(), "a cursor past b/ skips it");
        assert!(!more);
    }

    #[test]
    fn get_many_answers_each_key_in_request_order() {
        let store = Store::open(&Storage::Memory, None).expect("store");
        store
            .apply_now_sweeping_nothing(&[put(b"k", 3, b"v")], &BTreeMap::from([(0, 4)]))
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
                .apply_now_sweeping_nothing(
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
    fn a_scan_pages_through_the_entries_of_a_prefix_in_a_read_view_taken_before_later_commits() {
        for password in [None, Some(password("pw"))] {
            let dir = tempfile::tempdir().expect("dir");
            let storage = Storage::Disk {
                location: dir.path().to_owned(),
            };
            let store = Store::open(&storage, password.as_ref()).expect("store");
            let keys: [&[u8]; 5] = [b"a", b"user/1", b"user/2", b"user/3", b"v"];
            let changes: Vec<_> = keys.iter().map(|k| put(k, 0, b"x")).collect();
            store
                .apply_now_sweeping_nothing(&changes, &BTreeMap::from([(0, 1)]))
                .expect("apply");
            let view = store.read_view().expect("read view");
            store
                .apply_now_sweeping_nothing(
                    &[put(b"user/4", 1, b"later")],
                    &BTreeMap::from([(0, 2)]),
                )
                .expect("apply");
            let mut found = Vec::new();
            let mut after = None;
            loop {
                let page = store
                    .scan(&view, b"user/", after.as_deref(), 2, usize::MAX)
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
            let one_page = store.scan(&view, b"", None, 100, 1).expect("scan by bytes");
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
            .apply_now_sweeping_nothing(&[put(b"k", 0, b"one")], &BTreeMap::from([(0, 1)]))
            .expect("apply");
        let before = store.get(b"k").expect("get").expect("present");
        store
            .apply_now_sweeping_nothing(&[put(b"k", 1, b"two")], &BTreeMap::from([(0, 2)]))
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
    fn reads_hide_an_expired_entry_on_every_path() {
        let store = Store::open(&Storage::Memory, None).expect("store");
        let past = now_ms() - 1;
        let sweeps_all: &dyn Fn(i32) -> bool = &|_| true;
        store
            .apply_at(
                &[
                    expiring_put(b"gone", 0, b"x", Some(past)),
                    expiring_put(b"kept", 1, b"y", Some(u64::MAX)),
                ],
                &BTreeMap::from([(0, 2)]),
                past - 10_000,
                sweeps_all,
            )
            .expect("apply");
        assert_eq!(store.get(b"gone").expect("get"), None);
        let kept = store.get(b"kept").expect("get").expect("kept");
        assert_eq!(kept.expires_at_ms, Some(u64::MAX));
        assert_eq!(
            store.get_many([&b"gone"[..], b"kept"]).expect("many")[0],
            None
        );
        assert_eq!(
            store.list_keys(b"", None, 10).expect("list").0,
            vec![b"kept".to_vec()]
        );
        let (page, more) = store.list_keys(b"", None, 1).expect("list");
        assert_eq!(
            (page.len(), more),
            (1, false),
            "an expired key is not one more to list"
        );
    }
}
