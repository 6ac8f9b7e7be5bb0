//! Computed state, derived in log order by every replica (docs/architecture.md, "Computed
//! state").
//!
//! - A report replaces its agent's last report of the key (`REPORTS`); the key's rule then
//!   evaluates the live reports at the report's record time. A computed value that differs from
//!   the published one becomes the key's *candidate* from that time on (kept while it stays the
//!   computed value); one equal to it, or no winner, clears the candidate.
//! - Each ruled key with a candidate or a report that will expire has one timer (`TIMERS`): the
//!   earlier of the candidate's publication time (since + hold) and the next report expiry. The
//!   partition's owner acts on due timers (`crate::acting::computed`): it publishes a candidate whose
//!   hold passed, as a conditional put of the key (so a duplicate or a stale one is refused by
//!   every replica alike, `store::decide`), or produces a tick that evaluates the key at the due
//!   time. Every replica keeps the same timers, so a new owner resumes them.
//! - A publication that takes effect waits in `SINK_PENDING` until the owner's sink mark says
//!   it is on the rule's sink topic.
//! - Any other write of a ruled key is an operator's override: it clears the key's candidate and
//!   timer, and stands until the next report or tick evaluates the key.
//! - Everything here follows from the log alone; the owner's clock only decides *when* its
//!   records are produced, and every replica decides what they mean.

use kv_core::computed::{
    Report, Rule, SinkChange, StateRules, MAX_AGENTS_PER_KEY, MAX_REPORT_BYTES,
};
use kv_core::conditional::Version;
use redb::{ReadableDatabase, ReadableTable, WriteTransaction};

use super::tables::{ReportKey, ReportRow, REPORTS, RULED, SINK_PENDING, TIMERS};
use super::write::Writing;
use super::{Store, StoreError};

/// Most rows one owner's query reads, whatever it finds.
const SCAN: usize = 20_000;
pub(super) fn ensure_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(REPORTS)?;
    txn.open_table(RULED)?;
    txn.open_table(TIMERS)?;
    txn.open_table(SINK_PENDING)?;
    Ok(())
}

pub(super) fn reset_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.delete_table(REPORTS)?;
    txn.delete_table(RULED)?;
    txn.delete_table(TIMERS)?;
    txn.delete_table(SINK_PENDING)?;
    ensure_tables(txn)
}

/// A key's reports as stored: `(agent, record time, offset, value)`.
type StoredReports = Vec<(Vec<u8>, u64, u64, Vec<u8>)>;

/// A key's reports, each value cut to `max_value` bytes.
fn reports_of(
    reports: &impl ReadableTable<ReportKey, ReportRow>,
    key: &[u8],
    max_value: usize,
) -> Result<StoredReports, StoreError> {
    let mut found = Vec::new();
    for row in reports.range((key, &[][..])..)? {
        let (k, v) = row?;
        let (k_key, agent) = k.value();
        if k_key != key {
            break;
        }
        let (_, at, offset, value) = v.value();
        let shown = &value[..value.len().min(max_value)];
        found.push((agent.to_vec(), at, offset, shown.to_vec()));
    }
    Ok(found)
}

/// What a rule computes from stored reports at `now_ms`, and when the next live one expires.
fn evaluate(rule: &Rule, stored: &StoredReports, now_ms: u64) -> (Option<Vec<u8>>, Option<u64>) {
    let live: Vec<Report<'_>> = stored
        .iter()
        .filter(|(_, at, _, _)| rule.is_live(*at, now_ms))
        .map(|(_, at, offset, value)| Report {
            value,
            at_ms: *at,
            offset: *offset as i64,
        })
        .collect();
    let next_expiry = rule
        .report_ttl_ms
        .and_then(|ttl| live.iter().map(|r| r.at_ms.saturating_add(ttl)).min());
    (rule.compute(&live), next_expiry)
}

impl Writing<'_> {
    /// Applies `agent`'s report on `key`; `false` when it is ignored (no rule, or one agent too
    /// many).
    pub(super) fn report(
        &mut self,
        key: &[u8],
        agent: &[u8],
        value: &[u8],
        partition: i32,
        offset: i64,
        at_ms: u64,
    ) -> Result<bool, StoreError> {
        let Some(tables) = self.computed.as_mut() else {
            return Ok(false);
        };
        if tables.rules.rule_for(key).is_none() || value.len() > MAX_REPORT_BYTES {
            return Ok(false);
        }
        let known = tables.reports.get((key, agent))?.is_some();
        if !known {
            let agents = tables
                .reports
                .range((key, &[][..])..)?
                .take_while(|row| row.as_ref().is_ok_and(|(k, _)| k.value().0 == key))
                .take(MAX_AGENTS_PER_KEY)
                .count();
            if agents >= MAX_AGENTS_PER_KEY {
                return Ok(false);
            }
        }
        tables.reports.insert(
            (key, agent),
            (partition as u32, at_ms, offset as u64, value),
        )?;
        self.evaluate_key(key, partition, at_ms)?;
        Ok(true)
    }

    /// An owner's tick: evaluates the key at the time it names.
    pub(super) fn tick(
        &mut self,
        key: &[u8],
        partition: i32,
        at_ms: u64,
    ) -> Result<(), StoreError> {
        self.evaluate_key(key, partition, at_ms)
    }

    /// The owner's sink mark: every publication of `partition` up to `upto` is on its sink.
    pub(super) fn sink_done(&mut self, partition: i32, upto: i64) -> Result<(), StoreError> {
        let Some(tables) = self.computed.as_mut() else {
            return Ok(());
        };
        let p = partition as u32;
        let done: Vec<u64> = tables
            .sink
            .range((p, 0)..=(p, upto.max(0) as u64))?
            .map(|row| row.map(|(k, _)| k.value().1))
            .collect::<Result<_, _>>()?;
        for offset in done {
            tables.sink.remove((p, offset))?;
        }
        Ok(())
    }

    /// A publication of `key` took effect at `offset`: it waits for the sink, and the key is
    /// evaluated again (its candidate is now the published value).
    #[allow(clippy::too_many_arguments)] // the record's coordinates, each needed; one caller
    pub(super) fn published(
        &mut self,
        key: &[u8],
        partition: i32,
        offset: i64,
        previous: Option<Vec<u8>>,
        value: &[u8],
        at_ms: u64,
    ) -> Result<(), StoreError> {
        let Some(tables) = self.computed.as_mut() else {
            return Ok(());
        };
        let Some(rule) = tables.rules.rule_for(key) else {
            return Ok(());
        };
        if let Some(topic) = &rule.sink_topic {
            let change = SinkChange {
                key: String::from_utf8_lossy(key).into_owned(),
                previous: previous.map(|p| String::from_utf8_lossy(&p).into_owned()),
                value: String::from_utf8_lossy(value).into_owned(),
                at: at_ms,
                rule: rule.prefix.clone(),
                decided_at: format!("{partition}-{offset}"),
            };
            let json = serde_json::to_vec(&change).unwrap_or_default();
            tables.sink.insert(
                (partition as u32, offset as u64),
                (topic.as_bytes(), key, json.as_slice()),
            )?;
        }
        self.evaluate_key(key, partition, at_ms)
    }

    /// Any other write of a ruled key: the operator's override stands until the next report.
    pub(super) fn overridden(&mut self, key: &[u8]) -> Result<(), StoreError> {
        let Some(tables) = self.computed.as_mut() else {
            return Ok(());
        };
        if tables.rules.rule_for(key).is_none() {
            return Ok(());
        }
        if let Some(old) = tables.ruled.remove(key)? {
            let (_, due, ..) = old.value();
            if due > 0 {
                tables.timers.remove((due, key))?;
            }
        }
        Ok(())
    }

    /// Evaluates the key's rule at `now_ms` (record time) and keeps its candidate and timer.
    fn evaluate_key(&mut self, key: &[u8], partition: i32, now_ms: u64) -> Result<(), StoreError> {
        let published = self
            .entry(key)?
            .filter(|entry| entry.is_live(now_ms))
            .map(|entry| entry.value);
        let Some(tables) = self.computed.as_mut() else {
            return Ok(());
        };
        let Some(rule) = tables.rules.rule_for(key) else {
            return Ok(());
        };
        let stored = reports_of(&tables.reports, key, usize::MAX)?;
        let (computed, next_expiry) = evaluate(rule, &stored, now_ms);
        let old = tables.ruled.get(key)?.map(|row| {
            let (_, due, since, has, value) = row.value();
            (due, (has == 1).then(|| (value.to_vec(), since)))
        });
        let (old_due, old_candidate) = old.unwrap_or((0, None));
        let candidate = match computed {
            Some(value) if published.as_deref() != Some(value.as_slice()) => match old_candidate {
                Some((old_value, since)) if old_value == value => Some((value, since)),
                _ => Some((value, now_ms)),
            },
            _ => None,
        };
        let publish_at = candidate
            .as_ref()
            .map(|(_, since)| since.saturating_add(rule.hold_ms));
        let due = match (publish_at, next_expiry) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(0),
        };
        if old_due > 0 && old_due != due {
            tables.timers.remove((old_due, key))?;
        }
        match (&candidate, due) {
            (None, 0) => {
                tables.ruled.remove(key)?;
            }
            _ => {
                let (has, value, since) = match &candidate {
                    Some((value, since)) => (1, value.as_slice(), *since),
                    None => (0, &[][..], 0),
                };
                tables
                    .ruled
                    .insert(key, (partition as u32, due, since, has, value))?;
                if due > 0 {
                    tables.timers.insert((due, key), partition as u32)?;
                }
            }
        }
        Ok(())
    }
}

/// A due timer, with what the owner needs to act on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueTimer {
    pub key: Vec<u8>,
    pub partition: i32,
    pub due_ms: u64,
    /// The candidate and since when, if any.
    pub candidate: Option<(Vec<u8>, u64)>,
    /// When the candidate may be published (since + hold).
    pub publish_at: Option<u64>,
    /// The key's version now: a publication is conditional on it.
    pub version: Option<Version>,
}

/// A publication waiting for its sink record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkPending {
    pub partition: i32,
    pub offset: i64,
    pub topic: String,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// A ruled key explained (`GET /v1/state/{key}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explained {
    pub value: Option<Vec<u8>>,
    pub candidate: Option<(Vec<u8>, u64)>,
    pub publish_at: Option<u64>,
    /// `(agent, value, record time, live)`.
    pub reports: Vec<(Vec<u8>, Vec<u8>, u64, bool)>,
}

impl Store {
    /// Up to `limit` timers due by `now_ms` on partitions `ready` names, in due order.
    pub fn due_timers(
        &self,
        now_ms: u64,
        limit: usize,
        ready: &dyn Fn(i32) -> bool,
    ) -> Result<Vec<DueTimer>, StoreError> {
        let Some(rules) = self.rules.get().filter(|r| !r.is_empty()) else {
            return Ok(Vec::new());
        };
        let txn = self.db.begin_read()?;
        let timers = txn.open_table(TIMERS)?;
        let ruled = txn.open_table(RULED)?;
        let entries = txn.open_table(super::tables::ENTRIES)?;
        let mut found = Vec::new();
        for row in timers
            .range(..(now_ms.saturating_add(1), &[][..]))?
            .take(SCAN)
        {
            let (k, partition) = row?;
            let (due, key) = k.value();
            if due > now_ms {
                break;
            }
            let partition = partition.value() as i32;
            if !ready(partition) {
                continue;
            }
            let Some(row) = ruled.get(key)? else { continue };
            let (_, _, since, has, value) = row.value();
            let candidate = (has == 1).then(|| (value.to_vec(), since));
            let hold = rules.rule_for(key).map_or(0, |r| r.hold_ms);
            let version = self
                .lookup_any(&entries, key)?
                .filter(|e| e.is_live(now_ms))
                .map(|e| Version {
                    partition: e.partition,
                    offset: e.offset,
                });
            found.push(DueTimer {
                key: key.to_vec(),
                partition,
                due_ms: due,
                publish_at: candidate.as_ref().map(|(_, s)| s.saturating_add(hold)),
                candidate,
                version,
            });
            if found.len() == limit {
                break;
            }
        }
        Ok(found)
    }

    /// The timer due first, if any (for the owner's wake-up and the lag metric).
    pub fn earliest_timer(&self) -> Result<Option<u64>, StoreError> {
        if self.rules.get().is_none_or(|r| r.is_empty()) {
            return Ok(None);
        }
        let txn = self.db.begin_read()?;
        let timers = txn.open_table(TIMERS)?;
        let first = timers.first()?.map(|(k, _)| k.value().0);
        Ok(first)
    }

    /// Up to `limit` publications waiting for their sink record on partitions `ready` names,
    /// in partition then log order.
    pub fn sink_pending(
        &self,
        limit: usize,
        ready: &dyn Fn(i32) -> bool,
    ) -> Result<Vec<SinkPending>, StoreError> {
        if self.rules.get().is_none_or(|r| r.is_empty()) {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read()?;
        let sink = txn.open_table(SINK_PENDING)?;
        let mut found = Vec::new();
        // Rows of partitions another owner forwards are stepped over; at most SCAN of them, so
        // a sink that is down for long never makes this scan long.
        for row in sink.iter()?.take(SCAN) {
            let (k, v) = row?;
            let (partition, offset) = k.value();
            if !ready(partition as i32) {
                continue;
            }
            let (topic, key, value) = v.value();
            found.push(SinkPending {
                partition: partition as i32,
                offset: offset as i64,
                topic: String::from_utf8_lossy(topic).into_owned(),
                key: key.to_vec(),
                value: value.to_vec(),
            });
            if found.len() == limit {
                break;
            }
        }
        Ok(found)
    }

    /// Whether a publication of `partition` up to `upto` still waits for its sink mark.
    pub fn sink_waiting(&self, partition: i32, upto: i64) -> Result<bool, StoreError> {
        let txn = self.db.begin_read()?;
        let sink = txn.open_table(SINK_PENDING)?;
        let p = partition as u32;
        let waiting = sink
            .range((p, 0)..=(p, upto.max(0) as u64))?
            .next()
            .is_some();
        Ok(waiting)
    }

    /// How many publications wait for their sink record.
    pub fn sink_pending_count(&self) -> Result<u64, StoreError> {
        use redb::ReadableTableMetadata;
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(SINK_PENDING)?.len()?)
    }

    /// The rule's view of `key` at `now_ms`, each report value cut to `max_value` bytes (an
    /// answer stays small whatever the reports); `None` when no rule covers it.
    pub fn explain(
        &self,
        key: &[u8],
        now_ms: u64,
        max_value: usize,
    ) -> Result<Option<Explained>, StoreError> {
        let Some(rule) = self.rules.get().and_then(|r| r.rule_for(key)) else {
            return Ok(None);
        };
        let txn = self.db.begin_read()?;
        let reports = txn.open_table(REPORTS)?;
        let ruled = txn.open_table(RULED)?;
        let entries = txn.open_table(super::tables::ENTRIES)?;
        let stored = reports_of(&reports, key, max_value)?;
        let candidate = ruled.get(key)?.and_then(|row| {
            let (_, _, since, has, value) = row.value();
            (has == 1).then(|| (value.to_vec(), since))
        });
        Ok(Some(Explained {
            value: self
                .lookup_any(&entries, key)?
                .filter(|e| e.is_live(now_ms))
                .map(|e| e.value),
            publish_at: candidate
                .as_ref()
                .map(|(_, since)| since.saturating_add(rule.hold_ms)),
            candidate,
            reports: stored
                .into_iter()
                .map(|(agent, at, _, value)| (agent, value, at, rule.is_live(at, now_ms)))
                .collect(),
        }))
    }

    /// The rules this store computes keys by; set once, before the replica starts.
    pub fn set_rules(&self, rules: std::sync::Arc<StateRules>) {
        let _ = self.rules.set(rules);
    }

    pub fn rules(&self) -> Option<&StateRules> {
        self.rules
            .get()
            .map(|r| r.as_ref())
            .filter(|r| !r.is_empty())
    }
}

/// One row of the computed-state tables, as a snapshot carries it (`crate::transfer::format`): a new
/// replica bootstrapped from a peer has the same reports, candidates, timers and pending sink
/// records, so it can act as owner at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComputedRow {
    Report {
        key: Vec<u8>,
        agent: Vec<u8>,
        partition: i32,
        at_ms: u64,
        offset: i64,
        value: Vec<u8>,
    },
    Ruled {
        key: Vec<u8>,
        partition: i32,
        due_ms: u64,
        candidate: Option<(Vec<u8>, u64)>,
    },
    Sink {
        partition: i32,
        offset: i64,
        topic: Vec<u8>,
        key: Vec<u8>,
        value: Vec<u8>,
    },
}

/// Calls `each` with every computed-state row of the partitions `keep` names, in `txn` (the
/// snapshot's own read transaction); stops when `each` answers `false`.
pub(super) fn export_rows(
    txn: &redb::ReadTransaction,
    keep: &dyn Fn(i32) -> bool,
    each: &mut dyn FnMut(ComputedRow) -> bool,
) -> Result<bool, StoreError> {
    for row in txn.open_table(REPORTS)?.iter()? {
        let (k, v) = row?;
        let (key, agent) = k.value();
        let (partition, at_ms, offset, value) = v.value();
        if keep(partition as i32) {
            let row = ComputedRow::Report {
                key: key.to_vec(),
                agent: agent.to_vec(),
                partition: partition as i32,
                at_ms,
                offset: offset as i64,
                value: value.to_vec(),
            };
            if !each(row) {
                return Ok(false);
            }
        }
    }
    for row in txn.open_table(RULED)?.iter()? {
        let (k, v) = row?;
        let (partition, due_ms, since, has, value) = v.value();
        if keep(partition as i32) {
            let row = ComputedRow::Ruled {
                key: k.value().to_vec(),
                partition: partition as i32,
                due_ms,
                candidate: (has == 1).then(|| (value.to_vec(), since)),
            };
            if !each(row) {
                return Ok(false);
            }
        }
    }
    for row in txn.open_table(SINK_PENDING)?.iter()? {
        let (k, v) = row?;
        let (partition, offset) = k.value();
        let (topic, key, value) = v.value();
        if keep(partition as i32) {
            let row = ComputedRow::Sink {
                partition: partition as i32,
                offset: offset as i64,
                topic: topic.to_vec(),
                key: key.to_vec(),
                value: value.to_vec(),
            };
            if !each(row) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

impl Store {
    /// Writes rows a snapshot carried, in one transaction.
    pub fn import_computed(&self, rows: &[ComputedRow]) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut reports = txn.open_table(REPORTS)?;
            let mut ruled = txn.open_table(RULED)?;
            let mut timers = txn.open_table(TIMERS)?;
            let mut sink = txn.open_table(SINK_PENDING)?;
            for row in rows {
                match row {
                    ComputedRow::Report {
                        key,
                        agent,
                        partition,
                        at_ms,
                        offset,
                        value,
                    } => {
                        let row = (*partition as u32, *at_ms, *offset as u64, value.as_slice());
                        reports.insert((key.as_slice(), agent.as_slice()), row)?;
                    }
                    ComputedRow::Ruled {
                        key,
                        partition,
                        due_ms,
                        candidate,
                    } => {
                        let (has, value, since) = match candidate {
                            Some((value, since)) => (1, value.as_slice(), *since),
                            None => (0, &[][..], 0),
                        };
                        let row = (*partition as u32, *due_ms, since, has, value);
                        ruled.insert(key.as_slice(), row)?;
                        if *due_ms > 0 {
                            timers.insert((*due_ms, key.as_slice()), *partition as u32)?;
                        }
                    }
                    ComputedRow::Sink {
                        partition,
                        offset,
                        topic,
                        key,
                        value,
                    } => {
                        let row = (topic.as_slice(), key.as_slice(), value.as_slice());
                        sink.insert((*partition as u32, *offset as u64), row)?;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    }
}
