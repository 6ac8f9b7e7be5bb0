//! The replica's own metrics, read from [`Progress`] and the store when `/metrics` is scraped,
//! so the consumer loop does no extra work for them.

use std::sync::{Arc, Mutex, PoisonError};

use kv_core::record::{BadTtlHeader, DecodeError};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};

use crate::framing::BadSchemaHeader;
use crate::progress::Progress;
use crate::replica::{CONFIGURATION_REASONS, ENCRYPTED_ENVELOPE_REASON};
use crate::store::Store;

/// A collector that refreshes its metrics from the replica's state at each scrape.
#[derive(Debug)]
pub struct ReplicaCollector {
    progress: Arc<Progress>,
    store: Arc<Store>,
    applied_offset: IntGaugeVec,
    end_offset: IntGaugeVec,
    lag: IntGaugeVec,
    records_applied: IntCounter,
    tombstones_applied: IntCounter,
    skipped: IntCounterVec,
    rebuilds: IntCounter,
    store_keys: IntGauge,
    store_file_size: IntGauge,
    consumer_alive: IntGauge,
    ready: IntGauge,
    misconfigured: IntGaugeVec,
    read_your_writes_waiters: IntGauge,
    /// Counters are brought up to the replica's totals by adding the difference; two scrapes at
    /// once must not both add it.
    refresh: Mutex<()>,
}

impl ReplicaCollector {
    pub fn new(store: Arc<Store>, progress: Arc<Progress>) -> Result<Self, prometheus::Error> {
        let partition =
            |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["partition"]);
        let collector = Self {
            progress,
            store,
            applied_offset: partition(
                "kv_reader_partition_applied_offset",
                "Highest offset of the partition applied to the store; -1 before any",
            )?,
            end_offset: partition(
                "kv_reader_partition_end_offset",
                "The partition's end offset, as last heard from the broker",
            )?,
            lag: partition(
                "kv_reader_partition_lag_records",
                "Records in the partition not applied to the store yet",
            )?,
            records_applied: IntCounter::new(
                "kv_reader_records_applied_total",
                "Records consumed and committed to the store since the process started, \
                 tombstones and skipped records included",
            )?,
            tombstones_applied: IntCounter::new(
                "kv_reader_tombstones_applied_total",
                "Tombstones (deletes) applied since the process started",
            )?,
            skipped: IntCounterVec::new(
                Opts::new(
                    "kv_reader_records_skipped_total",
                    "Records that could not be applied and were skipped, by reason",
                ),
                &["reason"],
            )?,
            rebuilds: IntCounter::new(
                "kv_reader_rebuilds_total",
                "Times the replica was rebuilt from the start of the topic since the process \
                 started",
            )?,
            store_keys: IntGauge::new("kv_reader_store_keys", "Keys held in the replica's store")?,
            store_file_size: IntGauge::new(
                "kv_reader_store_file_size_bytes",
                "Size of the replica's store file (disk storage only)",
            )?,
            consumer_alive: IntGauge::new(
                "kv_reader_consumer_alive",
                "1 while the consumer loop runs; 0 once it died (liveness then fails)",
            )?,
            ready: IntGauge::new(
                "kv_reader_ready",
                "1 once every partition reached the end offset seen at start-up and records \
                 are not all refused for a configuration reason",
            )?,
            misconfigured: IntGaugeVec::new(
                Opts::new(
                    "kv_reader_misconfigured",
                    "1 while the replica refuses the records it reads for this configuration \
                     reason (another key, plaintext on an encrypted topic, or the reverse); it \
                     is not ready then and its stored offsets stay before those records",
                ),
                &["reason"],
            )?,
            read_your_writes_waiters: IntGauge::new(
                "kv_reader_read_your_writes_waiters",
                "Reads waiting for their consistency token",
            )?,
            refresh: Mutex::new(()),
        };
        let reasons = DecodeError::ALL.map(DecodeError::reason);
        for reason in reasons.iter().chain([
            &BadSchemaHeader::REASON,
            &ENCRYPTED_ENVELOPE_REASON,
            &BadTtlHeader::REASON,
        ]) {
            // Present at zero from the start, so an alert on its increase sees the first skip.
            collector.skipped.with_label_values(&[*reason]);
        }
        for reason in CONFIGURATION_REASONS {
            collector.misconfigured.with_label_values(&[reason]);
        }
        Ok(collector)
    }

    /// Every metric but the store file's size, which exists only on disk.
    fn metrics(&self) -> [&dyn Collector; 12] {
        [
            &self.applied_offset,
            &self.end_offset,
            &self.lag,
            &self.records_applied,
            &self.tombstones_applied,
            &self.skipped,
            &self.rebuilds,
            &self.store_keys,
            &self.consumer_alive,
            &self.ready,
            &self.misconfigured,
            &self.read_your_writes_waiters,
        ]
    }

    fn refresh(&self) {
        let report = self.progress.report();
        for gauge in [&self.applied_offset, &self.end_offset, &self.lag] {
            // Partitions can vanish (a rebuild after the topic was recreated).
            gauge.reset();
        }
        for (partition, progress) in &report.partitions {
            let label = partition.to_string();
            let label = [label.as_str()];
            self.applied_offset
                .with_label_values(&label)
                .set(progress.next_offset - 1);
            self.end_offset
                .with_label_values(&label)
                .set(progress.end_offset);
            self.lag
                .with_label_values(&label)
                .set((progress.end_offset - progress.next_offset).max(0));
        }
        catch_up(&self.records_applied, report.records_applied);
        catch_up(&self.tombstones_applied, report.tombstones_applied);
        catch_up(&self.rebuilds, report.rebuilds);
        for (reason, &count) in &report.skipped_records.by_reason {
            catch_up(&self.skipped.with_label_values(&[reason]), count);
        }
        self.consumer_alive.set(i64::from(report.alive));
        self.ready.set(i64::from(report.ready));
        for reason in CONFIGURATION_REASONS {
            let refusing = report
                .misconfiguration
                .as_ref()
                .is_some_and(|m| m.reason == reason);
            self.misconfigured
                .with_label_values(&[reason])
                .set(i64::from(refusing));
        }
        self.read_your_writes_waiters
            .set(i64::try_from(self.progress.waiters()).unwrap_or(i64::MAX));
        match self.store.key_count() {
            Ok(keys) => self.store_keys.set(i64::try_from(keys).unwrap_or(i64::MAX)),
            Err(error) => tracing::warn!(%error, "cannot count the store's keys for /metrics"),
        }
        if let Some(path) = self.store.path() {
            match std::fs::metadata(path) {
                Ok(metadata) => self
                    .store_file_size
                    .set(i64::try_from(metadata.len()).unwrap_or(i64::MAX)),
                Err(error) => tracing::warn!(%error, "cannot read the store file's size"),
            }
        }
    }
}

/// Raises a counter to `total`; the replica's totals only grow.
fn catch_up(counter: &IntCounter, total: u64) {
    let current = counter.get();
    if total > current {
        counter.inc_by(total - current);
    }
}

impl Collector for ReplicaCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.metrics()
            .into_iter()
            .chain([&self.store_file_size as &dyn Collector])
            .flat_map(|metric| metric.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one_at_a_time = self.refresh.lock().unwrap_or_else(PoisonError::into_inner);
        self.refresh();
        let mut families: Vec<MetricFamily> = self
            .metrics()
            .into_iter()
            .flat_map(|metric| metric.collect())
            .collect();
        if self.store.path().is_some() {
            families.extend(self.store_file_size.collect());
        }
        families
    }
}
