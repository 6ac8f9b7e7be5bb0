//! The store's redb tables and the shapes of their rows, in one place: a table is shared by the
//! transaction that writes it and the reads and purges that come after, so no one of those owns
//! its definition.

use kv_core::computed::StateRules;
use redb::{TableDefinition, WriteTransaction};

use super::StoreError;

pub(super) const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");
pub(super) const RECORD_KEYS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("record_keys");
pub(super) const NEXT_OFFSETS: TableDefinition<u32, u64> = TableDefinition::new("next_offsets");
pub(super) const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// `(expires at, entry key)`: the expiry order of every entry that expires.
pub(super) type ExpiryKey = (u64, &'static [u8]);
/// `(partition, offset, sealed record key)` of an entry that expires, or of a repair owed.
pub(super) type SweepRow = (u32, u64, &'static [u8]);
/// Every entry that expires, in expiry order: the sweep and the purge read it.
pub(super) const EXPIRIES: TableDefinition<ExpiryKey, SweepRow> = TableDefinition::new("expiries");
/// Record key (its index under encryption at rest) → `(offset, when applied)` of the last delete
/// applied to it, for [`super::DELETE_MEMORY`].
pub(super) const DELETED: TableDefinition<&[u8], (u64, u64)> = TableDefinition::new("deleted");
pub(super) const DELETED_BY_TIME: TableDefinition<(u64, &[u8]), ()> =
    TableDefinition::new("deleted_by_time");
/// Record key (index) → `(partition, stale offset, sealed record key)`: repairs the sweeper owes.
pub(super) const PENDING_REPAIRS: TableDefinition<&[u8], SweepRow> =
    TableDefinition::new("pending_repairs");
/// Entry key → expiry, under encryption at rest only: an overwrite reads the old expiry here
/// instead of opening the old entry.
pub(super) const SEALED_EXPIRIES: TableDefinition<&[u8], u64> =
    TableDefinition::new("sealed_expiries");
/// `(applied, version partition, version offset, first offset, when decided)` of a decided
/// record, `-1` for none.
pub(super) type OutcomeRow = (u8, i32, i64, i64, u64);
/// `(record key index, idempotency key)`.
pub(super) type IdempotencyKey = (&'static [u8], &'static [u8]);
/// `(first offset, its record timestamp, applied)`.
pub(super) type IdempotencyRow = (u64, u64, u8);
/// `(partition, offset)` of a decided record → its [`OutcomeRow`]: what `GET /v1/outcomes`
/// answers a writer.
pub(super) const OUTCOMES: TableDefinition<(u32, u64), OutcomeRow> =
    TableDefinition::new("outcomes");
/// `(record key index, idempotency key)` → `(first offset, its record timestamp, applied)`.
pub(super) const IDEMPOTENCY: TableDefinition<IdempotencyKey, IdempotencyRow> =
    TableDefinition::new("idempotency");
pub(super) const IDEMPOTENCY_BY_TIME: TableDefinition<(u64, &[u8], &[u8]), ()> =
    TableDefinition::new("idempotency_by_time");
/// The entries table as a read transaction holds it.
pub(super) type Entries = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

// Computed state (store::computed).

/// `(state key, agent)`.
pub(super) type ReportKey = (&'static [u8], &'static [u8]);
/// `(partition, record time, offset, value)` of an agent's last report.
pub(super) type ReportRow = (u32, u64, u64, &'static [u8]);
/// `(sink topic, state key, sink record value)`.
pub(super) type SinkRow = (&'static [u8], &'static [u8], &'static [u8]);
/// `(state key, agent)` → `(partition, record time, offset, value)` of the agent's last report.
pub(super) const REPORTS: TableDefinition<ReportKey, ReportRow> = TableDefinition::new("reports");
/// `(partition, due, candidate since, has candidate, candidate value)`; due 0: no timer.
pub(super) type RuledRow = (u32, u64, u64, u8, &'static [u8]);
/// State key → its candidate and timer, for keys that have either.
pub(super) const RULED: TableDefinition<&[u8], RuledRow> = TableDefinition::new("ruled");
/// `(due, state key)` → partition: the timers in due order.
pub(super) const TIMERS: TableDefinition<(u64, &[u8]), u32> = TableDefinition::new("timers");
/// `(partition, publication offset)` → `(sink topic, state key, sink record value)`.
pub(super) const SINK_PENDING: TableDefinition<(u32, u64), SinkRow> =
    TableDefinition::new("sink_pending");

/// The computed-state tables of one write transaction; open only when there are rules.
pub(super) struct ComputedTables<'t> {
    pub(super) rules: &'t StateRules,
    pub(super) reports: redb::Table<'t, ReportKey, ReportRow>,
    pub(super) ruled: redb::Table<'t, &'static [u8], RuledRow>,
    pub(super) timers: redb::Table<'t, (u64, &'static [u8]), u32>,
    pub(super) sink: redb::Table<'t, (u32, u64), SinkRow>,
}

impl<'t> ComputedTables<'t> {
    pub(super) fn open(
        txn: &'t WriteTransaction,
        rules: &'t StateRules,
    ) -> Result<Option<Self>, StoreError> {
        if rules.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self {
            rules,
            reports: txn.open_table(REPORTS)?,
            ruled: txn.open_table(RULED)?,
            timers: txn.open_table(TIMERS)?,
            sink: txn.open_table(SINK_PENDING)?,
        }))
    }
}
